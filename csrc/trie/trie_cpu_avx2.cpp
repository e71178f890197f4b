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

__m256 floored(__m256 max) { return _mm256_max_ps(max, _mm256_set1_ps(-3.402823466e38f)); }

// Per-lane state of the single-pass sum: each lane's running max and its sum of exp(x - max) in two
// float chains (hiding the add latency). Each row is read once: a group of vectors folds its maxima in,
// rescales the sums by exp(old max - new max) (one exp per group), then adds its exponentials.
// Subtracting a max floored at -FLT_MAX keeps a lane that has only seen -inf from computing -inf - -inf.
struct LaneSums {
  __m256 max = _mm256_set1_ps(-__builtin_inff());
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();

  template <int kCount>
  void add(const __m256 (&x)[kCount]) {
    __m256 new_max = max;
    for (int j = 0; j < kCount; ++j) new_max = _mm256_max_ps(x[j], new_max);  // skips NaN
    const __m256 ref = floored(new_max);
    const __m256 scale = exp_nonpositive(_mm256_sub_ps(floored(max), ref));
    max = new_max;
    acc0 = _mm256_mul_ps(acc0, scale);
    acc1 = _mm256_mul_ps(acc1, scale);
    int j = 0;
    for (; j + 1 < kCount; j += 2) {
      acc0 = _mm256_add_ps(acc0, exp_nonpositive(_mm256_sub_ps(x[j], ref)));
      acc1 = _mm256_add_ps(acc1, exp_nonpositive(_mm256_sub_ps(x[j + 1], ref)));
    }
    if (j < kCount) acc0 = _mm256_add_ps(acc0, exp_nonpositive(_mm256_sub_ps(x[j], ref)));
  }
};

// The float lane sums move into double lane sums every kSumBlock elements (rescaled to the lane max of
// the latest move), then lanes are combined relative to the row max.
template <DType D>
ExpSum exp_sum(const void* row, int64_t vocab) {
  constexpr int kGroup = 8;  // vectors per rescale
  const int64_t full = vocab / kLanes * kLanes;
  LaneSums lanes;
  __m256 moved_max = lanes.max;  // lane max the double sums are relative to
  __m256d sum_lo = _mm256_setzero_pd(), sum_hi = _mm256_setzero_pd();
  const auto move_to_double = [&] {
    const __m256 scale = exp_nonpositive(_mm256_sub_ps(floored(moved_max), floored(lanes.max)));
    const __m256 acc = _mm256_add_ps(lanes.acc0, lanes.acc1);
    sum_lo = _mm256_fmadd_pd(sum_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(scale)),
                             _mm256_cvtps_pd(_mm256_castps256_ps128(acc)));
    sum_hi = _mm256_fmadd_pd(sum_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(scale, 1)),
                             _mm256_cvtps_pd(_mm256_extractf128_ps(acc, 1)));
    lanes.acc0 = lanes.acc1 = _mm256_setzero_ps();
    moved_max = lanes.max;
  };
  for (int64_t block = 0; block < full; block += kSumBlock) {
    const int64_t block_end = block + kSumBlock < full ? block + kSumBlock : full;
    int64_t i = block;
    for (; i + kGroup * kLanes <= block_end; i += kGroup * kLanes) {
      __m256 x[kGroup];
      for (int j = 0; j < kGroup; ++j) x[j] = load8<D>(row, i + j * kLanes);
      lanes.add(x);
    }
    for (; i < block_end; i += kLanes) lanes.add({load8<D>(row, i)});
    move_to_double();
  }
  if (full < vocab) {
    lanes.add({load8_tail<D>(row, full, vocab)});
    move_to_double();
  }
  ExpSum out{horizontal_max(lanes.max), 0.0};
  if (out.max == __builtin_inff() || out.max == -__builtin_inff()) return out;
  const __m256 to_row_max = exp_nonpositive(_mm256_sub_ps(floored(lanes.max), _mm256_set1_ps(out.max)));
  const __m256d total = _mm256_add_pd(_mm256_mul_pd(sum_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(to_row_max))),
                                      _mm256_mul_pd(sum_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(to_row_max, 1))));
  alignas(32) double lane_sums[4];
  _mm256_store_pd(lane_sums, total);
  out.sum = (lane_sums[0] + lane_sums[1]) + (lane_sums[2] + lane_sums[3]);
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
