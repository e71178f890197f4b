// AVX-512 SpMM kernels (sparse_cpu_kernels.h): VPEXPANDW / VEXPANDPS rebuild a 16 x 2 unit from its
// mask and one unaligned load of its packed values (GCC folds the load into the expand; on Zen 4 the
// register and memory forms measured the same here, against the research note's 1.2-2.3x), then
//   bf16 weights: one VDPBF16PS per unit and token against the broadcast bf16 pair x[t, 2u..2u+1];
//   fp16 / fp32:  the unit as two registers of fp32 (r, j) pairs, FMA against the broadcast fp32 pair,
//                 the pairs summed once in the epilogue.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "sparse/sparse_cpu_kernels.h"

// GCC 12 reports the _mm512_undefined_* placeholders inside its own intrinsic headers as "may be used
// uninitialized" once they are inlined here; nothing of ours is.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace fastops {
namespace sparse {
namespace detail {
namespace {

constexpr int G = kGroupStrips;
constexpr int64_t kTileUnits = 64;  // units per strip expanded into the tile at a time
constexpr int kBf16Block = 4;       // tokens per register block when decoding in the loop: G x 4 accumulators
constexpr int kBf16TileBlock = 6;   // tokens per register block over the tile: G x 6 accumulators
constexpr int kPairBlock = 2;       // fp32 pairs: G x 2 x 2 accumulators

inline double load_f64(const void* p) {
  double v;
  std::memcpy(&v, p, 8);
  return v;
}

// Values this far ahead of a stream are prefetched: the hardware prefetchers alone leave ~20% of the
// read bandwidth unused at 50-70% sparsity with 4-8 streams per core (Zen 4).
constexpr int kPrefetchBytes = 1024;

inline __m512i expand16(uint32_t mask, const uint16_t*& p) {
  _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T0);
  const __m512i v = _mm512_maskz_expand_epi16(mask, _mm512_loadu_si512(p));
  p += __builtin_popcount(mask);
  return v;
}

// A unit as fp32 (r, j) pairs: lo = rows 0..7, hi = rows 8..15.
struct PairUnit {
  __m512 lo, hi;
};

template <DType D>
inline PairUnit expand_pairs(uint32_t mask, const void*& pv) {
  PairUnit u;
  if constexpr (D == DType::f32) {
    const float* p = static_cast<const float*>(pv);
    _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T0);
    const uint32_t mlo = mask & 0xffffu, mhi = mask >> 16;
    u.lo = _mm512_maskz_expand_ps(__mmask16(mlo), _mm512_loadu_ps(p));
    p += __builtin_popcount(mlo);
    u.hi = _mm512_maskz_expand_ps(__mmask16(mhi), _mm512_loadu_ps(p));
    p += __builtin_popcount(mhi);
    pv = p;
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(pv);
    const __m512i v = expand16(mask, p);
    u.lo = _mm512_cvtph_ps(_mm512_castsi512_si256(v));
    u.hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(v, 1));
    pv = p;
  }
  return u;
}

inline __m512 load_bias16(const void* bias, DType d, int64_t r0, __mmask16 m) {
  if (!bias) return _mm512_setzero_ps();
  if (d == DType::f32) return _mm512_maskz_loadu_ps(m, static_cast<const float*>(bias) + r0);
  const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(bias) + r0);
  if (d == DType::f16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// y[r0 .. r0 + rows) of one output row = v (+ bias), rounded to nearest even.
inline void store_rows(__m512 v, const Task& t, int64_t token, int64_t r0, int rows) {
  const __mmask16 m = __mmask16((1u << rows) - 1);
  const DType d = t.w->dtype;
  v = _mm512_add_ps(v, load_bias16(t.bias, d, r0, m));
  char* row = static_cast<char*>(t.y) + token * t.y_stride * (d == DType::f32 ? 4 : 2);
  if (d == DType::f32) {
    _mm512_mask_storeu_ps(reinterpret_cast<float*>(row) + r0, m, v);
  } else {
    const __m256i h = d == DType::f16 ? _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
                                      : (__m256i)_mm512_cvtneps_pbh(v);
    _mm256_mask_storeu_epi16(reinterpret_cast<uint16_t*>(row) + r0, m, h);
  }
}

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
        store_rows(acc[g][i], t, tok + i, (t.strip0 + g0 + g) * kStripRows, s.rows[g0 + g]);
      }
    }
}

