// AVX2 bitgemm kernels (compiled with -mavx2 -mfma -mf16c -mpopcnt; called only after a CPUID
// check). Contracts: bitgemm_cpu_kernels.h.
//
// popcount: per 32 bytes of a plane-row pair, AND and a nibble-table vpshufb popcount into byte
// counters, summed into 64-bit lanes (vpsadbw) every 31 vectors, before a byte could overflow.
// int8: rows unpack in natural element order (byte t of a 32-element group = bit t of its word);
// narrow tiles use vpmaddubsw (u8 x s8 -> int16 pairs), wide tiles vpmaddwd.
//
// This file must not use inline functions shared with other translation units (dtype.h helpers,
// std containers): the linker could keep this AVX2 copy for callers on CPUs without AVX2.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "bitgemm/bitgemm_cpu_kernels.h"
#include "common/avx2_convert.h"

namespace fastops {
namespace bitgemm {
namespace detail {
namespace {

// The popcount tile prefetches each W plane-row this far ahead into L2: the hardware prefetcher stops
// at 4 KiB pages (bitgemm_cpu_avx512.cpp has the measurements).
constexpr uintptr_t kPrefetchBytes = 16384;
constexpr int kPopRowsA = 2, kPopRowsW = 4;  // popcount tile: 8 accumulators + 6 operands of 16 ymm
constexpr int kPopTile = kPopRowsA * kPopRowsW;
constexpr int kDotRowsU = 2, kDotRowsS = 4;  // 8 (+ 8 int16) accumulators + 3 operands
constexpr int kDotTile = kDotRowsU * kDotRowsS;

__m256i load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

uint32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return uint32_t(_mm_cvtsi128_si32(s));
}

uint64_t load_u64(const uint32_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// out[e] += the sum of the bytes of c[e] for e < N (4 or 8), by horizontal adds across all N at once:
// per-accumulator reductions cost a tile call more than its loop at decode K.
template <int N>
void add_byte_sums(const __m256i* c, uint32_t* out) {
  static_assert(N == 4 || N == 8, "tile sizes");
  __m256i s[N];
  for (int e = 0; e < N; ++e) s[e] = _mm256_sad_epu8(c[e], _mm256_setzero_si256());  // 64-bit lanes < 2^32
  // hadd of 64-bit lanes (high halves zero) keeps one 32-bit value per lane; two more levels leave
  // accumulator e's two half-sums in 32-bit slot e % 4 of each 128-bit half.
  __m256i h[N / 2];
  for (int e = 0; e < N / 2; ++e) h[e] = _mm256_hadd_epi32(s[2 * e], s[2 * e + 1]);
  const __m256i g0 = _mm256_hadd_epi32(h[0], h[1]);
  if constexpr (N == 4) {
    const __m128i r = _mm_add_epi32(_mm256_castsi256_si128(g0), _mm256_extracti128_si256(g0, 1));
    __m128i* o = reinterpret_cast<__m128i*>(out);
    _mm_storeu_si128(o, _mm_add_epi32(_mm_loadu_si128(o), r));
  } else {
    const __m256i g1 = _mm256_hadd_epi32(h[2], h[3]);
    const __m256i r =
        _mm256_add_epi32(_mm256_permute2x128_si256(g0, g1, 0x20), _mm256_permute2x128_si256(g0, g1, 0x31));
    __m256i* o = reinterpret_cast<__m256i*>(out);
    _mm256_storeu_si256(o, _mm256_add_epi32(_mm256_loadu_si256(o), r));
  }
}

// RA x kPopRowsW plane-rows: RA = kPopRowsA is the full tile, RA = 1 popcount_short[0] (decode with
// one A plane-row, which the full tile would pair with a zero row: half its work wasted).
template <int RA>
void popcount_tile_avx2(const uint32_t* const* a, const uint32_t* const* w, int64_t nbytes, uint32_t* out) {
  constexpr int kAcc = RA * kPopRowsW;
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low_nibbles = _mm256_set1_epi8(0x0f);
  constexpr int64_t kBlockVectors = 31;  // 31 * 8 < 256: byte counters cannot wrap
  for (int e = 0; e < kAcc; ++e) out[e] = 0;
  const int64_t vectors = nbytes / 32;
  for (int64_t v0 = 0; v0 < vectors; v0 += kBlockVectors) {
    const int64_t v1 = v0 + kBlockVectors < vectors ? v0 + kBlockVectors : vectors;
    __m256i counts[kAcc];
    for (auto& c : counts) c = _mm256_setzero_si256();
    for (int64_t v = v0; v < v1; ++v) {
      __m256i av[RA];
      for (int i = 0; i < RA; ++i) av[i] = load(a[i] + 8 * v);
      for (int j = 0; j < kPopRowsW; ++j) {
        if (v % 2 == 0)  // one hint per 64-byte line; integer address math: it may point past the array
          _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(w[j] + 8 * v) + kPrefetchBytes),
                       _MM_HINT_T1);
        const __m256i wv = load(w[j] + 8 * v);
        for (int i = 0; i < RA; ++i) {
          const __m256i x = _mm256_and_si256(av[i], wv);
          const __m256i lo = _mm256_and_si256(x, low_nibbles);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low_nibbles);
          __m256i& c = counts[i * kPopRowsW + j];
          c = _mm256_add_epi8(c, _mm256_add_epi8(_mm256_shuffle_epi8(table, lo), _mm256_shuffle_epi8(table, hi)));
        }
      }
    }
    // Straight into out: 64-bit totals in memory cost more than these sums at decode K (one block).
    add_byte_sums<kAcc>(counts, out);
  }
  // nbytes is a multiple of 16: at most one 16-byte tail.
  for (int64_t q = vectors * 4; q < nbytes / 8; ++q)
    for (int i = 0; i < RA; ++i)
      for (int j = 0; j < kPopRowsW; ++j)
        out[i * kPopRowsW + j] += uint32_t(_mm_popcnt_u64(load_u64(a[i] + 2 * q) & load_u64(w[j] + 2 * q)));
}

// 0xff in byte t where bit t of word is set.
__m256i expand_bits(uint32_t word) {
  const __m256i byte_of_bit = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                               2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i bit_in_byte = _mm256_set1_epi64x(int64_t(0x8040201008040201ull));
  const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(int(word)), byte_of_bit);
  return _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit_in_byte), bit_in_byte);
}

