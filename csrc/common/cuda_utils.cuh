// CUDA error handling: every runtime call and kernel launch is checked, and a failure becomes
// std::runtime_error naming the call or kernel and the CUDA error (RuntimeError in Python).
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "common/cuda_runtime.h"

namespace fastops {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what) {
  throw std::runtime_error(std::string("fastops: ") + what + " failed: " + cudaGetErrorName(err) + " (" +
                           cudaGetErrorString(err) + ")");
}

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw_cuda_error(err, what);
}

// Call right after a <<<...>>> launch: a bad configuration (grid, shared memory, no kernel image for
// this GPU) is only reported through cudaGetLastError.
inline void check_launch(const char* kernel_name) { check_cuda(cudaGetLastError(), kernel_name); }

// Throws the "no usable CUDA device" error when the runtime has no device to run on.
inline void require_cuda_device() {
  if (cuda_device_count() == 0) throw std::runtime_error("fastops: no usable CUDA device (no device found)");
}

inline int current_device_sm_count() {
  int device = 0, sms = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
             "cudaDeviceGetAttribute(MultiProcessorCount)");
  return sms;
}

// The most dynamic shared memory `kernel` may use per block on the current device (the opt-in maximum less
// the kernel's static shared memory), its limit raised to that once per (device, kernel). Raising it once
// to the maximum, not per launch to each launch's size, keeps host threads that launch the same kernel with
// different sizes from lowering the limit under one another's launches. Thread-safe.
int dynamic_smem_limit(const void* kernel, const char* name);

}  // namespace fastops

#define FASTOPS_CUDA_CHECK(call) ::fastops::check_cuda((call), #call)