// nt in [NTmin, NT]: the instantiation for exactly nt tokens.
template <int GS, int NT, int NTmin>
void bf16_tokens_dispatch(int nt, const Task& t, Streams<uint16_t>& s, int g0, int64_t tok, int64_t u0, int64_t nu,
                          const __m512i* tile, bool first, bool last) {
  if constexpr (NT > NTmin) {
    if (nt < NT) return bf16_tokens_dispatch<GS, NT - 1, NTmin>(nt, t, s, g0, tok, u0, nu, tile, first, last);
  }
  bf16_tokens<GS, NT>(t, s, g0, tok, u0, nu, tile, first, last);
}

void run_bf16(const Task& t) {
  Streams<uint16_t> s = open_streams<uint16_t>(t);
  const int64_t units = units_per_strip(t.w->k);
  const int nt = int(std::min<int64_t>(t.tokens, 2 * kBf16Block));
  if (t.tokens <= kBf16Block) {  // decode straight into the multiply: all strips x up to 4 tokens
    bf16_tokens_dispatch<G, kBf16Block, 1>(nt, t, s, 0, 0, 0, units, nullptr, true, true);
    return;
  }
  if (t.tokens <= 2 * kBf16Block) {  // the same, half the strips at a time x up to 8 tokens
    for (int g0 = 0; g0 < G; g0 += G / 2)
      bf16_tokens_dispatch<G / 2, 2 * kBf16Block, kBf16Block + 1>(nt, t, s, g0, 0, 0, units, nullptr, true, true);
    return;
  }
  // Expand a chunk of units once into the tile, then run every token block over it.
  __m512i* tile = reinterpret_cast<__m512i*>(t.scratch + t.tokens * G * 16);
  for (int64_t u0 = 0; u0 < units; u0 += kTileUnits) {
    const int64_t nu = std::min(kTileUnits, units - u0);
    for (int64_t u = u0; u < u0 + nu; ++u)
      for (int g = 0; g < G; ++g) _mm512_store_si512(tile + (u - u0) * G + g, expand16(s.masks[g][u], s.vals[g]));
    for (int64_t tok = 0; tok < t.tokens; tok += kBf16TileBlock)
      bf16_tokens_dispatch<G, kBf16TileBlock, 1>(int(std::min<int64_t>(kBf16TileBlock, t.tokens - tok)), t, s, 0, tok,
                                                u0, nu, tile, u0 == 0, u0 + nu == units);
  }
}

// ---- fp16 / fp32 weights: fp32 pairs and FMA -----------------------------------------------------
template <int NT, class Next>
inline void pair_block(int64_t nu, int64_t u0, const double* const* xrows, PairUnit (&acc)[G][kPairBlock],
                       Next&& next) {
  for (int64_t u = u0; u < u0 + nu; ++u) {
    PairUnit w[G];
    next(w);
    for (int t = 0; t < NT; ++t) {
      const __m512 b = _mm512_castpd_ps(_mm512_set1_pd(load_f64(xrows[t] + u)));
      for (int g = 0; g < G; ++g) {
        acc[g][t].lo = _mm512_fmadd_ps(w[g].lo, b, acc[g][t].lo);
        acc[g][t].hi = _mm512_fmadd_ps(w[g].hi, b, acc[g][t].hi);
      }
    }
  }
}

// Row sums of the (r, j) pairs: 16 rows.
inline __m512 sum_pairs(const PairUnit& a) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  return _mm512_add_ps(_mm512_permutex2var_ps(a.lo, even, a.hi), _mm512_permutex2var_ps(a.lo, odd, a.hi));
}