// Natural element order. Narrow values wrap in bytes (u8 or s8 as the spec's range says); wide
// ones are the unsigned plane sum (at most 8 planes: < 256) widened, minus the bias.
void unpack_avx2(const uint32_t* const* plane_rows, const UnpackSpec& s, int64_t nwords, void* out) {
  const __m256i start = _mm256_set1_epi8(char(s.wide ? 0 : -s.bias));
  const __m256i bias16 = _mm256_set1_epi16(short(s.bias));
  for (int64_t w = 0; w < nwords; ++w) {
    __m256i v = start;
    for (int j = s.plane_begin; j < s.plane_end; ++j) {
      const uint32_t bits = j == s.flip_plane ? ~plane_rows[j][w] : plane_rows[j][w];
      v = _mm256_add_epi8(v, _mm256_and_si256(expand_bits(bits), _mm256_set1_epi8(char(1 << (j - s.plane_begin)))));
    }
    if (!s.wide) {
      _mm256_storeu_si256(static_cast<__m256i*>(out) + w, v);
      continue;
    }
    __m256i* o = static_cast<__m256i*>(out) + 2 * w;
    _mm256_storeu_si256(o, _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(v)), bias16));
    _mm256_storeu_si256(o + 1, _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(v, 1)), bias16));
  }
}

void dot_narrow_avx2(const void* const* u, const void* const* s, const int16_t* coef, int64_t nchunks, int flush_every,
                     uint32_t* out) {
  const __m256i* up[kDotRowsU];
  const __m256i* sp[kDotRowsS];
  for (int i = 0; i < kDotRowsU; ++i) up[i] = static_cast<const __m256i*>(u[i]);
  for (int j = 0; j < kDotRowsS; ++j) sp[j] = static_cast<const __m256i*>(s[j]);
  __m256i acc32[kDotTile];
  for (auto& a : acc32) a = _mm256_setzero_si256();
  for (int64_t c0 = 0; c0 < nchunks; c0 += flush_every) {
    const int64_t c1 = c0 + flush_every < nchunks ? c0 + flush_every : nchunks;
    __m256i acc16[kDotTile];
    for (auto& a : acc16) a = _mm256_setzero_si256();
    for (int64_t c = c0; c < c1; ++c) {
      __m256i uv[kDotRowsU];
      for (int i = 0; i < kDotRowsU; ++i) uv[i] = _mm256_loadu_si256(up[i] + c);
      for (int j = 0; j < kDotRowsS; ++j) {
        const __m256i sv = _mm256_loadu_si256(sp[j] + c);
        for (int i = 0; i < kDotRowsU; ++i)
          acc16[i * kDotRowsS + j] = _mm256_add_epi16(acc16[i * kDotRowsS + j], _mm256_maddubs_epi16(uv[i], sv));
      }
    }
    for (int i = 0; i < kDotRowsU; ++i)
      for (int j = 0; j < kDotRowsS; ++j)
        acc32[i * kDotRowsS + j] = _mm256_add_epi32(
            acc32[i * kDotRowsS + j], _mm256_madd_epi16(acc16[i * kDotRowsS + j], _mm256_set1_epi16(coef[j])));
  }
  for (int e = 0; e < kDotTile; ++e) out[e] = hsum_epi32(acc32[e]);
}

