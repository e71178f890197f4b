// AVX-512 bitgemm kernels (compiled with AVX-512 F/BW/VL/DQ/VPOPCNTDQ/VNNI flags; called only after
// a CPUID check for all of them). Contracts: bitgemm_cpu_kernels.h.
//
// popcount: per 64 bytes of a plane-row pair, vpandq + vpopcntq + vpaddq.
// int8: rows unpack in natural element order with one masked byte (or word) add per plane, the bit
// plane itself as the mask; narrow tiles are vpdpbusd (u8 x s8, exact int32 sums), wide ones vpdpwssd.
// Popcount tiles of 4 x 6 plane-rows: 24 accumulators keep enough independent operations in flight
// to cover their latency, and each operand load feeds 4 or 6 of them. Dot tiles are 4 x 4 (4 x 6
// spilled). Narrow int8 GEMMs with many A rows use panel_gemm instead (below): no horizontal sums.
// Epilogue, min/max and quantization gain nothing from 512 bits: those are AVX2's.
//
// This file must not use inline functions shared with other translation units (dtype.h helpers,
// std containers): the linker could keep this AVX-512 copy for callers on CPUs without AVX-512.
// GCC 12's AVX-512 intrinsics warn on their own deliberately undefined vectors (-Wuninitialized);
// the warning is located in the header, so silencing it there leaves this file's code checked.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstdint>
#include <cstring>
#include <utility>

#include "bitgemm/bitgemm_cpu_kernels.h"

