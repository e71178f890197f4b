// Portable qualifiers: the same small index/format functions compile in host C++ (and are unit-tested
// on the CPU) and in CUDA device code.
#pragma once
#include <cstdint>
#if defined(__CUDACC__)
#define FASTOPS_HD __host__ __device__ __forceinline__
#else
#define FASTOPS_HD inline
#endif

namespace fastops {

FASTOPS_HD int popcount32(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return __popc(v);
#else
  return __builtin_popcount(v);
#endif
}

}  // namespace fastops
