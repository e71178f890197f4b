// CPU self-test of trie_cuda_layout.h (the CUDA trie kernels' index math); runs without a GPU.
#pragma once
#include <string>

namespace fastops {
namespace trie {

// Returns the number of failed checks; appends one line per failure (and a summary) to *report.
int cuda_layout_selftest(std::string* report);

}  // namespace trie
}  // namespace fastops
