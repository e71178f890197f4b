// Top-k keys of the candidates mode, shared by the CPU (trie_cpu.cpp) and CUDA (trie_cuda.cu) kernels so
// both devices rank children identically: one uint64 per candidate, larger = better. The score's
// order-preserving bits sit on top (NaN ranks like -inf, -0 like +0), then ~edge, so equal scores prefer
// the smaller edge, i.e. the smaller token (tokens ascend with the edge). Key 0 means "no candidate": it
// is below every real key because ~edge >= 2^31 for edge < 2^31. Scores are not decoded from keys (NaN
// would be lost): writers re-read the score of the kept edge.
#pragma once
#include <cstdint>
#include <cstring>

#include "common/hd.h"

namespace fastops {
namespace trie {

FASTOPS_HD uint32_t topk_float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
#endif
}

// Unsigned bits in the order of the floats: negative floats flipped, non-negative ones with the sign set.
// Branch-free (selects and an arithmetic shift): scores of either sign in random order made the CPU's
// sign branch mispredict on half the children (2.7x slower on raw logits than on log-probabilities).
FASTOPS_HD uint32_t topk_order_bits(float x) {
  uint32_t b = topk_float_bits(x);
  b = x != x ? 0xff800000u : b;   // NaN as -inf
  b = b == 0x80000000u ? 0u : b;  // -0 as +0
  return b ^ (uint32_t(int32_t(b) >> 31) | 0x80000000u);  // xor with all ones (negative) or the sign bit
}

FASTOPS_HD uint64_t topk_key(float score, int64_t edge) {
  return (uint64_t(topk_order_bits(score)) << 32) | uint64_t(0xffffffffu - uint32_t(edge));
}
FASTOPS_HD int64_t topk_key_edge(uint64_t key) { return int64_t(0xffffffffu - uint32_t(key)); }

}  // namespace trie
}  // namespace fastops
