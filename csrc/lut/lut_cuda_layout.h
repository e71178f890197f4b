// Index math of the CUDA lut_gemm kernels (lut_cuda.cu): thread ownership, table layout, plane-bit
// extraction, mma fragment ownership and the split-K partition. Everything is a small FASTOPS_HD
// function so the same code is checked on the CPU by lut_cuda_layout_test.cpp.
#pragma once
#include <cstdint>

#include "common/hd.h"
#include "lut/lut_format.h"

namespace fastops {
namespace lut {
namespace cuda_layout {

// PTX prmt / __byte_perm (default mode): byte i of the result is byte (sel >> 4i) & 7 of {hi:lo}.
FASTOPS_HD uint32_t byte_perm(uint32_t lo, uint32_t hi, uint32_t sel) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(lo, hi, sel);
#else
  uint64_t v = (uint64_t(hi) << 32) | lo;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= uint32_t((v >> (8 * ((sel >> (4 * i)) & 7))) & 0xffu) << (8 * i);
  return r;
#endif
}

// ---------------------------------------------------------------------------------------------------
// Split-K: k blocks [0, kblocks) are cut into `splits` slices of `per_split` blocks (the last may be
// shorter, none is empty).
struct SplitK {
  int64_t splits;
  int64_t per_split;
};
// `want` slices at most, each at most `max_per_split` blocks long.
FASTOPS_HD SplitK make_split_k(int64_t kblocks, int64_t want, int64_t max_per_split) {
  if (want < 1) want = 1;
  if (want > kblocks) want = kblocks;
  int64_t per = (kblocks + want - 1) / want;
  if (per > max_per_split) per = max_per_split;
  if (per < 1) per = 1;
  SplitK s;
  s.per_split = per;
  s.splits = (kblocks + per - 1) / per;
  return s;
}
FASTOPS_HD int64_t split_begin(const SplitK& s, int64_t split) { return split * s.per_split; }
FASTOPS_HD int64_t split_end(const SplitK& s, int64_t split, int64_t kblocks) {
  int64_t e = (split + 1) * s.per_split;
  return e < kblocks ? e : kblocks;
}

// ---------------------------------------------------------------------------------------------------
// LUT kernel (small N). Two threads share a row tile: thread `pair` (0 or 1) of the tile owns the 16-byte
// lanes pair and pair + 2 of every plane block, i.e. chunks {pair, pair + 4} and {pair + 2, pair + 6}.
// Each thread accumulates all 16 rows of its tile; the pair is summed with one shuffle at the end.
constexpr int kLutThreadsPerTile = 2;
constexpr int kLutLanesPerThread = 2;
constexpr int kLutMaxThreads = 256;
constexpr int kLutMaxSliceKb = 16;  // k blocks per split whose tables sit in shared memory
constexpr int kLutTableEntries = 16;
// One k block's tables for one token: 8 chunks x 16 fp32 entries = 512 bytes, chunk-major.
constexpr int kLutKbTableBytes = kChunk * 2 * kLutTableEntries * 4;
constexpr int kLutTokenTableBytes = kLutMaxSliceKb * kLutKbTableBytes;

FASTOPS_HD int lut_thread_tile(int tid) { return tid / kLutThreadsPerTile; }
FASTOPS_HD int lut_thread_pair(int tid) { return tid % kLutThreadsPerTile; }
// 16-byte lane (0..3) of a plane block read by `pair` in its slot 0 or 1. Both threads of a pair
// read the same slot at the same time, so each load instruction covers 32 contiguous bytes per tile.
FASTOPS_HD int lut_lane(int pair, int slot) { return pair + 2 * slot; }
// Chunk (0..7) looked up through the low (hi = 0) or high (hi = 1) nibbles of a lane (lut_format.h).
FASTOPS_HD int lut_chunk(int lane, int hi) { return lane + 4 * hi; }
// Byte offset of entry `entry` of chunk `chunk` within a k block's 512-byte table. Chunk c lives in
// banks 16 (c % 2) .. 16 (c % 2) + 15: at any lookup the two pairs read chunks c and c + 1 (same slot,
// same nibble), which fall in disjoint bank halves, and a chunk's 16 entries are 16 distinct banks,
// so a warp's lookup is conflict-free (equal addresses broadcast).
FASTOPS_HD uint32_t lut_entry_byte(int chunk, int entry) {
  return uint32_t(chunk * kLutTableEntries + entry) * 4u;
}
FASTOPS_HD int smem_bank(uint32_t byte_offset) { return int((byte_offset / 4) % 32); }

// The four nibbles (low or high) of a 32-bit plane word (4 rows of one lane), turned into the low
// bytes of table byte offsets: byte b of the result = lut_entry_byte(chunk, nibble of row b) mod 256.
// The chunk's multiple of 256 (the high half, chunks 4..7) goes into the base instead.
FASTOPS_HD uint32_t lut_offset_bytes(uint32_t plane_word, int lane, int hi) {
  uint32_t idx4 = (hi ? (plane_word >> 2) : (plane_word << 2)) & 0x3c3c3c3cu;  // nibble * 4
  return idx4 | (0x40404040u * uint32_t(lane));                               // + 64 * lane
}
// Full byte offset for row b (0..3) of the word: `kb_base` is 256-aligned (k block table start, +256 for
// the high nibbles), so one byte_perm splices the row's byte under it.
FASTOPS_HD uint32_t lut_table_offset(uint32_t offset_bytes, uint32_t kb_base, int b) {
  return byte_perm(offset_bytes, kb_base, 0x7650u | uint32_t(b));
}
FASTOPS_HD uint32_t lut_kb_base(int kb_local, int hi) {
  return uint32_t(kb_local) * kLutKbTableBytes + uint32_t(hi) * 256u;
}

// Table entry: T(c) = sum_j (2 bit_j(c) - 1) x_j. Built for c >= 8 and mirrored (T(c ^ 15) = -T(c)),
// so the table is exactly antisymmetric.
FASTOPS_HD float lut_table_entry(int c, const float x[4]) {
  float t = 0.f;
  for (int j = 0; j < 4; ++j) t += ((c >> j) & 1) ? x[j] : -x[j];
  return t;
}

// ---------------------------------------------------------------------------------------------------
// Plane bits -> codes (dequantization). `gather` packs the same byte of the q plane blocks of one
// (row, lane) into one word, plane i in byte i (planes >= q are 0). Bit p of that byte is k = 4u + j with
// u = lane + 4 (p / 4), j = p % 4 (lut_format.h).
FASTOPS_HD uint32_t gather_plane_bytes(const uint8_t* bytes, int bits) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i)
    if (i < bits) v |= uint32_t(bytes[i]) << (8 * i);
  return v;
}
// Code Q = sum_i 2^i bit_p(plane i) left in bits 24..27 (bits 28..31 zero): the multiply moves bit 8i
// to bit 24 + i; the other partial products land in bits 3..19 without carries or above bit 31.
FASTOPS_HD uint32_t code_in_top_byte(uint32_t gathered, int p) {
  return ((gathered >> p) & 0x01010101u) * 0x01020408u;
}
FASTOPS_HD uint32_t code_at(uint32_t gathered, int p) { return code_in_top_byte(gathered, p) >> 24; }
// The same code as the bits of the float 2^23 + Q (one prmt instead of a shift and an I2F).
FASTOPS_HD uint32_t code_as_magic_float_bits(uint32_t gathered, int p) {
  return byte_perm(code_in_top_byte(gathered, p), 0x4b000000u, 0x7543u);
}
// k within the 32-wide block of nibble bit p (0..7) of lane `lane`.
FASTOPS_HD int nibble_bit_k(int lane, int p) { return 4 * (lane + 4 * (p / 4)) + p % 4; }

