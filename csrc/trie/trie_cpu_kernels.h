// Private to the trie CPU kernels: the per-row sum of exponentials behind candidates' log-softmax, in a
// portable version (trie_cpu.cpp) and an AVX2+FMA one (trie_cpu_avx2.cpp, called only after a CPUID check).
#pragma once
#include <cstdint>

#include "common/dtype.h"

namespace fastops {
namespace trie {
namespace detail {

// exp(x) for x <= 0 as 2^n * p(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2 / 2, ln2 / 2]
// (ln 2 split in two so that n ln2_hi is exact), p a degree-7 minimax fit of e^r: ~1 ulp relative.
// x is clamped to kExpMinArg first: 2^n stays a normal float, and what the clamp adds (< 1e-37 per
// element) is far below the rounding of a sum that contains the row maximum's e^0 = 1.
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kExpMinArg = -87.0f;
// p(r) = 1 + r + r^2 (c0 + c1 r + ... + c5 r^5)
constexpr float kExpPoly[6] = {5.0000001201e-1f, 1.6666665459e-1f, 4.1665795894e-2f,
                               8.3334519073e-3f, 1.3981999507e-3f, 1.9875691500e-4f};

// Rows are summed in blocks of this many elements, each block's float lanes added into a double:
// float lanes alone would lose ~sqrt(V / lanes) ulp on a 150k vocabulary.
constexpr int64_t kSumBlock = 1024;

// The row maximum m (NaN entries skipped) and sum(exp(row[t] - m)) over t < vocab (NaN if an entry is
// NaN); sum is left 0 when m is +-inf. log() is taken by the caller (no libm in the AVX2 file).
struct ExpSum {
  float max;
  double sum;
};
ExpSum exp_sum_scalar(const void* row, DType dtype, int64_t vocab);
ExpSum exp_sum_avx2(const void* row, DType dtype, int64_t vocab);

}  // namespace detail
}  // namespace trie
}  // namespace fastops
