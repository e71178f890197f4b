// fastops::lut - low-bit weight x float activation GEMM through lookup tables. Framework-free:
// pointers, sizes, strides, a stream. Layout of the packed weight: lut_format.h.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/dtype.h"
#include "lut/lut_format.h"

namespace fastops {
namespace lut {

struct GemmProblem {
  // Activations x[n, k] at x + n * x_stride_n + k * x_stride_k (strides in elements, any sign >= 0).
  const void* x = nullptr;
  DType dtype = DType::f32;  // of x, bias and y
  int64_t n = 0;
  int64_t x_stride_n = 0, x_stride_k = 1;
  // Packed weight of logical shape [m, k] (lut_format.h).
  const uint8_t* planes = nullptr;
  const uint16_t* scales = nullptr;  // fp16 bits
  const uint16_t* zeros = nullptr;   // fp16 bits
  int64_t m = 0, k = 0;
  int bits = 0;
  int64_t group_size = 0;
  Scheme scheme = Scheme::uniform;
  const void* bias = nullptr;  // [m] in dtype, or nullptr
  // Output y[n, m] at y + n * y_stride_n + m (elements), written in dtype.
  void* y = nullptr;
  int64_t y_stride_n = 0;
};

// CPU: int8 tables looked up with byte shuffles (default, relative error <= 1e-2 on normal data), or
// fp32 tables when `precise` (matches the dequantized reference to fp32 round-off).
void gemm_cpu(const GemmProblem& p, bool precise, int nthreads);
// Which CPU kernel gemm_cpu would run now ("avx2-int8", "scalar-fp32", ...), for info and benchmarks.
const char* cpu_kernel_name(bool precise);

// CUDA: runs on `stream` (a cudaStream_t as an integer) on the current device. `workspace` is
// device memory of at least gemm_cuda_workspace_bytes(p) bytes, allocated by the caller.
std::size_t gemm_cuda_workspace_bytes(const GemmProblem& p);
void gemm_cuda(const GemmProblem& p, void* workspace, std::uintptr_t stream);

}  // namespace lut
}  // namespace fastops
