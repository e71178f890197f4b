// Private to the CPU LUT GEMM: the per-token int8 tables that lut_cpu.cpp builds and the per-ISA
// kernels consume, and the per-ISA entry points.
//
// Int8 tables (one set per token n and 32-wide k block kb; chunk u = 4 activations, lut_format.h):
//   T(c) = sum_j (2 bit_j(c) - 1) x[4u + j] is stored as 4 T / unit ~= 4 h(c) + r(c), with
//   h = round(T / D) in [-127, 127] ("hi" table) and r = round(4 (T / D - h)) in [-2, 2] ("residual"
//   table), D = max over the scale block's chunks of sum_j |x_j| / 127 and unit = D / 4. So a lookup
//   carries ~9 bits of precision while both tables stay byte tables for vpshufb. Only the 8 entries
//   with the MSB set are computed; T(c ^ 15) = -T(c) holds exactly (h and r are negated too).
//   Layout per (n, kb): 256 bytes = hi[8][16] then residual[8][16], the 8 tables in "slot" order:
//   slot = 4 * (lane / 2) + 2 * nibble + lane % 2 for chunk u (lane = u % 4, nibble = u / 4), so a
//   32-byte half of the packed 64-byte plane block meets its tables as two 32-byte vectors
//   (slots 0-1: low nibbles of bytes 0-31, slots 2-3: their high nibbles, slots 4-7 likewise for
//   bytes 32-63). The AVX-512 kernel looks up each 64-byte half (slots 0-3, 4-7) with vpermb, so
//   the slot order only enters its index constants.
// Uniform scheme: only the top plane adds the residual. Plane i carries weight 2^i, so the top
// plane dominates the rounding error (q = 4: 64 / 85 of its variance); the lower planes use 4 h
// alone, which saves four lookups per plane block and keeps the error near 3e-3 on normal data.
// bcq planes have comparable weights and all use the residual.
// Scale blocks: normally one k block (8 chunks). Uniform weights of up to 3 bits share D across a
// pair of k blocks (16 chunks, 64 activations) when groups hold whole pairs, so the kernels add both
// blocks' integer sums and flush them once (the flush costs about as much as a plane block).
// Integer bounds per int16 lane (4 chunks of one k block per plane): hi part 4 * (2^q - 1) * 4 * 127
// plus residual 2^(q-1) * 4 * 2. q = 4, one k block: 30480 + 64. q = 3, a pair: 28448 + 64. Both fit
// int16; a q = 4 pair would not, which is why q = 4 flushes every k block. The int8 residual sums
// reach 4 * 2 per k block, 16 per pair.
#pragma once
#include <cstdint>
#include <type_traits>

#include "lut/lut.h"