// ---------------------------------------------------------------------------------------------------
// Tensor-core kernel: CTA tile 128 rows (8 row tiles) x BN tokens x 32 k (one k block), 8 warps as
// 4 (rows, 32 each) x 2 (tokens, BN / 2 each), mma.sync.m16n8k16 with fp32 accumulators.
constexpr int kMmaThreads = 256;
constexpr int kMmaBlockM = 128;
constexpr int kMmaTilesPerCta = kMmaBlockM / kTileRows;
constexpr int kMmaWarpsM = 4;
constexpr int kMmaWarpM = kMmaBlockM / kMmaWarpsM;  // 32 rows: two m16 tiles
constexpr int kMmaStages = 3;
// Shared tiles are row-major with 32 k (64 bytes) plus 16 bytes of padding: rows 80 bytes apart put the
// 8 rows of an ldmatrix 8x8 matrix in 8 distinct 4-bank groups.
constexpr int kSmemRowHalves = kBlockK + 8;
constexpr int kPlaneTileBytes = 4 * kBlockBytes;  // shared slot per row tile: up to 4 planes

// Dequantization work item (512 per k block, 2 per thread): one (row tile, lane, row) = 8 weights.
// Rows vary fastest within 8, then the lane bit 0: a half warp's 8-byte stores of one k group then
// cover 32 distinct banks.
struct DequantItem {
  int tile, lane, row;
};
FASTOPS_HD DequantItem dequant_item(int item) {
  DequantItem d;
  d.row = (item % 8) + 8 * ((item / 32) % 2);
  d.lane = ((item / 8) % 4);
  d.tile = item / 64;
  return d;
}
constexpr int kDequantItems = kMmaTilesPerCta * kTileRows * 4;
// Half offset in the dequantized tile of (row, k).
FASTOPS_HD int wtile_offset(int row, int k) { return row * kSmemRowHalves + k; }

