// The parts of the AVX-512 SpMM kernels (sparse_cpu_kernels.h) shared by the two AVX-512 translation
// units: sparse_cpu_avx512.cpp (VBMI2 + BF16) and sparse_cpu_avx512f.cpp (AVX-512 F/BW/VL/DQ only, for
// CPUs such as Skylake-SP / Cascade Lake / Ice Lake that lack one of them). The fp32-pair path: a unit
// as two registers of fp32 (r, j) pairs (rows 0-7, rows 8-15), FMA against the broadcast fp32 pair of
// x, the pairs summed once in the epilogue. Everything is in an anonymous namespace so each translation
// unit compiles its own copy with its own flags. `Isa` supplies what differs:
//   template <DType D> static PairUnit unit16(uint32_t mask, const uint16_t*& p)
//       a unit of 16-bit values (fp16 / bf16) as fp32 pairs, p advanced past its values (and the stream
//       prefetched kPrefetchBytes ahead)
//   static __m256i to_bf16(__m512 v)   16 fp32 -> bf16, round to nearest even
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "sparse/sparse_cpu_kernels.h"

// GCC 12 reports the _mm512_undefined_* placeholders inside its own intrinsic headers as "may be used
// uninitialized" once they are inlined into
// the including translation unit (the pragma holds for the rest of it); nothing of ours is.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace fastops {
namespace sparse {
namespace detail {
namespace {

constexpr int G = kGroupStrips;
constexpr int64_t kTileUnits = 64;  // units per strip expanded into the tile at a time
constexpr int kPairBlock = 2;       // fp32 pairs: G x 2 tokens x 2 accumulators
constexpr int kPairStripBlock = 8;  // one strip x 8 tokens x 2 accumulators, decoded in the loop

inline double load_f64(const void* p) {
  double v;
  std::memcpy(&v, p, 8);
  return v;
}

// Values this far ahead of a stream are prefetched: the hardware prefetchers alone leave ~20% of the
// read bandwidth unused at 50-70% sparsity with 4-8 streams per core (Zen 4).
constexpr int kPrefetchBytes = 1024;

// A unit as fp32 (r, j) pairs: lo = rows 0..7, hi = rows 8..15.
struct PairUnit {
  __m512 lo, hi;
};

template <class Isa, DType D>
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
    u = Isa::template unit16<D>(mask, p);  // prefetches too
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
template <class Isa>
inline void store_rows(__m512 v, const Task& t, int64_t token, int64_t r0, int rows) {
  const __mmask16 m = __mmask16((1u << rows) - 1);
  const DType d = t.w->dtype;
  v = _mm512_add_ps(v, load_bias16(t.bias, d, r0, m));
  char* row = static_cast<char*>(t.y) + token * t.y_stride * (d == DType::f32 ? 4 : 2);
  if (d == DType::f32) {
    _mm512_mask_storeu_ps(reinterpret_cast<float*>(row) + r0, m, v);
  } else {
    const __m256i h =
        d == DType::f16 ? _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC) : Isa::to_bf16(v);
    _mm256_mask_storeu_epi16(reinterpret_cast<uint16_t*>(row) + r0, m, h);
  }
}

// ---- fp16 / fp32 weights: fp32 pairs and FMA -----------------------------------------------------
// Strips [g0, g0 + GS) of the group x NT tokens: acc[g][t] accumulates units [u0, u0 + nu); next(w)
// yields the next unit of each of those strips (decoded in place or loaded from the tile).
template <int GS, int NT, class Next>
inline void pair_block(int64_t nu, int64_t u0, const double* const* xrows, PairUnit (&acc)[GS][NT], Next&& next) {
  for (int64_t u = u0; u < u0 + nu; ++u) {
    PairUnit w[GS];
    next(w);
    for (int t = 0; t < NT; ++t) {
      const __m512 b = _mm512_castpd_ps(_mm512_set1_pd(load_f64(xrows[t] + u)));
      for (int g = 0; g < GS; ++g) {
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

template <class Isa, DType D, int GS, int NT>
void pair_tokens(const Task& t, Streams<void>& s, int g0, int64_t tok, int64_t u0, int64_t nu, const __m512* tile,
                 bool first, bool last) {
  const double* xrows[NT];
  for (int i = 0; i < NT; ++i)
    xrows[i] = reinterpret_cast<const double*>(static_cast<const float*>(t.x.data) + (t.token0 + tok + i) * t.x.stride);
  PairUnit acc[GS][NT];
  float* partial = t.scratch + tok * G * 32;
  for (int g = 0; g < GS; ++g)
    for (int i = 0; i < NT; ++i) {
      float* p = partial + (i * G + g0 + g) * 32;
      acc[g][i].lo = first ? _mm512_setzero_ps() : _mm512_load_ps(p);
      acc[g][i].hi = first ? _mm512_setzero_ps() : _mm512_load_ps(p + 16);
    }
  if (tile) {
    const __m512* p = tile + 2 * g0;
    pair_block(nu, u0, xrows, acc, [&](PairUnit(&w)[GS]) {
      for (int g = 0; g < GS; ++g) w[g] = PairUnit{_mm512_load_ps(p + 2 * g), _mm512_load_ps(p + 2 * g + 1)};
      p += 2 * G;
    });
  } else {
    int64_t u = u0;
    pair_block(nu, u0, xrows, acc, [&](PairUnit(&w)[GS]) {
      for (int g = 0; g < GS; ++g) w[g] = expand_pairs<Isa, D>(s.masks[g0 + g][u], s.vals[g0 + g]);
      ++u;
    });
  }
  for (int g = 0; g < GS; ++g)
    for (int i = 0; i < NT; ++i) {
      if (!last) {
        float* p = partial + (i * G + g0 + g) * 32;
        _mm512_store_ps(p, acc[g][i].lo);
        _mm512_store_ps(p + 16, acc[g][i].hi);
      } else if (s.rows[g0 + g]) {
        store_rows<Isa>(sum_pairs(acc[g][i]), t, tok + i, (t.strip0 + g0 + g) * kStripRows, s.rows[g0 + g]);
      }
    }
}

template <class Isa, DType D>
void run_pairs(const Task& t) {
  Streams<void> s = open_streams<void>(t);
  const int64_t units = units_per_strip(t.w->k);
  const int nt = int(std::min<int64_t>(t.tokens, kPairStripBlock));
  if (t.tokens <= kPairBlock) {  // decode straight into the multiply: all strips x up to 2 tokens
    with_count<1, kPairBlock>(nt, [&](auto c) { pair_tokens<Isa, D, G, c.value>(t, s, 0, 0, 0, units, nullptr, true, true); });
    return;
  }
  if (t.tokens <= kPairStripBlock) {  // the same, one strip at a time x up to 8 tokens
    for (int g0 = 0; g0 < G && s.rows[g0]; ++g0)  // stand-in strips come last
      with_count<kPairBlock + 1, kPairStripBlock>(
          nt, [&](auto c) { pair_tokens<Isa, D, 1, c.value>(t, s, g0, 0, 0, units, nullptr, true, true); });
    return;
  }
  __m512* tile = reinterpret_cast<__m512*>(t.scratch + t.tokens * G * 32);
  for (int64_t u0 = 0; u0 < units; u0 += kTileUnits) {
    const int64_t nu = std::min(kTileUnits, units - u0);
    for (int64_t u = u0; u < u0 + nu; ++u)
      for (int g = 0; g < G; ++g) {
        const PairUnit w = expand_pairs<Isa, D>(s.masks[g][u], s.vals[g]);
        _mm512_store_ps(tile + ((u - u0) * G + g) * 2, w.lo);
        _mm512_store_ps(tile + ((u - u0) * G + g) * 2 + 1, w.hi);
      }
    for (int64_t tok = 0; tok < t.tokens; tok += kPairBlock)
      with_count<1, kPairBlock>(int(std::min<int64_t>(kPairBlock, t.tokens - tok)), [&](auto c) {
        pair_tokens<Isa, D, G, c.value>(t, s, 0, tok, u0, nu, tile, u0 == 0, u0 + nu == units);
      });
  }
}

// Partial sums of every token (<= 32 floats per strip and token) + the tile (<= 2 registers per unit).
int64_t scratch_floats(int64_t tokens) { return tokens * G * 32 + kTileUnits * G * 32; }

}  // namespace
}  // namespace detail
}  // namespace sparse
}  // namespace fastops
