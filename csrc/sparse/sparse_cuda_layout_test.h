// CPU self-test of sparse_cuda_layout.h (the CUDA sparse kernels' index math); runs without a GPU.
#pragma once
#include <string>

namespace fastops {
namespace sparse {

// Returns the number of failed checks; appends one line per failure (and a summary) to *report.
int cuda_layout_selftest(std::string* report);

}  // namespace sparse
}  // namespace fastops
