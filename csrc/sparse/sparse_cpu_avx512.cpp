// AVX-512 SpMM kernels (sparse_cpu_kernels.h): VPEXPANDW / VEXPANDPS rebuild a 16 x 2 unit from its
// mask and one unaligned load of its packed values (GCC folds the load into the expand; on Zen 4 the
// register and memory forms measured the same here, against the research note's 1.2-2.3x), then
//   bf16 weights: one VDPBF16PS per unit and token against the broadcast bf16 pair x[t, 2u..2u+1];
//   fp16 / fp32:  the unit as two registers of fp32 (r, j) pairs, FMA against the broadcast fp32 pair,
//                 the pairs summed once in the epilogue.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "sparse/sparse_cpu_avx512_pairs.h"

namespace fastops {
namespace sparse {
namespace detail {
namespace {

constexpr int kBf16Block = 4;       // tokens per register block when decoding in the loop: G x 4 accumulators
constexpr int kBf16TileBlock = 6;   // tokens per register block over the tile: G x 6 accumulators

inline __m512i expand16(uint32_t mask, const uint16_t*& p) {
  _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T0);
  const __m512i v = _mm512_maskz_expand_epi16(mask, _mm512_loadu_si512(p));
  p += __builtin_popcount(mask);
  return v;
}

// sparse_cpu_avx512_pairs.h's Isa: one VPEXPANDW per 16-bit unit, VCVTNEPS2BF16 for bf16 output.
struct Vbmi2Bf16 {
  template <DType D>
  static PairUnit unit16(uint32_t mask, const uint16_t*& p) {
    static_assert(D == DType::f16, "bf16 weights take the VDPBF16PS path");
    const __m512i v = expand16(mask, p);
    return {_mm512_cvtph_ps(_mm512_castsi512_si256(v)), _mm512_cvtph_ps(_mm512_extracti64x4_epi64(v, 1))};
  }
  static __m256i to_bf16(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }
};

// ---- bf16 weights: VDPBF16PS ---------------------------------------------------------------------
// Strips [g0, g0 + GS) of the group x NT tokens: acc[g][t] accumulates units [u0, u0 + nu); next(w)
// yields the next unit of each of those strips (decoded in place or loaded from the tile).
template <int GS, int NT, class Next>
inline void bf16_block(int64_t nu, int64_t u0, const uint32_t* const* xrows, __m512 (&acc)[GS][NT], Next&& next) {
  for (int64_t u = u0; u < u0 + nu; ++u) {
    __m512i w[GS];
    next(w);
    for (int t = 0; t < NT; ++t) {
      const __m512i b = _mm512_set1_epi32(int(xrows[t][u]));
      for (int g = 0; g < GS; ++g) acc[g][t] = _mm512_dpbf16_ps(acc[g][t], (__m512bh)w[g], (__m512bh)b);
    }
  }
}

template <int GS, int NT>
void bf16_tokens(const Task& t, Streams<uint16_t>& s, int g0, int64_t tok, int64_t u0, int64_t nu,
                 const __m512i* tile, bool first, bool last) {
  const uint32_t* xrows[NT];
  for (int i = 0; i < NT; ++i)
    xrows[i] = static_cast<const uint32_t*>(t.x.data) + (t.token0 + tok + i) * (t.x.stride / 2);
  __m512 acc[GS][NT];
  float* partial = t.scratch + tok * G * 16;
  for (int g = 0; g < GS; ++g)
    for (int i = 0; i < NT; ++i)
      acc[g][i] = first ? _mm512_setzero_ps() : _mm512_load_ps(partial + (i * G + g0 + g) * 16);
  if (tile) {
    const __m512i* p = tile + g0;
    bf16_block(nu, u0, xrows, acc, [&](__m512i(&w)[GS]) {
      for (int g = 0; g < GS; ++g) w[g] = _mm512_load_si512(p + g);
      p += G;
    });
  } else {
    // Stream state in locals: through `s` every pointer bump would be a store.
    const uint32_t* masks[GS];
    const uint16_t* vals[GS];
    for (int g = 0; g < GS; ++g) masks[g] = s.masks[g0 + g] + u0, vals[g] = s.vals[g0 + g];
    bf16_block(nu, u0, xrows, acc, [&](__m512i(&w)[GS]) {
      for (int g = 0; g < GS; ++g) w[g] = expand16(*masks[g]++, vals[g]);
    });
    for (int g = 0; g < GS; ++g) s.vals[g0 + g] = vals[g];
  }
  for (int g = 0; g < GS; ++g)
    for (int i = 0; i < NT; ++i) {
      if (!last) {
        _mm512_store_ps(partial + (i * G + g0 + g) * 16, acc[g][i]);
      } else if (s.rows[g0 + g]) {
        store_rows<Vbmi2Bf16>(acc[g][i], t, tok + i, (t.strip0 + g0 + g) * kStripRows, s.rows[g0 + g]);
      }
    }
}

void run_bf16(const Task& t) {
  Streams<uint16_t> s = open_streams<uint16_t>(t);
  const int64_t units = units_per_strip(t.w->k);
  const int nt = int(std::min<int64_t>(t.tokens, 2 * kBf16Block));
  if (t.tokens <= kBf16Block) {  // decode straight into the multiply: all strips x up to 4 tokens
    with_count<1, kBf16Block>(nt, [&](auto c) { bf16_tokens<G, c.value>(t, s, 0, 0, 0, units, nullptr, true, true); });
    return;
  }
  if (t.tokens <= 2 * kBf16Block) {  // the same, half the strips at a time x up to 8 tokens
    for (int g0 = 0; g0 < G; g0 += G / 2)
      with_count<kBf16Block + 1, 2 * kBf16Block>(
          nt, [&](auto c) { bf16_tokens<G / 2, c.value>(t, s, g0, 0, 0, units, nullptr, true, true); });
    return;
  }
  // Expand a chunk of units once into the tile, then run every token block over it.
  __m512i* tile = reinterpret_cast<__m512i*>(t.scratch + t.tokens * G * 16);
  for (int64_t u0 = 0; u0 < units; u0 += kTileUnits) {
    const int64_t nu = std::min(kTileUnits, units - u0);
    for (int64_t u = u0; u < u0 + nu; ++u)
      for (int g = 0; g < G; ++g) _mm512_store_si512(tile + (u - u0) * G + g, expand16(s.masks[g][u], s.vals[g]));
    for (int64_t tok = 0; tok < t.tokens; tok += kBf16TileBlock)
      with_count<1, kBf16TileBlock>(int(std::min<int64_t>(kBf16TileBlock, t.tokens - tok)), [&](auto c) {
        bf16_tokens<G, c.value>(t, s, 0, tok, u0, nu, tile, u0 == 0, u0 + nu == units);
      });
  }
}

void run(const Task& t) {
  switch (t.w->dtype) {
    case DType::bf16: return run_bf16(t);
    case DType::f16: return run_pairs<Vbmi2Bf16, DType::f16>(t);
    default: return run_pairs<Vbmi2Bf16, DType::f32>(t);
  }
}

void pack_x(const void* x, int64_t x_stride, DType dtype, int64_t n, int64_t k, int64_t kp, void* out) {
  if (dtype != DType::bf16) return avx2_kernels().pack_x(x, x_stride, dtype, n, k, kp, out);
  for (int64_t t = 0; t < n; ++t) {
    uint16_t* dst = static_cast<uint16_t*>(out) + t * kp;
    std::memcpy(dst, static_cast<const uint16_t*>(x) + t * x_stride, size_t(k) * 2);
    std::memset(dst + k, 0, size_t(kp - k) * 2);
  }
}

}  // namespace

const CpuKernels& avx512_kernels() {
  static const CpuKernels k = {"avx512", true, pack_x, run, scratch_floats};
  return k;
}

}  // namespace detail
}  // namespace sparse
}  // namespace fastops
