// The packed operand of fastops::bitgemm ("planes32"), shared by host code, CPU kernels and CUDA
// kernels. One operand is an integer matrix X[rows, k] (activations A[M, K] or weights W[N, K], both
// K-major), stored as `bits` bit planes:
//
//   planes: uint32 [bits][rows][words], words = padded_k(k) / 32, padded_k = k rounded up to 256.
//           Element (r, c) of plane i is bit (c % 32) of word planes[i][r][c / 32] (LSB first).
//           Padding bits (c >= k) are zero in every plane.
//   offset: int32 [rows]   the row's additive constant (below).
//   rowsum: int32 [rows]   sum over the k logical columns of (X[r, c] - offset[r]).
//
// The value of an element is  X[r, c] = sum_i plane_coeff(fmt, bits, i) * bit_i(r, c) + offset[r]:
//   unsigned: coeff 2^i,                              offset = -zero_point[r] (0 without zero points)
//   signed:   coeff 2^i, and -2^(bits-1) for the MSB (two's complement), offset 0
//   bipolar:  coeff 2^(i+1), offset -(2^bits - 1)    (values +-1, +-3, ..., +-(2^bits - 1); the bits
//             are the unsigned code u with X = 2u - (2^bits - 1), i.e. offset binary)
//
// So C = A W^T is, with P_ij[m, n] = popcount(a_i[m] AND w_j[n]) over the padded rows,
//   C[m,n] = sum_ij ca_i cw_j P_ij[m,n] + ow[n] * rowsum_a[m] + oa[m] * rowsum_w[n] + k * oa[m] * ow[n]
// which is exact in wrapping 32-bit arithmetic whenever the true result fits in int32 (the API rejects
// shapes where it might not: k * (2^bits_a - 1) * (2^bits_w - 1) > INT32_MAX). Padding contributes
// nothing to P because padded bits are zero, and the corrections use the logical k.
#pragma once
#include <cstdint>

#include "common/hd.h"

namespace fastops {
namespace bitgemm {

enum class Format : int { unsigned_int = 0, signed_int = 1, bipolar = 2 };

constexpr int kMaxBits = 8;
constexpr int64_t kPadBits = 256;  // k is padded to this many bits (one m16n8k256 MMA step)
constexpr int64_t kWordBits = 32;

FASTOPS_HD int64_t padded_k(int64_t k) { return (k + kPadBits - 1) / kPadBits * kPadBits; }
FASTOPS_HD int64_t words_per_row(int64_t k) { return padded_k(k) / kWordBits; }

// Coefficient of bit plane i (0 = least significant) in the value of an element.
FASTOPS_HD int32_t plane_coeff(Format fmt, int bits, int i) {
  if (fmt == Format::bipolar) return int32_t(2) << i;
  if (fmt == Format::signed_int && i == bits - 1) return -(int32_t(1) << i);
  return int32_t(1) << i;
}

// The constant every row of a format has before zero points (bipolar only).
FASTOPS_HD int32_t format_offset(Format fmt, int bits) {
  return fmt == Format::bipolar ? -((int32_t(1) << bits) - 1) : 0;
}

// Largest |X| a format can hold (zero points are restricted to [0, 2^bits - 1], so unsigned with
// zero points stays within 2^bits - 1 too). The overflow bound uses (2^bits - 1) for every format.
FASTOPS_HD int64_t max_abs_bound(int bits) { return (int64_t(1) << bits) - 1; }

// True when k * (2^bits_a - 1) * (2^bits_w - 1) fits in int32, i.e. no product can overflow.
FASTOPS_HD bool fits_int32(int64_t k, int bits_a, int bits_w) {
  return k <= 0 || max_abs_bound(bits_a) * max_abs_bound(bits_w) <= int64_t(0x7fffffff) / k;
}

}  // namespace bitgemm
}  // namespace fastops
