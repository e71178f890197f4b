// Gaunt and CP-decomposed tensor products (fastops.so3.GauntTensorProduct / CPTensorProduct).
//
// CPU: every Gaunt method (spherical grid, 2D-Fourier, direct) is a *transform program* built in Python
// (python/fastops/_gaunt_programs.py) from float64 tables: a list of small dense matrix-vector products,
// butterflies and pointwise products over "slots". The CPU kernel runs the program on tiles of samples held
// transposed (one SIMD vector of samples per slot), so every step is a broadcast constant times a vector of
// samples. The backward pass of a Gaunt product is another Gaunt product (the coefficients are symmetric in
// their three indices), so it is the same kernel with another program.
//
// CUDA: the dense form out = ((x1 Y1) . (x2 Y2)) Z over the grid points, fused per tile of samples.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

namespace fastops {
namespace so3 {

enum class GauntReal : int { f32 = 0, f64 = 1 };

// Program operations: rows of kGauntOpFields int32. Slot ranges are (first, stride, count) with stride >= 0.
enum GauntOpCode : int32_t {
  // out[r * os] = sum_k M[c + r * K + k] * in[k * is], r < rows, k < K
  // fields: out, os, rows, in, is, K, c                     (K == 0 writes zeros)
  kMatvec = 1,
  // (a[i * as], b[i * bs]) <- (a + b, a - b), i < n.    fields: a, as, n, b, bs
  kButterfly = 3,
  // out[i * os] = a[i * as] * b[i * bs], i < n.          fields: out, os, n, a, as, b, bs
  kMul = 4,
  // out (=, or += for kGatherDotAdd) a * sum_t M[c + t] * slot[index[x + t]], t < K
  // fields: out, a, K, c, x                              (the direct method: one op per (k, i) pair)
  kGatherDot = 5,
  kGatherDotAdd = 6,
};
constexpr int kGauntOpFields = 8;  // code + 7 fields

// Host view of a program; validate_gaunt_program checks every slot, constant and index range.
struct GauntProgramView {
  int64_t num_slots = 0;
  int64_t num_ops = 0;
  const int32_t* ops = nullptr;        // [num_ops, kGauntOpFields]
  int64_t num_consts = 0;
  const double* consts = nullptr;
  int64_t num_index = 0;
  const int32_t* index = nullptr;      // slot indices read by kGatherDot
  int64_t dim1 = 0, dim2 = 0, dim_out = 0;
  const int32_t* in1_slots = nullptr;  // [dim1]: slot receiving x1[:, i]
  const int32_t* in2_slots = nullptr;  // [dim2]
  const int32_t* out_slots = nullptr;  // [dim_out]: slot holding out[:, k] at the end
};

// Throws ValueError (naming `op`) unless every op, input and output slot lies in [0, num_slots), every
// constant in [0, num_consts) and every gather index in [0, num_index) (slots may be reused by later ops).
void validate_gaunt_program(const GauntProgramView& program, const char* op);

// The program validated, with its constants in both precisions (opaque; compile once per program).
struct GauntCpuProgram;
std::shared_ptr<const GauntCpuProgram> compile_gaunt_program(const GauntProgramView& program, const char* op);

// out[s, :] = program(x1[s, :], x2[s, :]) for s < samples. Strides in elements, last dimension contiguous;
// a stride of 0 broadcasts one row to every sample (x1 or x2). Threads split the samples.
void gaunt_forward_cpu(const GauntCpuProgram& program, GauntReal dtype, int64_t samples, const void* x1,
                       int64_t x1_stride, const void* x2, int64_t x2_stride, void* out, int64_t out_stride,
                       int nthreads);

// Name of the CPU kernel set in use ("avx512", "avx2" or "scalar").
const char* gaunt_cpu_kernel_name();

// ---- CUDA (gaunt_cuda.cu), on `stream` (a cudaStream_t as an integer); nothing synchronizes.

// out[s, k] = sum_g Z[g, k] * (sum_i x1[s, i] Y1[i, g]) * (sum_j x2[s, j] Y2[j, g]) for s < samples.
// Y1 [dim1, points], Y2 [dim2, points], Z [points, dim_out] are row-major device arrays of the dtype.
// Strides in elements (0 broadcasts a row); last dimensions contiguous.
struct GauntDenseProblem {
  GauntReal dtype = GauntReal::f32;
  int64_t samples = 0, dim1 = 0, dim2 = 0, dim_out = 0, points = 0;
  const void* x1 = nullptr;
  int64_t x1_stride = 0;
  const void* x2 = nullptr;
  int64_t x2_stride = 0;
  const void* y1 = nullptr;
  const void* y2 = nullptr;
  const void* z = nullptr;
  void* out = nullptr;
  int64_t out_stride = 0;
};
void gaunt_dense_cuda(const GauntDenseProblem& p, std::uintptr_t stream);

// CP-decomposed product (TDN), per edge e and channel c:
//   out[e, c, k] = w[e, c] * sum_r F3[k, r] * (sum_i F1[i, r] x[e, c, i]) * (sum_j F2[j, r] y[e, j])
// x [edges, channels, dim1] (x_stride between edges, channel_stride between channels), y [edges, dim2],
// w [edges, channels] (w_stride, or 0 for one row shared by all edges), F1 [dim1, rank], F2 [dim2, rank],
// F3 [dim_out, rank] row-major, out [edges, channels, dim_out] contiguous.
struct CpProblem {
  GauntReal dtype = GauntReal::f32;
  int64_t edges = 0, channels = 0, dim1 = 0, dim2 = 0, dim_out = 0, rank = 0;
  const void* x = nullptr;
  int64_t x_stride = 0, x_channel_stride = 0;
  const void* y = nullptr;
  int64_t y_stride = 0;
  const void* w = nullptr;
  int64_t w_stride = 0;
  const void* f1 = nullptr;
  const void* f2 = nullptr;
  const void* f3 = nullptr;
  void* out = nullptr;
};
void cp_forward_cpu(const CpProblem& p, int nthreads);
void cp_forward_cuda(const CpProblem& p, std::uintptr_t stream);

}  // namespace so3
}  // namespace fastops
