// The packed weight of fastops::sparse ("strip bitmap"), shared by host packing, CPU kernels and CUDA
// kernels. A weight W[M, K] (nn.Linear layout) is cut into strips of 16 rows; a strip is a run of
// units of 16 rows x 2 columns, one unit per column pair:
//
//   unit (s, u) covers W[16 s + r, 2 u + j] for r < 16, j < 2; its uint32 mask has bit 2 r + j set
//   when that element is nonzero (!= 0: -0.0 counts as zero and comes back as +0.0).
//
//   masks:         uint32 [S, U]   S = ceil(M / 16) strips, U = Kp / 2 units, Kp = K rounded up to 64
//   values:        dtype  [nnz + 32]  the nonzeros of strip 0 unit 0, unit 1, ..., then strip 1, ...;
//                  inside a unit in mask-bit order (r, j). 32 trailing zeros let a kernel load a whole
//                  unit's worth of values (64 or 128 bytes) past the last nonzero.
//   strip_offsets: int64  [S + 1]  first value of each strip (the last entry is nnz)
//   chunk_offsets: int32  [S, C]   C = Kp / 64: first value of each 64-column chunk (32 units),
//                  relative to its strip's start (so a chunk starts at strip_offsets[s] + chunk_offsets[s, c])
//
// Padding rows (M..16 S) and columns (K..Kp) are zero, so they cost one mask bit and no value.
//
// Why this layout: a unit is exactly what both kernels consume. On the CPU, 16 rows x 2 columns is one
// 512-bit register of bf16 pairs: VPEXPANDW with the mask rebuilds the dense unit and VDPBF16PS
// multiplies it by a broadcast pair of x (fp16 / fp32 expand to two registers of fp32 pairs). On the GPU,
// the m16n8k16 A fragment takes rows {g, g+8} x columns {2t, 2t+1} (+8): lane (g, t) finds its values
// at popcount(mask & ((1 << 2r) - 1)) inside units t and t + 4 of each 16-column step, and one warp
// covers a 64-column chunk with one mask per lane. Bytes: 2 per nonzero (4 for fp32) + 1 bit per element
// + 4 bytes per 1024 elements of offsets: no more than SpInfer's bitmap format (2 B/nnz + E/8 + 20 E/4096),
// half of Tiled-CSL's 4 B/nnz, and smaller than dense bf16 above 6.4% sparsity. No per-tile cap: a fully
// dense unit simply holds 32 values.
#pragma once
#include <cstdint>

#include "common/hd.h"

namespace fastops {
namespace sparse {

constexpr int kStripRows = 16;
constexpr int kUnitCols = 2;
constexpr int kUnitElems = kStripRows * kUnitCols;  // 32: one uint32 mask
constexpr int kChunkCols = 64;
constexpr int kUnitsPerChunk = kChunkCols / kUnitCols;  // 32
constexpr int kValuePad = 32;                           // trailing zero values after the last nonzero

FASTOPS_HD int64_t num_strips(int64_t m) { return (m + kStripRows - 1) / kStripRows; }
FASTOPS_HD int64_t padded_cols(int64_t k) { return (k + kChunkCols - 1) / kChunkCols * kChunkCols; }
FASTOPS_HD int64_t units_per_strip(int64_t k) { return padded_cols(k) / kUnitCols; }
FASTOPS_HD int64_t chunks_per_strip(int64_t k) { return padded_cols(k) / kChunkCols; }

// Mask bit of element (r, j) of a unit, and back.
FASTOPS_HD int unit_bit(int row_in_strip, int col_in_unit) { return row_in_strip * kUnitCols + col_in_unit; }
FASTOPS_HD int bit_row(int bit) { return bit / kUnitCols; }
FASTOPS_HD int bit_col(int bit) { return bit % kUnitCols; }

// Position of element `bit` among the unit's stored values (valid when the bit is set).
FASTOPS_HD int value_rank(uint32_t mask, int bit) {
  return popcount32(bit == 0 ? 0u : mask & (0xffffffffu >> (32 - bit)));
}

// Largest supported K: a strip's values (at most 16 * Kp) must index with int32 chunk offsets.
constexpr int64_t kMaxCols = (int64_t(1) << 31) / kStripRows - kChunkCols;

}  // namespace sparse
}  // namespace fastops
