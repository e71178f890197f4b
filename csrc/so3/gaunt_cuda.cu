// CUDA dense Gaunt product and CP-decomposed product (gaunt.h), one fused SIMT kernel shape for both.
// Index math: gaunt_cuda_layout.h (emulated on the CPU by gaunt_cuda_layout_test.cpp).
//
// Kernels (dense_product_block<T, NC, kGrouped>, 256 threads, __launch_bounds__(256, 2)):
//  * gaunt_dense_kernel<T, NC>: out[s] = ((x1[s] Y1) . (x2[s] Y2)) Z over the grid points.
//  * cp_forward_kernel<T, NC>: out[e, c] = w[e, c] ((x[e, c] F1) . (y[e] F2)) F3^T over the rank, with
//    y[e] F2 computed once per edge of a tile (kGrouped) instead of once per channel.
// A block takes a tile of rows (fp32: 64, fp64: 32) and a tile of up to 320 output columns (NC = column
// groups of 32), walks the points in chunks (fp32: 32, fp64: 16) and never writes F1, F2 or their product
// to global memory: per chunk it stages Y1 / Y2 / Z through shared memory with cp.async (Z lands while
// phase A computes), forms the product chunk P in shared memory (phase A, register micro-tiles) and adds
// P^T Z into a register accumulator (phase B). fp32 accumulates in fp32 FFMA (no TF32: the result matches
// the CPU to fp32 round-off), fp64 in DFMA. Shared memory: fp32 L = 8 (dims 81, dim_out 289) 108 KB,
// so two blocks share an H100 SM; dims above 128 (or a smaller opt-in limit) stage x / Y in k-chunks.
// Deterministic (no atomics); no host synchronization, allocation or copy.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <utility>

#include "common/cuda_utils.cuh"
#include "common/errors.h"
#include "so3/gaunt.h"
#include "so3/gaunt_cuda_layout.h"

