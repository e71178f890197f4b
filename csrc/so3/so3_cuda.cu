// CUDA tensor product (so3.h): forward and backward of a plan, fused with the x1 gather and the output
// scatter. Index math: so3_cuda_layout.h (emulated on the CPU by so3_cuda_layout_test.cpp).
//
// Kernels:
//  * so3_forward_kernel<T> / so3_backward_kernel<T> (so3_tp_kernel): 1-D grid, one block per slice of
//    the visiting order, nthreads = the widest multiplicity rounded up to a warp (32..256). A block
//      - stages the plan in shared memory (paths, packed CG nonzeros as T, and for the fast channelwise
//        paths copies of their nonzeros sorted by (i, k) entry and by j, with per-entry / per-j ranges);
//      - finds the first row that starts in its slice (deterministic keyed reductions: parallel scan of
//        the sorted keys), zeroes the empty rows before it, and walks samples one at a time, all threads
//        on one sample: the next sample's x1 row, x2 row, grad_out row (backward) and weight row are
//        copied into shared memory with cp.async (16-byte copies when the row is aligned) while the
//        current one is computed (double buffers), or after it (single buffers: the host picks the
//        layout with the most resident blocks per SM, choose_layout);
//      - accumulates the reduced row (forward: output row; backward: grad_x1 row) in shared memory, each
//        element owned by one thread for every path (so3_cuda_layout.h), and flushes it when the key
//        changes: plain stores of whole rows it owns (deterministic) or atomicAdd (atomic mode, after a
//        memset of the destination);
//      - per sample, the fast paths (uvu, mul2 == 1, l1, l3 <= 3) contract x2 into M[i][k] once (one
//        thread per entry) and thread u does t[k] = sum_i M[i][k] x1[u,i] with i, k unrolled (M rows by
//        16-byte shared loads); backward adds dx1[u,i] = W sum_k M[i][k] G[u,k], dW[u] = sum_k G t, and
//        for grad_x2 one warp per path reduces B[i][k] = sum_u W x1[u,i] G[u,k] (lanes over (i, u
//        slice), shuffle tree), then one thread per x2 element contracts B with the CG terms of its j.
//        Other paths run a general owner loop over their nonzeros and (u, v, w) pairs.
//    grad_x2 and per-sample grad_weight rows are written once per sample; a shared weight's gradient
//    goes to a per-block partial (shared memory when it fits, else the block's workspace slice).
//  * so3_weight_reduce_kernel<T>: sums the per-block partials in block order (deterministic in both
//    modes; the shared-weight gradient never uses atomics).
// No host synchronization, allocation or copy: CUDA-graph capturable.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cuda_utils.cuh"
#include "common/errors.h"
#include "so3/so3.h"
#include "so3/so3_cuda_layout.h"

