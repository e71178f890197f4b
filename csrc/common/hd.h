// Portable qualifiers: the same small index/format functions compile in host C++ (and are unit-tested
// on the CPU) and in CUDA device code.
#pragma once
#if defined(__CUDACC__)
#define FASTOPS_HD __host__ __device__ __forceinline__
#else
#define FASTOPS_HD inline
#endif
