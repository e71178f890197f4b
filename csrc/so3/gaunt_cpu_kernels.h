// Private to the CPU Gaunt / CP kernels: the compiled transform program and the table of per-ISA kernels
// (gaunt_cpu_kernel_impl.h, instantiated beside the so3 kernels in so3_cpu.cpp, so3_cpu_avx2.cpp and
// so3_cpu_avx512.cpp, which own the vector types).
#pragma once
#include <cstdint>
#include <vector>

#include "so3/gaunt.h"

namespace fastops {
namespace so3 {

struct GauntCpuProgram {
  int64_t num_slots = 0, dim1 = 0, dim2 = 0, dim_out = 0;
  std::vector<int32_t> ops, index, in1_slots, in2_slots, out_slots;
  std::vector<float> consts_f32;
  std::vector<double> consts_f64;
};

namespace detail {

struct GauntWork {
  const GauntCpuProgram* program = nullptr;
  int64_t sample_begin = 0, sample_end = 0;
  const void* x1 = nullptr;
  int64_t x1_stride = 0;
  const void* x2 = nullptr;
  int64_t x2_stride = 0;
  void* out = nullptr;
  int64_t out_stride = 0;
  void* slots = nullptr;  // num_slots x lanes elements, 64-byte aligned
};

struct GauntCpuKernels {
  const char* name;
  int lanes_f32, lanes_f64;  // samples per tile
  void (*forward_f32)(const GauntWork&);
  void (*forward_f64)(const GauntWork&);
  void (*cp_forward_f32)(const CpProblem&, int64_t edge_begin, int64_t edge_end, const void* f3t,
                         void* scratch);
  void (*cp_forward_f64)(const CpProblem&, int64_t edge_begin, int64_t edge_end, const void* f3t,
                         void* scratch);
};

const GauntCpuKernels& gaunt_scalar_kernels();
#if defined(FASTOPS_HAVE_AVX2_KERNELS)
const GauntCpuKernels& gaunt_avx2_kernels();
const GauntCpuKernels& gaunt_avx512_kernels();
#endif

}  // namespace detail
}  // namespace so3
}  // namespace fastops
