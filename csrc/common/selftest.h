// Counting assertions for the host-side selftests of CUDA index math (csrc/<family>/*_cuda_layout_test.cpp):
// they run from pytest through the bindings and return failures + a report instead of aborting.
#pragma once
#include <string>

namespace fastops {

struct SelfTestChecker {
  std::string* report;
  int failures = 0, checks = 0;
  void expect(bool ok, const std::string& what) {
    ++checks;
    if (!ok && failures++ < 50 && report) *report += "FAIL: " + what + "\n";
  }
};

}  // namespace fastops
