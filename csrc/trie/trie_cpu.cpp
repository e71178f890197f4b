// Per-step trie operations on the CPU, parallel over rows. Children are token-sorted (trie.h), so the
// mask writes -inf only into the gaps between allowed tokens (nothing is saved or restored), and
// advance is a binary search.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "common/parallel.h"
#include "trie/trie.h"

namespace fastops {
namespace trie {
namespace {

// Rows are written with non-temporal stores once the whole output is clearly larger than the caches:
// they skip the read-for-ownership that plain stores pay, which is half the traffic of a fill.
constexpr int64_t kStreamingBytes = int64_t(8) << 20;

// The allowed children of node_ids[r], in token order, skipping children outside the row's subset.
struct Row {
  const int32_t* tokens = nullptr;
  int64_t first_edge = 0, end_edge = 0;
  const uint8_t* alive = nullptr;  // of this row's mask, or nullptr

  template <class Fn>  // fn(token, child node)
  void for_each_child(Fn&& fn) const {
    for (int64_t e = first_edge; e < end_edge; ++e)
      if (!alive || alive[e + 1]) fn(tokens[e], int32_t(e + 1));
  }
};

Row row_of(const Index& ix, const Subset& s, const int32_t* node_ids, int64_t r) {
  Row row;
  const int32_t u = node_ids[r];
  if (u < 0 || u >= ix.num_nodes) return row;  // dead row (or an unchecked bad id): nothing allowed
  row.alive = s.alive ? s.alive + (r / s.rows_per_mask) * ix.num_nodes : nullptr;
  if (row.alive && !row.alive[u]) return row;
  row.tokens = ix.tokens;
  row.first_edge = ix.indptr[u];
  row.end_edge = ix.indptr[u + 1];
  return row;
}

// Fills p[0 .. n) with `value`; streaming: 16-byte non-temporal stores for the aligned middle.
template <class T>
void fill(T* p, int64_t n, T value, bool streaming) {
#if defined(__SSE2__)
  if (streaming && n * int64_t(sizeof(T)) >= 256) {
    while (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
      *p++ = value;
      --n;
    }
    T lanes[16 / sizeof(T)];
    std::fill(lanes, lanes + 16 / sizeof(T), value);
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(lanes));
    const int64_t vectors = n / int64_t(16 / sizeof(T));
    __m128i* q = reinterpret_cast<__m128i*>(p);
    for (int64_t i = 0; i < vectors; ++i) _mm_stream_si128(q + i, v);
    p += vectors * int64_t(16 / sizeof(T));
    n -= vectors * int64_t(16 / sizeof(T));
  }
#else
  (void)streaming;
#endif
  std::fill(p, p + n, value);
}

template <class T>
void mask_rows(const Index& ix, const Subset& s, const int32_t* node_ids, int64_t rows, T* logits, T neg_inf,
               int64_t vocab, int64_t row_stride, int nthreads) {
  const bool streaming = rows * vocab * int64_t(sizeof(T)) >= kStreamingBytes;
  parallel_for(rows, 1, nthreads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* row = logits + r * row_stride;
      int64_t gap_start = 0;
      row_of(ix, s, node_ids, r).for_each_child([&](int32_t token, int32_t) {
        fill(row + gap_start, token - gap_start, neg_inf, streaming);
        gap_start = token + 1;
      });
      fill(row + gap_start, vocab - gap_start, neg_inf, streaming);
    }
#if defined(__SSE2__)
    if (streaming) _mm_sfence();  // non-temporal stores are weakly ordered: publish before the join
#endif
  });
}

float load(const float* p) { return *p; }
float load(const uint16_t* p, DType dtype) { return dtype == DType::f16 ? half_to_float(*p) : bf16_to_float(*p); }

// Scores in float32 of one logits row, whatever its storage type.
struct LogitsRow {
  const void* base;
  DType dtype;
  float operator[](int64_t t) const {
    return dtype == DType::f32 ? load(static_cast<const float*>(base) + t)
                               : load(static_cast<const uint16_t*>(base) + t, dtype);
  }
};

// log(sum(exp(row))), shifted by the row maximum.
float logsumexp(const LogitsRow& row, int64_t vocab) {
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < vocab; ++t) top = std::max(top, row[t]);
  if (std::isinf(top)) return top;
  double sum = 0;
  for (int64_t t = 0; t < vocab; ++t) sum += std::exp(row[t] - top);
  return top + float(std::log(sum));
}