namespace fastops {
namespace so3 {
namespace {

using namespace cuda_layout;

constexpr unsigned kFullWarp = 0xffffffffu;
constexpr int kReduceThreads = 256;
constexpr int64_t kNoPos = INT64_MAX;  // "no row start found"

// ---------------------------------------------------------------------------------------------------
// PTX wrappers.
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
template <int Bytes>
__device__ __forceinline__ void cp_async(void* dst, const void* src) {
  if constexpr (Bytes == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst)), "l"(src) : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(smem_u32(dst)), "l"(src), "n"(Bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

template <int N>
using IC = std::integral_constant<int, N>;

// The dynamic shared memory of the tensor-product kernels (carved by make_smem_layout).
extern __shared__ __align__(16) unsigned char so3_smem[];

// Calls f(IC<d1>, IC<d3>) for d1, d3 in {1, 3, 5, 7} (fast paths only).
template <class F>
__device__ __forceinline__ void with_fast_dims(int d1, int d3, F&& f) {
#define FASTOPS_SO3_CASE(A, B) \
  case (A / 2) * 4 + B / 2:    \
    f(IC<A>{}, IC<B>{});       \
    break;
  switch ((d1 / 2) * 4 + d3 / 2) {
    FASTOPS_SO3_CASE(1, 1) FASTOPS_SO3_CASE(1, 3) FASTOPS_SO3_CASE(1, 5) FASTOPS_SO3_CASE(1, 7)
    FASTOPS_SO3_CASE(3, 1) FASTOPS_SO3_CASE(3, 3) FASTOPS_SO3_CASE(3, 5) FASTOPS_SO3_CASE(3, 7)
    FASTOPS_SO3_CASE(5, 1) FASTOPS_SO3_CASE(5, 3) FASTOPS_SO3_CASE(5, 5) FASTOPS_SO3_CASE(5, 7)
    FASTOPS_SO3_CASE(7, 1) FASTOPS_SO3_CASE(7, 3) FASTOPS_SO3_CASE(7, 5) FASTOPS_SO3_CASE(7, 7)
    default:
      break;
  }
#undef FASTOPS_SO3_CASE
}

// B[i][k] of one fast path by one warp (so3_cuda_layout.h: bmat_lane_partial + shuffle tree).
template <class T, int D1, int D3>
__device__ __forceinline__ void fast_bmat_warp(const PathInfo& P, int lane, const T* x1s, const T* gs,
                                               const T* wrow, T* bmat) {
  constexpr int S = bmat_slices<D1>();
  constexpr int D3P = m_row_stride(D3, vec_elems(int(sizeof(T))));
  T acc[D3];
  bmat_lane_partial<T, D1, D3>(P, lane, x1s, gs, wrow, acc);
  const int s = bmat_slice(lane, D1);
#pragma unroll
  for (int step = 1; step < S; step *= 2) {
#pragma unroll
    for (int k = 0; k < D3; ++k) {
      const T other = __shfl_down_sync(kFullWarp, acc[k], step * D1);
      if (bmat_tree_adds(s, step, S)) acc[k] += other;
    }
  }
  if (s == 0) {
    T* row = bmat + P.m_off + bmat_row(lane, D1) * D3P;
#pragma unroll
    for (int k = 0; k < D3; ++k) row[k] = acc[k];
  }
}

// ---------------------------------------------------------------------------------------------------
template <class T>
struct TpArgs {
  const T* x1;
  const T* x2;
  const T* w;
  const T* g;  // grad_out (backward)
  int64_t x1_stride, x2_stride, w_stride, g_stride;
  const int64_t* x1_index;
  const int64_t* out_index;
  const int64_t* order;
  int64_t batch, acc_rows, slice;
  const int64_t* paths;
  const int32_t* cg_ijk;
  const double* cg_value;
  int32_t num_paths, num_cg, dim1, dim2, dim_out, weight_numel, acc_dim;
  FastTotals totals;  // the host's, checked against the device plan
  T* acc_out;         // forward: out; backward: grad_x1
  int64_t acc_stride;
  T* gx2;
  int64_t gx2_stride;
  T* gw;
  int64_t gw_stride;
  T* ws;          // shared-weight partials
  bool sorted;    // visiting order = `order` (keyed deterministic reduction)
  bool det_rows;  // the block owns whole rows: plain stores, empty rows zeroed
  bool has_acc;   // there is a reduced row (forward always; backward: grad_x1 wanted)
  bool want_gx2, want_gw, gw_add, shared_w, stage_w, gw_smem, path_sync;
  SmemLayout L;
};

template <class T, bool kBwd>
struct TpBlock {
  static constexpr int kVec = vec_elems(int(sizeof(T)));
  const TpArgs<T>& a;
  const SmemLayout& L;
  int tid, nthr, lane, warp, nwarps;

  __device__ explicit TpBlock(const TpArgs<T>& args) : a(args), L(args.L) {
    tid = int(threadIdx.x);
    nthr = int(blockDim.x);
    lane = tid % kWarpSize;
    warp = tid / kWarpSize;
    nwarps = nthr / kWarpSize;
  }

  // Regions of the dynamic shared memory (so3_cuda_layout.h: make_smem_layout), recomputed from the
  // extern array where used so they stay shared-space addresses and cost no registers.
  template <class U>
  __device__ U* region(int64_t offset) const {
    return reinterpret_cast<U*>(so3_smem + offset);
  }
  __device__ PathInfo* paths() const { return region<PathInfo>(L.paths); }
  __device__ int32_t* cg_idx() const { return region<int32_t>(L.cg_idx); }
  __device__ T* cg_val() const { return region<T>(L.cg_val); }
  __device__ int32_t* mt_idx() const { return region<int32_t>(L.mt_idx); }
  __device__ T* mt_val() const { return region<T>(L.mt_val); }
  __device__ int32_t* jt_idx() const { return region<int32_t>(L.jt_idx); }
  __device__ T* jt_val() const { return region<T>(L.jt_val); }
  __device__ Range* ent() const { return region<Range>(L.ent); }
  __device__ Range* jrun() const { return region<Range>(L.jrun); }
  __device__ T* mbuf(int b) const { return region<T>(L.m) + b * L.m_len; }
  __device__ T* bmat() const { return region<T>(L.bmat); }
  __device__ T* x1buf(int b) const { return region<T>(L.x1) + b * L.x1_len; }
  __device__ T* x2buf(int b) const { return region<T>(L.x2) + b * L.x2_len; }
  __device__ T* gbuf(int b) const { return region<T>(L.g) + b * L.g_len; }
  __device__ T* wbuf(int b) const { return region<T>(L.w) + b * L.w_len; }
  __device__ T* acc() const { return region<T>(L.acc); }
  __device__ T* gx2own() const { return region<T>(L.gx2); }
  __device__ T* gwsm() const { return region<T>(L.gw); }
  __device__ Visit* ring() const { return region<Visit>(L.ring); }
  __device__ int64_t* scratch() const { return region<int64_t>(L.scratch); }

  __device__ bool want_jt() const { return kBwd && a.want_gx2; }
  __device__ T* gw_partial() const {
    return a.gw_smem ? gwsm() : a.ws + partial_offset(int64_t(blockIdx.x), a.weight_numel);
  }

  // Copies n elements of a global row into shared memory (16-byte copies when the source is aligned).
  __device__ void copy_row(T* dst, const T* src, int n) const {
    int done = 0;
    if ((reinterpret_cast<uintptr_t>(src) & uintptr_t(kVecBytes - 1)) == 0) {
      const int nv = n / kVec;
      for (int q = tid; q < nv; q += nthr) cp_async<kVecBytes>(dst + q * kVec, src + q * kVec);
      done = nv * kVec;
    }
    for (int e = done + tid; e < n; e += nthr) cp_async<int(sizeof(T))>(dst + e, src + e);
  }

  // ---- block start: the plan in shared memory ------------------------------------------------------
  __device__ void setup() {
    for (int p = tid; p < a.num_paths; p += nthr) paths()[p] = load_path_info(a.paths, p);
    for (int n = tid; n < a.num_cg; n += nthr) {
      cg_idx()[n] = pack_ijk(a.cg_ijk[3 * n], a.cg_ijk[3 * n + 1], a.cg_ijk[3 * n + 2]);
      cg_val()[n] = T(a.cg_value[n]);
    }
    __syncthreads();
    if (tid == 0) scratch()[0] = same_totals(assign_fast_offsets(paths(), a.num_paths, kVec), a.totals) ? 1 : 0;
    __syncthreads();
    if (scratch()[0] == 0) __trap();  // the device plan is not the host plan the launch was sized from
    for (int p = 0; p < a.num_paths; ++p) {
      const PathInfo P = paths()[p];
      if (P.fast < 0) continue;
      const int d3p = m_row_stride(P.d3, kVec);
      for (int r = tid; r < P.cg_count; r += nthr) {
        const int n = P.cg_begin + r;
        const int re = P.f_off + rank_by_entry(cg_idx(), P.cg_begin, P.cg_count, r, d3p);
        mt_idx()[re] = cg_idx()[n];
        mt_val()[re] = cg_val()[n];
        if (want_jt()) {
          const int rj = P.f_off + rank_by_j(cg_idx(), P.cg_begin, P.cg_count, r);
          jt_idx()[rj] = cg_idx()[n];
          jt_val()[rj] = cg_val()[n];
        }
      }
      for (int e = tid; e < m_size(P, kVec); e += nthr)
        ent()[P.m_off + e] = range_by_entry(cg_idx(), P.cg_begin, P.cg_count, e, d3p, P.f_off);
      if (want_jt())
        for (int j = tid; j < P.d2; j += nthr) jrun()[P.j_off + j] = range_by_j(cg_idx(), P.cg_begin, P.cg_count, j, P.f_off);
    }
    if (kBwd && a.want_gw && a.shared_w) {
      T* part = gw_partial();
      for (int e = tid; e < a.weight_numel; e += nthr) part[e] = T(0);
    }
    if (a.stage_w && a.shared_w) copy_row(wbuf(0), a.w, a.weight_numel);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();
  }

  // ---- visiting ----------------------------------------------------------------------------------
  __device__ int64_t sorted_key_at(int64_t pos) const {
    const int64_t t = a.order[pos];
    return kBwd ? a.x1_index[t] : a.out_index[t];
  }
  __device__ void load_ring_chunk(int64_t chunk) const {  // warp 0
    const int64_t pos = chunk * kInfoChunk + lane;
    if (pos >= a.batch) return;
    const int64_t t = a.sorted ? a.order[pos] : pos;
    ring()[ring_slot(pos)] = Visit{t, a.x1_index ? a.x1_index[t] : t, a.out_index ? a.out_index[t] : t};
  }
  // First position in [p0, p1) (p0 > 0) where a row starts, p1 if none.
  __device__ int64_t find_first_row_start(int64_t p0, int64_t p1) {
    if (tid == 0) scratch()[1] = kNoPos;
    __syncthreads();
    for (int64_t base = p0; base < p1; base += nthr) {
      const int64_t pos = base + tid;
      const bool hit = pos < p1 && is_row_start(pos, sorted_key_at(pos - 1), sorted_key_at(pos));
      if (hit) atomicMin(reinterpret_cast<unsigned long long*>(scratch() + 1), static_cast<unsigned long long>(pos));
      if (__syncthreads_or(hit)) break;
    }
    const int64_t f = scratch()[1];
    return f == kNoPos ? p1 : f;
  }

  __device__ void stage(const Visit& v, int b) const {
    if (a.dim1 > 0) copy_row(x1buf(b), a.x1 + v.r1 * a.x1_stride, a.dim1);
    if (a.dim2 > 0) copy_row(x2buf(b), a.x2 + v.t * a.x2_stride, a.dim2);
    if (kBwd && a.dim_out > 0) copy_row(gbuf(b), a.g + v.ro * a.g_stride, a.dim_out);
    if (a.stage_w && !a.shared_w) copy_row(wbuf(b), a.w + v.t * a.w_stride, a.weight_numel);
  }
  __device__ const T* weight_row(const Visit& v, int b) const {
    if (a.w == nullptr) return nullptr;
    if (a.shared_w) return a.stage_w ? wbuf(0) : a.w;
    return a.stage_w ? wbuf(b) : a.w + v.t * a.w_stride;
  }

  // M of every fast path for the x2 row staged in buffer b.
  __device__ void compute_m(int b) const {
    const T* x2s = x2buf(b);
    T* M = mbuf(b);
    for (int p = 0; p < a.num_paths; ++p) {
      const PathInfo& P = paths()[p];
      if (P.fast < 0) continue;
      const int d3p = m_row_stride(P.d3, kVec), ms = P.d1 * d3p;
      for (int e = tid; e < ms; e += nthr) M[P.m_off + e] = fast_m_entry(P, e, d3p, ent(), mt_idx(), mt_val(), x2s);
    }
  }

  __device__ void forward_sample(int b, const T* wr) const {
    const T* x1s = x1buf(b);
    const T* x2s = x2buf(b);
    const T* M = mbuf(b);
    for (int p = 0; p < a.num_paths; ++p) {
      const PathInfo P = paths()[p];
      if (P.fast >= 0) {
        with_fast_dims(P.d1, P.d3, [&](auto D1, auto D3) {
          for (int u = tid; u < P.mul1; u += nthr) {
            const T w = P.w_off >= 0 ? wr[P.w_off + u] : T(1);
            fast_forward_u<T, decltype(D1)::value, decltype(D3)::value>(P, u, x1s, M + P.m_off, w, acc());
          }
        });
      } else {
        for (int w = tid; w < P.mul_out; w += nthr) general_forward_owner(P, w, cg_idx(), cg_val(), x1s, x2s, wr, acc());
      }
    }
  }

  __device__ void backward_sample(const Visit& v, int b, const T* wr) const {
    const T* x1s = x1buf(b);
    const T* x2s = x2buf(b);
    const T* gs = gbuf(b);
    const T* M = mbuf(b);
    T* g1 = a.has_acc ? acc() : nullptr;
    T* gwr = !a.want_gw ? nullptr : a.shared_w ? gw_partial() : a.gw + v.t * a.gw_stride;
    for (int p = 0; p < a.num_paths; ++p) {
      const PathInfo P = paths()[p];
      const bool dw = a.want_gw && P.w_off >= 0;
      if (P.fast >= 0) {
        if (g1 || dw)
          with_fast_dims(P.d1, P.d3, [&](auto D1, auto D3) {
            for (int u = tid; u < P.mul1; u += nthr) {
              const T w = P.w_off >= 0 ? wr[P.w_off + u] : T(1);
              const T d = fast_backward_u<T, decltype(D1)::value, decltype(D3)::value>(P, u, x1s, M + P.m_off, gs,
                                                                                       w, g1);
              if (dw) {
                T* dst = gwr + P.w_off + u;
                *dst = a.gw_add ? *dst + d : d;
              }
            }
          });
      } else {
        if (g1)
          for (int u = tid; u < P.mul1; u += nthr) general_gx1_owner(P, u, cg_idx(), cg_val(), x2s, gs, wr, g1);
        if (a.want_gx2)
          for (int q = tid; q < P.mul2; q += nthr) general_gx2_owner(P, q, cg_idx(), cg_val(), x1s, gs, wr, gx2own());
        if (dw)
          for (int w = tid; w < P.mul_out; w += nthr)
            general_gw_owner(P, w, cg_idx(), cg_val(), x1s, x2s, gs, gwr, a.gw_add);
      }
      if (a.path_sync) __syncthreads();
    }
    if (a.want_gx2) {
      for (int p = 0; p < a.num_paths; ++p) {
        const PathInfo P = paths()[p];
        if (P.fast < 0 || P.fast % nwarps != warp) continue;
        with_fast_dims(P.d1, P.d3, [&](auto D1, auto D3) {
          fast_bmat_warp<T, decltype(D1)::value, decltype(D3)::value>(P, lane, x1s, gs, wr, bmat());
        });
      }
    }
  }

  __device__ void finalize_gx2(const Visit& v) const {
    T* dst = a.gx2 + v.t * a.gx2_stride;
    for (int e = tid; e < a.dim2; e += nthr) {
      const T s = gx2own()[e] + fast_gx2_element(paths(), a.num_paths, e, jrun(), jt_idx(), jt_val(), bmat(), kVec);
      gx2own()[e] = T(0);
      dst[e] = s;
    }
  }

  __device__ void flush_row(int64_t key) const {
    T* dst = a.acc_out + key * a.acc_stride;
    for (int e = tid; e < a.acc_dim; e += nthr) {
      const T s = acc()[e];
      acc()[e] = T(0);
      if (a.det_rows)
        dst[e] = s;
      else
        atomicAdd(dst + e, s);
    }
  }
  __device__ void zero_rows(const RowRange& r) const {
    if (r.end <= r.begin) return;
    const int64_t n = (r.end - r.begin) * a.acc_dim;
    for (int64_t q = tid; q < n; q += nthr) {
      const int64_t row = r.begin + q / a.acc_dim, e = q % a.acc_dim;
      a.acc_out[row * a.acc_stride + e] = T(0);
    }
  }

  // Samples first.. of the slice [.., p1), one at a time (two barriers per sample).
  __device__ void walk(int64_t first, int64_t p1, int64_t key_prev) {
    if (warp == 0) {
      load_ring_chunk(ring_chunk(first));
      load_ring_chunk(ring_chunk(first) + 1);
    }
    __syncthreads();
    Visit cur = ring()[ring_slot(first)];
    stage(cur, 0);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();
    compute_m(0);
    if (a.has_acc)
      for (int e = tid; e < a.acc_dim; e += nthr) acc()[e] = T(0);
    if (want_jt())
      for (int e = tid; e < a.dim2; e += nthr) gx2own()[e] = T(0);
    if (a.det_rows) zero_rows(gap_before(first, key_prev, visit_key(cur, kBwd)));
    __syncthreads();
    int64_t pos = first;
    int b = 0;
    for (;;) {
      const int64_t next = pos + 1;
      Visit nx{0, 0, 0};
      if (next < a.batch) nx = ring()[ring_slot(next)];
      const int64_t kc = visit_key(cur, kBwd), kn = next < a.batch ? visit_key(nx, kBwd) : -1;
      const bool has_next = continues(a.det_rows, next, p1, a.batch, kn, kc);
      const int nb = L.nbuf == 2 ? b ^ 1 : 0;
      if (has_next && L.nbuf == 2) stage(nx, nb);
      cp_async_commit();
      const T* wr = weight_row(cur, b);
      if constexpr (kBwd)
        backward_sample(cur, b, wr);
      else
        forward_sample(b, wr);
      cp_async_wait_all();
      __syncthreads();
      if (want_jt()) finalize_gx2(cur);
      if (has_next && L.nbuf == 1) {
        stage(nx, 0);
        cp_async_commit();
        cp_async_wait_all();
        __syncthreads();
      }
      if (has_next) compute_m(nb);
      if (warp == 0 && ring_loads_at(pos)) load_ring_chunk(ring_chunk(pos) + 1);
      if (a.has_acc && row_ends(has_next, kn, kc)) {
        flush_row(kc);
        if (a.det_rows) zero_rows(gap_after(has_next, next, a.batch, kc, kn, a.acc_rows));
      }
      __syncthreads();
      if (!has_next) break;
      pos = next;
      cur = nx;
      b = nb;
    }
  }

  __device__ void run() {
    setup();
    const int64_t p0 = slice_begin(int64_t(blockIdx.x), a.slice);
    const int64_t p1 = slice_end(int64_t(blockIdx.x), a.slice, a.batch);
    int64_t first = p0, key_prev = p0 - 1;
    if (a.sorted && p0 > 0) {
      first = find_first_row_start(p0, p1);
      if (first < p1) key_prev = sorted_key_at(first - 1);
    }
    if (first < p1) walk(first, p1, key_prev);
    if (kBwd && a.want_gw && a.shared_w && a.gw_smem) {
      T* dst = a.ws + partial_offset(int64_t(blockIdx.x), a.weight_numel);
      for (int e = tid; e < a.weight_numel; e += nthr) dst[e] = gwsm()[e];
    }
  }
};

template <class T, bool kBwd>
__global__ void __launch_bounds__(kMaxThreads, 1) so3_tp_kernel(const __grid_constant__ TpArgs<T> a) {
  TpBlock<T, kBwd> block(a);
  block.run();
}

template <class T>
__global__ void __launch_bounds__(kReduceThreads)
    so3_weight_reduce_kernel(const T* ws, int64_t parts, int64_t weight_numel, T* gw) {
  for (int64_t e = int64_t(blockIdx.x) * kReduceThreads + threadIdx.x; e < weight_numel;
       e += int64_t(gridDim.x) * kReduceThreads) {
    T s = T(0);
    for (int64_t b = 0; b < parts; ++b) s += ws[partial_offset(b, weight_numel) + e];
    gw[e] = s;
  }
}

// ---------------------------------------------------------------------------------------------------
// Host side.
int elem_bytes(Real r) { return r == Real::f64 ? 8 : 4; }

void check_dtype(const Problem& p, const char* op) {
  if (p.dtype != Real::f32 && p.dtype != Real::f64)
    throw_type(std::string(op) + ": unsupported dtype " + std::to_string(int(p.dtype)));
}

// What the host derives from its copy of the plan.
struct HostPlan {
  FastTotals totals{0, 0, 0, 0};
  int64_t max_mul = 0;
  bool any_weight = false;
  bool gw_exact = true;    // weight blocks are disjoint and tile [0, weight_numel)
  bool gw_overlap = false; // two paths share weight elements
};

HostPlan analyze(const PlanView& plan, int esz, const char* op) {
  validate_plan(plan, op);
  const std::string o(op);
  if (max_degree_dim(plan) > kMaxPackedDim)
    throw_value(o + ": the CUDA kernels take 2l+1 <= " + std::to_string(kMaxPackedDim) + " (l <= " +
                std::to_string((kMaxPackedDim - 1) / 2) + ")");
  const int64_t i32 = std::numeric_limits<int32_t>::max();
  if (plan.dim1 > i32 || plan.dim2 > i32 || plan.dim_out > i32 || plan.weight_numel > i32)
    throw_value(o + ": the CUDA kernels need dim1, dim2, dim_out and weight_numel below 2^31");
  HostPlan h;
  std::vector<PathInfo> paths(size_t(plan.num_paths));
  std::vector<std::pair<int64_t, int64_t>> wblocks;
  for (int64_t p = 0; p < plan.num_paths; ++p) {
    paths[size_t(p)] = load_path_info(plan.paths, p);
    const PathInfo& P = paths[size_t(p)];
    h.max_mul = std::max<int64_t>(h.max_mul, std::max(P.mul1, std::max(P.mul2, P.mul_out)));
    if (P.w_off >= 0) {
      h.any_weight = true;
      const int64_t size = weight_block_size(P);
      if (size > 0) wblocks.push_back({int64_t(P.w_off), int64_t(P.w_off) + size});
    }
  }
  h.totals = assign_fast_offsets(paths.data(), plan.num_paths, vec_elems(esz));
  std::sort(wblocks.begin(), wblocks.end());
  int64_t end = 0;
  for (const auto& b : wblocks) {
    if (b.first < end) h.gw_overlap = true;
    if (b.first != end) h.gw_exact = false;
    end = std::max(end, b.second);
  }
  if (h.gw_overlap || end != plan.weight_numel) h.gw_exact = false;
  return h;
}

void zero_matrix(void* ptr, int64_t stride, int64_t cols, int64_t rows, int esz, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  if (rows == 1 || stride == cols)
    check_cuda(cudaMemsetAsync(ptr, 0, size_t(rows == 1 ? cols : rows * cols) * size_t(esz), stream),
               "cudaMemsetAsync");
  else
    check_cuda(cudaMemset2DAsync(ptr, size_t(stride) * size_t(esz), 0, size_t(cols) * size_t(esz), size_t(rows),
                                 stream),
               "cudaMemset2DAsync");
}

// Per-device launch facts, queried once per device (the host side of a call stays a few microseconds).
struct DeviceFacts {
  int smem_optin = 0, sm_count = 0;
};
std::mutex g_facts_mutex;

int current_device() {
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  return device;
}
DeviceFacts device_facts() {
  const int device = current_device();
  static std::map<int, DeviceFacts> cache;
  std::lock_guard<std::mutex> lock(g_facts_mutex);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  DeviceFacts f;
  check_cuda(cudaDeviceGetAttribute(&f.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
             "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  check_cuda(cudaDeviceGetAttribute(&f.sm_count, cudaDevAttrMultiProcessorCount, device),
             "cudaDeviceGetAttribute(MultiProcessorCount)");
  cache[device] = f;
  return f;
}
int device_smem_optin() { return device_facts().smem_optin; }
int device_sm_count() { return device_facts().sm_count; }

// Resident blocks per SM of `kernel` (whose dynamic shared-memory limit is raised to the opt-in maximum on
// first use on each device), memoized per (device, kernel, threads, bytes).
int blocks_per_sm(const void* kernel, int threads, int64_t smem, const char* name) {
  const int device = current_device();
  dynamic_smem_limit(kernel, name);
  static std::map<std::tuple<int, const void*, int, int64_t>, int> occupancy;
  std::lock_guard<std::mutex> lock(g_facts_mutex);
  const auto key = std::make_tuple(device, kernel, threads, smem);
  auto it = occupancy.find(key);
  if (it != occupancy.end()) return it->second;
  int blocks = 0;
  check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, size_t(smem)),
             "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  occupancy[key] = blocks;
  return blocks;
}

// Picks the shared-memory layout among double / single buffers, staged / global weights and a shared-memory
// / workspace weight-gradient partial: the one with the most resident blocks per SM (the runtime's occupancy
// for this kernel, so registers count too), ties going to more buffering and staging. Single buffers often
// win when the grad_out row is long (MACE-large backward: 2 x 36 KB of grad_out rows in fp32).
SmemLayout choose_layout(SmemSizes s, const void* kernel, int threads, const char* op, const char* name,
                         bool* stage_w, bool* gw_smem) {
  const int64_t optin = device_smem_optin();
  const bool want_stage = s.stage_w, want_gw = s.gw_smem;
  SmemLayout best{};
  int best_blocks = -1;
  int64_t smallest = -1;
  for (int nbuf = 2; nbuf >= 1; --nbuf)
    for (int stage = want_stage ? 1 : 0; stage >= 0; --stage)
      for (int gw = want_gw ? 1 : 0; gw >= 0; --gw) {
        s.nbuf = nbuf;
        s.stage_w = stage != 0;
        s.gw_smem = gw != 0;
        const SmemLayout L = make_smem_layout(s);
        if (smallest < 0 || L.total < smallest) smallest = L.total;
        if (L.total > optin) continue;
        const int blocks = blocks_per_sm(kernel, threads, L.total, name);
        if (blocks > best_blocks) {
          best_blocks = blocks;
          best = L;
          *stage_w = s.stage_w;
          *gw_smem = s.gw_smem;
        }
      }
  if (best_blocks < 0)
    throw_value(std::string(op) + ": the plan needs " + std::to_string(smallest) +
                " bytes of shared memory per block (the plan tables plus one x1 row of " + std::to_string(s.dim1) +
                ", x2 row of " + std::to_string(s.dim2) + (s.backward ? ", grad_out row of " : ", output row of ") +
                std::to_string(s.dim_out) + (s.backward && s.acc_dim ? " and grad_x1 row" : "") +
                " elements); this GPU allows " + std::to_string(optin));
  return best;
}

template <class T, bool kBwd>
int64_t launch_tp(TpArgs<T>& a, SmemSizes sz, int threads, int64_t max_blocks, cudaStream_t stream,
                  const char* op) {
  const char* name = kBwd ? "so3_backward_kernel" : "so3_forward_kernel";
  const auto kernel = so3_tp_kernel<T, kBwd>;
  const void* kfn = reinterpret_cast<const void*>(kernel);
  bool stage_w = false, gw_smem = false;
  a.L = choose_layout(sz, kfn, threads, op, name, &stage_w, &gw_smem);
  a.stage_w = stage_w;
  a.gw_smem = gw_smem;
  const int smem = int(a.L.total);
  const int per_sm = blocks_per_sm(kfn, threads, smem, name);
  const int64_t target = int64_t(device_sm_count()) * std::max(per_sm, 1) * kWaves;
  const LaunchPlan lp = make_launch(a.batch, target, max_blocks);
  a.slice = lp.slice;
  if (lp.blocks == 0) return 0;
  kernel<<<unsigned(lp.blocks), unsigned(threads), size_t(smem), stream>>>(a);
  check_launch(name);
  return lp.blocks;
}

template <class T>
void fill_plan(TpArgs<T>& a, const Problem& p, const DevicePlan& d, const HostPlan& h) {
  if (p.plan.num_paths > 0 && d.paths == nullptr) throw_value("so3: device plan tables are null");
  if (p.plan.num_cg > 0 && (d.cg_ijk == nullptr || d.cg_value == nullptr))
    throw_value("so3: device plan tables are null");
  a.x1 = static_cast<const T*>(p.x1);
  a.x2 = static_cast<const T*>(p.x2);
  a.w = h.any_weight ? static_cast<const T*>(p.weight) : nullptr;
  a.x1_stride = p.x1_stride;
  a.x2_stride = p.x2_stride;
  a.w_stride = p.weight_stride;
  a.x1_index = p.x1_index;
  a.out_index = p.out_index;
  a.batch = p.batch;
  a.paths = d.paths;
  a.cg_ijk = d.cg_ijk;
  a.cg_value = d.cg_value;
  a.num_paths = int32_t(p.plan.num_paths);
  a.num_cg = int32_t(p.plan.num_cg);
  a.dim1 = int32_t(p.plan.dim1);
  a.dim2 = int32_t(p.plan.dim2);
  a.dim_out = int32_t(p.plan.dim_out);
  a.weight_numel = int32_t(p.plan.weight_numel);
  a.totals = h.totals;
  a.shared_w = p.weight_stride == 0;
}

SmemSizes sizes_of(const Problem& p, const HostPlan& h, bool backward, int64_t acc_dim, bool want_gx2,
                   bool stage_w, bool gw_smem) {
  SmemSizes s{};
  s.num_paths = p.plan.num_paths;
  s.num_cg = p.plan.num_cg;
  s.m_total = h.totals.m_total;
  s.f_total = h.totals.f_total;
  s.j_total = h.totals.j_total;
  s.dim1 = p.plan.dim1;
  s.dim2 = p.plan.dim2;
  s.dim_out = p.plan.dim_out;
  s.weight_numel = p.plan.weight_numel;
  s.acc_dim = acc_dim;
  s.esz = elem_bytes(p.dtype);
  s.nbuf = 2;
  s.backward = backward;
  s.want_gx2 = want_gx2;
  s.stage_w = stage_w;
  s.shared_w = p.weight_stride == 0;
  s.gw_smem = gw_smem;
  return s;
}

void check_operands(const Problem& p, const HostPlan& h, const char* op) {
  const std::string o(op);
  if (p.batch < 0 || p.x1_rows < 0 || p.out_rows < 0) throw_value(o + ": negative sizes");
  if (p.batch == 0) return;
  if (p.plan.dim1 > 0 && p.x1 == nullptr) throw_value(o + ": x1 is null");
  if (p.plan.dim2 > 0 && p.x2 == nullptr) throw_value(o + ": x2 is null");
  if (h.any_weight && p.weight == nullptr) throw_value(o + ": the plan has weighted paths but weight is null");
  if (p.weight_stride < 0) throw_value(o + ": negative weight stride");
}

template <class T>
void forward(const Problem& p, const DevicePlan& d, const int64_t* order, bool deterministic, void* out,
             int64_t out_stride, cudaStream_t stream) {
  const char* op = "so3 forward_cuda";
  const int esz = int(sizeof(T));
  const HostPlan h = analyze(p.plan, esz, op);
  check_operands(p, h, op);
  if (p.out_rows == 0 || p.plan.dim_out == 0) return;
  if (out == nullptr) throw_value(std::string(op) + ": out is null");
  if (!p.out_index && p.out_rows < p.batch) throw_value(std::string(op) + ": out_rows < batch without out_index");
  const bool keyed = p.out_index != nullptr;
  if (keyed && deterministic && p.batch > 0 && order == nullptr)
    throw_value(std::string(op) + ": deterministic mode with out_index needs order");
  if (p.batch == 0 || p.plan.num_paths == 0) {
    zero_matrix(out, out_stride, p.plan.dim_out, p.out_rows, esz, stream);
    return;
  }
  TpArgs<T> a{};
  fill_plan(a, p, d, h);
  a.order = order;
  a.acc_rows = p.out_rows;
  a.acc_dim = a.dim_out;
  a.acc_out = static_cast<T*>(out);
  a.acc_stride = out_stride;
  a.has_acc = true;
  a.det_rows = deterministic || !keyed;
  a.sorted = keyed && a.det_rows;
  if (!a.det_rows) zero_matrix(out, out_stride, p.plan.dim_out, p.out_rows, esz, stream);
  const int threads = block_threads(h.max_mul);
  launch_tp<T, false>(a, sizes_of(p, h, false, p.plan.dim_out, false, a.w != nullptr, false), threads, kMaxGrid,
                      stream, op);
}

template <class T>
void backward(const Problem& p, const DevicePlan& d, const int64_t* order, bool deterministic, const void* grad_out,
              int64_t grad_out_stride, const Grads& g, void* workspace, cudaStream_t stream) {
  const char* op = "so3 backward_cuda";
  const std::string o(op);
  const int esz = int(sizeof(T));
  const HostPlan h = analyze(p.plan, esz, op);
  check_operands(p, h, op);
  const bool shared_w = p.weight_stride == 0;
  const bool want_x1 = g.x1 != nullptr && p.plan.dim1 > 0 && p.x1_rows > 0;
  const bool want_x2 = g.x2 != nullptr && p.plan.dim2 > 0 && p.batch > 0;
  bool want_w = g.weight != nullptr && p.plan.weight_numel > 0 && (shared_w || p.batch > 0);
  if (want_x1 && !p.x1_index && p.x1_rows < p.batch) throw_value(o + ": x1_rows < batch without x1_index");
  if (want_x1 && p.x1_index && deterministic && p.batch > 0 && order == nullptr)
    throw_value(o + ": deterministic grad_x1 with x1_index needs order");
  if (want_w && !h.any_weight) {  // no path reads the weight: its gradient is zero
    zero_matrix(g.weight, shared_w ? p.plan.weight_numel : g.weight_stride, p.plan.weight_numel,
                shared_w ? 1 : p.batch, esz, stream);
    want_w = false;
  }
  if (p.batch > 0 && p.plan.num_paths > 0 && p.plan.dim_out > 0 && grad_out == nullptr)
    throw_value(o + ": grad_out is null");
  const bool work = p.batch > 0 && p.plan.num_paths > 0 && p.plan.dim_out > 0;
  if (!work) {  // every gradient is zero
    if (want_x1) zero_matrix(g.x1, g.x1_stride, p.plan.dim1, p.x1_rows, esz, stream);
    if (want_x2) zero_matrix(g.x2, g.x2_stride, p.plan.dim2, p.batch, esz, stream);
    if (want_w) zero_matrix(g.weight, shared_w ? p.plan.weight_numel : g.weight_stride, p.plan.weight_numel,
                            shared_w ? 1 : p.batch, esz, stream);
    return;
  }
  if (!want_x1 && !want_x2 && !want_w) return;
  TpArgs<T> a{};
  fill_plan(a, p, d, h);
  a.g = static_cast<const T*>(grad_out);
  a.g_stride = grad_out_stride;
  a.order = order;
  a.has_acc = want_x1;
  const bool keyed = p.x1_index != nullptr;
  a.det_rows = want_x1 && (deterministic || !keyed);
  a.sorted = want_x1 && keyed && a.det_rows;
  a.acc_rows = p.x1_rows;
  a.acc_dim = want_x1 ? a.dim1 : 0;
  a.acc_out = static_cast<T*>(g.x1);
  a.acc_stride = g.x1_stride;
  a.want_gx2 = want_x2;
  a.gx2 = static_cast<T*>(g.x2);
  a.gx2_stride = g.x2_stride;
  a.want_gw = want_w;
  a.gw = static_cast<T*>(g.weight);
  a.gw_stride = g.weight_stride;
  a.gw_add = want_w && (shared_w || !h.gw_exact);
  a.path_sync = want_w && h.gw_overlap;
  a.ws = static_cast<T*>(workspace);
  int64_t max_blocks = kMaxGrid;
  if (want_w && shared_w) {
    max_blocks = shared_weight_partials(p.batch, device_sm_count(), p.plan.weight_numel);
    if (workspace == nullptr || reinterpret_cast<std::uintptr_t>(workspace) % sizeof(T) != 0)
      throw_value(o + ": a shared weight's gradient needs an element-aligned workspace of "
                      "backward_cuda_workspace_bytes() bytes");
  }
  if (want_x1 && !a.det_rows) zero_matrix(g.x1, g.x1_stride, p.plan.dim1, p.x1_rows, esz, stream);
  if (want_w && !shared_w && a.gw_add)
    zero_matrix(g.weight, g.weight_stride, p.plan.weight_numel, p.batch, esz, stream);
  const int threads = block_threads(h.max_mul);
  const int64_t blocks = launch_tp<T, true>(
      a, sizes_of(p, h, true, a.acc_dim, want_x2, a.w != nullptr, want_w && shared_w), threads, max_blocks, stream,
      op);
  if (want_w && shared_w) {
    const int64_t wn = p.plan.weight_numel;
    const int64_t rblocks = std::min<int64_t>(ceil_div(wn, kReduceThreads), int64_t(device_sm_count()) * 8);
    so3_weight_reduce_kernel<T><<<unsigned(std::max<int64_t>(rblocks, 1)), kReduceThreads, 0, stream>>>(
        a.ws, blocks, wn, static_cast<T*>(g.weight));
    check_launch("so3_weight_reduce_kernel");
  }
}

}  // namespace

void forward_cuda(const Problem& p, const DevicePlan& device_plan, const int64_t* order, bool deterministic,
                  void* out, int64_t out_stride, std::uintptr_t stream) {
  check_dtype(p, "so3 forward_cuda");
  require_cuda_device();
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  if (p.dtype == Real::f64)
    forward<double>(p, device_plan, order, deterministic, out, out_stride, s);
  else
    forward<float>(p, device_plan, order, deterministic, out, out_stride, s);
}

std::size_t backward_cuda_workspace_bytes(const Problem& p, bool deterministic) {
  (void)deterministic;  // the shared-weight gradient is reduced in block order in both modes
  check_dtype(p, "so3 backward_cuda_workspace_bytes");
  if (p.weight_stride != 0 || p.plan.weight_numel <= 0 || p.batch <= 0) return 0;
  const int64_t parts = shared_weight_partials(p.batch, device_sm_count(), p.plan.weight_numel);
  return std::size_t(parts) * std::size_t(p.plan.weight_numel) * std::size_t(elem_bytes(p.dtype));
}

void backward_cuda(const Problem& p, const DevicePlan& device_plan, const int64_t* order, bool deterministic,
                   const void* grad_out, int64_t grad_out_stride, const Grads& grads, void* workspace,
                   std::uintptr_t stream) {
  check_dtype(p, "so3 backward_cuda");
  require_cuda_device();
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  if (p.dtype == Real::f64)
    backward<double>(p, device_plan, order, deterministic, grad_out, grad_out_stride, grads, workspace, s);
  else
    backward<float>(p, device_plan, order, deterministic, grad_out, grad_out_stride, grads, workspace, s);
}

}  // namespace so3
}  // namespace fastops
