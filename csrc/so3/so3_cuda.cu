// CUDA tensor product (so3.h): the general kernels, one thread per output element.
//
// Every thread owns one element of one output row (an output row of the forward, a row of grad_x1, of
// grad_x2 or of grad_weight) and sums every term of it over the samples of that row in a fixed order, so
// the deterministic mode needs no atomics and no workspace; the atomic mode gives each (sample, element)
// its own thread and adds with atomicAdd. The plan tables are read from device memory (they are small and
// stay in L1/L2). The index math is in so3_cuda_element.h (tested on the CPU). This is the correct general
// path for every mode and shape; it is not yet the channel-vectorized, shared-memory-staged MACE kernel
// the issue asks for, and it has not run on a GPU.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "common/cuda_utils.cuh"
#include "common/errors.h"
#include "so3/so3.h"
#include "so3/so3_cuda_element.h"

namespace fastops {
namespace so3 {
namespace {

constexpr int kThreads = 128;

using cuda_detail::element_value;
using cuda_detail::lower_bound_visit;
using cuda_detail::Rows;
using cuda_detail::Target;

struct Tables {
  const int64_t* paths;
  int64_t num_paths;
  const int32_t* cg_ijk;
  const double* cg_value;
};

template <class T>
__device__ Rows<T> rows_of(const Problem& p, int64_t t, const T* grad, int64_t grad_stride) {
  const int64_t r1 = p.x1_index ? p.x1_index[t] : t;
  const int64_t ro = p.out_index ? p.out_index[t] : t;
  Rows<T> r;
  r.x1 = static_cast<const T*>(p.x1) + r1 * p.x1_stride;
  r.x2 = static_cast<const T*>(p.x2) + t * p.x2_stride;
  r.w = p.weight ? static_cast<const T*>(p.weight) + t * p.weight_stride : nullptr;
  r.g = grad ? grad + ro * grad_stride : nullptr;
  return r;
}

// Deterministic: block (row, element chunk); the row's samples are visits [lower_bound(row), lower_bound(row+1))
// of `order` sorted by `key` (key null: the row is the sample). all_samples: every sample (shared weight).
template <class T>
__global__ void so3_rows_kernel(Problem p, Tables tb, Target target, const int64_t* key, const int64_t* order,
                                bool all_samples, int64_t row_len, const T* grad, int64_t grad_stride, T* dst,
                                int64_t dst_stride) {
  const int64_t row = blockIdx.x;
  const int64_t e = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (e >= row_len) return;
  int64_t first = row, last = row + 1;
  if (all_samples) {
    first = 0, last = p.batch;
  } else if (key) {
    first = lower_bound_visit(key, order, p.batch, row);
    last = lower_bound_visit(key, order, p.batch, row + 1);
  }
  T acc = T(0);
  for (int64_t i = first; i < last; ++i) {
    const int64_t t = (key && !all_samples) ? order[i] : i;
    acc += element_value<T>(tb.paths, tb.num_paths, tb.cg_ijk, tb.cg_value, target, e, rows_of<T>(p, t, grad, grad_stride));
  }
  dst[row * dst_stride + e] = acc;
}

// Atomic: block (sample, element chunk) adds its term to the destination row (zeroed first).
template <class T>
__global__ void so3_atomic_kernel(Problem p, Tables tb, Target target, const int64_t* dst_index, int64_t row_len,
                                  const T* grad, int64_t grad_stride, T* dst, int64_t dst_stride) {
  const int64_t t = blockIdx.x;
  const int64_t e = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (e >= row_len) return;
  const T v = element_value<T>(tb.paths, tb.num_paths, tb.cg_ijk, tb.cg_value, target, e, rows_of<T>(p, t, grad, grad_stride));
  const int64_t row = dst_index ? dst_index[t] : 0;
  atomicAdd(dst + row * dst_stride + e, v);
}

void check_grid(int64_t rows, int64_t row_len, const char* op) {
  if (rows >= (int64_t(1) << 31) - 1 || (row_len + kThreads - 1) / kThreads > 65535)
    throw_value(std::string(op) + ": too many rows or elements per row for the CUDA kernels");
}

template <class T>
void launch_rows(const Problem& p, const Tables& tb, Target target, const int64_t* key, const int64_t* order,
                 bool all_samples, int64_t rows, int64_t row_len, const void* grad, int64_t grad_stride, void* dst,
                 int64_t dst_stride, cudaStream_t stream) {
  if (rows == 0 || row_len == 0) return;
  check_grid(rows, row_len, "so3");
  const dim3 grid(unsigned(rows), unsigned((row_len + kThreads - 1) / kThreads));
  so3_rows_kernel<T><<<grid, kThreads, 0, stream>>>(p, tb, target, key, order, all_samples, row_len,
                                                     static_cast<const T*>(grad), grad_stride, static_cast<T*>(dst),
                                                     dst_stride);
  check_launch("so3_rows_kernel");
}

template <class T>
void launch_atomic(const Problem& p, const Tables& tb, Target target, const int64_t* dst_index, int64_t dst_rows,
                   int64_t row_len, const void* grad, int64_t grad_stride, void* dst, int64_t dst_stride,
                   cudaStream_t stream) {
  if (row_len == 0) return;
  check_cuda(cudaMemset2DAsync(dst, size_t(dst_stride) * sizeof(T), 0, size_t(row_len) * sizeof(T),
                               size_t(dst_rows), stream), "cudaMemset2DAsync");
  if (p.batch == 0) return;
  check_grid(p.batch, row_len, "so3");
  const dim3 grid(unsigned(p.batch), unsigned((row_len + kThreads - 1) / kThreads));
  so3_atomic_kernel<T><<<grid, kThreads, 0, stream>>>(p, tb, target, dst_index, row_len, static_cast<const T*>(grad),
                                                       grad_stride, static_cast<T*>(dst), dst_stride);
  check_launch("so3_atomic_kernel");
}

Tables tables_of(const Problem& p, const DevicePlan& d) {
  return Tables{d.paths, p.plan.num_paths, d.cg_ijk, d.cg_value};
}

template <class T>
void forward(const Problem& p, const DevicePlan& d, const int64_t* order, bool deterministic, void* out,
             int64_t out_stride, cudaStream_t stream) {
  const Tables tb = tables_of(p, d);
  if (deterministic || !p.out_index)
    launch_rows<T>(p, tb, Target::out, p.out_index, order, false, p.out_rows, p.plan.dim_out, nullptr, 0, out,
                   out_stride, stream);
  else
    launch_atomic<T>(p, tb, Target::out, p.out_index, p.out_rows, p.plan.dim_out, nullptr, 0, out, out_stride, stream);
}

template <class T>
void backward(const Problem& p, const DevicePlan& d, const int64_t* order, bool deterministic, const void* grad,
              int64_t grad_stride, const Grads& g, cudaStream_t stream) {
  const Tables tb = tables_of(p, d);
  if (g.x1) {
    if (deterministic || !p.x1_index)
      launch_rows<T>(p, tb, Target::x1, p.x1_index, order, false, p.x1_index ? p.x1_rows : p.batch, p.plan.dim1,
                     grad, grad_stride, g.x1, g.x1_stride, stream);
    else
      launch_atomic<T>(p, tb, Target::x1, p.x1_index, p.x1_rows, p.plan.dim1, grad, grad_stride, g.x1, g.x1_stride,
                       stream);
  }
  if (g.x2)
    launch_rows<T>(p, tb, Target::x2, nullptr, nullptr, false, p.batch, p.plan.dim2, grad, grad_stride, g.x2,
                   g.x2_stride, stream);
  if (g.weight) {
    if (p.weight_stride != 0)
      launch_rows<T>(p, tb, Target::weight, nullptr, nullptr, false, p.batch, p.plan.weight_numel, grad, grad_stride,
                     g.weight, g.weight_stride, stream);
    else if (deterministic)
      launch_rows<T>(p, tb, Target::weight, nullptr, nullptr, true, 1, p.plan.weight_numel, grad, grad_stride,
                     g.weight, 0, stream);
    else
      launch_atomic<T>(p, tb, Target::weight, nullptr, 1, p.plan.weight_numel, grad, grad_stride, g.weight, 0, stream);
  }
}

}  // namespace

void forward_cuda(const Problem& p, const DevicePlan& device_plan, const int64_t* order, bool deterministic,
                  void* out, int64_t out_stride, std::uintptr_t stream) {
  require_cuda_device();
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  if (p.dtype == Real::f64) forward<double>(p, device_plan, order, deterministic, out, out_stride, s);
  else forward<float>(p, device_plan, order, deterministic, out, out_stride, s);
}

std::size_t backward_cuda_workspace_bytes(const Problem&, bool) { return 0; }

void backward_cuda(const Problem& p, const DevicePlan& device_plan, const int64_t* order, bool deterministic,
                   const void* grad_out, int64_t grad_out_stride, const Grads& grads, void*, std::uintptr_t stream) {
  require_cuda_device();
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  if (p.dtype == Real::f64) backward<double>(p, device_plan, order, deterministic, grad_out, grad_out_stride, grads, s);
  else backward<float>(p, device_plan, order, deterministic, grad_out, grad_out_stride, grads, s);
}

}  // namespace so3
}  // namespace fastops
