// fastops::bitgemm - exact arbitrary-precision (1..8 bit) integer GEMM by bit-slicing into 1-bit
// AND-popcount products. Framework-free: pointers, sizes, strides, a stream. Operand format:
// bitgemm_format.h.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "bitgemm/bitgemm_format.h"
#include "common/dtype.h"

namespace fastops {
namespace bitgemm {

// One packed operand (bitgemm_format.h), on the device of the call.
struct Operand {
  const uint32_t* planes = nullptr;  // [bits][rows][words_per_row(k)]
  const int32_t* offset = nullptr;   // [rows]
  const int32_t* rowsum = nullptr;   // [rows]
  int64_t rows = 0;
  int bits = 0;
  Format fmt = Format::unsigned_int;
};

// out[m, n] = sum_c A[m, c] * W[n, c] for m < a.rows, n < w.rows, c < k.
// Integer mode (scaled == false): out is int32, row stride out_stride (elements).
// Scaled mode: the K axis is cut into groups of `group_size` columns (0: one group of all k; otherwise
// a positive multiple of 128) and
//   out[m, n] = sum_g a_scale[m, g] * w_scale[n, g] * C_g[m, n]  (+ bias[n])
// accumulated in fp32 and written once in out_dtype; C_g is the exact integer product over group g.
// Scales are fp32 at a_scale + m * a_scale_stride_row + g * a_scale_stride_group (stride 0 broadcasts:
// per-tensor, or one scale for all groups), the same for w. bias is [w.rows] in out_dtype or nullptr.
struct GemmProblem {
  Operand a, w;
  int64_t k = 0;  // logical k shared by both operands
  void* out = nullptr;
  int64_t out_stride = 0;
  bool scaled = false;
  DType out_dtype = DType::f32;
  int64_t group_size = 0;
  const float* a_scale = nullptr;
  int64_t a_scale_stride_row = 0, a_scale_stride_group = 0;
  const float* w_scale = nullptr;
  int64_t w_scale_stride_row = 0, w_scale_stride_group = 0;
  const void* bias = nullptr;
};

constexpr int64_t kGroupMultiple = 128;

FASTOPS_HD int64_t num_groups(int64_t k, int64_t group_size) {
  return group_size <= 0 ? 1 : (k + group_size - 1) / group_size;
}

// Fused quantize + pack of float activations x[rows, k] (row stride x_stride elements, dtype `dtype`)
// into a packed operand of `bits` bits in `fmt`. Writes planes (all words, padding zeroed), offset,
// rowsum and the fp32 scales; `per_tensor` uses one scale (and one zero point) for the whole tensor.
//   signed:   scale = absmax / (2^(bits-1) - 1) (bits >= 2), q = clamp(rint(x * inv), -2^(bits-1), 2^(bits-1) - 1)
//             bits == 1: scale = absmax, q = clamp(rint(x * inv), -1, 0)
//   bipolar:  scale = absmax / (2^bits - 1), q = odd value nearest to x * inv, clamped to +-(2^bits - 1)
//             (computed as u = clamp(rint((x * inv + qmax) / 2), 0, qmax), q = 2u - qmax)
//   unsigned: asymmetric: lo = min(x, 0), hi = max(x, 0), scale = (hi - lo) / (2^bits - 1),
//             zero = clamp(rint(-lo * inv), 0, 2^bits - 1), u = clamp(rint(x * inv) + zero, 0, 2^bits - 1),
//             offset = -zero
// where inv = 1 / scale computed in fp32, and a row (tensor) whose scale would be 0 gets scale 1.
// Every product is a single fp32 multiply (no FMA contraction) so CPU, CUDA and the reference agree
// bit for bit. `scales` receives rows values (per row) or one value (per tensor).
struct QuantizePackProblem {
  const void* x = nullptr;
  DType dtype = DType::f32;
  int64_t rows = 0, k = 0, x_stride = 0;
  int bits = 0;
  Format fmt = Format::signed_int;
  bool per_tensor = false;
  uint32_t* planes = nullptr;
  int32_t* offset = nullptr;
  int32_t* rowsum = nullptr;
  float* scales = nullptr;
};

// CPU. `method` picks the inner kernel: "auto" (fastest exact method for the bit pair and ISA),
// "popcount" or "int8" (unpacked integer dot products) - both always exact; the knob exists for tests
// and benchmarks.
void gemm_cpu(const GemmProblem& p, const char* method, int nthreads);
// Which kernel gemm_cpu would run for m activation rows and this bit pair now ("avx512-popcount",
// "scalar-int8", ...).
std::string cpu_kernel_name(int64_t m, int bits_a, int bits_w, const char* method);
void quantize_pack_cpu(const QuantizePackProblem& p, int nthreads);

// CUDA: runs on `stream` (a cudaStream_t as an integer) on the current device. `workspace` is device
// memory of at least gemm_cuda_workspace_bytes(p) (resp. quantize_pack_cuda_workspace_bytes) bytes.
std::size_t gemm_cuda_workspace_bytes(const GemmProblem& p);
void gemm_cuda(const GemmProblem& p, void* workspace, std::uintptr_t stream);
std::size_t quantize_pack_cuda_workspace_bytes(const QuantizePackProblem& p);
void quantize_pack_cuda(const QuantizePackProblem& p, void* workspace, std::uintptr_t stream);

}  // namespace bitgemm
}  // namespace fastops
