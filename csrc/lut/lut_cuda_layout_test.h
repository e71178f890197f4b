// CPU self-test of lut_cuda_layout.h (the CUDA kernels' index math); runs without a GPU.
#pragma once
#include <string>

namespace fastops {
namespace lut {

// Returns the number of failed checks; appends one line per failure (and a summary) to *report.
int cuda_layout_selftest(std::string* report);

}  // namespace lut
}  // namespace fastops
