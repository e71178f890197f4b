// Device queries the bindings need, as plain C++ (no CUDA headers), implemented in cuda_runtime.cu.
#pragma once

namespace fastops {

// Number of CUDA devices. Throws std::runtime_error("fastops: no usable CUDA device (cudaGetDeviceCount
// failed): <name> (<string>)") when the runtime cannot enumerate devices (no driver, no GPU).
int cuda_device_count();
// Compute capability of `device`; throws std::runtime_error on a CUDA error.
void cuda_device_capability(int device, int* major, int* minor);

}  // namespace fastops
