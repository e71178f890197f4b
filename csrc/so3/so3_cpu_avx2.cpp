// AVX2 + FMA vectors for the CPU tensor-product kernels (so3_cpu_kernel_impl.h): 8 fp32 / 4 fp64 lanes;
// partial vectors go through maskload / maskstore with a lane mask built from the count.
#include <immintrin.h>

#include "so3/gaunt_cpu_kernel_impl.h"
#include "so3/so3_cpu_kernel_impl.h"

namespace fastops {
namespace so3 {
namespace detail {
namespace {

// Lanes [0, n) set (32-bit lanes), n clamped to [0, 8].
__m256i lane_mask32(int64_t n) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n < 8 ? n : 8)), iota);
}
// Lanes [0, n) set (64-bit lanes), n clamped to [0, 4].
__m256i lane_mask64(int64_t n) {
  const __m256i iota = _mm256_setr_epi64x(0, 1, 2, 3);
  return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n < 4 ? n : 4), iota);
}

struct Avx2F32 {
  using T = float;
  static constexpr int W = 8;
  __m256 v;
  static Avx2F32 zero() { return {_mm256_setzero_ps()}; }
  static Avx2F32 set1(float x) { return {_mm256_set1_ps(x)}; }
  static Avx2F32 ones_n(int64_t n) { return {_mm256_and_ps(_mm256_castsi256_ps(lane_mask32(n)), _mm256_set1_ps(1.0f))}; }
  static Avx2F32 load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Avx2F32 load_n(const float* p, int64_t n) {
    return {n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lane_mask32(n))};
  }
  static void store(float* p, Avx2F32 a) { _mm256_storeu_ps(p, a.v); }
  static void add_n(float* p, Avx2F32 a, int64_t n) {
    if (n >= 8) {
      _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), a.v));
      return;
    }
    const __m256i m = lane_mask32(n);
    _mm256_maskstore_ps(p, m, _mm256_add_ps(_mm256_maskload_ps(p, m), a.v));
  }
  static Avx2F32 fma(Avx2F32 a, Avx2F32 b, Avx2F32 c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  static Avx2F32 mul(Avx2F32 a, Avx2F32 b) { return {_mm256_mul_ps(a.v, b.v)}; }
  static Avx2F32 add(Avx2F32 a, Avx2F32 b) { return {_mm256_add_ps(a.v, b.v)}; }
  static Avx2F32 sub(Avx2F32 a, Avx2F32 b) { return {_mm256_sub_ps(a.v, b.v)}; }
  static void store_n(float* p, Avx2F32 a, int64_t n) {
    if (n >= 8) _mm256_storeu_ps(p, a.v); else _mm256_maskstore_ps(p, lane_mask32(n), a.v);
  }
  static float hsum(Avx2F32 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

struct Avx2F64 {
  using T = double;
  static constexpr int W = 4;
  __m256d v;
  static Avx2F64 zero() { return {_mm256_setzero_pd()}; }
  static Avx2F64 set1(double x) { return {_mm256_set1_pd(x)}; }
  static Avx2F64 ones_n(int64_t n) { return {_mm256_and_pd(_mm256_castsi256_pd(lane_mask64(n)), _mm256_set1_pd(1.0))}; }
  static Avx2F64 load(const double* p) { return {_mm256_loadu_pd(p)}; }
  static Avx2F64 load_n(const double* p, int64_t n) {
    return {n >= 4 ? _mm256_loadu_pd(p) : _mm256_maskload_pd(p, lane_mask64(n))};
  }
  static void store(double* p, Avx2F64 a) { _mm256_storeu_pd(p, a.v); }
  static void add_n(double* p, Avx2F64 a, int64_t n) {
    if (n >= 4) {
      _mm256_storeu_pd(p, _mm256_add_pd(_mm256_loadu_pd(p), a.v));
      return;
    }
    const __m256i m = lane_mask64(n);
    _mm256_maskstore_pd(p, m, _mm256_add_pd(_mm256_maskload_pd(p, m), a.v));
  }
  static Avx2F64 fma(Avx2F64 a, Avx2F64 b, Avx2F64 c) { return {_mm256_fmadd_pd(a.v, b.v, c.v)}; }
  static Avx2F64 mul(Avx2F64 a, Avx2F64 b) { return {_mm256_mul_pd(a.v, b.v)}; }
  static Avx2F64 add(Avx2F64 a, Avx2F64 b) { return {_mm256_add_pd(a.v, b.v)}; }
  static Avx2F64 sub(Avx2F64 a, Avx2F64 b) { return {_mm256_sub_pd(a.v, b.v)}; }
  static void store_n(double* p, Avx2F64 a, int64_t n) {
    if (n >= 4) _mm256_storeu_pd(p, a.v); else _mm256_maskstore_pd(p, lane_mask64(n), a.v);
  }
  static double hsum(Avx2F64 a) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a.v), _mm256_extractf128_pd(a.v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
};

const CpuKernels kAvx2Kernels = make_kernels<Avx2F32, Avx2F64>("avx2");
const GauntCpuKernels kGauntAvx2Kernels = make_gaunt_kernels<Avx2F32, Avx2F64>("avx2");

}  // namespace

const CpuKernels& avx2_kernels() { return kAvx2Kernels; }
const GauntCpuKernels& gaunt_avx2_kernels() { return kGauntAvx2Kernels; }

}  // namespace detail
}  // namespace so3
}  // namespace fastops
