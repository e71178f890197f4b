// The packed LUT weight format ("tile16", version 1), shared by the CPU and CUDA kernels and by the
// Python packer (python/fastops/lut.py mirrors these functions; tests check both agree).
//
// Weights W[M, K] are q bit planes beta_i[m, k] in {0, 1} (i < q) plus per-group parameters:
//   uniform (asym, sym, ternary):  w = s[G, m] * (Q - Z[G, m]),  Q = sum_i 2^i beta_i
//   bcq:                            w = sum_i alpha[G, i, m] * (2 beta_i - 1) + z[G, m]
// with G = k / group_size. Both are evaluated the LUT way (LUT-GEMM / T-MAC):
//   y[n, m] = sum_G  coef_i * C_i,G  + offset * S_G
//   C_i,G  = sum over 4-wide chunks t in G of T_t(idx_i,t),   T_t(c) = sum_j (2 bit_j(c) - 1) x[n, 4t + j]
//   S_G    = sum_{k in G} x[n, k]
//   uniform: coef_i = s * 2^(i-1), offset = s * ((2^q - 1) / 2 - Z);   bcq: coef_i = alpha_i, offset = z.
//
// planes: uint8 [Mt][Kb][q][64], Mt = ceil(M / 16) row tiles, Kb = ceil(K / 32) k blocks.
//   One 64-byte block holds one plane of a 16-row x 32-k tile. Inside it, k = 4u + j (u = chunk 0..7,
//   j = bit 0..3); chunk u sits in 16-byte lane (u % 4), nibble (u / 4) (0 = low, 1 = high), at byte
//   lane * 16 + row. The nibble is idx = sum_j beta[row, 4u + j] << j.
//   (So a 16-byte lane is one vpshufb table's worth of lookups: 16 rows, one chunk per nibble.)
//   Padding rows (m >= M) and padding k (k >= K) have beta = 0; kernels treat x[k >= K] as 0, so
//   padding contributes nothing.
// scales: fp16 [ngroups][A][Mp], Mp = 16 * Mt, A = 1 (uniform: s) or q (bcq: alpha_i). Padding rows 0.
// zeros:  fp16 [ngroups][Mp]: uniform: zero point Z in code units (may be fractional); bcq: offset z.
// ngroups = ceil(K / group_size); group_size is a positive multiple of 32, so no k block straddles groups.
#pragma once
#include <cstdint>

#include "common/hd.h"

namespace fastops {
namespace lut {

constexpr int kTileRows = 16;
constexpr int kBlockK = 32;
constexpr int kChunk = 4;  // activations per table (mu)
constexpr int kBlockBytes = 64;
constexpr int kGroupMultiple = 32;

enum class Scheme : int { uniform = 0, bcq = 1 };

FASTOPS_HD int64_t row_tiles(int64_t m) { return (m + kTileRows - 1) / kTileRows; }
FASTOPS_HD int64_t k_blocks(int64_t k) { return (k + kBlockK - 1) / kBlockK; }
FASTOPS_HD int64_t num_groups(int64_t k, int64_t group_size) { return (k + group_size - 1) / group_size; }
FASTOPS_HD int64_t planes_bytes(int64_t m, int64_t k, int bits) {
  return row_tiles(m) * k_blocks(k) * bits * kBlockBytes;
}

// Offset of the 64-byte block holding plane `plane` of row tile `tile`, k block `kb`.
FASTOPS_HD int64_t block_offset(int64_t tile, int64_t kb, int plane, int64_t kblocks, int bits) {
  return ((tile * kblocks + kb) * bits + plane) * kBlockBytes;
}

// Where the bit for weight (m, k) of one plane lives: byte offset within the plane's 64-byte block
// and the bit position within that byte.
struct BitPos {
  int byte;
  int bit;
};
FASTOPS_HD BitPos bit_position(int64_t m, int64_t k) {
  int row = int(m % kTileRows);
  int kk = int(k % kBlockK);
  int u = kk / kChunk, j = kk % kChunk;
  BitPos p;
  p.byte = (u % 4) * 16 + row;
  p.bit = (u / 4) * 4 + j;
  return p;
}

// Per-plane coefficient of the uniform scheme: s * 2^(i-1).
FASTOPS_HD float uniform_plane_coef(float s, int plane) { return s * float(1 << plane) * 0.5f; }
// Coefficient of S_G (the group sum of x) in the uniform scheme: s * ((2^q - 1)/2 - Z).
FASTOPS_HD float uniform_offset(float s, float z, int bits) {
  return s * (float((1 << bits) - 1) * 0.5f - z);
}

}  // namespace lut
}  // namespace fastops
