// Index math of the CUDA bitgemm kernels (bitgemm_cuda.cu): mma.m16n8k256 / m16n8k128 .b1 fragment
// ownership, ldmatrix addressing, the swizzled shared-memory stage layout, plane stacking, the K-group
// schedule, split-K, tile rasterization, the exact recovery / correction formulas and the quantization
// rules of quantize_pack. Everything is a small FASTOPS_HD function so the same code is exercised on the
// CPU by bitgemm_cuda_layout_test.cpp (which emulates whole CTA tiles with it).
#pragma once
#include <cstdint>
#if !defined(__CUDA_ARCH__)
#include <cmath>
#endif

#include "bitgemm/bitgemm_format.h"
#include "common/hd.h"

namespace fastops {
namespace bitgemm {
namespace cuda_layout {

// ---------------------------------------------------------------------------------------------------
// Exact fp32 primitives: one rounding each, never contracted into an FMA (CPU, CUDA and the reference
// must agree bit for bit).
FASTOPS_HD float fmul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
FASTOPS_HD float fadd_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
FASTOPS_HD float fsub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
FASTOPS_HD float fdiv_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
// Round half to even; the argument is already clamped to a small integer range.
FASTOPS_HD int32_t rint_i32(float v) {
#if defined(__CUDA_ARCH__)
  return __float2int_rn(v);
#else
  return int32_t(std::nearbyint(v));
#endif
}
FASTOPS_HD float i32_to_f32(int32_t v) {
#if defined(__CUDA_ARCH__)
  return __int2float_rn(v);
#else
  return float(v);
#endif
}
// fmaxf / fminf semantics (a NaN operand loses) on both sides.
FASTOPS_HD float fmax_nan_loses(float a, float b) {
#if defined(__CUDA_ARCH__)
  return fmaxf(a, b);
#else
  return std::fmax(a, b);
#endif
}
FASTOPS_HD float fmin_nan_loses(float a, float b) {
#if defined(__CUDA_ARCH__)
  return fminf(a, b);
#else
  return std::fmin(a, b);
#endif
}

// ---------------------------------------------------------------------------------------------------
// K steps and pipeline stages. One k step = one m16n8k256 MMA = 8 words of a plane row. A stage holds
// kStageSteps k steps of every stacked row: 64 bytes = 4 chunks of 16 bytes (one cp.async each).
constexpr int kStepBits = 256;
constexpr int kStepWords = 8;
constexpr int kHalfBits = 128;  // one m16n8k128 MMA (half a k step)
constexpr int kStageSteps = 2;
constexpr int kStageWords = kStageSteps * kStepWords;
constexpr int kRowBytes = kStageWords * 4;  // 64
constexpr int kChunkBytes = 16;
constexpr int kChunksPerRow = kRowBytes / kChunkBytes;  // 4
constexpr int kMaxStages = 4;

FASTOPS_HD int64_t k_steps(int64_t k) { return words_per_row(k) / kStepWords; }

// Byte offset, within a stage, of 16-byte chunk `chunk` (0..3) of stage row `row`. The chunk index is
// XOR-swizzled with bits 1..2 of the row, so the 8 rows of any ldmatrix 8x8 matrix (8 consecutive rows
// starting at a multiple of 8, one logical chunk) fall in 8 distinct 16-byte bank groups.
FASTOPS_HD uint32_t smem_chunk_offset(int row, int chunk) {
  return uint32_t(row) * kRowBytes + uint32_t((chunk ^ ((row >> 1) & 3)) * kChunkBytes);
}
FASTOPS_HD int smem_bank(uint32_t byte_offset) { return int((byte_offset / 4) % 32); }

// cp.async work split: chunk id c of a stage (chunks numbered row-major, 4 per stage row).
FASTOPS_HD int copy_row(int c) { return c / kChunksPerRow; }
FASTOPS_HD int copy_chunk(int c) { return c % kChunksPerRow; }
// k step (relative to the stage's first) that chunk `chunk` belongs to, and its first word.
FASTOPS_HD int chunk_step(int chunk) { return chunk / 2; }
FASTOPS_HD int chunk_word(int chunk) { return chunk * 4; }

// ---------------------------------------------------------------------------------------------------
// mma.sync.m16n8k256.row.col.s32.b1.b1.s32.and.popc fragments, register level (PTX ISA 9.7.14.5.13).
// Register bit b holds the element at k = 32 * word + b of the 256-bit k step (LSB first, which is the
// packed format's own bit order, so a register is exactly one stored word).
//   A (16 x 256, 4 regs): reg r -> row lane/4 + 8 (r & 1), word lane%4 + 4 (r >> 1)
//   B (256 x 8, 2 regs):  reg r -> col lane/4,             word lane%4 + 4 r
//   C/D (16 x 8, 4 s32):  elem e -> row lane/4 + 8 (e / 2), col 2 (lane%4) + e%2
// m16n8k128 (PTX 9.7.14.5.12) is the same with half the words: its A regs 0, 1 and B reg 0 cover
// words lane%4 of the half. So k-half h of a k256 step is a k128 MMA on A regs {2h, 2h+1}, B reg h.
FASTOPS_HD int frag_a_row(int lane, int reg) { return lane / 4 + 8 * (reg & 1); }
FASTOPS_HD int frag_a_word(int lane, int reg) { return lane % 4 + 4 * (reg >> 1); }
FASTOPS_HD int frag_b_col(int lane) { return lane / 4; }
FASTOPS_HD int frag_b_word(int lane, int reg) { return lane % 4 + 4 * reg; }
FASTOPS_HD int frag_c_row(int lane, int e) { return lane / 4 + 8 * (e / 2); }
FASTOPS_HD int frag_c_col(int lane, int e) { return 2 * (lane % 4) + e % 2; }
// Register of the k256 A / B fragment used as register r of the k128 MMA of k-half h.
FASTOPS_HD int half_a_reg(int h, int r) { return 2 * h + r; }
FASTOPS_HD int half_b_reg(int h) { return h; }

// ldmatrix.sync.aligned.m8n8.x4.b16: lane l supplies the address of row l % 8 of matrix l / 8 (16 bytes
// = 4 words) and receives word l % 4 of row l / 4 of each matrix j in register j.
// A operand (one m16 tile, k step ks of the stage): matrices (rows 0-7, half 0), (rows 8-15, half 0),
// (rows 0-7, half 1), (rows 8-15, half 1) -> registers a0..a3 of the fragment above.
FASTOPS_HD int ldsm_a_row(int lane) { return (lane & 7) + 8 * ((lane >> 3) & 1); }
FASTOPS_HD int ldsm_a_chunk(int lane, int ks) { return 2 * ks + (lane >> 4); }
// B operand (two n8 tiles, k step ks): matrices (rows 0-7, half 0), (rows 0-7, half 1), (rows 8-15,
// half 0), (rows 8-15, half 1) -> b0, b1 of n8 tile 0, then b0, b1 of n8 tile 1.
FASTOPS_HD int ldsm_b_row(int lane) { return (lane & 7) + 8 * (lane >> 4); }
FASTOPS_HD int ldsm_b_chunk(int lane, int ks) { return 2 * ks + ((lane >> 3) & 1); }

// ---------------------------------------------------------------------------------------------------
// Plane coefficients: plane_coeff(fmt, bits, i) == base_coeff(fmt, bits) * plane_ratio(fmt, bits, i) with
// integer ratios, so sum_ij ca_i cw_j P_ij = (ca_0 cw_0) * sum_ij ra_i rw_j P_ij and the (0, 0) pair
// (ratio 1) accumulates straight into the MMA accumulator.
FASTOPS_HD int32_t base_coeff(Format fmt, int bits) { return plane_coeff(fmt, bits, 0); }
FASTOPS_HD int32_t plane_ratio(Format fmt, int bits, int i) {
  if (fmt == Format::signed_int && bits > 1 && i == bits - 1) return -(int32_t(1) << i);
  return int32_t(1) << i;
}

// C = combined + oy * rs_x + ox * rs_y + cols * ox * oy (bitgemm_format.h), wrapping 32-bit arithmetic.
// combined = sum_ij c_ij P_ij over the columns, rs_* = sums of (X - offset) over the same columns.
FASTOPS_HD int32_t corrected_value(uint32_t combined, int32_t ox, int32_t oy, int32_t rs_x, int32_t rs_y,
                                   int64_t cols) {
  const uint32_t c = combined + uint32_t(oy) * uint32_t(rs_x) + uint32_t(ox) * uint32_t(rs_y) +
                     uint32_t(uint64_t(cols)) * uint32_t(ox) * uint32_t(oy);
  return int32_t(c);
}
// Scaled accumulation, the one order used everywhere: acc + (sx * sy) * float(C), each op rounded once.
FASTOPS_HD float accumulate_scaled(float acc, float sx, float sy, int32_t c) {
  return fadd_rn(acc, fmul_rn(fmul_rn(sx, sy), i32_to_f32(c)));
}

// ---------------------------------------------------------------------------------------------------
// K groups (scaled mode, group_size gs > 0, a multiple of 128). Half k step (s, h) covers bits
// [256 s + 128 h, +128) and belongs to group (256 s + 128 h) / gs.
struct StepGroups {
  int64_t g0, g1;   // groups of half 0 and half 1
  bool split_mid;   // a group ends in the middle of the step: two k128 passes with a flush between
  bool flush_end;   // the group of half 1 ends with this step (or the split ends here)
};
FASTOPS_HD StepGroups step_groups(int64_t step, int64_t step_end, int64_t gs) {
  const int64_t b = step * kStepBits;
  StepGroups s;
  s.g0 = b / gs;
  s.g1 = (b + kHalfBits) / gs;
  s.split_mid = s.g0 != s.g1;
  s.flush_end = step + 1 == step_end || (b + kStepBits) / gs != s.g1;
  return s;
}
// Logical columns of group g (the last group may be short; groups past k have none).
FASTOPS_HD int64_t group_cols(int64_t g, int64_t gs, int64_t k) {
  const int64_t lo = g * gs, hi = lo + gs < k ? lo + gs : k;
  return hi > lo ? hi - lo : 0;
}
// Split-K unit in k steps for grouped problems: lcm(gs, 256) bits, so a split covers whole groups.
FASTOPS_HD int64_t group_unit_steps(int64_t gs) { return gs % kStepBits == 0 ? gs / kStepBits : gs / kHalfBits; }

// ---------------------------------------------------------------------------------------------------
// Split-K: units [0, units) are cut into `splits` slices of `per_split` units (the last may be shorter,
// none is empty). A unit is `unit_steps` k steps; slice boundaries in k steps are clipped to the total.
struct SplitK {
  int64_t splits;
  int64_t per_split;
};
FASTOPS_HD SplitK make_split_k(int64_t units, int64_t want, int64_t max_splits) {
  if (want > max_splits) want = max_splits;
  if (want > units) want = units;
  if (want < 1) want = 1;
  SplitK s;
  s.per_split = units > 0 ? (units + want - 1) / want : 1;
  s.splits = units > 0 ? (units + s.per_split - 1) / s.per_split : 1;
  return s;
}
FASTOPS_HD int64_t split_step_begin(const SplitK& s, int64_t split, int64_t unit_steps, int64_t nsteps) {
  const int64_t b = split * s.per_split * unit_steps;
  return b < nsteps ? b : nsteps;
}
FASTOPS_HD int64_t split_step_end(const SplitK& s, int64_t split, int64_t unit_steps, int64_t nsteps) {
  const int64_t e = (split + 1) * s.per_split * unit_steps;
  return e < nsteps ? e : nsteps;
}

// Tile rasterization of the 1-D grid: bands of 8 x tiles, y fastest inside a band (L2 reuse of both
// operands). A bijection of [0, tiles_x * tiles_y) onto the tile grid.
struct TileXY {
  int64_t x, y;
};
constexpr int64_t kRasterBand = 8;
FASTOPS_HD TileXY tile_coords(int64_t id, int64_t tiles_x, int64_t tiles_y) {
  const int64_t per_band = kRasterBand * tiles_y;
  const int64_t band = id / per_band, first_x = band * kRasterBand;
  const int64_t band_x = tiles_x - first_x < kRasterBand ? tiles_x - first_x : kRasterBand;
  const int64_t in_band = id % per_band;
  TileXY t;
  t.x = first_x + in_band % band_x;
  t.y = in_band / band_x;
  return t;
}

// ---------------------------------------------------------------------------------------------------
// Stacked kernel (integer mode and single-group scaled mode). The CTA runs one binary GEMM of
// 128 stacked X rows x 128 stacked Y rows: X rows = bits_x planes x rows_per_plane_x real rows (plane
// major), the same for Y. Stage rows 0..127 are X, 128..255 are Y. 4 warps (2 x 2), warp tile 64 x 64
// stacked (4 m16 x 8 n8 MMAs per k step). The int32 accumulators go through shared memory (row stride
// kEpiStride words) where the planes are recombined with their coefficients.
namespace stacked {
constexpr int kStack = 128;
constexpr int kStageRows = 2 * kStack;
constexpr int kStageBytes = kStageRows * kRowBytes;  // 16 KB
constexpr int kWarpsX = 2, kWarpsY = 2, kThreads = 32 * kWarpsX * kWarpsY;
constexpr int kWarpRows = 64;
constexpr int kMT = kWarpRows / 16, kNT = kWarpRows / 8;
constexpr int kChunksPerThread = kStageRows * kChunksPerRow / kThreads;  // 8
constexpr int kEpiStride = kStack + 8;  // int32 words per stacked X row: conflict-free 8-byte stores
constexpr int kEpiBytes = kStack * kEpiStride * 4;
constexpr int kRowTableBytes = kStageRows * 8;  // int64 word offset of each stacked row (-1: zero)
constexpr int kStages = 4;
}  // namespace stacked

// Real rows per plane of a stacked tile. Y keeps a multiple of 4 for 16-byte output stores.
FASTOPS_HD int stacked_rows_x(int bits) { return stacked::kStack / bits; }
FASTOPS_HD int stacked_rows_y(int bits) { return (stacked::kStack / bits) & ~3; }
struct StackedRow {
  int plane, row;  // plane >= bits: unused stacked row
};
FASTOPS_HD StackedRow unstack(int local, int rows_per_plane) {
  StackedRow s;
  s.plane = local / rows_per_plane;
  s.row = local % rows_per_plane;
  return s;
}
FASTOPS_HD int stack_row(int plane, int row, int rows_per_plane) { return plane * rows_per_plane + row; }
// Stacked (row, col) of accumulator element e of MMA tile (mt, nt) of warp `warp`, lane `lane`.
FASTOPS_HD int stacked_acc_row(int warp, int mt, int lane, int e) {
  return (warp % stacked::kWarpsX) * stacked::kWarpRows + mt * 16 + frag_c_row(lane, e);
}
FASTOPS_HD int stacked_acc_col(int warp, int nt, int lane, int e) {
  return (warp / stacked::kWarpsX) * stacked::kWarpRows + nt * 8 + frag_c_col(lane, e);
}
// First stage row of warp's X m16 tile mt / Y n8-pair np (two n8 tiles per ldmatrix.x4).
FASTOPS_HD int stacked_x_tile_row(int warp, int mt) { return (warp % stacked::kWarpsX) * stacked::kWarpRows + mt * 16; }
FASTOPS_HD int stacked_y_tile_row(int warp, int np) {
  return stacked::kStack + (warp / stacked::kWarpsX) * stacked::kWarpRows + np * 16;
}
// Word offset of stacked (row, col) in the epilogue buffer.
FASTOPS_HD int epi_word(int srow, int scol) { return srow * stacked::kEpiStride + scol; }
// Recovery work item u -> (output row, 4-column group) of a tile with `groups4` column groups.
FASTOPS_HD int recover_row(int u, int groups4) { return u / groups4; }
FASTOPS_HD int recover_col4(int u, int groups4) { return u % groups4; }

// ---------------------------------------------------------------------------------------------------
// Plane-loop kernel (grouped scaled mode, and every mode for small M). CTA tile BX real X rows x BY
// real Y rows; stage rows: X planes [bits_x][BX], then Y planes [bits_y][BY]. Warps WX x WY, each MT m16
// tiles x NT n8 tiles of real rows; per k step the warp loops over all plane pairs, and every plane-pair
// MMA result is folded at once into one int32 accumulator per output with its integer ratio. Per-group
// row sums come from popcounts of the fragment registers (quad-reduced at each flush).
FASTOPS_HD int planes_x_row(int plane, int r, int BX) { return plane * BX + r; }
FASTOPS_HD int planes_y_row(int plane, int r, int bits_x, int BX, int BY) { return bits_x * BX + plane * BY + r; }
FASTOPS_HD int planes_stage_rows(int bits_x, int bits_y, int BX, int BY) { return bits_x * BX + bits_y * BY; }
struct PlaneRow {
  int side;  // 0: X, 1: Y
  int plane, row;
};
FASTOPS_HD PlaneRow planes_unstack(int srow, int bits_x, int BX, int BY) {
  PlaneRow p;
  if (srow < bits_x * BX) {
    p.side = 0;
    p.plane = srow / BX;
    p.row = srow % BX;
  } else {
    const int r = srow - bits_x * BX;
    p.side = 1;
    p.plane = r / BY;
    p.row = r % BY;
  }
  return p;
}
// Real (row, col) within the CTA tile of accumulator element e of MMA tile (mt, nt) of warp (wx, wy).
FASTOPS_HD int planes_acc_row(int wx, int MT, int mt, int lane, int e) { return (wx * MT + mt) * 16 + frag_c_row(lane, e); }
FASTOPS_HD int planes_acc_col(int wy, int NT, int nt, int lane, int e) { return (wy * NT + nt) * 8 + frag_c_col(lane, e); }
// Lane holding (after the quad reduction) the row sum of Y row `col` of an n8 tile.
FASTOPS_HD int rowsum_src_lane(int col) { return 4 * col; }

// ---------------------------------------------------------------------------------------------------
// quantize_pack rules (bitgemm.h), exactly.
struct QuantParams {
  float scale, inv;
  int32_t zero;    // unsigned: zero point; others 0
  int32_t offset;  // per-row offset of the packed format
};
FASTOPS_HD int32_t quant_qmax(Format fmt, int bits) {
  if (fmt == Format::signed_int) return bits >= 2 ? (int32_t(1) << (bits - 1)) - 1 : 1;  // divisor of absmax
  return (int32_t(1) << bits) - 1;
}
// absmax (signed, bipolar) or mn / mx (unsigned) of the row (tensor).
FASTOPS_HD QuantParams quant_params(Format fmt, int bits, float absmax, float mn, float mx) {
  QuantParams q;
  const int32_t qmax = quant_qmax(fmt, bits);
  float scale;
  if (fmt == Format::unsigned_int) {
    const float lo = fmin_nan_loses(mn, 0.f), hi = fmax_nan_loses(mx, 0.f);
    scale = fdiv_rn(fsub_rn(hi, lo), i32_to_f32(qmax));
    if (scale == 0.f) scale = 1.f;
    q.scale = scale;
    q.inv = fdiv_rn(1.f, scale);
    float z = fmul_rn(-lo, q.inv);
    z = fmin_nan_loses(fmax_nan_loses(z, 0.f), i32_to_f32(qmax));
    q.zero = rint_i32(z);
    q.offset = -q.zero;
  } else {
    scale = (fmt == Format::signed_int && bits == 1) ? absmax : fdiv_rn(absmax, i32_to_f32(qmax));
    if (scale == 0.f) scale = 1.f;
    q.scale = scale;
    q.inv = fdiv_rn(1.f, scale);
    q.zero = 0;
    q.offset = format_offset(fmt, bits);
  }
  return q;
}
// The stored code of x: its low `bits` bits are the plane bits (two's complement for signed).
// Rounding a value clamped to integer bounds equals clamping the rounded value (rint is monotone).
FASTOPS_HD int32_t quant_code(Format fmt, int bits, float x, const QuantParams& q) {
  const float v = fmul_rn(x, q.inv);
  if (fmt == Format::signed_int) {
    const float lo = -i32_to_f32(int32_t(1) << (bits - 1)), hi = i32_to_f32((int32_t(1) << (bits - 1)) - 1);
    return rint_i32(fmin_nan_loses(fmax_nan_loses(v, lo), hi));
  }
  const int32_t qmax = (int32_t(1) << bits) - 1;
  if (fmt == Format::bipolar) {
    const float t = fmul_rn(fadd_rn(v, i32_to_f32(qmax)), 0.5f);  // (x * inv + qmax) / 2, exact halving
    return rint_i32(fmin_nan_loses(fmax_nan_loses(t, 0.f), i32_to_f32(qmax)));
  }
  // unsigned: clamp(rint(v) + zero, 0, qmax) = rint(clamp(v, -zero, qmax - zero)) + zero
  const float c = fmin_nan_loses(fmax_nan_loses(v, -i32_to_f32(q.zero)), i32_to_f32(qmax - q.zero));
  return rint_i32(c) + q.zero;
}
// Plane bit i of a code.
FASTOPS_HD uint32_t code_bit(int32_t code, int i) { return uint32_t(code >> i) & 1u; }
// X - offset of a code (what rowsum adds up): signed q, bipolar 2u, unsigned u.
FASTOPS_HD int32_t code_rowsum_term(Format fmt, int32_t code) { return fmt == Format::bipolar ? 2 * code : code; }

// Ballot packing of 128 columns: lane l holds columns 32 e + l (e = 0..3) of the block; word e of the
// block is the ballot of the lanes' bit i for column group e (bit l = column 32 e + l, LSB first).
FASTOPS_HD int64_t pack_col(int64_t block, int e, int lane) { return block * 128 + 32 * e + lane; }
// Number of per-tensor partial statistics (blocks of the statistics pass).
FASTOPS_HD int64_t quant_stat_blocks(int64_t rows) { return rows < 1 ? 1 : (rows < 1024 ? rows : 1024); }

}  // namespace cuda_layout
}  // namespace bitgemm
}  // namespace fastops
