// fastops::lut - low-bit weight x float activation GEMM through lookup tables. Framework-free:
// pointers, sizes, strides, a stream. Layout of the packed weight: lut_format.h.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/dtype.h"
#include "lut/lut_format.h"

namespace fastops {
namespace lut {

// A packed weight of logical shape [m, k] (lut_format.h), as every entry point takes it.
struct PackedWeight {
  const uint8_t* planes = nullptr;
  const uint16_t* scales = nullptr;  // fp16 bits
  const uint16_t* zeros = nullptr;   // fp16 bits
  int64_t m = 0, k = 0;
  int bits = 0;
  int64_t group_size = 0;
  Scheme scheme = Scheme::uniform;
};

struct GemmProblem : PackedWeight {
  // Activations x[n, k] at x + n * x_stride_n + k * x_stride_k (strides in elements, any sign >= 0).
  const void* x = nullptr;
  DType dtype = DType::f32;  // of x, bias and y
  int64_t n = 0;
  int64_t x_stride_n = 0, x_stride_k = 1;
  const void* bias = nullptr;  // [m] in dtype, or nullptr
  // Output y[n, m] at y + n * y_stride_n + m (elements), written in dtype.
  void* y = nullptr;
  int64_t y_stride_n = 0;
};

// CPU: int8 tables looked up with byte shuffles (default, relative error <= 1e-2 on normal data), or
// when `precise`, each tile dequantized one k block at a time and multiplied with fp32 x (matches the
// dequantized reference to fp32 round-off; the Python layer sends long precise batches to its dense path).
void gemm_cpu(const GemmProblem& p, bool precise, int nthreads);
// Which CPU kernel gemm_cpu would run now ("avx2-int8", "avx2-dequant-fp32", ...), for info and benchmarks.
const char* cpu_kernel_name(bool precise);

// Dequantization (CPU), the first stage of lut_gemm's dense path (dequantize a block of rows, then a
// dense matmul) and of LutWeight.dequantize: the transposed rows [row_begin, row_begin + rows) of the packed weight's W[m, k]
// (lut_format.h), out[k * out_stride + (r - row_begin)] = W[r, k], fp32 or bf16 (round to nearest
// even). Whole 16-row tiles are written: out needs room for row_tiles(rows) * 16 columns (padding
// rows come out 0). Values are the fp32 operations of the torch-op dequantization (lut.py: _dequantize)
// in its order (bit-identical to it): uniform s * (Q - Z), bcq z + sum_i (+-alpha_i). LutWeight.dequantize
// on the CPU runs this. row_begin is a multiple of 16.
struct DequantProblem : PackedWeight {
  int64_t row_begin = 0, rows = 0;
  void* out = nullptr;
  DType out_dtype = DType::f32;  // f32 or bf16
  int64_t out_stride = 0;        // elements between consecutive k, >= row_tiles(rows) * 16
};
void dequantize_cpu(const DequantProblem& p, int nthreads);

// CUDA: runs on `stream` (a cudaStream_t as an integer) on the current device. `workspace` is
// device memory of at least gemm_cuda_workspace_bytes(p) bytes, allocated by the caller.
std::size_t gemm_cuda_workspace_bytes(const GemmProblem& p);
void gemm_cuda(const GemmProblem& p, void* workspace, std::uintptr_t stream);

}  // namespace lut
}  // namespace fastops
