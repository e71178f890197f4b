// AVX-512F vectors for the CPU tensor-product kernels (so3_cpu_kernel_impl.h): 16 fp32 / 8 fp64 lanes,
// masked loads and stores for multiplicities that are not a multiple of the lane count.
#include <immintrin.h>

#include "so3/gaunt_cpu_kernel_impl.h"
#include "so3/so3_cpu_kernel_impl.h"

// GCC 12 reports the _mm512_undefined_* placeholders of _mm512_reduce_add_* as "may be used uninitialized"
// once they are inlined here; nothing of ours is.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace fastops {
namespace so3 {
namespace detail {
namespace {

struct Avx512F32 {
  using T = float;
  static constexpr int W = 16;
  __m512 v;
  static __mmask16 mask(int64_t n) { return n >= 16 ? __mmask16(0xffff) : n <= 0 ? 0 : __mmask16((1u << n) - 1); }
  static Avx512F32 zero() { return {_mm512_setzero_ps()}; }
  static Avx512F32 set1(float x) { return {_mm512_set1_ps(x)}; }
  static Avx512F32 ones_n(int64_t n) { return {_mm512_maskz_mov_ps(mask(n), _mm512_set1_ps(1.0f))}; }
  static Avx512F32 load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Avx512F32 load_n(const float* p, int64_t n) { return {_mm512_maskz_loadu_ps(mask(n), p)}; }
  static void store(float* p, Avx512F32 a) { _mm512_storeu_ps(p, a.v); }
  static void add_n(float* p, Avx512F32 a, int64_t n) {
    const __mmask16 m = mask(n);
    _mm512_mask_storeu_ps(p, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, p), a.v));
  }
  static Avx512F32 fma(Avx512F32 a, Avx512F32 b, Avx512F32 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static Avx512F32 mul(Avx512F32 a, Avx512F32 b) { return {_mm512_mul_ps(a.v, b.v)}; }
  static Avx512F32 add(Avx512F32 a, Avx512F32 b) { return {_mm512_add_ps(a.v, b.v)}; }
  static Avx512F32 sub(Avx512F32 a, Avx512F32 b) { return {_mm512_sub_ps(a.v, b.v)}; }
  static void store_n(float* p, Avx512F32 a, int64_t n) { _mm512_mask_storeu_ps(p, mask(n), a.v); }
  static float hsum(Avx512F32 a) { return _mm512_reduce_add_ps(a.v); }
};

struct Avx512F64 {
  using T = double;
  static constexpr int W = 8;
  __m512d v;
  static __mmask8 mask(int64_t n) { return n >= 8 ? __mmask8(0xff) : n <= 0 ? 0 : __mmask8((1u << n) - 1); }
  static Avx512F64 zero() { return {_mm512_setzero_pd()}; }
  static Avx512F64 set1(double x) { return {_mm512_set1_pd(x)}; }
  static Avx512F64 ones_n(int64_t n) { return {_mm512_maskz_mov_pd(mask(n), _mm512_set1_pd(1.0))}; }
  static Avx512F64 load(const double* p) { return {_mm512_loadu_pd(p)}; }
  static Avx512F64 load_n(const double* p, int64_t n) { return {_mm512_maskz_loadu_pd(mask(n), p)}; }
  static void store(double* p, Avx512F64 a) { _mm512_storeu_pd(p, a.v); }
  static void add_n(double* p, Avx512F64 a, int64_t n) {
    const __mmask8 m = mask(n);
    _mm512_mask_storeu_pd(p, m, _mm512_add_pd(_mm512_maskz_loadu_pd(m, p), a.v));
  }
  static Avx512F64 fma(Avx512F64 a, Avx512F64 b, Avx512F64 c) { return {_mm512_fmadd_pd(a.v, b.v, c.v)}; }
  static Avx512F64 mul(Avx512F64 a, Avx512F64 b) { return {_mm512_mul_pd(a.v, b.v)}; }
  static Avx512F64 add(Avx512F64 a, Avx512F64 b) { return {_mm512_add_pd(a.v, b.v)}; }
  static Avx512F64 sub(Avx512F64 a, Avx512F64 b) { return {_mm512_sub_pd(a.v, b.v)}; }
  static void store_n(double* p, Avx512F64 a, int64_t n) { _mm512_mask_storeu_pd(p, mask(n), a.v); }
  static double hsum(Avx512F64 a) { return _mm512_reduce_add_pd(a.v); }
};

const CpuKernels kAvx512Kernels = make_kernels<Avx512F32, Avx512F64>("avx512");
const GauntCpuKernels kGauntAvx512Kernels = make_gaunt_kernels<Avx512F32, Avx512F64>("avx512");

}  // namespace

const CpuKernels& avx512_kernels() { return kAvx512Kernels; }
const GauntCpuKernels& gaunt_avx512_kernels() { return kGauntAvx512Kernels; }

}  // namespace detail
}  // namespace so3
}  // namespace fastops