template <DType D, int NT>
void pair_tokens(const Task& t, Streams<void>& s, int64_t tok, int64_t u0, int64_t nu, const __m512* tile,
                 bool first, bool last) {
  const double* xrows[kPairBlock];
  for (int i = 0; i < NT; ++i)
    xrows[i] = reinterpret_cast<const double*>(static_cast<const float*>(t.x.data) + (t.token0 + tok + i) * t.x.stride);
  PairUnit acc[G][kPairBlock];
  float* partial = t.scratch + tok * G * 32;
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < NT; ++i) {
      float* p = partial + (i * G + g) * 32;
      acc[g][i].lo = first ? _mm512_setzero_ps() : _mm512_load_ps(p);
      acc[g][i].hi = first ? _mm512_setzero_ps() : _mm512_load_ps(p + 16);
    }
  if (tile) {
    const __m512* p = tile;
    pair_block<NT>(nu, u0, xrows, acc, [&](PairUnit(&w)[G]) {
      for (int g = 0; g < G; ++g) w[g] = PairUnit{_mm512_load_ps(p + 2 * g), _mm512_load_ps(p + 2 * g + 1)};
      p += 2 * G;
    });
  } else {
    int64_t u = u0;
    pair_block<NT>(nu, u0, xrows, acc, [&](PairUnit(&w)[G]) {
      for (int g = 0; g < G; ++g) w[g] = expand_pairs<D>(s.masks[g][u], s.vals[g]);
      ++u;
    });
  }
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < NT; ++i) {
      if (!last) {
        float* p = partial + (i * G + g) * 32;
        _mm512_store_ps(p, acc[g][i].lo);
        _mm512_store_ps(p + 16, acc[g][i].hi);
      } else if (s.rows[g]) {
        store_rows(sum_pairs(acc[g][i]), t, tok + i, (t.strip0 + g) * kStripRows, s.rows[g]);
      }
    }
}

template <DType D>
void run_pairs(const Task& t) {
  Streams<void> s = open_streams<void>(t);
  const int64_t units = units_per_strip(t.w->k);
  auto tokens = [&](int nt, int64_t tok, int64_t u0, int64_t nu, const __m512* tile) {
    const bool first = u0 == 0, last = u0 + nu == units;
    if (nt == 1) pair_tokens<D, 1>(t, s, tok, u0, nu, tile, first, last);
    else pair_tokens<D, 2>(t, s, tok, u0, nu, tile, first, last);
  };
  if (t.tokens <= kPairBlock) {
    tokens(int(t.tokens), 0, 0, units, nullptr);
    return;
  }
  __m512* tile = reinterpret_cast<__m512*>(t.scratch + t.tokens * G * 32);
  for (int64_t u0 = 0; u0 < units; u0 += kTileUnits) {
    const int64_t nu = std::min(kTileUnits, units - u0);
    for (int64_t u = u0; u < u0 + nu; ++u)
      for (int g = 0; g < G; ++g) {
        const PairUnit w = expand_pairs<D>(s.masks[g][u], s.vals[g]);
        _mm512_store_ps(tile + ((u - u0) * G + g) * 2, w.lo);
        _mm512_store_ps(tile + ((u - u0) * G + g) * 2 + 1, w.hi);
      }
    for (int64_t tok = 0; tok < t.tokens; tok += kPairBlock)
      tokens(int(std::min<int64_t>(kPairBlock, t.tokens - tok)), tok, u0, nu, tile);
  }
}

void run(const Task& t) {
  switch (t.w->dtype) {
    case DType::bf16: return run_bf16(t);
    case DType::f16: return run_pairs<DType::f16>(t);
    default: return run_pairs<DType::f32>(t);
  }
}

// Partial sums of every token (<= 32 floats per strip and token) + the tile (<= 2 registers per unit).
int64_t scratch_floats(int64_t tokens) { return tokens * G * 32 + kTileUnits * G * 32; }

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
