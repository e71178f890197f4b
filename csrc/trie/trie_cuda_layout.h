// Index math of the CUDA trie kernels (trie_cuda.cu): child ranges with bad-id handling, the split of a
// strided row into 16-byte vectors plus scalar head/tail, per-CTA row chunks, shared-bitmap positions,
// the warp merge network of top-k keys, and the logsumexp accumulator. Everything is a small FASTOPS_HD
// function so the same code is checked on the CPU by trie_cuda_layout_test.cpp.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/hd.h"
#include "trie/topk_key.h"

namespace fastops {
namespace trie {
namespace cuda_layout {

constexpr int kVecBytes = 16;

// ---------------------------------------------------------------------------------------------------
// Children. Edges [begin, end) of node `node`; empty for an id outside [0, num_nodes) (-1 = "no node"),
// and clamped to the edge array [0, num_nodes - 1) so a corrupt indptr never reads out of bounds.
struct EdgeRange {
  int64_t begin, end;
};
FASTOPS_HD EdgeRange child_edges(const int32_t* indptr, int64_t num_nodes, int64_t node) {
  EdgeRange r{0, 0};
  if (node < 0 || node >= num_nodes) return r;
  int64_t b = indptr[node], e = indptr[node + 1];
  if (b < 0) b = 0;
  if (e > num_nodes - 1) e = num_nodes - 1;
  if (e < b) e = b;
  r.begin = b;
  r.end = e;
  return r;
}

// First edge in [begin, end) whose token is >= value (tokens ascend within a node).
FASTOPS_HD int64_t lower_bound_token(const int32_t* tokens, int64_t begin, int64_t end, int64_t value) {
  while (begin < end) {
    const int64_t mid = begin + (end - begin) / 2;
    if (tokens[mid] < value) begin = mid + 1;
    else end = mid;
  }
  return begin;
}

// Edges of `edges` whose tokens lie in [tok_lo, tok_hi). Two endpoint reads reject the common case of a
// node whose tokens all lie outside the range before any binary search.
FASTOPS_HD EdgeRange edges_with_tokens_in(const int32_t* tokens, EdgeRange edges, int64_t tok_lo, int64_t tok_hi) {
  EdgeRange r{edges.begin, edges.begin};
  if (edges.begin >= edges.end || tok_lo >= tok_hi || tokens[edges.end - 1] < tok_lo || tokens[edges.begin] >= tok_hi)
    return r;
  r.begin = lower_bound_token(tokens, edges.begin, edges.end, tok_lo);
  r.end = lower_bound_token(tokens, r.begin, edges.end, tok_hi);
  return r;
}

// Subset filter: the alive row of row r (nullptr = everything alive), and whether edge e's child is alive.
FASTOPS_HD const uint8_t* alive_row(const uint8_t* alive, int64_t rows_per_mask, int64_t num_nodes, int64_t r) {
  return alive ? alive + (r / rows_per_mask) * num_nodes : nullptr;
}
FASTOPS_HD bool edge_alive(const uint8_t* alive_row, int64_t e) { return !alive_row || alive_row[e + 1] != 0; }

// ---------------------------------------------------------------------------------------------------
// Strided rows. A row of n units (elements, or bitmask words) of `unit_bytes` starting at address `addr`
// (a multiple of unit_bytes) is written as `head` scalar units up to the first 16-byte boundary, then
// 16-byte vectors, then a scalar tail.
FASTOPS_HD int64_t head_units(uint64_t addr, int unit_bytes, int64_t n) {
  const int64_t head = int64_t((kVecBytes - addr % kVecBytes) % kVecBytes) / unit_bytes;
  return head < n ? head : n;
}

// A row is cut into chunks of `chunk_units` (a multiple of the vector width) counted from the first
// aligned unit: chunk c owns units [begin, end), where [begin, aligned) is the scalar head (chunk 0 only),
// vectors start at `aligned` and the last chunk ends with the scalar tail.
struct RowChunk {
  int64_t begin, aligned, end;
};
// Chunks of a row with this head; at least 1, and at most max_row_chunks(n, chunk_units) for any head.
FASTOPS_HD int64_t row_chunks(int64_t n, int64_t head, int64_t chunk_units) {
  const int64_t body = n - head;
  return body > chunk_units ? (body + chunk_units - 1) / chunk_units : 1;
}
FASTOPS_HD int64_t max_row_chunks(int64_t n, int64_t chunk_units) { return row_chunks(n, 0, chunk_units); }
// Chunk c of the row (empty, begin == end == n, past the row's last chunk).
FASTOPS_HD RowChunk row_chunk(int64_t n, int64_t head, int64_t chunk_units, int64_t c) {
  RowChunk ch{n, n, n};
  if (c >= row_chunks(n, head, chunk_units)) return ch;
  ch.aligned = head + c * chunk_units;
  ch.begin = c == 0 ? 0 : ch.aligned;
  ch.end = ch.aligned + chunk_units < n ? ch.aligned + chunk_units : n;
  return ch;
}
// The whole row as one chunk (row-wide reductions).
FASTOPS_HD RowChunk whole_row(int64_t n, int64_t head) { return RowChunk{0, head, n}; }
FASTOPS_HD int64_t chunk_vectors(const RowChunk& ch, int vec_units) { return (ch.end - ch.aligned) / vec_units; }
// Scalar units of the chunk: the head, then the tail after the vectors.
FASTOPS_HD int64_t chunk_scalars(const RowChunk& ch, int vec_units) {
  return (ch.aligned - ch.begin) + (ch.end - ch.aligned) % vec_units;
}
FASTOPS_HD int64_t chunk_scalar_unit(const RowChunk& ch, int vec_units, int64_t i) {
  const int64_t head = ch.aligned - ch.begin;
  return i < head ? ch.begin + i : ch.aligned + chunk_vectors(ch, vec_units) * vec_units + (i - head);
}

// ---------------------------------------------------------------------------------------------------
// Shared bitmaps: bit (t - origin) is set for each allowed token t of the chunk; word w holds bits 32 w ..
// 32 w + 31 (bit b of a word = bit position 32 w + b).
// Mask kernel (one bit per element): origin = aligned - 32, so the head lands in word 0 and every vector's
// bits (32 + j * vec_units ...) stay inside one word.
constexpr int kMaskBitmapPadBits = 32;
FASTOPS_HD int64_t mask_bitmap_origin(const RowChunk& ch) { return ch.aligned - kMaskBitmapPadBits; }
FASTOPS_HD constexpr int mask_bitmap_words(int64_t chunk_units) { return int((kMaskBitmapPadBits + chunk_units + 31) / 32); }
// The vec_units keep bits of vector j (bit i = element aligned + j * vec_units + i).
FASTOPS_HD uint32_t mask_vector_bits(const uint32_t* bitmap, int64_t j, int vec_units) {
  const int64_t bit = kMaskBitmapPadBits + j * vec_units;
  return (bitmap[bit / 32] >> (bit % 32)) & ((1u << vec_units) - 1u);
}
FASTOPS_HD bool bitmap_bit(const uint32_t* bitmap, int64_t bit) { return (bitmap[bit / 32] >> (bit % 32)) & 1u; }
// Word w (0..3) of a 16-byte vector: which bits to keep from the original, given the vector's keep bits
// (little-endian: element 2w is the low half of word w for 2-byte elements).
FASTOPS_HD uint32_t keep_word_mask(uint32_t keep_bits, int w, int elem_bytes) {
  if (elem_bytes == 4) return ((keep_bits >> w) & 1u) ? 0xffffffffu : 0u;
  return (((keep_bits >> (2 * w)) & 1u) ? 0x0000ffffu : 0u) | (((keep_bits >> (2 * w + 1)) & 1u) ? 0xffff0000u : 0u);
}
// Bitmask kernel (one word per unit): origin = 32 (aligned - 4), so unit w is shared word w - aligned + 4
// and every vector is a 16-byte aligned group of shared words.
constexpr int kBitmaskPadWords = 4;
FASTOPS_HD int64_t bitmask_bitmap_origin(const RowChunk& ch) { return 32 * (ch.aligned - kBitmaskPadWords); }
FASTOPS_HD int64_t bitmask_shared_word(const RowChunk& ch, int64_t unit) { return unit - ch.aligned + kBitmaskPadWords; }

// ---------------------------------------------------------------------------------------------------
// Top-k keys: trie/topk_key.h (shared with the CPU kernel).

// Entries of the descending array a[0 .. n) strictly greater than v (binary search): the merge rank offset.
FASTOPS_HD int count_greater(const uint64_t* a, int n, uint64_t v) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (a[mid] > v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Bitonic sort of 32 keys, one per lane, into descending lane order: at step (size, stride) lane l
// exchanges with l ^ stride and keeps the larger key when this returns true.
FASTOPS_HD bool bitonic_keeps_max(int lane, int size, int stride) {
  const bool descending_run = (lane & size) == 0;
  const bool lower = (lane & stride) == 0;
  return lower == descending_run;
}

// ---------------------------------------------------------------------------------------------------
// Logsumexp: running (max, sum of exp(x - max)); infinite max contributes nothing to the sum.
FASTOPS_HD float lse_exp(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  return std::exp(x);
#endif
}
struct LseAcc {
  float m = -INFINITY, s = 0.f;
  FASTOPS_HD void add(const float* x, int n) {
    float vmax = m;
    for (int i = 0; i < n; ++i) vmax = fmaxf(vmax, x[i]);
    if (vmax > m) {
      s = m == -INFINITY ? 0.f : s * lse_exp(m - vmax);
      m = vmax;
    }
    if (m == -INFINITY || m == INFINITY) return;
    for (int i = 0; i < n; ++i) s += lse_exp(x[i] - m);
  }
  FASTOPS_HD void merge(float om, float os) {
    if (om == -INFINITY) return;
    if (m == -INFINITY) {
      m = om, s = os;
      return;
    }
    const float nm = fmaxf(m, om);
    if (nm == INFINITY) {
      m = nm;
      return;
    }
    s = s * lse_exp(m - nm) + os * lse_exp(om - nm);
    m = nm;
  }
  FASTOPS_HD float value() const { return (m == -INFINITY || m == INFINITY) ? m : m + logf(s); }
};

}  // namespace cuda_layout
}  // namespace trie
}  // namespace fastops
