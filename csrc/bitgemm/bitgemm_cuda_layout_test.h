// CPU self-test of bitgemm_cuda_layout.h (the CUDA kernels' index math); runs without a GPU.
#pragma once
#include <string>

namespace fastops {
namespace bitgemm {

// Returns the number of failed checks; appends one line per failure (and a summary) to *report.
int cuda_layout_selftest(std::string* report);

}  // namespace bitgemm
}  // namespace fastops