namespace fastops {
namespace lut {
namespace detail {

constexpr int kTableSlots = 8;
constexpr int kTableEntries = 16;
constexpr int kTableBytes = 2 * kTableSlots * kTableEntries;  // hi + residual, per (token, kb)
constexpr int kResidualSteps = 4;                             // unit = D / kResidualSteps

// Whether plane `plane` of a `bits`-bit weight adds the residual table (see above).
inline bool uses_residual(Scheme s, int bits, int plane) { return s == Scheme::bcq || plane == bits - 1; }

// K blocks per scale block (see above): 2 or 1. Pairs start at even k blocks and never straddle a group.
inline int blocks_per_scale(Scheme s, int bits, int64_t group_size) {
  return s == Scheme::uniform && bits <= 3 && group_size % (2 * kBlockK) == 0 ? 2 : 1;
}

// Slot of chunk u (0..7) in the table layout above (constexpr: the AVX-512 kernel builds its
// lookup indices from it at compile time).
constexpr int table_slot(int u) {
  int lane = u % 4, nibble = u / 4;
  return 4 * (lane / 2) + 2 * nibble + lane % 2;
}

// Calls f(bits, scheme) with both as compile-time constants (std::integral_constant), and
// with_tile_params f(scheme, bits, dtype) with all three, for the per-ISA kernels. Anonymous
// namespace: each ISA translation unit keeps its own copy.
namespace {
template <class F>
void with_bits_scheme(int bits, Scheme scheme, F&& f) {
  auto run = [&](auto q) {
    if (scheme == Scheme::bcq) return f(q, std::integral_constant<Scheme, Scheme::bcq>{});
    return f(q, std::integral_constant<Scheme, Scheme::uniform>{});
  };
  switch (bits) {
    case 1: return run(std::integral_constant<int, 1>{});
    case 2: return run(std::integral_constant<int, 2>{});
    case 3: return run(std::integral_constant<int, 3>{});
    default: return run(std::integral_constant<int, 4>{});
  }
}

template <class F>
void with_tile_params(const GemmProblem& p, F&& f) {
  auto run = [&](auto dtype) {
    with_bits_scheme(p.bits, p.scheme, [&](auto bits, auto scheme) { f(scheme, bits, dtype); });
  };
  switch (p.dtype) {
    case DType::f16: return run(std::integral_constant<DType, DType::f16>{});
    case DType::bf16: return run(std::integral_constant<DType, DType::bf16>{});
    default: return run(std::integral_constant<DType, DType::f32>{});
  }
}
}  // namespace

struct Int8Tables {
  const int8_t* lut;       // [n][kblocks][kTableBytes], 64-byte aligned (AVX-512 aligned loads)
  const float* unit;       // [n][kblocks]: value of one integer step of 4 h + r (same within a scale block)
  const float* group_sum;  // [n][ngroups]: fp32 sum of x over the group (the zero-point term)
  int64_t kblocks, ngroups;
};

// Builds the int8 tables of one scale block of `blocks` (1 or 2) k blocks from its 32 * blocks
// activations xs (fp32, zero past K) into lut (blocks * kTableBytes, 32-byte aligned) and returns the
// shared unit. Both versions compute the same fp32 values in the same order (the AVX2 one without
// fused multiply-adds), so their tables are identical.
float int8_block_scalar(const float* xs, int blocks, int8_t* lut);
float int8_block_avx2(const float* xs, int blocks, int8_t* lut);

// Computes rows [16 tile, 16 tile + 16) of y for tokens [n_begin, n_end), bias included, and stores
// them in p.dtype. The scalar, AVX2 and AVX-512 versions perform the same integer sums and the same
// fp32 operations in the same order, so they agree bit for bit. The AVX-512 one needs AVX512BW,
// VBMI (vpermb) and VNNI (vpdpbusd).
void int8_tile_scalar(const GemmProblem& p, const Int8Tables& t, int64_t tile, int64_t n_begin,
                      int64_t n_end);
void int8_tile_avx2(const GemmProblem& p, const Int8Tables& t, int64_t tile, int64_t n_begin,
                    int64_t n_end);
void int8_tile_avx512(const GemmProblem& p, const Int8Tables& t, int64_t tile, int64_t n_begin,
                      int64_t n_end);

// One 16-row tile of the dense path's dequantization (lut.h: dequantize_cpu), its per-group
// parameters already in fp32. Writes out[k * out_stride + r] for k < K and all 16 rows r (padding
// rows have zero scales and zero points, so they come out 0). Values are the fp32 operations of the
// torch-op dequantization (python/fastops/lut.py: _dequantize) in its order, so the scalar and AVX2
// versions agree with it bit for bit:
//   uniform: s * (float(Q) - Z);   bcq: ((z + c_0) + c_1) + ..., c_i = alpha_i if beta_i else -alpha_i.
struct DequantTile {
  const uint8_t* planes;  // the tile's plane blocks, [kblocks][bits][64]
  const float* coef;      // [ngroups][A][16]: uniform s (A = 1), bcq alpha_i (A = bits)
  const float* zero;      // [ngroups][16]: uniform Z, bcq z
  int64_t k, group_size;
  int bits;
  Scheme scheme;
  void* out;           // k 0, row 0 of the tile
  int64_t out_stride;  // elements between consecutive k
  bool bf16;           // out is bf16 (round to nearest even), else fp32
};
void dequant_tile_scalar(const DequantTile& t);
void dequant_tile_avx2(const DequantTile& t);
// The precise GEMM of one tile (t.out unused): acc[i * 16 + r] += sum_k W[r, k] x[i * x_stride + k] for
// tokens i < n, x in fp32, the weights dequantized one k block at a time as above (AVX2, one token,
// uniform scheme: no dequantized block; the group's scale and zero point apply to its sums of Q x and x).
void precise_tile_scalar(const DequantTile& t, const float* x, int64_t x_stride, int64_t n, float* acc);
void precise_tile_avx2(const DequantTile& t, const float* x, int64_t x_stride, int64_t n, float* acc);

}  // namespace detail
}  // namespace lut
}  // namespace fastops
