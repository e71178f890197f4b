// fastops::sparse - unstructured-sparse weight x dense activation (SpMM), load-as-sparse /
// compute-as-dense. Framework-free: pointers, sizes, strides, a stream. Weight format: sparse_format.h.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/dtype.h"
#include "sparse/sparse_format.h"

namespace fastops {
namespace sparse {

// A packed weight (sparse_format.h) of logical shape [m, k], on the device of the call.
struct Weight {
  const uint32_t* masks = nullptr;         // [S, U]
  const void* values = nullptr;            // [nnz + kValuePad] in dtype
  const int64_t* strip_offsets = nullptr;  // [S + 1]
  const int32_t* chunk_offsets = nullptr;  // [S, C]
  int64_t m = 0, k = 0;
  DType dtype = DType::bf16;
};

// y[t, r] = sum_c x[t, c] * W[r, c] (+ bias[r]) for t < n, r < m, accumulated in fp32 and written once in
// the weight's dtype (x, y and bias share it). x: row stride x_stride elements, column stride
// x_col_stride (the CUDA kernels need 1; the CPU packs x anyway and takes any); y: row stride y_stride,
// unit stride along m; bias: [m] or nullptr.
struct SpmmProblem {
  Weight w;
  const void* x = nullptr;
  int64_t n = 0, x_stride = 0, x_col_stride = 1;
  void* y = nullptr;
  int64_t y_stride = 0;
  const void* bias = nullptr;
};

// Packing a dense W[m, k] (element (r, c) at w + r * stride_r + c * stride_c, in dtype) in two passes:
//   pack_count: chunk_counts[s * C + c] = nonzeros of chunk c of strip s   (int32 [S, C])
//   (the caller turns the counts into strip_offsets / chunk_offsets and allocates values)
//   pack_fill:  writes masks and values (including the kValuePad trailing zeros).
struct PackProblem {
  const void* w = nullptr;
  int64_t m = 0, k = 0, stride_r = 0, stride_c = 0;
  DType dtype = DType::bf16;
};

// CPU.
void spmm_cpu(const SpmmProblem& p, int nthreads);
// The kernels spmm_cpu runs now: "avx512" (VBMI2 + BF16), "avx512f", "avx2" or "scalar" — the best the
// CPU and the active ISA level (cpu_features.h) allow, unless set_cpu_kernels chose others.
std::string cpu_kernel_name();
// For tests and benchmarks: "auto" or one of the names above that this CPU can run (else
// std::invalid_argument).
void set_cpu_kernels(const std::string& name);
void pack_count_cpu(const PackProblem& p, int32_t* chunk_counts, int nthreads);
void pack_fill_cpu(const PackProblem& p, const Weight& out, uint32_t* masks, void* values, int nthreads);
// The inverse: dense[r * dense_stride + c] = W[r, c] for r < w.m, c < w.k (zeros included), in w.dtype.
void unpack_cpu(const Weight& w, void* dense, int64_t dense_stride, int nthreads);

// CUDA: runs on `stream` (a cudaStream_t as an integer) on the current device. `workspace` is device
// memory of at least spmm_cuda_workspace_bytes(p) bytes (nullptr when that is 0), which reads only p's
// sizes and dtype (and the current device's SM count).
std::size_t spmm_cuda_workspace_bytes(const SpmmProblem& p);
void spmm_cuda(const SpmmProblem& p, void* workspace, std::uintptr_t stream);
void pack_count_cuda(const PackProblem& p, int32_t* chunk_counts, std::uintptr_t stream);
void pack_fill_cuda(const PackProblem& p, const Weight& out, uint32_t* masks, void* values, std::uintptr_t stream);

}  // namespace sparse
}  // namespace fastops
