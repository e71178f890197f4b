// Per-step trie operations on the CPU, parallel over rows. Children are token-sorted (trie.h). The mask
// collects a row's allowed tokens as bits, then rewrites the row line by line (nothing is saved or
// restored); candidates' log-softmax sums exponentials with the SIMD kernel of the active ISA;
// advance is a binary search.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "common/cpu_features.h"
#include "common/parallel.h"
#include "trie/trie.h"
#include "trie/topk_key.h"
#include "trie/trie_cpu_kernels.h"

namespace fastops {
namespace trie {
namespace {

// Lines without an allowed token are written with non-temporal stores once the whole output is clearly
// larger than a server's last-level cache: they skip the read-for-ownership that plain stores pay, half
// the traffic of a fill. Below that, plain stores measured faster (a 21 MB mask on a 32 MB L3: 2x).
constexpr int64_t kStreamingBytes = int64_t(64) << 20;
// Rows are rewritten in whole cache lines: a partial line written non-temporally costs a
// read-modify-write in the memory controller, slower than a plain store.
constexpr int64_t kLineBytes = 64;

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

// One row's allowed tokens as bits (bit t of byte t / 8), with 8 spare bytes so that any 32 bits can be
// read with one unaligned 64-bit load.
class TokenBits {
 public:
  explicit TokenBits(int64_t vocab) : bytes_(size_t(vocab + 7) / 8 + 8, 0) {}
  void set(int32_t t) { bytes_[size_t(t) >> 3] |= uint8_t(1u << (t & 7)); }
  void clear() { std::fill(bytes_.begin(), bytes_.end(), uint8_t(0)); }
  bool test(int64_t t) const { return (bytes_[size_t(t) >> 3] >> (t & 7)) & 1; }
  // Bits t .. t + count - 1 (count <= 32) as the low bits of the result.
  uint32_t range(int64_t t, int count) const {
    uint64_t word;
    std::memcpy(&word, &bytes_[size_t(t) >> 3], sizeof(word));
    return uint32_t((word >> (t & 7)) & ((uint64_t(1) << count) - 1));
  }