// Top-k by insertion into a sorted array of k entries (k is a beam width, so small). Visiting children
// in token order and replacing only on a strictly better score keeps the smaller token first on ties.
// NaN ranks like -inf.
struct TopK {
  float* scores;
  int32_t* tokens;
  int32_t* next;
  int64_t k, size = 0;

  static float rank(float s) { return std::isnan(s) ? -std::numeric_limits<float>::infinity() : s; }

  void offer(float score, int32_t token, int32_t child) {
    int64_t pos = size < k ? size++ : k;
    if (pos == k && !(rank(score) > rank(scores[k - 1]))) return;
    if (pos == k) pos = k - 1;
    while (pos > 0 && rank(score) > rank(scores[pos - 1])) {
      scores[pos] = scores[pos - 1];
      tokens[pos] = tokens[pos - 1];
      next[pos] = next[pos - 1];
      --pos;
    }
    scores[pos] = score;
    tokens[pos] = token;
    next[pos] = child;
  }

  void pad() {
    for (int64_t i = size; i < k; ++i) {
      scores[i] = -std::numeric_limits<float>::infinity();
      tokens[i] = -1;
      next[i] = -1;
    }
  }
};

int64_t element_size(DType dtype) { return dtype == DType::f32 ? 4 : 2; }

}  // namespace

void mask_cpu(const Index& ix, const Subset& s, const int32_t* node_ids, int64_t rows, void* logits, DType dtype,
              int64_t vocab, int64_t row_stride, int nthreads) {
  if (dtype == DType::f32)
    mask_rows(ix, s, node_ids, rows, static_cast<uint32_t*>(logits), uint32_t(0xff800000u), vocab, row_stride,
              nthreads);
  else
    mask_rows(ix, s, node_ids, rows, static_cast<uint16_t*>(logits),
              uint16_t(dtype == DType::f16 ? 0xfc00u : 0xff80u), vocab, row_stride, nthreads);
}

void bitmask_cpu(const Index& ix, const Subset& s, const int32_t* node_ids, int64_t rows, int64_t vocab,
                 int32_t* out, int nthreads) {
  const int64_t words = (vocab + 31) / 32;
  parallel_for(rows, 64, nthreads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      uint32_t* bits = reinterpret_cast<uint32_t*>(out + r * words);
      std::fill(bits, bits + words, 0u);
      row_of(ix, s, node_ids, r).for_each_child([&](int32_t token, int32_t) {
        if (token < vocab) bits[token >> 5] |= uint32_t(1) << (token & 31);
      });
    }
  });
}

void candidates_cpu(const Index& ix, const Subset& s, const int32_t* node_ids, int64_t rows, const void* logits,
                    DType dtype, int64_t vocab, int64_t row_stride, bool log_softmax, int64_t k, float* scores,
                    int32_t* tokens, int32_t* next_nodes, int nthreads) {
  const int64_t esize = element_size(dtype);
  parallel_for(rows, 16, nthreads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const LogitsRow row{static_cast<const char*>(logits) + r * row_stride * esize, dtype};
      TopK top{scores + r * k, tokens + r * k, next_nodes + r * k, k};
      const Row children = row_of(ix, s, node_ids, r);
      if (k > 0 && children.first_edge < children.end_edge) {
        const float shift = log_softmax ? logsumexp(row, vocab) : 0.0f;
        children.for_each_child([&](int32_t token, int32_t child) {
          if (token < vocab) top.offer(row[token] - shift, token, child);
        });
      }
      top.pad();
    }
  });
}

void advance_cpu(const Index& ix, const Subset& s, const int32_t* node_ids, const int32_t* tokens, int64_t rows,
                 int32_t* next_nodes, int nthreads) {
  parallel_for(rows, 4096, nthreads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const Row row = row_of(ix, s, node_ids, r);
      const int32_t* begin = ix.tokens + row.first_edge;
      const int32_t* end = ix.tokens + row.end_edge;
      const int32_t* hit = std::lower_bound(begin, end, tokens[r]);
      const int64_t edge = hit - ix.tokens;
      const bool legal = hit != end && *hit == tokens[r] && (!row.alive || row.alive[edge + 1]);
      next_nodes[r] = legal ? int32_t(edge + 1) : -1;
    }
  });
}

}  // namespace trie
}  // namespace fastops
