// Index math of the CUDA sparse kernels (sparse_cuda.cu): mma.m16n8k16 fragment ownership, the decode of
// a strip-bitmap chunk (sparse_format.h) into A fragments, the ldmatrix addressing of the staged x tile,
// the shared-memory stage layout and the aligned copy window of a chunk's values, the split-K plan and
// tile rasterization, the fp32 SIMT lane mapping and the packing warps' element coordinates. Everything is
// a small FASTOPS_HD function so the same code runs on the CPU in sparse_cuda_layout_test.cpp, which
// emulates whole warps with it against a dense double-precision product.
#pragma once
#include <cstdint>

#include "common/hd.h"
#include "sparse/sparse_format.h"

namespace fastops {
namespace sparse {
namespace cuda_layout {

FASTOPS_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
FASTOPS_HD int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
FASTOPS_HD int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// ---------------------------------------------------------------------------------------------------
// Block shape. A block is kWarps warps, one 16-row strip each (consecutive strips), all on the same K
// range and token tile, so they share one staged x tile per chunk.
constexpr int kWarpSize = 32;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kGranuleBytes = 16;                             // one cp.async
constexpr int kStepCols = 16;                                 // k of one m16n8k16 MMA
constexpr int kStepsPerChunk = kChunkCols / kStepCols;        // 4
constexpr int kUnitsPerStep = kStepCols / kUnitCols;          // 8
constexpr int kNTileTokens = 8;                               // n of one MMA: tokens
constexpr int kMaskBytes = kUnitsPerChunk * 4;                // 128: the masks of one chunk
constexpr int kMaxChunkValues = kUnitsPerChunk * kUnitElems;  // 1024: a fully dense chunk

// ---------------------------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16} fragments (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type"), per 32-bit register; `half` 0 is the low 16 bits.
//   A (16 x 16, 4 regs): reg r -> row lane/4 + 8 (r & 1), cols 2 (lane%4) + 8 (r >> 1) + half
//   B (16 x 8, 2 regs):  reg r -> k 2 (lane%4) + 8 r + half, col lane/4
//   C (16 x 8, 4 f32):   elem e -> row lane/4 + 8 (e / 2), col 2 (lane%4) + e%2
// Rows of A are rows of W (inside the strip), columns of B and C are tokens.
FASTOPS_HD int frag_a_row(int lane, int reg) { return lane / 4 + 8 * (reg & 1); }
FASTOPS_HD int frag_a_col(int lane, int reg, int half) { return 2 * (lane % 4) + 8 * (reg >> 1) + half; }
FASTOPS_HD int frag_b_k(int lane, int reg, int half) { return 2 * (lane % 4) + 8 * reg + half; }
FASTOPS_HD int frag_b_col(int lane) { return lane / 4; }
FASTOPS_HD int frag_c_row(int lane, int e) { return lane / 4 + 8 * (e / 2); }
FASTOPS_HD int frag_c_col(int lane, int e) { return 2 * (lane % 4) + e % 2; }

// A register r of k step `step` is one column pair of one unit: unit 8 step + lane%4 + 4 (r >> 1) of the
// chunk, bits 2 row and 2 row + 1 of its mask (row = frag_a_row). Registers 0 and 1 share a unit, as do
// 2 and 3, so a lane needs the masks and offsets of two units per step.
FASTOPS_HD int a_unit(int lane, int step, int reg) {
  return kUnitsPerStep * step + frag_a_col(lane, reg, 0) / kUnitCols;
}
FASTOPS_HD int a_bit(int lane, int reg, int half) { return unit_bit(frag_a_row(lane, reg), half); }

// ---------------------------------------------------------------------------------------------------
// Value window. A chunk's values [start, end) (element indices into `values`) are copied to shared memory
// as whole 16-byte granules from the granule at or below the chunk start to the one holding its end, so a
// value lies `head` elements after the window start. The window of a dense chunk plus the worst head fits
// window_granules_max. The last granule may run past the last value, into the kValuePad trailing zeros.
FASTOPS_HD constexpr int window_granules_max(int esz) {
  return (kGranuleBytes - 1 + kMaxChunkValues * esz + kGranuleBytes - 1) / kGranuleBytes;
}
FASTOPS_HD constexpr int window_bytes(int esz) { return window_granules_max(esz) * kGranuleBytes; }
struct ValueWindow {
  uint64_t first_byte;  // address of the first granule (16-byte aligned)
  int head;             // elements between the window start and the chunk's first value
  int granules;         // granules to copy (clamped to the window, so a corrupt offset cannot overrun it)
};
FASTOPS_HD ValueWindow value_window(uint64_t values_addr, int esz, int64_t start, int64_t end) {
  const uint64_t begin = values_addr + uint64_t(start) * uint64_t(esz);
  const uint64_t stop = values_addr + uint64_t(end) * uint64_t(esz);
  ValueWindow w;
  w.first_byte = begin & ~uint64_t(kGranuleBytes - 1);
  w.head = int((begin - w.first_byte) / uint64_t(esz));
  const int64_t g = end > start ? int64_t((stop - w.first_byte + kGranuleBytes - 1) / kGranuleBytes) : 0;
  w.granules = int(min64(g, window_granules_max(esz)));
  return w;
}
// Window slot of the value with index `index` inside the chunk.
FASTOPS_HD int window_slot(int head, int index) { return head + index; }

// Slots of the two values of a column pair (bits bit0, bit0 + 1 of a unit whose first value has index
// unit_offset in the chunk); a slot is only read when its bit is set.
struct PairSlots {
  int lo, hi;
  bool has_lo, has_hi;
};
FASTOPS_HD PairSlots pair_slots(uint32_t mask, int unit_offset, int head, int bit0) {
  PairSlots p;
  p.has_lo = (mask >> bit0) & 1u;
  p.has_hi = (mask >> (bit0 + 1)) & 1u;
  p.lo = window_slot(head, unit_offset + value_rank(mask, bit0));
  p.hi = p.lo + (p.has_lo ? 1 : 0);  // value_rank(mask, bit0 + 1)
  return p;
}

// The heads of the stages in flight, 4 bits each in one register (a head is at most 7).
constexpr int kHeadBits = 4;
FASTOPS_HD uint32_t set_stage_head(uint32_t heads, int stage, int head) {
  const int sh = kHeadBits * stage;
  return (heads & ~(((1u << kHeadBits) - 1u) << sh)) | (uint32_t(head) << sh);
}
FASTOPS_HD int stage_head(uint32_t heads, int stage) {
  return int((heads >> (kHeadBits * stage)) & ((1u << kHeadBits) - 1u));
}

// ---------------------------------------------------------------------------------------------------
// x tile of one chunk: 8 ntiles tokens x 64 columns, rows padded by 16 bytes. For 2-byte x the row stride
// is 144 bytes = 36 banks, so the 8 row addresses of an ldmatrix phase fall in distinct 16-byte bank groups.
FASTOPS_HD constexpr int tile_tokens(int ntiles) { return kNTileTokens * ntiles; }
FASTOPS_HD constexpr int x_row_elems(int esz) { return kChunkCols + kGranuleBytes / esz; }
FASTOPS_HD constexpr int x_tile_bytes(int esz, int ntiles) { return tile_tokens(ntiles) * x_row_elems(esz) * esz; }
FASTOPS_HD constexpr int x_smem_elem(int token, int col, int esz) { return token * x_row_elems(esz) + col; }
// Copy work: granule g of the tile -> token row and first column.
FASTOPS_HD constexpr int x_granules_per_row(int esz) { return kChunkCols * esz / kGranuleBytes; }
FASTOPS_HD constexpr int x_tile_granules(int esz, int ntiles) { return tile_tokens(ntiles) * x_granules_per_row(esz); }
FASTOPS_HD int x_granule_token(int g, int esz) { return g / x_granules_per_row(esz); }
FASTOPS_HD int x_granule_col(int g, int esz) { return (g % x_granules_per_row(esz)) * (kGranuleBytes / esz); }
// Bytes of the granule at column `col` that lie inside the row (the rest is zero-filled: padded W
// columns are zero, and 0 * whatever x holds past k could be NaN).
FASTOPS_HD int x_copy_bytes(int64_t col, int64_t k, int esz) {
  const int64_t b = (k - col) * esz;
  return int(b < 0 ? 0 : (b > kGranuleBytes ? kGranuleBytes : b));
}
// 16-byte cp.async of x needs every row start 16-byte aligned.
FASTOPS_HD bool x_vec_ok(uint64_t x_addr, int64_t x_stride, int64_t n, int esz) {
  return x_addr % kGranuleBytes == 0 && (n <= 1 || (x_stride * esz) % kGranuleBytes == 0);
}

// ldmatrix.x4 of B: one call covers n8 tile nt for the two k steps 2 kpair, 2 kpair + 1. Lane l supplies
// row l%8 (a token) of matrix l/8 (8 columns at 32 kpair + 8 (l/8)); register j lands in step
// 2 kpair + j/2, B register j%2.
FASTOPS_HD int ldsm_b_token(int lane, int nt) { return kNTileTokens * nt + lane % 8; }
FASTOPS_HD int ldsm_b_col(int lane, int kpair) { return 2 * kStepCols * kpair + 8 * (lane / 8); }
FASTOPS_HD int ldsm_b_step(int kpair, int reg) { return 2 * kpair + reg / 2; }
FASTOPS_HD int ldsm_b_reg(int reg) { return reg % 2; }

// ---------------------------------------------------------------------------------------------------
// Shared-memory stage: [kWarps masks of 128 B][kWarps value windows][x tile]. All parts 16-byte aligned.
FASTOPS_HD constexpr int pipeline_stages(int esz) { return esz == 4 ? 3 : 4; }
FASTOPS_HD constexpr int stage_mask_offset(int warp) { return warp * kMaskBytes; }
FASTOPS_HD constexpr int stage_window_offset(int warp, int esz) {
  return kWarps * kMaskBytes + warp * window_bytes(esz);
}
FASTOPS_HD constexpr int stage_x_offset(int esz) { return kWarps * (kMaskBytes + window_bytes(esz)); }
FASTOPS_HD constexpr int stage_bytes(int esz, int ntiles) { return stage_x_offset(esz) + x_tile_bytes(esz, ntiles); }
FASTOPS_HD constexpr int smem_bytes(int esz, int ntiles) { return pipeline_stages(esz) * stage_bytes(esz, ntiles); }

// ---------------------------------------------------------------------------------------------------
// Chunk bounds. bound(c) = chunk_offsets[s, c] for c < C and the strip's value count for c = C, so chunk c
// holds strip values [bound(c), bound(c + 1)). A warp keeps the bounds of its K range in two registers per
// lane, 32 at a time: relative chunk j is lane bound_lane(j) of batch bound_batch(j).
constexpr int kBoundBatch = kWarpSize;
FASTOPS_HD int bound_batch(int j) { return j / kBoundBatch; }
FASTOPS_HD int bound_lane(int j) { return j % kBoundBatch; }
FASTOPS_HD int64_t bound_chunk(int64_t chunk_begin, int batch, int lane) {
  return chunk_begin + int64_t(batch) * kBoundBatch + lane;
}

// ---------------------------------------------------------------------------------------------------
// fp32 SIMT mapping: lane l owns row l%16 of the strip and tokens (l/16) 4 ntiles + j, j < 4 ntiles, of
// the token tile; for every unit of the chunk it reads its row's two values and the unit's x pair.
constexpr int kSimtRows = kStripRows;
FASTOPS_HD constexpr int simt_tokens_per_lane(int ntiles) { return tile_tokens(ntiles) / (kWarpSize / kSimtRows); }
FASTOPS_HD int simt_row(int lane) { return lane % kSimtRows; }
FASTOPS_HD int simt_token(int lane, int j, int ntiles) { return (lane / kSimtRows) * simt_tokens_per_lane(ntiles) + j; }

// ---------------------------------------------------------------------------------------------------
// Split-K plan. Work tiles are (split, strip group of kWarps strips, token tile), one block each on a
// 1-D grid. Split-K is used while the tiles are fewer than kTargetBlocksPerSm blocks per SM (>= 2 waves of
// one block per SM), keeping at least kMinChunksPerSplit chunks per split. A plan with more than
// kMaxGridX tiles (a y of terabytes) is rejected by the host, so tile ids and coordinates fit 32 bits.
constexpr int64_t kTargetBlocksPerSm = 4;
constexpr int64_t kMinChunksPerSplit = 4;
constexpr int64_t kMaxSplits = 64;
constexpr int64_t kMaxGridX = 2147483647;
constexpr int64_t kRasterBand = 16;  // token tiles per band: one band of x stays in L2 while W streams

// n8 tiles per token tile: enough for n, at most 4 (16-bit, MMA) or 2 (fp32, SIMT registers).
FASTOPS_HD int plan_ntiles(int64_t n, int esz) {
  if (n <= kNTileTokens) return 1;
  if (n <= 2 * kNTileTokens || esz == 4) return 2;
  return 4;
}
struct SpmmPlan {
  int ntiles;
  int64_t strips, chunks;  // S, C
  int64_t strip_groups, token_tiles;
  int64_t splits, chunks_per_split;
  int64_t tiles;  // strip_groups * token_tiles * splits = blocks launched
};
FASTOPS_HD SpmmPlan make_spmm_plan(int64_t m, int64_t k, int64_t n, int64_t sm_count, int esz) {
  SpmmPlan p;
  p.ntiles = plan_ntiles(n, esz);
  p.strips = num_strips(m);
  p.chunks = chunks_per_strip(k);
  p.strip_groups = ceil_div(p.strips, kWarps);
  p.token_tiles = n > 0 ? ceil_div(n, tile_tokens(p.ntiles)) : 0;
  const int64_t base = p.strip_groups * p.token_tiles;
  const int64_t target = kTargetBlocksPerSm * max64(sm_count, 1);
  int64_t want = base > 0 && base < target ? ceil_div(target, base) : 1;
  want = min64(want, min64(kMaxSplits, max64(1, p.chunks / kMinChunksPerSplit)));
  p.chunks_per_split = p.chunks > 0 ? ceil_div(p.chunks, want) : 0;
  p.splits = p.chunks > 0 ? ceil_div(p.chunks, p.chunks_per_split) : 1;
  p.tiles = base * p.splits;
  return p;
}
FASTOPS_HD bool plan_launchable(const SpmmPlan& p) { return p.tiles > 0 && p.tiles <= kMaxGridX; }
FASTOPS_HD int64_t split_chunk_begin(const SpmmPlan& p, int64_t split) {
  return min64(split * p.chunks_per_split, p.chunks);
}
FASTOPS_HD int64_t split_chunk_end(const SpmmPlan& p, int64_t split) {
  return min64((split + 1) * p.chunks_per_split, p.chunks);
}

// Tile id -> coordinates: splits outermost; inside a split, bands of kRasterBand token tiles with the
// token tile fastest, so neighbouring blocks read the same strips (weight from L2) and one band of x.
// 32-bit arithmetic (plan_launchable: every count below is at most tiles < 2^31).
struct TileCoords {
  int64_t split, strip_group, token_tile;
};
FASTOPS_HD TileCoords tile_coords(const SpmmPlan& p, uint32_t id) {
  const uint32_t groups = uint32_t(p.strip_groups), token_tiles = uint32_t(p.token_tiles);
  const uint32_t per_split = groups * token_tiles;
  const uint32_t band_tiles = token_tiles < uint32_t(kRasterBand) ? token_tiles : uint32_t(kRasterBand);
  const uint32_t per_band = band_tiles * groups;
  const uint32_t split = id / per_split, inner = id - split * per_split;
  const uint32_t band = inner / per_band, first_tile = band * band_tiles;
  const uint32_t band_w = token_tiles - first_tile < band_tiles ? token_tiles - first_tile : band_tiles;
  const uint32_t in_band = inner - band * per_band;
  TileCoords t;
  t.split = split;
  t.token_tile = first_tile + in_band % band_w;
  t.strip_group = in_band / band_w;
  return t;
}
FASTOPS_HD int64_t tile_strip(const TileCoords& t, int warp) { return t.strip_group * kWarps + warp; }
FASTOPS_HD int64_t tile_token0(const TileCoords& t, int ntiles) { return t.token_tile * tile_tokens(ntiles); }

// Split-K partials: fp32 [splits][n][m].
FASTOPS_HD int64_t workspace_index(int64_t split, int64_t token, int64_t row, int64_t n, int64_t m) {
  return (split * n + token) * m + row;
}
FASTOPS_HD int64_t workspace_bytes(const SpmmPlan& p, int64_t n, int64_t m) {
  return p.splits > 1 ? p.splits * n * m * int64_t(sizeof(float)) : 0;
}

// ---------------------------------------------------------------------------------------------------
// Format addressing shared by the spmm and packing kernels.
FASTOPS_HD int64_t mask_index(int64_t strip, int64_t unit, int64_t units) { return strip * units + unit; }
FASTOPS_HD int64_t chunk_index(int64_t strip, int64_t chunk, int64_t chunks) { return strip * chunks + chunk; }
FASTOPS_HD int64_t chunk_unit(int64_t chunk, int unit_in_chunk) { return chunk * kUnitsPerChunk + unit_in_chunk; }

// Packing: one warp per (strip, chunk), lane = unit of the chunk; element `bit` of unit u of strip s.
FASTOPS_HD int64_t pack_warp_strip(int64_t id, int64_t chunks) { return id / chunks; }
FASTOPS_HD int64_t pack_warp_chunk(int64_t id, int64_t chunks) { return id % chunks; }
FASTOPS_HD int64_t elem_row(int64_t strip, int bit) { return strip * kStripRows + bit_row(bit); }
FASTOPS_HD int64_t elem_col(int64_t unit, int bit) { return unit * kUnitCols + bit_col(bit); }
FASTOPS_HD int64_t elem_offset(int64_t row, int64_t col, int64_t stride_r, int64_t stride_c) {
  return row * stride_r + col * stride_c;
}
// Raw bits nonzero test: -0.0 is zero, NaN is nonzero.
FASTOPS_HD bool nonzero_bits(uint32_t raw, int esz) { return (raw & (esz == 4 ? 0x7fffffffu : 0x7fffu)) != 0; }

}  // namespace cuda_layout
}  // namespace sparse
}  // namespace fastops