namespace fastops {
namespace so3 {
namespace {

using namespace gaunt_cuda_layout;

// ---------------------------------------------------------------------------------------------------
// cp.async of one element; src_bytes 0 writes zeros (rows / points past the end) without reading src.
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
template <int Bytes>
__device__ __forceinline__ void cp_async_zfill(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_u32(dst)), "l"(src), "n"(Bytes),
               "r"(valid ? Bytes : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

extern __shared__ __align__(16) unsigned char gaunt_smem[];

template <class T>
struct DenseArgs {
  const T* x1;
  const T* x2;
  const T* y1;
  const T* y2;
  const T* z;
  const T* w;  // row scales (CP) or null
  T* out;
  RowMap map;
  int64_t rows, out_stride, work;
  int64_t z_point_stride, z_col_stride;
  int32_t dim1, dim2, dim_out, points, k_chunks;
  DenseLayout L;
};

template <class T, int NC, bool kGrouped>
__device__ __forceinline__ void dense_product_block(const DenseArgs<T>& a) {
  using C = DenseConfig<int(sizeof(T))>;
  constexpr int MR = C::kMicroRows, MP = C::kMicroPoints, TM = C::kRowsPerWarp, PC = C::kChunk;
  const DenseLayout& L = a.L;
  T* const xs1 = reinterpret_cast<T*>(gaunt_smem + L.x1);
  T* const xs2 = reinterpret_cast<T*>(gaunt_smem + L.x2);
  T* const ys1 = reinterpret_cast<T*>(gaunt_smem + L.y1);
  T* const ys2 = reinterpret_cast<T*>(gaunt_smem + L.y2);
  T* const ps = reinterpret_cast<T*>(gaunt_smem + L.p);
  T* const qs = reinterpret_cast<T*>(gaunt_smem + L.q);
  T* const zs = reinterpret_cast<T*>(gaunt_smem + L.z);
  const int tid = int(threadIdx.x), warp = tid / kWarpSize, lane = tid % kWarpSize;
  const int slot0 = phase_a_slot<C>(tid), pt0 = phase_a_point<C>(tid), row0 = phase_b_row<C>(warp);
  const int nchunks = point_chunks(a.points, PC);
  const bool resident = a.k_chunks == 1;  // x tiles staged once per work item

  for (int64_t work = blockIdx.x; work < a.work; work += gridDim.x) {
    const DenseTile t = dense_tile<kGrouped>(work, a.rows, a.dim_out, C::kRows, a.map);
    const uint32_t qslots = kGrouped ? packed_x2_slots<kGrouped, MR>(a.map, t, slot0) : 0u;
    const bool owns_f2 = !kGrouped || slot0 < t.groups;
    const T* const zcol = zs + phase_b_col(lane, 0);
    const T* const zlast = zs + phase_b_last_col(lane, NC, t.cols);
    T acc[TM][NC];
    FASTOPS_GAUNT_UNROLL
    for (int r = 0; r < TM; ++r) {
      FASTOPS_GAUNT_UNROLL
      for (int j = 0; j < NC; ++j) acc[r][j] = T(0);
    }

    for (int c = 0; c < nchunks; ++c) {
      const int p0 = c * PC, np = chunk_points(a.points, c, PC);
      T f1[MR][MP], f2[MR][MP];
      FASTOPS_GAUNT_UNROLL
      for (int r = 0; r < MR; ++r) {
        FASTOPS_GAUNT_UNROLL
        for (int q = 0; q < MP; ++q) f1[r][q] = f2[r][q] = T(0);
      }
      for (int kq = 0; kq < a.k_chunks; ++kq) {
        const int k0 = kq * L.kc, n1 = k_rows(a.dim1, kq, L.kc), n2 = k_rows(a.dim2, kq, L.kc);
        __syncthreads();  // every thread is done with the buffers of the previous k-chunk / point chunk
        constexpr int E = int(sizeof(T));
        if (!resident || c == 0) {
          // Row bases are null for rows past the tile (zero-filled slots).
          for_each_staged(
              warp, lane, C::kRows, n1,
              [&](int slot) { return slot < t.rows ? a.x1 + x1_row_offset<kGrouped>(a.map, t.row_begin + slot) + k0 : nullptr; },
              [&](int slot, int i, const T* base) {
                cp_async_zfill<E>(xs1 + xs_index(i, slot, L.x1_stride), base ? base + i : a.x1, base != nullptr);
              });
          for_each_staged(
              warp, lane, L.x2_slots, n2,
              [&](int slot) { return slot < t.groups ? a.x2 + x2_row_offset(a.map, t.group0 + slot) + k0 : nullptr; },
              [&](int slot, int i, const T* base) {
                cp_async_zfill<E>(xs2 + xs_index(i, slot, L.x2_stride), base ? base + i : a.x2, base != nullptr);
              });
        }
        for_each_staged(
            warp, lane, n1, PC, [&](int i) { return a.y1 + y_offset(k0 + i, p0, a.points); },
            [&](int i, int p, const T* base) { cp_async_zfill<E>(ys1 + ys_index<C>(i, p), p < np ? base + p : a.y1, p < np); });
        for_each_staged(
            warp, lane, n2, PC, [&](int i) { return a.y2 + y_offset(k0 + i, p0, a.points); },
            [&](int i, int p, const T* base) { cp_async_zfill<E>(ys2 + ys_index<C>(i, p), p < np ? base + p : a.y2, p < np); });
        cp_async_commit();
        if (kq == 0) {
          // The Z chunk is waited for only before phase B. Lanes walk Z's contiguous dimension: columns for
          // Gaunt's Z [points, dim_out], points for CP's F3 [dim_out, rank].
          if (a.z_col_stride == 1)
            for_each_staged(
                warp, lane, PC, t.cols,
                [&](int p) { return p < np ? a.z + z_offset(p0 + p, t.col0, a.z_point_stride, 1) : nullptr; },
                [&](int p, int col, const T* base) {
                  cp_async_zfill<E>(zs + zs_index(p, col, t.cols), base ? base + col : a.z, base != nullptr);
                });
          else
            for_each_staged(
                warp, lane, t.cols, PC,
                [&](int col) { return a.z + z_offset(p0, t.col0 + col, a.z_point_stride, a.z_col_stride); },
                [&](int col, int p, const T* base) {
                  cp_async_zfill<E>(zs + zs_index(p, col, t.cols), p < np ? base + p * a.z_point_stride : a.z, p < np);
                });
          cp_async_commit();
          cp_async_wait<1>();
        } else {
          cp_async_wait<0>();
        }
        __syncthreads();
        project_accumulate(xs1 + slot0, L.x1_stride, ys1 + pt0, PC, n1, f1);
        if (owns_f2) project_accumulate(xs2 + slot0, L.x2_stride, ys2 + pt0, PC, n2, f2);
      }
      // P chunk (point-major, 16-byte stores of a micro-row set).
      if constexpr (kGrouped) {
        if (owns_f2) {
          FASTOPS_GAUNT_UNROLL
          for (int q = 0; q < MP; ++q) {
            FASTOPS_GAUNT_UNROLL
            for (int r = 0; r < MR; ++r) qs[ps_index(pt0 + q, slot0 + r, L.q_stride)] = f2[r][q];
          }
        }
        __syncthreads();  // the tile's F2 chunk is complete
        FASTOPS_GAUNT_UNROLL
        for (int q = 0; q < MP; ++q) {
          T v[MR];
          FASTOPS_GAUNT_UNROLL
          for (int r = 0; r < MR; ++r) v[r] = f1[r][q] * qs[ps_index(pt0 + q, unpack_x2_slot(qslots, r), L.q_stride)];
          store_vec(ps + ps_index(pt0 + q, slot0, L.p_stride), v);
        }
      } else {
        FASTOPS_GAUNT_UNROLL
        for (int q = 0; q < MP; ++q) {
          T v[MR];
          FASTOPS_GAUNT_UNROLL
          for (int r = 0; r < MR; ++r) v[r] = f1[r][q] * f2[r][q];
          store_vec(ps + ps_index(pt0 + q, slot0, L.p_stride), v);
        }
      }
      cp_async_wait<0>();
      __syncthreads();  // P and the Z chunk are complete
      output_accumulate<T, TM, NC, PC>(ps + row0, L.p_stride, zcol, zlast, t.cols, acc);
    }

    FASTOPS_GAUNT_UNROLL
    for (int r = 0; r < TM; ++r) {
      if (row0 + r >= t.rows) break;
      const int64_t row = t.row_begin + row0 + r;
      const T s = a.w ? a.w[w_offset<kGrouped>(a.map, row)] : T(1);
      T* dst = a.out + row * a.out_stride + t.col0;
      FASTOPS_GAUNT_UNROLL
      for (int j = 0; j < NC; ++j) {
        const int col = phase_b_col(lane, j);
        if (col < t.cols) dst[col] = acc[r][j] * s;
      }
    }
  }
}

template <class T, int NC>
__global__ void __launch_bounds__(kThreads, 2) gaunt_dense_kernel(const DenseArgs<T> a) {
  dense_product_block<T, NC, false>(a);
}
// The grouped path keeps a few more values live (F2 slots, the extra barrier's state): past 192 output
// columns (dim_out > 192, beyond CP's usual (L+1)^2 <= 81) fp32 would spill at 128 registers, so those
// instances take one block per SM and up to 255 registers instead.
template <class T, int NC>
__global__ void __launch_bounds__(kThreads, sizeof(T) == 4 && NC > 6 ? 1 : 2) cp_forward_kernel(const DenseArgs<T> a) {
  dense_product_block<T, NC, true>(a);
}

// ---------------------------------------------------------------------------------------------------
// Host side.
template <class T, bool kGrouped, int NC>
constexpr auto kernel_for() {
  if constexpr (kGrouped)
    return &cp_forward_kernel<T, NC>;
  else
    return &gaunt_dense_kernel<T, NC>;
}

// The kernel instance for NC column groups (1 .. kMaxColGroups).
template <class T, bool kGrouped, int NC = 1>
auto pick_kernel(int nc) {
  if constexpr (NC == kMaxColGroups) {
    return kernel_for<T, kGrouped, NC>();
  } else {
    if (nc == NC) return kernel_for<T, kGrouped, NC>();
    return pick_kernel<T, kGrouped, NC + 1>(nc);
  }
}

template <class T, bool kGrouped>
void launch_dense(DenseArgs<T>& a, cudaStream_t stream, const char* op) {
  using C = DenseConfig<int(sizeof(T))>;
  const char* name = kGrouped ? "cp_forward_kernel" : "gaunt_dense_kernel";
  const auto kernel = pick_kernel<T, kGrouped>(col_groups(a.dim_out));
  const int64_t optin = dynamic_smem_limit(reinterpret_cast<const void*>(kernel), name);
  const int64_t gs = a.map.group_size;
  const int kc = choose_k_chunk<C>(int(sizeof(T)), a.dim1, a.dim2, a.dim_out, kGrouped, gs, optin);
  if (kc == 0)
    throw_value(std::string(op) + ": needs " +
                std::to_string(make_dense_layout<C>(int(sizeof(T)), a.dim1, a.dim2, a.dim_out, 1, kGrouped, gs).total) +
                " bytes of shared memory per block; this GPU allows " + std::to_string(optin));
  a.L = make_dense_layout<C>(int(sizeof(T)), a.dim1, a.dim2, a.dim_out, kc, kGrouped, gs);
  a.k_chunks = k_chunks(a.dim1, a.dim2, kc);
  a.work = work_items(a.rows, a.dim_out, C::kRows);
  const int64_t grid = min64(a.work, kMaxGrid);
  kernel<<<unsigned(grid), kThreads, size_t(a.L.total), stream>>>(a);
  check_launch(name);
}

void check_size(int64_t v, const std::string& op, const char* what) {
  if (v < 0) throw_value(op + ": " + what + " must be >= 0, got " + std::to_string(v));
  if (v > INT32_MAX) throw_value(op + ": " + what + " must be below 2^31 on CUDA, got " + std::to_string(v));
}
void check_stride(int64_t v, const std::string& op, const char* what) {
  if (v < 0) throw_value(op + ": " + what + " must be >= 0, got " + std::to_string(v));
}
void check_ptr(const void* p, bool needed, const std::string& op, const char* what) {
  if (needed && p == nullptr) throw_value(op + ": " + what + " is null");
}

template <class T>
DenseArgs<T> common_args(const void* x1, const void* x2, const void* y1, const void* y2, const void* z, void* out) {
  DenseArgs<T> a{};
  a.x1 = static_cast<const T*>(x1);
  a.x2 = static_cast<const T*>(x2);
  a.y1 = static_cast<const T*>(y1);
  a.y2 = static_cast<const T*>(y2);
  a.z = static_cast<const T*>(z);
  a.out = static_cast<T*>(out);
  return a;
}

template <class T>
void gaunt_dense_typed(const GauntDenseProblem& p, cudaStream_t stream) {
  DenseArgs<T> a = common_args<T>(p.x1, p.x2, p.y1, p.y2, p.z, p.out);
  a.w = nullptr;
  a.map = RowMap{1, p.x1_stride, 0, p.x2_stride, 0};
  a.rows = p.samples;
  a.out_stride = p.out_stride;
  a.z_point_stride = p.dim_out;
  a.z_col_stride = 1;
  a.dim1 = int32_t(p.dim1), a.dim2 = int32_t(p.dim2), a.dim_out = int32_t(p.dim_out), a.points = int32_t(p.points);
  launch_dense<T, false>(a, stream, "gaunt_dense");
}

template <class T>
void cp_forward_typed(const CpProblem& p, cudaStream_t stream) {
  DenseArgs<T> a = common_args<T>(p.x, p.y, p.f1, p.f2, p.f3, p.out);
  a.w = static_cast<const T*>(p.w);
  a.map = RowMap{p.channels, p.x_stride, p.x_channel_stride, p.y_stride, p.w_stride};
  a.rows = p.edges * p.channels;
  a.out_stride = p.dim_out;
  a.z_point_stride = 1;  // Z[r, k] = F3[k, r]
  a.z_col_stride = p.rank;
  a.dim1 = int32_t(p.dim1), a.dim2 = int32_t(p.dim2), a.dim_out = int32_t(p.dim_out), a.points = int32_t(p.rank);
  launch_dense<T, true>(a, stream, "cp_forward");
}

void check_dtype(GauntReal dtype, const std::string& op) {
  if (dtype != GauntReal::f32 && dtype != GauntReal::f64) throw_type(op + ": dtype must be float32 or float64");
}

}  // namespace

void gaunt_dense_cuda(const GauntDenseProblem& p, std::uintptr_t stream) {
  const std::string op = "gaunt_dense";
  check_dtype(p.dtype, op);
  check_stride(p.samples, op, "samples");
  check_size(p.dim1, op, "dim1");
  check_size(p.dim2, op, "dim2");
  check_size(p.dim_out, op, "dim_out");
  check_size(p.points, op, "points");
  check_stride(p.x1_stride, op, "x1 stride");
  check_stride(p.x2_stride, op, "x2 stride");
  check_stride(p.out_stride, op, "out stride");
  if (p.samples == 0 || p.dim_out == 0) return;
  if (p.samples > 1 && p.out_stride < p.dim_out) throw_value(op + ": out rows overlap (out stride < dim_out)");
  check_ptr(p.x1, p.dim1 > 0, op, "x1");
  check_ptr(p.x2, p.dim2 > 0, op, "x2");
  check_ptr(p.y1, p.dim1 > 0 && p.points > 0, op, "y1");
  check_ptr(p.y2, p.dim2 > 0 && p.points > 0, op, "y2");
  check_ptr(p.z, p.points > 0, op, "z");
  check_ptr(p.out, true, op, "out");
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  if (p.dtype == GauntReal::f32)
    gaunt_dense_typed<float>(p, s);
  else
    gaunt_dense_typed<double>(p, s);
}

void cp_forward_cuda(const CpProblem& p, std::uintptr_t stream) {
  const std::string op = "cp_forward";
  check_dtype(p.dtype, op);
  check_stride(p.edges, op, "edges");
  check_stride(p.channels, op, "channels");
  check_size(p.dim1, op, "dim1");
  check_size(p.dim2, op, "dim2");
  check_size(p.dim_out, op, "dim_out");
  check_size(p.rank, op, "rank");
  check_stride(p.x_stride, op, "x stride");
  check_stride(p.x_channel_stride, op, "x channel stride");
  check_stride(p.y_stride, op, "y stride");
  check_stride(p.w_stride, op, "w stride");
  if (p.edges == 0 || p.channels == 0 || p.dim_out == 0) return;
  if (p.channels > INT64_MAX / p.edges) throw_value(op + ": edges * channels overflows int64");
  check_ptr(p.x, p.dim1 > 0, op, "x");
  check_ptr(p.y, p.dim2 > 0, op, "y");
  check_ptr(p.w, true, op, "w");
  check_ptr(p.f1, p.dim1 > 0 && p.rank > 0, op, "f1");
  check_ptr(p.f2, p.dim2 > 0 && p.rank > 0, op, "f2");
  check_ptr(p.f3, p.rank > 0, op, "f3");
  check_ptr(p.out, true, op, "out");
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  if (p.dtype == GauntReal::f32)
    cp_forward_typed<float>(p, s);
  else
    cp_forward_typed<double>(p, s);
}

}  // namespace so3
}  // namespace fastops
