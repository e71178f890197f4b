// CPU kernels of the Gaunt transform programs and the CP product, templated over a SIMD vector type V
// (so3_cpu.cpp: scalar, so3_cpu_avx2.cpp, so3_cpu_avx512.cpp). Include once per ISA translation unit.
//
// A program runs on a tile of V::W samples held transposed: slot s is one vector, lane t = sample t of the
// tile. Each matrix-vector step broadcasts one constant per multiply-add, so all of them run at the FMA
// rate whatever their (small) shapes; rows go in register blocks of up to 8 accumulators.
#pragma once
#include <algorithm>
#include <cstdint>

#include "so3/gaunt_cpu_kernels.h"

namespace fastops {
namespace so3 {
namespace detail {
namespace {

template <class V>
struct GauntKernels {
  using T = typename V::T;
  // A slot holds kU vectors (kU * V::W samples): two independent FMA chains even for one-row products,
  // and half the interpretation overhead per sample.
  static constexpr int kU = 2;
  static constexpr int W = kU * V::W;
  // Rows per register block: 8 x kU accumulators fit the 32 AVX-512 registers, 4 x kU the 16 of AVX2.
  static constexpr int kRows = sizeof(V) >= 64 ? 8 : 4;

  template <int R>
  static void matvec_rows(T* out, int64_t os, const T* in, int64_t is, int64_t K, const T* m) {
    V acc[R][kU];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < kU; ++u) acc[r][u] = V::zero();
    for (int64_t k = 0; k < K; ++k) {
      V x[kU];
      for (int u = 0; u < kU; ++u) x[u] = V::load(in + k * is * W + u * V::W);
      for (int r = 0; r < R; ++r) {
        const V c = V::set1(m[r * K + k]);
        for (int u = 0; u < kU; ++u) acc[r][u] = V::fma(c, x[u], acc[r][u]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < kU; ++u) V::store(out + r * os * W + u * V::W, acc[r][u]);
  }

  static void matvec(T* out, int64_t os, int64_t rows, const T* in, int64_t is, int64_t K, const T* m) {
    int64_t r = 0;
    for (; r + kRows <= rows; r += kRows) matvec_rows<kRows>(out + r * os * W, os, in, is, K, m + r * K);
    const T* mr = m + r * K;
    T* o = out + r * os * W;
    switch (rows - r) {
      case 7: matvec_rows<7>(o, os, in, is, K, mr); break;
      case 6: matvec_rows<6>(o, os, in, is, K, mr); break;
      case 5: matvec_rows<5>(o, os, in, is, K, mr); break;
      case 4: matvec_rows<4>(o, os, in, is, K, mr); break;
      case 3: matvec_rows<3>(o, os, in, is, K, mr); break;
      case 2: matvec_rows<2>(o, os, in, is, K, mr); break;
      case 1: matvec_rows<1>(o, os, in, is, K, mr); break;
      default: break;
    }
  }

  static void run(const GauntCpuProgram& p, const T* consts, T* slots) {
    const int32_t* op = p.ops.data();
    const int64_t n_ops = int64_t(p.ops.size()) / kGauntOpFields;
    for (int64_t o = 0; o < n_ops; ++o, op += kGauntOpFields) {
      switch (op[0]) {
        case kMatvec:
          matvec(slots + int64_t(op[1]) * W, op[2], op[3], slots + int64_t(op[4]) * W, op[5],
                 op[6], consts + op[7]);
          break;
        case kButterfly: {
          T* a = slots + int64_t(op[1]) * W;
          T* b = slots + int64_t(op[4]) * W;
          for (int64_t i = 0; i < op[3]; ++i)
            for (int u = 0; u < kU; ++u) {
              T* pa = a + i * op[2] * W + u * V::W;
              T* pb = b + i * op[5] * W + u * V::W;
              const V x = V::load(pa), y = V::load(pb);
              V::store(pa, V::add(x, y));
              V::store(pb, V::sub(x, y));
            }
          break;
        }
        case kMul: {
          T* out = slots + int64_t(op[1]) * W;
          const T* a = slots + int64_t(op[4]) * W;
          const T* b = slots + int64_t(op[6]) * W;
          for (int64_t i = 0; i < op[3]; ++i)
            for (int u = 0; u < kU; ++u)
              V::store(out + i * op[2] * W + u * V::W,
                       V::mul(V::load(a + i * op[5] * W + u * V::W), V::load(b + i * op[7] * W + u * V::W)));
          break;
        }
        case kGatherDot:
        case kGatherDotAdd: {
          const int32_t* idx = p.index.data() + op[5];
          const T* m = consts + op[4];
          V acc[kU];
          for (int u = 0; u < kU; ++u) acc[u] = V::zero();
          for (int64_t t = 0; t < op[3]; ++t) {
            const V c = V::set1(m[t]);
            const T* src = slots + int64_t(idx[t]) * W;
            for (int u = 0; u < kU; ++u) acc[u] = V::fma(c, V::load(src + u * V::W), acc[u]);
          }
          T* out = slots + int64_t(op[1]) * W;
          const T* a = slots + int64_t(op[2]) * W;
          for (int u = 0; u < kU; ++u) {
            const V base = op[0] == kGatherDotAdd ? V::load(out + u * V::W) : V::zero();
            V::store(out + u * V::W, V::fma(V::load(a + u * V::W), acc[u], base));
          }
          break;
        }
        default: break;  // validate_gaunt_program refuses unknown codes
      }
    }
  }

  // Rows [s0, s0 + n) of a [samples, dim] operand into its slots (lanes past n and broadcast rows: see below).
  static void load_tile(const T* x, int64_t stride, int64_t s0, int64_t n, const std::vector<int32_t>& slot_of,
                        T* slots) {
    const int64_t dim = int64_t(slot_of.size());
    for (int64_t i = 0; i < dim; ++i) {
      T* s = slots + int64_t(slot_of[size_t(i)]) * W;
      if (stride == 0) {  // one row broadcast to every sample
        for (int u = 0; u < kU; ++u) V::store(s + u * V::W, V::set1(x[i]));
        continue;
      }
      const T* col = x + s0 * stride + i;
      int64_t t = 0;
      for (; t < n; ++t) s[t] = col[t * stride];
      for (; t < W; ++t) s[t] = T(0);
    }
  }

  static void forward(const GauntWork& w) {
    const GauntCpuProgram& p = *w.program;
    const T* consts;
    if constexpr (sizeof(T) == 4) consts = p.consts_f32.data(); else consts = p.consts_f64.data();
    T* slots = static_cast<T*>(w.slots);
    const T* x1 = static_cast<const T*>(w.x1);
    const T* x2 = static_cast<const T*>(w.x2);
    T* out = static_cast<T*>(w.out);
    for (int64_t s0 = w.sample_begin; s0 < w.sample_end; s0 += W) {
      const int64_t n = std::min<int64_t>(W, w.sample_end - s0);
      load_tile(x1, w.x1_stride, s0, n, p.in1_slots, slots);
      load_tile(x2, w.x2_stride, s0, n, p.in2_slots, slots);
      run(p, consts, slots);
      for (int64_t k = 0; k < p.dim_out; ++k) {
        const T* s = slots + int64_t(p.out_slots[size_t(k)]) * W;
        T* col = out + s0 * w.out_stride + k;
        for (int64_t t = 0; t < n; ++t) col[t * w.out_stride] = s[t];
      }
    }
  }

  // CP: per edge q = F2^T y; per channel h = w * (F1^T x_c) * q; out_c = F3 h. Vectorized over the rank for
  // the projections and over output components for the last step (f3t: F3^T [rank, dim_out]; scratch
  // holds q and h, each the rank rounded up to whole vectors).
  static void cp_forward(const CpProblem& p, int64_t e_begin, int64_t e_end, const void* f3t_v, void* scratch) {
    const int64_t R = p.rank, d1 = p.dim1, d2 = p.dim2, d3 = p.dim_out;
    const T* f1 = static_cast<const T*>(p.f1);
    const T* f2 = static_cast<const T*>(p.f2);
    const T* f3t = static_cast<const T*>(f3t_v);
    T* q = static_cast<T*>(scratch);
    T* h = q + (R + V::W - 1) / V::W * V::W;
    for (int64_t e = e_begin; e < e_end; ++e) {
      const T* y = static_cast<const T*>(p.y) + e * p.y_stride;
      for (int64_t r = 0; r < R; r += V::W) {
        const int64_t nr = std::min<int64_t>(V::W, R - r);
        V acc = V::zero();
        for (int64_t j = 0; j < d2; ++j) acc = V::fma(V::set1(y[j]), V::load_n(f2 + j * R + r, nr), acc);
        V::store(q + r, acc);  // q and h are padded to whole vectors
      }
      const T* w = static_cast<const T*>(p.w) + e * p.w_stride;
      for (int64_t c = 0; c < p.channels; ++c) {
        const T* x = static_cast<const T*>(p.x) + e * p.x_stride + c * p.x_channel_stride;
        const V wc = V::set1(w[c]);
        for (int64_t r = 0; r < R; r += V::W) {
          const int64_t nr = std::min<int64_t>(V::W, R - r);
          V acc0 = V::zero(), acc1 = V::zero();
          int64_t i = 0;
          for (; i + 2 <= d1; i += 2) {
            acc0 = V::fma(V::set1(x[i]), V::load_n(f1 + i * R + r, nr), acc0);
            acc1 = V::fma(V::set1(x[i + 1]), V::load_n(f1 + (i + 1) * R + r, nr), acc1);
          }
          if (i < d1) acc0 = V::fma(V::set1(x[i]), V::load_n(f1 + i * R + r, nr), acc0);
          V::store(h + r, V::mul(wc, V::mul(V::add(acc0, acc1), V::load(q + r))));
        }
        T* out = static_cast<T*>(p.out) + (e * p.channels + c) * d3;
        for (int64_t k = 0; k < d3; k += V::W) {
          const int64_t nk = std::min<int64_t>(V::W, d3 - k);
          V acc0 = V::zero(), acc1 = V::zero();
          int64_t r = 0;
          for (; r + 2 <= R; r += 2) {
            acc0 = V::fma(V::set1(h[r]), V::load_n(f3t + r * d3 + k, nk), acc0);
            acc1 = V::fma(V::set1(h[r + 1]), V::load_n(f3t + (r + 1) * d3 + k, nk), acc1);
          }
          if (r < R) acc0 = V::fma(V::set1(h[r]), V::load_n(f3t + r * d3 + k, nk), acc0);
          V::store_n(out + k, V::add(acc0, acc1), nk);
        }
      }
    }
  }
};

template <class VF, class VD>
GauntCpuKernels make_gaunt_kernels(const char* name) {
  return GauntCpuKernels{name, GauntKernels<VF>::W, GauntKernels<VD>::W, &GauntKernels<VF>::forward, &GauntKernels<VD>::forward,
                         &GauntKernels<VF>::cp_forward, &GauntKernels<VD>::cp_forward};
}

}  // namespace
}  // namespace detail
}  // namespace so3
}  // namespace fastops
