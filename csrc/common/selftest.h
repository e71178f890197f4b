// Counting assertions for the host-side selftests of CUDA index math (csrc/<family>/*_cuda_layout_test.cpp):
// they run from pytest through the bindings and return failures + a report instead of aborting.
#pragma once
#include <cstdint>
#include <limits>
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

// Independent definitions the selftests compare kernel helpers with (written from the ISA, not shared
// with any kernel).
namespace selftest {

inline int popc(uint32_t v) {
  int n = 0;
  for (; v; v &= v - 1) ++n;
  return n;
}
inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline std::string str(int64_t v) { return std::to_string(v); }

// Fills emulated outputs and shared memory, so an element a kernel never writes fails the comparison.
inline constexpr double kPoison = std::numeric_limits<double>::quiet_NaN();

// cudaDevAttrMaxSharedMemoryPerBlockOptin of the parts the layouts are planned for.
inline constexpr int64_t kSmemOptInSm90 = 232448;  // H100 / H200
inline constexpr int64_t kSmemOptInSm80 = 166912;  // A100

// PTX mma fragments: groupID = laneid >> 2, threadID_in_group = laneid % 4.
struct RC {
  int row, col;
};
inline int gid(int lane) { return lane >> 2; }
inline int tig(int lane) { return lane % 4; }

}  // namespace selftest
}  // namespace fastops