void dot_wide_avx2(const void* const* u, const void* const* s, const int16_t*, int64_t nchunks, int, uint32_t* out) {
  const __m256i* up[kDotRowsU];
  const __m256i* sp[kDotRowsS];
  for (int i = 0; i < kDotRowsU; ++i) up[i] = static_cast<const __m256i*>(u[i]);
  for (int j = 0; j < kDotRowsS; ++j) sp[j] = static_cast<const __m256i*>(s[j]);
  __m256i acc[kDotTile];
  for (auto& a : acc) a = _mm256_setzero_si256();
  for (int64_t c = 0; c < nchunks; ++c) {
    __m256i uv[kDotRowsU];
    for (int i = 0; i < kDotRowsU; ++i) uv[i] = _mm256_loadu_si256(up[i] + c);
    for (int j = 0; j < kDotRowsS; ++j) {
      const __m256i sv = _mm256_loadu_si256(sp[j] + c);
      for (int i = 0; i < kDotRowsU; ++i)
        acc[i * kDotRowsS + j] = _mm256_add_epi32(acc[i * kDotRowsS + j], _mm256_madd_epi16(uv[i], sv));
    }
  }
  for (int e = 0; e < kDotTile; ++e) out[e] = hsum_epi32(acc[e]);
}

void group_popcount_avx2(const uint32_t* row, int64_t nwords, int64_t group_words, int64_t ngroups, int32_t coeff,
                         int32_t* sums, int64_t sums_stride) {
  for (int64_t g = 0; g < ngroups; ++g) {
    const int64_t w1 = (g + 1) * group_words < nwords ? (g + 1) * group_words : nwords;
    uint64_t count = 0;
    for (int64_t w = g * group_words; w < w1; w += 2) count += uint64_t(_mm_popcnt_u64(load_u64(row + w)));
    int32_t& sum = sums[g * sums_stride];
    sum = int32_t(uint32_t(sum) + uint32_t(coeff) * uint32_t(count));
  }
}

template <DType D>
void store_row_typed(const float* vals, const void* bias, void* out, int64_t n) {
  constexpr int64_t elem = D == DType::f32 ? 4 : 2;
  const unsigned char* b = static_cast<const unsigned char*>(bias);
  unsigned char* o = static_cast<unsigned char*>(out);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(vals + i);
    if (b) v = _mm256_add_ps(v, load8<D>(b + i * elem));
    store8<D>(o + i * elem, v);
  }
  if (i == n) return;
  // The tail goes through buffers: vals, bias and out hold only n elements.
  const int64_t rest = n - i;
  alignas(32) float vbuf[8] = {};
  alignas(32) unsigned char buf[32] = {};
  std::memcpy(vbuf, vals + i, size_t(rest) * sizeof(float));
  __m256 v = _mm256_load_ps(vbuf);
  if (b) v = _mm256_add_ps(v, load8<D>(std::memcpy(buf, b + i * elem, size_t(rest * elem))));
  store8<D>(buf, v);
  std::memcpy(o + i * elem, buf, size_t(rest * elem));
}

void store_row_avx2(const float* vals, const void* bias, void* out, DType dtype, int64_t n) {
  switch (dtype) {
    case DType::f16: return store_row_typed<DType::f16>(vals, bias, out, n);
    case DType::bf16: return store_row_typed<DType::bf16>(vals, bias, out, n);
    default: return store_row_typed<DType::f32>(vals, bias, out, n);
  }
}

void epilogue_row_avx2(const EpilogueRow& e) { detail::epilogue_row<store_row_avx2>(e); }

// Elements [i, min(i + 8, k)) of x as fp32, zero past k.
template <DType D>
__m256 load_tail8(const void* x, int64_t i, int64_t k) {
  constexpr int64_t elem = D == DType::f32 ? 4 : 2;
  const unsigned char* p = static_cast<const unsigned char*>(x) + i * elem;
  if (i + 8 <= k) return load8<D>(p);
  alignas(32) unsigned char buf[32] = {};
  if (i < k) std::memcpy(buf, p, size_t((k - i) * elem));
  return load8<D>(buf);
}

