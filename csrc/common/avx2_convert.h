// AVX2 loads and stores of 8 fp32 values from/to fp32, fp16 or bf16 memory, for the per-ISA
// translation units compiled with -mavx2 -mf16c. Everything is in an anonymous namespace so each
// including TU gets its own copy: a shared inline function could let the linker keep this AVX2
// copy for callers on CPUs without AVX2.
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "common/dtype.h"

namespace fastops {
namespace {

inline __m256 f16x8_to_float(const uint16_t* h) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h)));
}

inline __m256 bf16x8_to_float(const uint16_t* b) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

// fp32 -> bf16 bits in the low half of each 32-bit lane, round to nearest even, nan stays nan.
inline __m256i float_to_bf16x8(__m256 v) {
  const __m256i x = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(x, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
  const __m256i quiet_nan = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40));
  const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, quiet_nan, is_nan);
}

// Elements [0, 8) of base (element type D) as fp32.
template <DType D>
__m256 load8(const void* base) {
  if constexpr (D == DType::f32) return _mm256_loadu_ps(static_cast<const float*>(base));
  if constexpr (D == DType::f16) return f16x8_to_float(static_cast<const uint16_t*>(base));
  if constexpr (D == DType::bf16) return bf16x8_to_float(static_cast<const uint16_t*>(base));
}

// Two bf16 vectors' bits (float_to_bf16x8) as 16 consecutive bf16 values.
inline __m256i pack_bf16x16(__m256i lo, __m256i hi) {
  return _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xd8);
}

// Writes v to elements [0, 8) of base (element type D), rounding to nearest even.
template <DType D>
void store8(void* base, __m256 v) {
  if constexpr (D == DType::f32) _mm256_storeu_ps(static_cast<float*>(base), v);
  if constexpr (D == DType::f16)
    _mm_storeu_si128(static_cast<__m128i*>(base), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  if constexpr (D == DType::bf16) {
    const __m256i packed = pack_bf16x16(float_to_bf16x8(v), _mm256_setzero_si256());
    _mm_storeu_si128(static_cast<__m128i*>(base), _mm256_castsi256_si128(packed));
  }
}

}  // namespace
}  // namespace fastops
