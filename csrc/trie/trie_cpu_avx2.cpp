// AVX2+FMA sum of exponentials of one logits row (compiled with -mavx2 -mfma -mf16c; called only after
// a CPUID check). Polynomial and accuracy: trie_cpu_kernels.h.
//
// This file must not use inline functions shared with other translation units (dtype.h helpers,
// std containers, <cmath> wrappers): the linker could keep this AVX2 copy for callers on CPUs
// without AVX2.
#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "trie/trie_cpu_kernels.h"

namespace fastops {
namespace trie {
namespace detail {
namespace {

constexpr int kLanes = 8;

// Elements i .. i + 7 of the row as fp32.
template <DType D>
__m256 load8(const void* row, int64_t i) {
  if constexpr (D == DType::f32) return _mm256_loadu_ps(static_cast<const float*>(row) + i);
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + i));
  if constexpr (D == DType::f16) return _mm256_cvtph_ps(bits);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));  // bf16: high half of fp32
}

// The same for the last, partial vector: lanes at or past `vocab` read as -inf.
template <DType D>
__m256 load8_tail(const void* row, int64_t i, int64_t vocab) {
  using Elem = std::conditional_t<D == DType::f32, uint32_t, uint16_t>;
  constexpr Elem kNegInf = D == DType::f32 ? Elem(0xff800000u) : D == DType::f16 ? Elem(0xfc00) : Elem(0xff80);
  alignas(32) Elem tail[kLanes];
  for (int j = 0; j < kLanes; ++j) tail[j] = i + j < vocab ? static_cast<const Elem*>(row)[i + j] : kNegInf;
  return load8<D>(tail, 0);
}

float horizontal_max(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

double horizontal_sum(__m256 v) {
  const __m256d d = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                                  _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, d);
  return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
}

// exp(d) for d <= 0 (NaN stays NaN): trie_cpu_kernels.h. n = round(d log2 e) comes from adding
// 1.5 * 2^23 + 127 (round to nearest): the low mantissa bits of that sum are n + 127, shifted into
// the exponent field they give 2^n without a round or convert instruction.
__m256 exp_nonpositive(__m256 d) {
  const __m256 magic = _mm256_set1_ps(12582912.0f + 127.0f);
  d = _mm256_max_ps(_mm256_set1_ps(kExpMinArg), d);  // max_ps returns its second operand for NaN
  const __m256 biased = _mm256_fmadd_ps(d, _mm256_set1_ps(kLog2e), magic);
  const __m256 n = _mm256_sub_ps(biased, magic);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), d);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 q = _mm256_set1_ps(kExpPoly[5]);
  for (int c = 4; c >= 0; --c) q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(kExpPoly[c]));
  const __m256 p = _mm256_add_ps(_mm256_fmadd_ps(q, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(biased), 23)));
}

template <DType D>
ExpSum exp_sum(const void* row, int64_t vocab) {
  const int64_t full = vocab / kLanes * kLanes;
  __m256 top = _mm256_set1_ps(-__builtin_inff());
  for (int64_t i = 0; i < full; i += kLanes) top = _mm256_max_ps(load8<D>(row, i), top);  // skips NaN
  if (full < vocab) top = _mm256_max_ps(load8_tail<D>(row, full, vocab), top);
  ExpSum out{horizontal_max(top), 0.0};
  if (out.max == __builtin_inff() || out.max == -__builtin_inff()) return out;
  const __m256 m = _mm256_set1_ps(out.max);
  for (int64_t block = 0; block < full; block += kSumBlock) {
    const int64_t block_end = block + kSumBlock < full ? block + kSumBlock : full;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();  // two chains hide the add latency
    int64_t i = block;
    for (; i + 2 * kLanes <= block_end; i += 2 * kLanes) {
      acc0 = _mm256_add_ps(acc0, exp_nonpositive(_mm256_sub_ps(load8<D>(row, i), m)));
      acc1 = _mm256_add_ps(acc1, exp_nonpositive(_mm256_sub_ps(load8<D>(row, i + kLanes), m)));
    }
    if (i < block_end) acc0 = _mm256_add_ps(acc0, exp_nonpositive(_mm256_sub_ps(load8<D>(row, i), m)));
    out.sum += horizontal_sum(_mm256_add_ps(acc0, acc1));
  }
  if (full < vocab) out.sum += horizontal_sum(exp_nonpositive(_mm256_sub_ps(load8_tail<D>(row, full, vocab), m)));
  return out;
}

}  // namespace

ExpSum exp_sum_avx2(const void* row, DType dtype, int64_t vocab) {
  switch (dtype) {
    case DType::f32: return exp_sum<DType::f32>(row, vocab);
    case DType::f16: return exp_sum<DType::f16>(row, vocab);
    default: return exp_sum<DType::bf16>(row, vocab);
  }
}

}  // namespace detail
}  // namespace trie
}  // namespace fastops
