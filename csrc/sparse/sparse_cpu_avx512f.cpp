// AVX-512 F/BW/VL/DQ SpMM kernels (sparse_cpu_kernels.h), for CPUs without VBMI2 or BF16 (Skylake-SP,
// Cascade Lake, Ice Lake): every dtype takes the fp32-pair path of sparse_cpu_avx512_pairs.h. Without
// VPEXPANDW a 16-bit unit is converted to fp32 while still packed (16 values per half: VCVTPH2PS, or
// zero-extend + shift for bf16) and expanded with VEXPANDPS, one mask half per register.
#include <immintrin.h>

#include "sparse/sparse_cpu_avx512_pairs.h"

namespace fastops {
namespace sparse {
namespace detail {
namespace {

template <DType D>
__m512 packed16_to_float(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  if constexpr (D == DType::f16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// sparse_cpu_avx512_pairs.h's Isa without VBMI2 / BF16.
struct Avx512F {
  template <DType D>
  static PairUnit unit16(uint32_t mask, const uint16_t*& p) {
    _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T0);
    const uint32_t mlo = mask & 0xffffu, mhi = mask >> 16;
    const __m512 lo = packed16_to_float<D>(p), hi = packed16_to_float<D>(p + __builtin_popcount(mlo));
    p += __builtin_popcount(mask);
    return {_mm512_maskz_expand_ps(__mmask16(mlo), lo), _mm512_maskz_expand_ps(__mmask16(mhi), hi)};
  }
  // Round to nearest even on the bits; a NaN stays a (quiet) NaN.
  static __m256i to_bf16(__m512 v) {
    const __m512i x = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(x, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(0x40)));
    return _mm512_cvtepi32_epi16(r);
  }
};

void run(const Task& t) {
  switch (t.w->dtype) {
    case DType::bf16: return run_pairs<Avx512F, DType::bf16>(t);
    case DType::f16: return run_pairs<Avx512F, DType::f16>(t);
    default: return run_pairs<Avx512F, DType::f32>(t);
  }
}

}  // namespace

const CpuKernels& avx512f_kernels() {
  // x is packed as fp32 for every dtype: AVX2's packer.
  static const CpuKernels k = {"avx512f", false, avx2_kernels().pack_x, run, scratch_floats};
  return k;
}

}  // namespace detail
}  // namespace sparse
}  // namespace fastops