 private:
  std::vector<uint8_t> bytes_;
};

#if defined(__SSE2__)
// All-ones in the lanes of a 16-byte vector whose bit in `bits` is set (lane i <-> bit i).
__m128i lane_mask(uint32_t bits, uint32_t) {
  const __m128i tag = _mm_setr_epi32(1, 2, 4, 8);
  return _mm_cmpeq_epi32(_mm_and_si128(_mm_set1_epi32(int(bits)), tag), tag);
}
__m128i lane_mask(uint32_t bits, uint16_t) {
  const __m128i tag = _mm_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm_cmpeq_epi16(_mm_and_si128(_mm_set1_epi16(short(bits)), tag), tag);
}
#endif

// Rewrites the 64-byte-aligned line p[0 .. kLineBytes / sizeof(T)): element i keeps its value when bit i
// of `allowed` is set, else becomes neg_inf. The line is read only if something in it is kept, and
// then written with plain stores: a non-temporal store to a cached line first has to evict it.
template <class T>
void mask_line(T* p, uint32_t allowed, T neg_inf, bool streaming) {
  constexpr int kPerLine = int(kLineBytes / sizeof(T));
  if (allowed == uint32_t((uint64_t(1) << kPerLine) - 1)) return;  // nothing to change
#if defined(__SSE2__)
  constexpr int kPerVector = int(16 / sizeof(T));
  const __m128i fill = sizeof(T) == 4 ? _mm_set1_epi32(int(neg_inf)) : _mm_set1_epi16(short(neg_inf));
  __m128i* q = reinterpret_cast<__m128i*>(p);
  if (allowed == 0) {
    for (int v = 0; v < kPerLine / kPerVector; ++v) {
      if (streaming)
        _mm_stream_si128(q + v, fill);
      else
        _mm_store_si128(q + v, fill);
    }
    return;
  }
  for (int v = 0; v < kPerLine / kPerVector; ++v) {
    const __m128i keep = lane_mask((allowed >> (v * kPerVector)) & ((1u << kPerVector) - 1), T());
    _mm_store_si128(q + v, _mm_or_si128(_mm_and_si128(keep, _mm_load_si128(q + v)), _mm_andnot_si128(keep, fill)));
  }
#else
  (void)streaming;
  for (int i = 0; i < kPerLine; ++i)
    if (!((allowed >> i) & 1)) p[i] = neg_inf;
#endif
}

template <class T>
void mask_rows(const Index& ix, const Subset& s, const int32_t* node_ids, int64_t rows, T* logits, T neg_inf,
               int64_t vocab, int64_t row_stride, int nthreads) {
  constexpr int kPerLine = int(kLineBytes / sizeof(T));
  const bool streaming = rows * vocab * int64_t(sizeof(T)) >= kStreamingBytes;
  parallel_for(rows, 8, nthreads, [&](int64_t r0, int64_t r1) {
    TokenBits allowed(vocab);
    for (int64_t r = r0; r < r1; ++r) {
      T* row = logits + r * row_stride;
      allowed.clear();
      row_of(ix, s, node_ids, r).for_each_child([&](int32_t token, int32_t) {
        if (token < vocab) allowed.set(token);
      });
      // Unaligned head and tail element by element, the lines between whole.
      const int64_t misalign = int64_t(reinterpret_cast<uintptr_t>(row) % kLineBytes) / int64_t(sizeof(T));
      const int64_t head = std::min(vocab, misalign == 0 ? 0 : kPerLine - misalign);
      const int64_t body_end = head + (vocab - head) / kPerLine * kPerLine;
      for (int64_t t = 0; t < head; ++t)
        if (!allowed.test(t)) row[t] = neg_inf;
      for (int64_t t = head; t < body_end; t += kPerLine)
        mask_line(row + t, allowed.range(t, kPerLine), neg_inf, streaming);
      for (int64_t t = body_end; t < vocab; ++t)
        if (!allowed.test(t)) row[t] = neg_inf;
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

// exp(d) for d <= 0 (NaN stays NaN), the portable twin of the AVX2 version (trie_cpu_kernels.h). Rounds
// with the 1.5 * 2^23 trick and builds 2^n from the bits of n + magic: no libm, no float -> int
// conversion, so the compiler can vectorize the blocks of calls below.
float exp_nonpositive(float d) {
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds |v| < 2^22 to an integer
  d = d < detail::kExpMinArg ? detail::kExpMinArg : d;
  const float n = (d * detail::kLog2e + kRound) - kRound;
  const float r = (d - n * detail::kLn2Hi) - n * detail::kLn2Lo;
  float q = detail::kExpPoly[5];
  for (int c = 4; c >= 0; --c) q = q * r + detail::kExpPoly[c];
  const float p = (q * (r * r) + r) + 1.0f;
  // The low mantissa bits of n + 127 + kRound hold n + 127: shifted into the exponent field, 2^n.
  const uint32_t scale_bits = float_to_bits(n + (kRound + 127.0f)) << 23;
  return p * bits_to_float(scale_bits);
}

}  // namespace

namespace detail {
ExpSum exp_sum_scalar(const void* row_base, DType dtype, int64_t vocab) {
  const LogitsRow row{row_base, dtype};
  ExpSum out{-std::numeric_limits<float>::infinity(), 0.0};
  for (int64_t t = 0; t < vocab; ++t) out.max = std::max(out.max, row[t]);  // skips NaN
  if (std::isinf(out.max)) return out;
  constexpr int kLanes = 8;  // independent partial sums the compiler can keep in vector registers
  for (int64_t block = 0; block < vocab; block += kSumBlock) {
    const int64_t block_end = std::min(vocab, block + kSumBlock);
    float lanes[kLanes] = {};
    for (int64_t t = block; t < block_end; t += kLanes) {
      float d[kLanes];
      for (int j = 0; j < kLanes; ++j)
        d[j] = t + j < block_end ? row[t + j] - out.max : -std::numeric_limits<float>::infinity();
      for (int j = 0; j < kLanes; ++j) lanes[j] += exp_nonpositive(d[j]);
    }
    for (float lane : lanes) out.sum += lane;
  }
  return out;
}
}  // namespace detail

namespace {

using ExpSumKernel = detail::ExpSum (*)(const void*, DType, int64_t);

ExpSumKernel exp_sum_kernel() {
#ifdef FASTOPS_HAVE_AVX2_KERNELS
  if (active_isa() >= Isa::avx2) return detail::exp_sum_avx2;
#endif
  return detail::exp_sum_scalar;
}

float logsumexp(ExpSumKernel kernel, const void* row, DType dtype, int64_t vocab) {
  const detail::ExpSum e = kernel(row, dtype, vocab);
  return std::isinf(e.max) ? e.max : e.max + float(std::log(e.sum));
}

// Top-k by insertion into a sorted array of k keys (k is a beam width, so small). Keys (trie/topk_key.h,
// the CUDA kernel's too) pack a child's rank above its position among the node's edges, so one integer
// comparison orders by score descending, then by token ascending. Scores, tokens and next nodes are
// written once, from the kept keys.
class TopK {
 public:
  explicit TopK(int64_t k) : keys_(size_t(k)) {}

  void offer(float score, int64_t edge_in_node) {
    const uint64_t key = topk_key(score, edge_in_node);
    const int64_t k = int64_t(keys_.size());
    if (size_ == k && key <= keys_[k - 1]) return;  // the usual case once full
    int64_t pos = size_ < k ? size_++ : k - 1;
    for (; pos > 0 && key > keys_[pos - 1]; --pos) keys_[pos] = keys_[pos - 1];
    keys_[pos] = key;
  }

  // score_of(edge) must return what was offered for that edge. Pads with score -inf, token -1, next -1.
  template <class ScoreOf>
  void write(const Row& row, ScoreOf&& score_of, float* scores, int32_t* tokens, int32_t* next) {
    for (int64_t i = 0; i < int64_t(keys_.size()); ++i) {
      if (i < size_) {
        const int64_t edge = row.first_edge + topk_key_edge(keys_[i]);
        scores[i] = score_of(edge);
        tokens[i] = row.tokens[edge];
        next[i] = int32_t(edge + 1);
      } else {
        scores[i] = -std::numeric_limits<float>::infinity();
        tokens[i] = -1;
        next[i] = -1;
      }
    }
    size_ = 0;
  }

 private:
  std::vector<uint64_t> keys_;
  int64_t size_ = 0;
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
  const ExpSumKernel exp_sum = exp_sum_kernel();
  parallel_for(rows, 16, nthreads, [&](int64_t r0, int64_t r1) {
    TopK top(k);
    for (int64_t r = r0; r < r1; ++r) {
      const void* row_base = static_cast<const char*>(logits) + r * row_stride * esize;
      const LogitsRow row{row_base, dtype};
      const Row children = row_of(ix, s, node_ids, r);
      float shift = 0.0f;
      if (k > 0 && children.first_edge < children.end_edge) {
        if (log_softmax) shift = logsumexp(exp_sum, row_base, dtype, vocab);
        children.for_each_child([&](int32_t token, int32_t child) {
          if (token < vocab) top.offer(row[token] - shift, child - 1 - children.first_edge);
        });
      }
      top.write(children, [&](int64_t edge) { return row[children.tokens[edge]] - shift; }, scores + r * k,
                tokens + r * k, next_nodes + r * k);
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
