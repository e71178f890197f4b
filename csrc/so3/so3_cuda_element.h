// The CUDA tensor product's index math (so3_cuda.cu), as host/device functions so the CPU can test it
// (so3_cuda_element_test.cpp): the value of one element of an output row (the forward's output, grad_x1,
// grad_x2 or grad_weight) contributed by one sample, summed over the plan's paths, straight from the
// definitions in so3.h.
#pragma once
#include <cstdint>

#include "common/hd.h"
#include "so3/so3.h"

namespace fastops {
namespace so3 {
namespace cuda_detail {

struct DevPath {
  int64_t mode, l1, l2, l3, mul1, mul2, mul_out, x1_off, x2_off, out_off, w_off, cg_begin, cg_count;
};

FASTOPS_HD DevPath load_path(const int64_t* paths, int64_t p) {
  const int64_t* f = paths + p * kPathFields;
  return DevPath{f[kMode], f[kL1], f[kL2], f[kL3], f[kMul1], f[kMul2], f[kMulOut], f[kX1Offset],
                 f[kX2Offset], f[kOutOffset], f[kWeightOffset], f[kCgBegin], f[kCgCount]};
}

FASTOPS_HD int64_t weight_block_size(const DevPath& P) {
  switch (Mode(P.mode)) {
    case Mode::uvw: return P.mul1 * P.mul2 * P.mul_out;
    case Mode::uvu: return P.mul1 * P.mul2;
    case Mode::uuw: return P.mul1 * P.mul_out;
    default: return P.mul1;
  }
}

// Which row an element belongs to.
enum class Target : int { out = 0, x1 = 1, x2 = 2, weight = 3 };

// One sample's operand rows (g: its grad_out row; null in the forward; w null: no weights).
template <class T>
struct Rows {
  const T* x1;
  const T* x2;
  const T* w;
  const T* g;
};

// Element e of `target` for one sample: the sum over paths P whose `target` block holds e of
//   sum over the multiplicity indices (u, v, w) left free by e, W[u, v, w] x sum_c c (x1[u,i] x2[v,j]) with
//   the factor of the target removed and g[w, k] added for gradients.
template <class T>
FASTOPS_HD T element_value(const int64_t* paths, int64_t num_paths, const int32_t* cg_ijk, const double* cg_value,
                           Target target, int64_t e, const Rows<T>& r) {
  T total = T(0);
  for (int64_t p = 0; p < num_paths; ++p) {
    const DevPath P = load_path(paths, p);
    const int64_t d1 = 2 * P.l1 + 1, d2 = 2 * P.l2 + 1, d3 = 2 * P.l3 + 1;
    const Mode mode = Mode(P.mode);
    const bool v_is_u = mode == Mode::uuw || mode == Mode::uuu;
    const bool w_is_u = mode == Mode::uvu || mode == Mode::uuu;
    int64_t u_lo = 0, u_hi = P.mul1, v_lo = 0, v_hi = P.mul2, w_lo = 0, w_hi = P.mul_out;
    int64_t comp = 0;  // the m component of e in its block (i, j or k)
    if (target == Target::out) {
      if (e < P.out_off || e >= P.out_off + P.mul_out * d3) continue;
      const int64_t a = (e - P.out_off) / d3;
      comp = (e - P.out_off) % d3;
      if (w_is_u) u_lo = a, u_hi = a + 1;
      else w_lo = a, w_hi = a + 1;
    } else if (target == Target::x1) {
      if (e < P.x1_off || e >= P.x1_off + P.mul1 * d1) continue;
      u_lo = (e - P.x1_off) / d1, u_hi = u_lo + 1;
      comp = (e - P.x1_off) % d1;
    } else if (target == Target::x2) {
      if (e < P.x2_off || e >= P.x2_off + P.mul2 * d2) continue;
      const int64_t a = (e - P.x2_off) / d2;
      comp = (e - P.x2_off) % d2;
      if (v_is_u) u_lo = a, u_hi = a + 1;
      else v_lo = a, v_hi = a + 1;
    } else {
      if (P.w_off < 0 || e < P.w_off || e >= P.w_off + weight_block_size(P)) continue;
      const int64_t idx = e - P.w_off;
      int64_t u = idx, v = 0, w = 0;
      if (mode == Mode::uvw) u = idx / (P.mul2 * P.mul_out), v = idx / P.mul_out % P.mul2, w = idx % P.mul_out;
      else if (mode == Mode::uvu) u = idx / P.mul2, v = idx % P.mul2;
      else if (mode == Mode::uuw) u = idx / P.mul_out, w = idx % P.mul_out;
      u_lo = u, u_hi = u + 1, v_lo = v, v_hi = v + 1, w_lo = w, w_hi = w + 1;
    }
    for (int64_t u = u_lo; u < u_hi; ++u) {
      const int64_t vb = v_is_u ? u : v_lo, ve = v_is_u ? u + 1 : v_hi;
      const int64_t wb = w_is_u ? u : w_lo, we = w_is_u ? u + 1 : w_hi;
      for (int64_t v = vb; v < ve; ++v)
        for (int64_t w = wb; w < we; ++w) {
          T weight = T(1);
          if (target != Target::weight && P.w_off >= 0 && r.w) {
            const int64_t widx = mode == Mode::uvw ? (u * P.mul2 + v) * P.mul_out + w
                                 : mode == Mode::uvu ? u * P.mul2 + v : mode == Mode::uuw ? u * P.mul_out + w : u;
            weight = r.w[P.w_off + widx];
          }
          T sum = T(0);
          for (int64_t c = P.cg_begin; c < P.cg_begin + P.cg_count; ++c) {
            const int32_t i = cg_ijk[3 * c], j = cg_ijk[3 * c + 1], k = cg_ijk[3 * c + 2];
            const T cv = T(cg_value[c]);
            const T x1 = r.x1[P.x1_off + u * d1 + i], x2 = r.x2[P.x2_off + v * d2 + j];
            if (target == Target::out) {
              if (k == comp) sum += cv * x1 * x2;
              continue;
            }
            const T g = r.g[P.out_off + w * d3 + k];
            if (target == Target::x1) {
              if (i == comp) sum += cv * x2 * g;
            } else if (target == Target::x2) {
              if (j == comp) sum += cv * x1 * g;
            } else {
              sum += cv * x1 * x2 * g;
            }
          }
          total += weight * sum;
        }
    }
  }
  return total;
}

// First visit i in [0, n) with key[order[i]] >= row, for keys sorted along order (order null: identity).
FASTOPS_HD int64_t lower_bound_visit(const int64_t* key, const int64_t* order, int64_t n, int64_t row) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (key[order ? order[mid] : mid] < row) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

}  // namespace cuda_detail
}  // namespace so3
}  // namespace fastops
