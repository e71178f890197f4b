// CPU self-test of so3_cuda_layout.h (the CUDA tensor-product kernels' index math); runs without a GPU.
#pragma once
#include <string>

namespace fastops {
namespace so3 {

// Returns the number of failed checks; appends one line per failure (and a summary) to *report.
int cuda_layout_selftest(std::string* report);

}  // namespace so3
}  // namespace fastops
