// CPU self-test of gaunt_cuda_layout.h (the dense Gaunt and CP CUDA kernels' index math); runs without a GPU.
#pragma once
#include <string>

namespace fastops {
namespace so3 {

// Returns the number of failed checks; appends one line per failure (and a summary) to *report.
int gaunt_cuda_layout_selftest(std::string* report);

}  // namespace so3
}  // namespace fastops
