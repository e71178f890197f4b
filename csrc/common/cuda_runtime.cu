#include "common/cuda_runtime.h"

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "common/cuda_utils.cuh"

namespace fastops {

int cuda_device_count() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the (non-sticky) error so later calls start clean
    throw std::runtime_error(std::string("fastops: no usable CUDA device (cudaGetDeviceCount failed): ") +
                             cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
  }
  return count;
}

void cuda_device_capability(int device, int* major, int* minor) {
  FASTOPS_CUDA_CHECK(cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor, device));
  FASTOPS_CUDA_CHECK(cudaDeviceGetAttribute(minor, cudaDevAttrComputeCapabilityMinor, device));
}

}  // namespace fastops
