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
FASTOPS_HD uint32_t topk_order_bits(float x) {
  uint32_t b = x != x ? 0xff800000u : topk_float_bits(x);  // NaN as -inf
  if (b == 0x80000000u) b = 0;                                // -0 as +0
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

FASTOPS_HD uint64_t topk_key(float score, int64_t edge) {
  return (uint64_t(topk_order_bits(score)) << 32) | uint64_t(0xffffffffu - uint32_t(edge));
}
FASTOPS_HD int64_t topk_key_edge(uint64_t key) { return int64_t(0xffffffffu - uint32_t(key)); }

}  // namespace trie
}  // namespace fastops