template <DType D>
void minmax_typed(const void* x, int64_t k, float* lo, float* hi) {
  // Zero padding is neutral: the results include 0. min_ps(v, m) keeps m when v is nan, as the
  // scalar std::min(m, v) does.
  __m256 mn = _mm256_setzero_ps(), mx = _mm256_setzero_ps();
  for (int64_t i = 0; i < k; i += 8) {
    const __m256 v = load_tail8<D>(x, i, k);
    mn = _mm256_min_ps(v, mn);
    mx = _mm256_max_ps(v, mx);
  }
  alignas(32) float l[8], h[8];
  _mm256_store_ps(l, mn);
  _mm256_store_ps(h, mx);
  float a = 0.0f, b = 0.0f;
  for (int t = 0; t < 8; ++t) {
    a = l[t] < a ? l[t] : a;
    b = h[t] > b ? h[t] : b;
  }
  *lo = a;
  *hi = b;
}

void minmax_avx2(const void* x, DType dtype, int64_t k, float* lo, float* hi) {
  switch (dtype) {
    case DType::f16: return minmax_typed<DType::f16>(x, k, lo, hi);
    case DType::bf16: return minmax_typed<DType::bf16>(x, k, lo, hi);
    default: return minmax_typed<DType::f32>(x, k, lo, hi);
  }
}

// bitgemm_cpu.cpp's quantize_value on 8 lanes, rounding the same way: the barrier keeps -mfma from
// fusing x * inv into the add; min/max take their operands in the order that matches std::min /
// std::max on nan.
__m256i quantize8(__m256 x, const QuantParams& q) {
  __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(q.inv));
  asm("" : "+x"(t));
  t = _mm256_mul_ps(_mm256_add_ps(t, _mm256_set1_ps(q.add)), _mm256_set1_ps(q.mul));
  t = _mm256_add_ps(_mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), _mm256_set1_ps(q.zero));
  t = _mm256_min_ps(_mm256_set1_ps(q.qmax), _mm256_max_ps(_mm256_set1_ps(q.qmin), t));
  return _mm256_cvttps_epi32(t);
}

template <DType D>
uint32_t quantize_row_typed(const void* x, int64_t k, const QuantParams& q, uint32_t* const* plane_rows,
                            int64_t nwords) {
  const __m256i mask = _mm256_set1_epi32((1 << q.bits) - 1);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  // packs + packus interleave the four vectors' dwords within lanes; this puts them back in order.
  const __m256i dword_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256i sum = _mm256_setzero_si256();
  for (int64_t w = 0; w < nwords; ++w) {
    __m256i v[4];
    for (int g = 0; g < 4; ++g) {
      const int64_t c = 32 * w + 8 * g;
      if (c >= k) {
        v[g] = _mm256_setzero_si256();
        continue;
      }
      v[g] = quantize8(load_tail8<D>(x, c, k), q);
      if (c + 8 > k) v[g] = _mm256_and_si256(v[g], _mm256_cmpgt_epi32(_mm256_set1_epi32(int(k - c)), lane));
      sum = _mm256_add_epi32(sum, v[g]);
      v[g] = _mm256_and_si256(v[g], mask);
    }
    const __m256i bytes = _mm256_permutevar8x32_epi32(
        _mm256_packus_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3])), dword_order);
    // Bit j of every byte to its top bit (a 16-bit shift carries the low byte's bits into the high
    // byte only below its bit 7).
    for (int j = 0; j < q.bits; ++j)
      plane_rows[j][w] = uint32_t(_mm256_movemask_epi8(_mm256_sll_epi16(bytes, _mm_cvtsi32_si128(7 - j))));
  }
  return hsum_epi32(sum);
}

uint32_t quantize_row_avx2(const void* x, DType dtype, int64_t k, const QuantParams& q, uint32_t* const* plane_rows,
                           int64_t nwords) {
  switch (dtype) {
    case DType::f16: return quantize_row_typed<DType::f16>(x, k, q, plane_rows, nwords);
    case DType::bf16: return quantize_row_typed<DType::bf16>(x, k, q, plane_rows, nwords);
    default: return quantize_row_typed<DType::f32>(x, k, q, plane_rows, nwords);
  }
}

const CpuKernels kAvx2Kernels = {
    "avx2",           2, 21, 6,          false,       kPopRowsA, kPopRowsW, kDotRowsU, kDotRowsS, popcount_tile_avx2<kPopRowsA>, unpack_avx2, dot_narrow_avx2, dot_wide_avx2, group_popcount_avx2,
    epilogue_row_avx2, minmax_avx2,       quantize_row_avx2, 0, 0, nullptr, {popcount_tile_avx2<1>},
};

}  // namespace

const CpuKernels& avx2_kernels() { return kAvx2Kernels; }

}  // namespace detail
}  // namespace bitgemm
}  // namespace fastops