namespace fastops {
namespace bitgemm {
namespace detail {
namespace {


uint64_t load_u64(const uint32_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// f(std::integral_constant<int, E>) for E in [0, N), unrolled by the front end. GCC keeps an array
// of vector accumulators in registers only when every index is a constant before its early
// optimizations; in plain loops it leaves the array in memory and stores every update.
template <class F, int... E>
__attribute__((always_inline)) inline void unroll_seq(F& f, std::integer_sequence<int, E...>) {
  (f(std::integral_constant<int, E>{}), ...);
}
template <int N, class F>
__attribute__((always_inline)) inline void unroll(F&& f) {
  unroll_seq(f, std::make_integer_sequence<int, N>{});
}

// Lane sums of eight vectors of 16 uint32 lanes, as 8 uint32 (wrapping): rounds of pairwise adds
// that halve the data while keeping the vectors apart, instead of eight horizontal reductions.
// By value: a pointer into the caller's accumulators makes GCC keep them in memory in its main loop.
__m256i sum_lanes8(__m512i v0, __m512i v1, __m512i v2, __m512i v3, __m512i v4, __m512i v5, __m512i v6, __m512i v7) {
  // Within each 128-bit chunk: (v0, v1, v0, v1) partial sums, then (v0, v1, v2, v3).
  auto pair32 = [](__m512i x, __m512i y) {
    return _mm512_add_epi32(_mm512_unpacklo_epi32(x, y), _mm512_unpackhi_epi32(x, y));
  };
  auto pair64 = [](__m512i x, __m512i y) {
    return _mm512_add_epi32(_mm512_unpacklo_epi64(x, y), _mm512_unpackhi_epi64(x, y));
  };
  const __m512i lo = pair64(pair32(v0, v1), pair32(v2, v3)), hi = pair64(pair32(v4, v5), pair32(v6, v7));
  // Chunks (lo0 + lo1, lo2 + lo3, hi0 + hi1, hi2 + hi3), then the two halves of each.
  const __m512i f = _mm512_add_epi32(_mm512_shuffle_i64x2(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)),
                                     _mm512_shuffle_i64x2(lo, hi, _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512i g = _mm512_add_epi32(f, _mm512_shuffle_i64x2(f, f, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_castsi512_si256(_mm512_shuffle_i64x2(g, g, _MM_SHUFFLE(2, 0, 2, 0)));
}

// out[e] = lane sums of acc[e] for e < N (a multiple of 8).
template <int N>
__attribute__((always_inline)) inline void store_sums(const __m512i* acc, uint32_t* out) {
  static_assert(N % 8 == 0, "sum_lanes8 takes accumulators eight at a time");
  unroll<N / 8>([&](auto g) {
    constexpr int e = 8 * g;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + e), sum_lanes8(acc[e], acc[e + 1], acc[e + 2], acc[e + 3],
                                                                        acc[e + 4], acc[e + 5], acc[e + 6], acc[e + 7]));
  });
}

// The tiles prefetch each W plane-row this far ahead into L2 (the next rows' bits: rows of a plane are
// contiguous): the hardware prefetcher stops at 4 KiB pages, which left decode (M = 1, W streamed
// once) at 38-74% of the read roofline for A <= 4 on Zen 4 (11008 x 4096; 64-102% with it in
// bench_bitgemm; no change at 4096^3, where W is reused from cache). As in the LUT kernel.
constexpr uintptr_t kPrefetchBytes = 16384;

// Both tiles: 24 accumulators + 4 + 1 operand vectors of the 32 zmm registers.
constexpr int kPopRowsA = 4, kPopRowsW = 6;
constexpr int kDotRowsU = 4, kDotRowsS = 4;

// RA x kPopRowsW plane-rows (RA = kPopRowsA: the full tile; fewer: popcount_short). Writes
// round_up(RA * kPopRowsW, 8) counts, the ones past the tile zero.
template <int RA>
void popcount_tile_avx512(const uint32_t* const* a, const uint32_t* const* w, int64_t nbytes, uint32_t* out) {
  constexpr int kAcc = RA * kPopRowsW, kSums = (kAcc + 7) / 8 * 8;
  __m512i acc[kSums];
  unroll<kSums>([&](auto e) { acc[e] = _mm512_setzero_si512(); });
  const int64_t qwords = nbytes / 8;
  auto step = [&](int64_t q, __mmask8 m) __attribute__((always_inline)) {
    __m512i av[RA];
    unroll<RA>([&](auto i) { av[i] = _mm512_maskz_loadu_epi64(m, a[i] + 2 * q); });
    unroll<kPopRowsW>([&](auto j) {
      // Integer address math: the hint may point past the array (prefetches never fault).
      _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(w[j] + 2 * q) + kPrefetchBytes),
                   _MM_HINT_T1);
      const __m512i wv = _mm512_maskz_loadu_epi64(m, w[j] + 2 * q);
      unroll<RA>([&](auto i) {
        __m512i& x = acc[i * kPopRowsW + j];
        x = _mm512_add_epi32(x, _mm512_popcnt_epi32(_mm512_and_si512(av[i], wv)));
      });
    });
  };
  int64_t q = 0;
  for (; q + 8 <= qwords; q += 8) step(q, __mmask8(0xff));
  // nbytes is a multiple of 16: the last vector may hold 2, 4 or 6 qwords.
  if (q < qwords) step(q, __mmask8((1u << (qwords - q)) - 1));
  store_sums<kSums>(acc, out);
}

void unpack_avx512(const uint32_t* const* plane_rows, const UnpackSpec& s, int64_t nwords, void* out) {
  if (!s.wide) {  // 64 bytes per two words; values wrap in bytes (u8 or s8 as the spec's range says)
    const __m512i start = _mm512_set1_epi8(char(-s.bias));
    for (int64_t w = 0; w < nwords; w += 2) {
      __m512i v = start;
      for (int j = s.plane_begin; j < s.plane_end; ++j) {
        const uint64_t bits = load_u64(plane_rows[j] + w);
        v = _mm512_mask_add_epi8(v, __mmask64(j == s.flip_plane ? ~bits : bits), v,
                                 _mm512_set1_epi8(char(1 << (j - s.plane_begin))));
      }
      _mm512_storeu_si512(static_cast<__m512i*>(out) + w / 2, v);
    }
    return;
  }
  const __m512i start = _mm512_set1_epi16(short(-s.bias));
  for (int64_t w = 0; w < nwords; ++w) {
    __m512i v = start;
    for (int j = s.plane_begin; j < s.plane_end; ++j) {
      const uint32_t bits = plane_rows[j][w];
      v = _mm512_mask_add_epi16(v, __mmask32(j == s.flip_plane ? ~bits : bits), v,
                                _mm512_set1_epi16(short(1 << (j - s.plane_begin))));
    }
    _mm512_storeu_si512(static_cast<__m512i*>(out) + w, v);
  }
}

// out[i][j] = sum over nchunks kChunkBytes chunks (an even count: whole 64-byte vectors) of
// Dot(u[i], s[j]), with Dot = vpdpbusd (Wide = false) or vpdpwssd; both are exact in int32.
template <bool Wide>
void dot_tile(const void* const* u, const void* const* s, int64_t nchunks, uint32_t* out) {
  const __m512i* up[kDotRowsU];
  const __m512i* sp[kDotRowsS];
  for (int i = 0; i < kDotRowsU; ++i) up[i] = static_cast<const __m512i*>(u[i]);
  for (int j = 0; j < kDotRowsS; ++j) sp[j] = static_cast<const __m512i*>(s[j]);
  __m512i acc[kDotRowsU * kDotRowsS];
  unroll<kDotRowsU * kDotRowsS>([&](auto e) { acc[e] = _mm512_setzero_si512(); });
  for (int64_t v = 0; v < nchunks / 2; ++v) {
    __m512i uv[kDotRowsU];
    unroll<kDotRowsU>([&](auto i) { uv[i] = _mm512_loadu_si512(up[i] + v); });
    unroll<kDotRowsS>([&](auto j) {
      const __m512i sv = _mm512_loadu_si512(sp[j] + v);
      unroll<kDotRowsU>([&](auto i) {
        __m512i& x = acc[i * kDotRowsS + j];
        x = Wide ? _mm512_dpwssd_epi32(x, uv[i], sv) : _mm512_dpbusd_epi32(x, uv[i], sv);
      });
    });
  }
  store_sums<kDotRowsU * kDotRowsS>(acc, out);
}

void dot_narrow_avx512(const void* const* u, const void* const* s, const int16_t* coef, int64_t nchunks, int,
                       uint32_t* out) {
  dot_tile<false>(u, s, nchunks, out);
  for (int i = 0; i < kDotRowsU; ++i)
    for (int j = 0; j < kDotRowsS; ++j) out[i * kDotRowsS + j] *= uint32_t(coef[j]);
}

void dot_wide_avx512(const void* const* u, const void* const* s, const int16_t*, int64_t nchunks, int, uint32_t* out) {
  dot_tile<true>(u, s, nchunks, out);
}

// panel_gemm: 6 A rows x 64 panel columns = 24 accumulators in registers for the whole run of k
// (no horizontal sums, unlike dot tiles); per four k, 4 panel vectors and 6 broadcast A dwords feed
// 24 vpdpbusd.
constexpr int kPanelRows = 6, kPanelVecs = 4, kPanelCols = 16 * kPanelVecs;

template <bool AIsU>
void panel_gemm_tile(const uint8_t* const* a, const uint8_t* panel, int64_t kquads, uint32_t* c, int64_t ldc,
                     int rows, int cols) {
  __m512i acc[kPanelRows * kPanelVecs];
  unroll<kPanelRows * kPanelVecs>([&](auto e) { acc[e] = _mm512_setzero_si512(); });
  for (int64_t q = 0; q < kquads; ++q) {
    __m512i pv[kPanelVecs];
    unroll<kPanelVecs>([&](auto j) { pv[j] = _mm512_loadu_si512(panel + (q * kPanelCols + 16 * j) * 4); });
    unroll<kPanelRows>([&](auto i) {
      int32_t quad;
      std::memcpy(&quad, a[i] + 4 * q, sizeof quad);
      const __m512i av = _mm512_set1_epi32(quad);
      unroll<kPanelVecs>([&](auto j) {
        __m512i& x = acc[i * kPanelVecs + j];
        x = AIsU ? _mm512_dpbusd_epi32(x, av, pv[j]) : _mm512_dpbusd_epi32(x, pv[j], av);
      });
    });
  }
  unroll<kPanelRows>([&](auto i) {
    if (i >= rows) return;
    unroll<kPanelVecs>([&](auto j) {
      const int left = cols - 16 * j;
      if (left <= 0) return;
      const __mmask16 m = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
      uint32_t* dst = c + i * ldc + 16 * j;
      _mm512_mask_storeu_epi32(dst, m, _mm512_add_epi32(_mm512_maskz_loadu_epi32(m, dst), acc[i * kPanelVecs + j]));
    });
  });
}

void panel_gemm_avx512(const uint8_t* const* a, const uint8_t* panel, int64_t kquads, bool a_is_u, uint32_t* c,
                       int64_t ldc, int rows, int cols) {
  if (a_is_u)
    panel_gemm_tile<true>(a, panel, kquads, c, ldc, rows, cols);
  else
    panel_gemm_tile<false>(a, panel, kquads, c, ldc, rows, cols);
}

}  // namespace

const CpuKernels& avx512_kernels() {
  static const CpuKernels kernels = [] {
    CpuKernels k = avx2_kernels();
    k.isa = "avx512";
    k.popcount_cost = 10;  // dot / popcount just under 3: three plane pairs lose at M = K = 1024 (and
    k.unpack_cost = 140;   // win by ~20% at 4096: short K costs popcount tiles more)
    k.dot_cost = 29;
    k.narrow_exact = true;
    k.pop_rows_a = kPopRowsA;
    k.pop_rows_w = kPopRowsW;
    k.dot_rows_u = kDotRowsU;
    k.dot_rows_s = kDotRowsS;
    k.popcount_tile = popcount_tile_avx512<kPopRowsA>;
    k.popcount_short[0] = popcount_tile_avx512<1>;
    k.popcount_short[1] = popcount_tile_avx512<2>;
    k.popcount_short[2] = popcount_tile_avx512<3>;
    k.unpack = unpack_avx512;
    k.dot_narrow = dot_narrow_avx512;
    k.dot_wide = dot_wide_avx512;
    k.panel_rows = kPanelRows;
    k.panel_cols = kPanelCols;
    k.panel_gemm = panel_gemm_avx512;
    return k;
  }();
  return kernels;
}

}  // namespace detail
}  // namespace bitgemm
}  // namespace fastops