// ldmatrix.x4 row address for the A operand (16 x 16, row-major [m][k]): lanes 0-15 give rows 0-15 at
// k 0, lanes 16-31 rows 0-15 at k 8; registers come out as a0a1, a2a3, a4a5, a6a7.
FASTOPS_HD int ldsm_a_row(int lane) { return lane % 16; }
FASTOPS_HD int ldsm_a_k(int lane) { return (lane / 16) * 8; }
// ldmatrix.x4 row address for two B operands (k16 x n8 each, stored [n][k]): matrices are
// (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15) -> b0, b1 of n-tile 0 and 1.
FASTOPS_HD int ldsm_b_n(int lane) { return lane % 8 + (lane / 16) * 8; }
FASTOPS_HD int ldsm_b_k(int lane) { return ((lane / 8) % 2) * 8; }
// ldmatrix (non-transposed) delivers to lane l, from matrix r, the elements (row l / 4, cols 2 (l % 4)
// and + 1) of that 8x8 matrix.
FASTOPS_HD int ldsm_elem_row(int lane) { return lane / 4; }
FASTOPS_HD int ldsm_elem_col(int lane, int e) { return 2 * (lane % 4) + e; }

// mma.m16n8k16 fragments (PTX ISA): A element e (0..7) of lane l, B element e (0..3), C element e (0..3).
FASTOPS_HD int mma_a_row(int lane, int e) { return lane / 4 + 8 * ((e / 2) % 2); }
FASTOPS_HD int mma_a_k(int lane, int e) { return 2 * (lane % 4) + e % 2 + 8 * (e / 4); }
FASTOPS_HD int mma_b_k(int lane, int e) { return 2 * (lane % 4) + e % 2 + 8 * (e / 2); }
FASTOPS_HD int mma_b_n(int lane) { return lane / 4; }
FASTOPS_HD int mma_c_row(int lane, int e) { return lane / 4 + 8 * (e / 2); }
FASTOPS_HD int mma_c_col(int lane, int e) { return 2 * (lane % 4) + e % 2; }

}  // namespace cuda_layout
}  // namespace lut
}  // namespace fastops
