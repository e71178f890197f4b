// AVX2 int8-table LUT GEMM kernel (compiled with -mavx2 -mfma -mf16c; called only after a CPUID
// check). Tables and their integer bounds: lut_cpu_kernels.h.
//
// Per 64-byte plane block (16 rows x 32 k of one bit plane): two 32-byte loads, four nibble
// vectors, and per token four vpshufb into the hi tables, plus four into the residual tables on
// the planes that use them (lut_cpu_kernels.h). Hi lookups are widened to int16 pairwise with
// vpmaddubsw, whose unsigned operand carries the plane weight (uniform: 4 * 2^plane, so the planes
// combine in int16; bcq: 4); the small residual lookups are summed in int8. Once per scale block
// (one or two k blocks, lut_cpu_kernels.h; bcq: per plane) the int16 sums are widened to int32, the
// two 128-bit lanes (different chunks of the same rows) are added, and the result is flushed into
// fp32 with coefficient * table unit.
//
// This file must not use inline functions shared with other translation units (dtype.h helpers,
// std containers): the linker could keep this AVX2 copy for callers on CPUs without AVX2
// (common/avx2_convert.h has TU-local conversions).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "common/avx2_convert.h"
#include "lut/lut_cpu_kernels.h"

namespace fastops {
namespace lut {
namespace detail {
namespace {

// Values of the 16 rows of a tile: rows 0-7 and 8-15.
struct Rows {
  __m256 lo, hi;
};

Rows load_half_rows(const uint16_t* h) { return {f16x8_to_float(h), f16x8_to_float(h + 8)}; }

template <DType D>
Rows load_rows(const void* base) {
  constexpr int64_t elem = D == DType::f32 ? 4 : 2;
  return {load8<D>(base), load8<D>(static_cast<const unsigned char*>(base) + 8 * elem)};
}

template <DType D>
void store_rows(void* base, Rows v) {
  constexpr int64_t elem = D == DType::f32 ? 4 : 2;
  store8<D>(base, v.lo);
  store8<D>(static_cast<unsigned char*>(base) + 8 * elem, v.hi);
}

// y[n, m0 .. m0 + rows) = acc + bias. A partial tile goes through a buffer: bias and y hold only
// m elements.
template <DType D>
void store_tile(const GemmProblem& p, int64_t n, int64_t m0, Rows acc) {
  constexpr int64_t elem = D == DType::f32 ? 4 : 2;
  const int64_t rows = p.m - m0 < kTileRows ? p.m - m0 : kTileRows;
  alignas(32) unsigned char buf[kTileRows * 4] = {};
  if (p.bias) {
    const unsigned char* b = static_cast<const unsigned char*>(p.bias) + m0 * elem;
    if (rows < kTileRows) b = static_cast<const unsigned char*>(std::memcpy(buf, b, rows * elem));
    const Rows bias = load_rows<D>(b);
    acc.lo = _mm256_add_ps(acc.lo, bias.lo);
    acc.hi = _mm256_add_ps(acc.hi, bias.hi);
  }
  unsigned char* y = static_cast<unsigned char*>(p.y) + (n * p.y_stride_n + m0) * elem;
  if (rows == kTileRows) {
    store_rows<D>(y, acc);
  } else {
    store_rows<D>(buf, acc);
    std::memcpy(y, buf, rows * elem);
  }
}

// acc += coef * unit * (int16 sums + res_weight * residual bytes). sum_lo / sum_hi hold rows 0-7 /
// 8-15 as int16, with different chunks of those rows in the two 128-bit lanes; res holds one int8
// per row per lane in byte order.
void flush(__m256i sum_lo, __m256i sum_hi, __m256i res, int res_weight, Rows coef, float unit, Rows& acc) {
  const __m256i first_byte = _mm256_set1_epi16(short(res_weight));  // vpmaddubsw weights (w, 0)
  sum_lo = _mm256_add_epi16(sum_lo, _mm256_maddubs_epi16(first_byte, _mm256_unpacklo_epi8(res, res)));
  sum_hi = _mm256_add_epi16(sum_hi, _mm256_maddubs_epi16(first_byte, _mm256_unpackhi_epi8(res, res)));
  // Each lane fits int16 but their sum may not: widen first.
  const __m256i v_lo = _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(sum_lo)),
                                        _mm256_cvtepi16_epi32(_mm256_extracti128_si256(sum_lo, 1)));
  const __m256i v_hi = _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(sum_hi)),
                                        _mm256_cvtepi16_epi32(_mm256_extracti128_si256(sum_hi, 1)));
  const __m256 u = _mm256_set1_ps(unit);
  acc.lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v_lo), _mm256_mul_ps(coef.lo, u), acc.lo);
  acc.hi = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v_hi), _mm256_mul_ps(coef.hi, u), acc.hi);
}

// Software prefetch of the weight stream into L2, 16 KiB ahead: the hardware prefetcher stops at 4 KiB
// pages and alone left the N = 1 loop short of memory bandwidth.
constexpr uintptr_t kPrefetchBytes = 16384;

// fp32 accumulators of one tile for tokens [n0, n0 + NB): the tile's weights are decoded once per
// k block and plane and looked up for all NB tokens. Bits is a template argument so the plane loop
// unrolls and the plane weights become constants.
template <Scheme S, int Bits, int NB>
void accumulate_tile(const GemmProblem& p, const Int8Tables& t, int64_t tile, int64_t n0, Rows* out) {
  constexpr int bits = Bits;
  const int64_t kblocks = t.kblocks, mp = row_tiles(p.m) * kTileRows, m0 = tile * kTileRows;
  const int64_t per_group = p.group_size / kBlockK;
  const int ncoef = S == Scheme::bcq ? bits : 1;
  const int per_scale = blocks_per_scale(S, bits, p.group_size);
  const uint8_t* wtile = p.planes + block_offset(tile, 0, 0, kblocks, bits);
  const __m256i nibble_mask = _mm256_set1_epi8(0x0f);
  // Local, so the accumulators stay in registers instead of being stored through `out` per k block.
  Rows acc[NB];
  for (int j = 0; j < NB; ++j) acc[j] = {_mm256_setzero_ps(), _mm256_setzero_ps()};

  for (int64_t g = 0; g < t.ngroups; ++g) {
    Rows coef[4], offset;
    const Rows z = load_half_rows(p.zeros + g * mp + m0);
    for (int a = 0; a < ncoef; ++a) coef[a] = load_half_rows(p.scales + (g * ncoef + a) * mp + m0);
    if (S == Scheme::uniform) {  // coef = s / 2, offset = s ((2^q - 1) / 2 - Z): lut_format.h
      const __m256 half_range = _mm256_set1_ps(float((1 << bits) - 1) * 0.5f);
      offset = {_mm256_mul_ps(coef[0].lo, _mm256_sub_ps(half_range, z.lo)),
                _mm256_mul_ps(coef[0].hi, _mm256_sub_ps(half_range, z.hi))};
      coef[0] = {_mm256_mul_ps(coef[0].lo, _mm256_set1_ps(0.5f)),
                 _mm256_mul_ps(coef[0].hi, _mm256_set1_ps(0.5f))};
    } else {
      offset = z;
    }

    const int64_t kb_end = (g + 1) * per_group < kblocks ? (g + 1) * per_group : kblocks;
    __m256i sum_lo[NB], sum_hi[NB], res[NB];
    for (int j = 0; j < NB; ++j) sum_lo[j] = sum_hi[j] = res[j] = _mm256_setzero_si256();
    for (int64_t kb = g * per_group; kb < kb_end; ++kb) {
      const uint8_t* blk = wtile + kb * bits * kBlockBytes;
      // Tiles are contiguous, so this runs ahead into the next tile too. Integer address math:
      // the hint may point past the array (prefetches never fault).
      for (int l = 0; l < bits; ++l)
        _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(blk) + kPrefetchBytes +
                                                   l * kBlockBytes),
                     _MM_HINT_T1);
      const int8_t* lut[NB];
      for (int j = 0; j < NB; ++j) lut[j] = t.lut + ((n0 + j) * kblocks + kb) * kTableBytes;
      // Last k block of its scale block (pairs start at even k blocks: lut_cpu_kernels.h).
      const bool scale_end = per_scale == 1 || kb % 2 == 1 || kb + 1 == kb_end;
      for (int plane = bits - 1; plane >= 0; --plane) {
        const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + plane * kBlockBytes));
        const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + plane * kBlockBytes + 32));
        const __m256i idx[4] = {_mm256_and_si256(w0, nibble_mask),
                                _mm256_and_si256(_mm256_srli_epi16(w0, 4), nibble_mask),
                                _mm256_and_si256(w1, nibble_mask),
                                _mm256_and_si256(_mm256_srli_epi16(w1, 4), nibble_mask)};
        const __m256i weight = _mm256_set1_epi8(char(S == Scheme::uniform ? 4 << plane : 4));
        const bool with_residual = uses_residual(S, Bits, plane);
        for (int j = 0; j < NB; ++j) {
          const __m256i* tab = reinterpret_cast<const __m256i*>(lut[j]);
          __m256i h[4];
          for (int v = 0; v < 4; ++v) h[v] = _mm256_shuffle_epi8(_mm256_load_si256(tab + v), idx[v]);
          sum_lo[j] = _mm256_add_epi16(
              sum_lo[j], _mm256_add_epi16(_mm256_maddubs_epi16(weight, _mm256_unpacklo_epi8(h[0], h[1])),
                                          _mm256_maddubs_epi16(weight, _mm256_unpacklo_epi8(h[2], h[3]))));
          sum_hi[j] = _mm256_add_epi16(
              sum_hi[j], _mm256_add_epi16(_mm256_maddubs_epi16(weight, _mm256_unpackhi_epi8(h[0], h[1])),
                                          _mm256_maddubs_epi16(weight, _mm256_unpackhi_epi8(h[2], h[3]))));
          if (with_residual) {  // uniform: only the top plane, whose weight is then 2^(bits - 1)
            __m256i r[4];
            for (int v = 0; v < 4; ++v) r[v] = _mm256_shuffle_epi8(_mm256_load_si256(tab + 4 + v), idx[v]);
            res[j] = _mm256_add_epi8(res[j], _mm256_add_epi8(_mm256_add_epi8(r[0], r[1]), _mm256_add_epi8(r[2], r[3])));
          }
          // One token: materialize the sums per plane, otherwise GCC's reassociation defers all the
          // k block's adds to its end, keeps every vpmaddubsw result live and spills them. (With
          // four tokens the sums alone outnumber the registers; there the barrier measured slower.)
          if (NB == 1) asm("" : "+x"(sum_lo[j]), "+x"(sum_hi[j]), "+x"(res[j]));
        }
        if (S == Scheme::bcq || (plane == 0 && scale_end)) {
          const Rows& c = coef[S == Scheme::bcq ? plane : 0];
          const int res_weight = S == Scheme::uniform ? 1 << (bits - 1) : 1;
          for (int j = 0; j < NB; ++j) {
            flush(sum_lo[j], sum_hi[j], res[j], res_weight, c, t.unit[(n0 + j) * kblocks + kb], acc[j]);
            sum_lo[j] = sum_hi[j] = res[j] = _mm256_setzero_si256();
          }
        }
      }
    }
    for (int j = 0; j < NB; ++j) {
      const __m256 sg = _mm256_set1_ps(t.group_sum[(n0 + j) * t.ngroups + g]);
      acc[j] = {_mm256_fmadd_ps(offset.lo, sg, acc[j].lo), _mm256_fmadd_ps(offset.hi, sg, acc[j].hi)};
    }
  }
  for (int j = 0; j < NB; ++j) out[j] = acc[j];
}

template <Scheme S, int Bits, int NB, DType D>
void token_block(const GemmProblem& p, const Int8Tables& t, int64_t tile, int64_t n0) {
  Rows acc[NB];
  accumulate_tile<S, Bits, NB>(p, t, tile, n0, acc);
  for (int j = 0; j < NB; ++j) store_tile<D>(p, n0 + j, tile * kTileRows, acc[j]);
}

constexpr int kTokenBlock = 4;

template <Scheme S, int Bits, DType D>
void tile_tokens(const GemmProblem& p, const Int8Tables& t, int64_t tile, int64_t n_begin, int64_t n_end) {
  int64_t n = n_begin;
  for (; n + kTokenBlock <= n_end; n += kTokenBlock) token_block<S, Bits, kTokenBlock, D>(p, t, tile, n);
  for (; n < n_end; ++n) token_block<S, Bits, 1, D>(p, t, tile, n);
}

// Hi and residual entries of one chunk's 16-entry table, as int32 (entries 0-7, entries 8-15).
struct ChunkTable {
  __m256i hi[2], res[2];
};

// Chunk x[0..3]: entries 8 + c are x3 + (+-x0) + (+-x1) + (+-x2) (sign + where bit j of c is set),
// summed in int8_block_scalar's order; entries 0-7 are their exact negations in reverse order.
ChunkTable quantize_chunk(const float* x, __m256 inv) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256 e = _mm256_broadcast_ss(x + 3);
  for (int j = 0; j < 3; ++j) {
    const __m256i bit_clear = _mm256_cmpeq_epi32(_mm256_and_si256(lanes, _mm256_set1_epi32(1 << j)),
                                                 _mm256_setzero_si256());
    const __m256 sign = _mm256_castsi256_ps(_mm256_slli_epi32(bit_clear, 31));
    e = _mm256_add_ps(e, _mm256_xor_ps(_mm256_broadcast_ss(x + j), sign));
  }
  const __m256 neg_rev = _mm256_xor_ps(_mm256_permutevar8x32_ps(e, _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0)),
                                       _mm256_set1_ps(-0.0f));
  const __m256 entries[2] = {neg_rev, e};
  ChunkTable t;
  for (int i = 0; i < 2; ++i) {
    // No multiply feeds an add here, so -mfma cannot contract anything the scalar code rounds.
    constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const __m256 q = _mm256_mul_ps(entries[i], inv);
    const __m256 h = _mm256_min_ps(_mm256_set1_ps(127.0f), _mm256_max_ps(_mm256_set1_ps(-127.0f), _mm256_round_ps(q, kNearest)));
    const __m256 r = _mm256_round_ps(_mm256_mul_ps(_mm256_set1_ps(float(kResidualSteps)), _mm256_sub_ps(q, h)), kNearest);
    t.hi[i] = _mm256_cvtps_epi32(h);
    t.res[i] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_set1_ps(2.0f), _mm256_max_ps(_mm256_set1_ps(-2.0f), r)));
  }
  return t;
}

// Bytes of the 16-entry tables of two chunks (int32 entries 0-7, 8-15 each): chunk a in the low
// 16 bytes, chunk b in the high 16.
__m256i pack_tables(const __m256i* a, const __m256i* b) {
  // packs work within 128-bit lanes: 8-byte quads come out as a{0-3,8-11} b{0-3,8-11} a{4-7,12-15}
  // b{4-7,12-15}.
  const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(a[0], a[1]), _mm256_packs_epi32(b[0], b[1]));
  const __m256i by_chunk = _mm256_permute4x64_epi64(bytes, 0xd8);
  const __m256i order = _mm256_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15,
                                         0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15);
  return _mm256_shuffle_epi8(by_chunk, order);
}

}  // namespace

float int8_block_avx2(const float* xs, int blocks, int8_t* lut) {
  // absmax over the chunks of sum_j |x_j|, added in int8_block_scalar's order.
  const int chunks = blocks * kTableSlots;
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 absmax = _mm256_setzero_ps();
  for (int u = 0; u < chunks; ++u) {
    __m256 sum = _mm256_and_ps(_mm256_broadcast_ss(xs + kChunk * u), abs_mask);
    for (int j = 1; j < kChunk; ++j)
      sum = _mm256_add_ps(sum, _mm256_and_ps(_mm256_broadcast_ss(xs + kChunk * u + j), abs_mask));
    absmax = _mm256_max_ps(absmax, sum);
  }
  const float amax = _mm256_cvtss_f32(absmax);
  if (amax == 0.0f) {
    for (int v = 0; v < blocks * kTableBytes / 32; ++v)
      _mm256_store_si256(reinterpret_cast<__m256i*>(lut) + v, _mm256_setzero_si256());
    return 0.0f;
  }
  const __m256 inv = _mm256_div_ps(_mm256_set1_ps(127.0f), absmax);
  // Chunks u and u + 1 (u even) sit in adjacent slots (table_slot), so each pair is one store.
  for (int u = 0; u < chunks; u += 2) {
    const ChunkTable a = quantize_chunk(xs + kChunk * u, inv), b = quantize_chunk(xs + kChunk * (u + 1), inv);
    int8_t* block = lut + (u / kTableSlots) * kTableBytes;
    const int slot = table_slot(u % kTableSlots);
    _mm256_store_si256(reinterpret_cast<__m256i*>(block + slot * kTableEntries), pack_tables(a.hi, b.hi));
    _mm256_store_si256(reinterpret_cast<__m256i*>(block + (kTableSlots + slot) * kTableEntries),
                       pack_tables(a.res, b.res));
  }
  return amax / (127.0f * kResidualSteps);
}

void int8_tile_avx2(const GemmProblem& p, const Int8Tables& t, int64_t tile, int64_t n_begin, int64_t n_end) {
  with_tile_params(p, [&](auto scheme, auto bits, auto dtype) {
    tile_tokens<decltype(scheme)::value, decltype(bits)::value, decltype(dtype)::value>(p, t, tile, n_begin, n_end);
  });
}

namespace {

// The dense path's dequantization of one tile (lut_cpu_kernels.h: DequantTile), vectorized over the
// tile's 16 rows: byte 16 L + r of a plane block holds row r's bits of chunks L (low nibble) and
// L + 4 (high nibble), so one shift by the bit position b and one mask give bit b of all 16 rows of
// two lanes; the rows' codes (or bcq signs) then widen to fp32 and land as one 16-value row of out.
template <bool kBf16>
void store_tile_rows(unsigned char* out, __m256 lo, __m256 hi) {
  if constexpr (kBf16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), pack_bf16x16(float_to_bf16x8(lo), float_to_bf16x8(hi)));
  } else {
    _mm256_storeu_ps(reinterpret_cast<float*>(out), lo);
    _mm256_storeu_ps(reinterpret_cast<float*>(out) + 8, hi);
  }
}

// Bytes 0-7 and 8-15 of v (one byte per row, 0..15) as fp32 rows 0-7 and 8-15.
Rows row_bytes_to_float(__m128i v) {
  return {_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)))};
}

// Visits the elements k = 32 kb + kk < K of k block kb of the tile: f(kk, side, bit, code), where bit[i]
// holds plane i's bit of the 16 rows (one byte per row) in the 128-bit half `side`, and code (kCode only)
// their uniform code, both for the two lanes 2h + side of the block's halves.
template <int kBits, bool kCode, class F>
void for_each_kblock_element(const DequantTile& t, int64_t kb, F&& f) {
  const __m256i one = _mm256_set1_epi8(1);
  __m256i plane[kBits][2];  // [plane][half]: half h holds block lanes 2h and 2h + 1
  for (int i = 0; i < kBits; ++i)
    for (int h = 0; h < 2; ++h)
      plane[i][h] = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(t.planes + (kb * kBits + i) * kBlockBytes + 32 * h));
  const int64_t k_valid = t.k - kb * kBlockK;
  for (int b = 0; b < 8; ++b)
    for (int h = 0; h < 2; ++h) {
      __m256i bit[kBits];
      for (int i = 0; i < kBits; ++i) bit[i] = _mm256_and_si256(_mm256_srli_epi16(plane[i][h], b), one);
      __m256i code = bit[0];
      if constexpr (kCode)
        for (int i = 1; i < kBits; ++i) code = _mm256_or_si256(code, _mm256_slli_epi16(bit[i], i));
      for (int side = 0; side < 2; ++side) {
        const int kk = 16 * (b / 4) + 4 * (2 * h + side) + b % 4;  // chunk lane + 4 (b / 4), element b % 4
        if (kk < k_valid) f(kk, side, bit, code);
      }
    }
}

// k block kb of the tile: the 16 rows' values at k = 32 kb + kk land at out + kk * stride elements.
template <int kBits, Scheme S, bool kBf16>
void dequant_kblock(const DequantTile& t, int64_t kb, unsigned char* out, int64_t stride) {
  constexpr int ncoef = S == Scheme::bcq ? kBits : 1;
  constexpr int64_t elem = kBf16 ? 2 : 4;
  const int64_t per_group = t.group_size / kBlockK;
  const __m256 sign_flip = _mm256_set1_ps(-0.0f);
  const float* coef = t.coef + (kb / per_group) * ncoef * kTileRows;
  const float* zero = t.zero + (kb / per_group) * kTileRows;
  const Rows z = {_mm256_loadu_ps(zero), _mm256_loadu_ps(zero + 8)};
  Rows c[ncoef];
  for (int a = 0; a < ncoef; ++a)
    c[a] = {_mm256_loadu_ps(coef + a * kTileRows), _mm256_loadu_ps(coef + a * kTileRows + 8)};
  for_each_kblock_element<kBits, S == Scheme::uniform>(t, kb, [&](int kk, int side, const __m256i(&bit)[kBits],
                                                                  __m256i code) {
    Rows v;
    if constexpr (S == Scheme::uniform) {
      const Rows q = row_bytes_to_float(side ? _mm256_extracti128_si256(code, 1) : _mm256_castsi256_si128(code));
      v = {_mm256_mul_ps(c[0].lo, _mm256_sub_ps(q.lo, z.lo)), _mm256_mul_ps(c[0].hi, _mm256_sub_ps(q.hi, z.hi))};
    } else {
      v = z;
      for (int i = 0; i < kBits; ++i) {
        // bit 1 -> +alpha, 0 -> -alpha: the sign bit of (1 - bit) << 31 flips alpha
        const __m128i set = side ? _mm256_extracti128_si256(bit[i], 1) : _mm256_castsi256_si128(bit[i]);
        const __m128i clear = _mm_xor_si128(set, _mm_set1_epi8(1));
        const __m256 flip_lo = _mm256_and_ps(sign_flip, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu8_epi32(clear), 31)));
        const __m256 flip_hi = _mm256_and_ps(
            sign_flip, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(clear, 8)), 31)));
        v = {_mm256_add_ps(v.lo, _mm256_xor_ps(c[i].lo, flip_lo)), _mm256_add_ps(v.hi, _mm256_xor_ps(c[i].hi, flip_hi))};
      }
    }
    store_tile_rows<kBf16>(out + kk * stride * elem, v.lo, v.hi);
  });
}

template <int kBits, Scheme S, bool kBf16>
void dequant_tile(const DequantTile& t) {
  constexpr int64_t elem = kBf16 ? 2 : 4;
  for (int64_t kb = 0; kb < k_blocks(t.k); ++kb)
    dequant_kblock<kBits, S, kBf16>(t, kb, static_cast<unsigned char*>(t.out) + kb * kBlockK * t.out_stride * elem,
                                    t.out_stride);
}

// Precise GEMM of one tile: acc[i][r] += sum_k W[r, k] x[i, k], the weights dequantized one k block at
// a time into an L1 buffer. Even and odd k go to separate accumulators (two dependent FMA chains per
// 8 rows would leave the FMA units idle) that join at the end of each k block.
template <int kBits, Scheme S>
void precise_tile(const DequantTile& t, const float* x, int64_t x_stride, int64_t n, float* acc) {
  alignas(32) float w[kBlockK][kTileRows];
  for (int64_t kb = 0; kb < k_blocks(t.k); ++kb) {
    dequant_kblock<kBits, S, false>(t, kb, reinterpret_cast<unsigned char*>(&w[0][0]), kTileRows);
    const int kcount = int(t.k - kb * kBlockK < kBlockK ? t.k - kb * kBlockK : kBlockK);
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = x + i * x_stride + kb * kBlockK;
      __m256 even_lo = _mm256_setzero_ps(), even_hi = even_lo, odd_lo = even_lo, odd_hi = even_lo;
      int kk = 0;
      for (; kk + 1 < kcount; kk += 2) {
        const __m256 xe = _mm256_broadcast_ss(xi + kk), xo = _mm256_broadcast_ss(xi + kk + 1);
        even_lo = _mm256_fmadd_ps(_mm256_load_ps(w[kk]), xe, even_lo);
        even_hi = _mm256_fmadd_ps(_mm256_load_ps(w[kk] + 8), xe, even_hi);
        odd_lo = _mm256_fmadd_ps(_mm256_load_ps(w[kk + 1]), xo, odd_lo);
        odd_hi = _mm256_fmadd_ps(_mm256_load_ps(w[kk + 1] + 8), xo, odd_hi);
      }
      if (kk < kcount) {
        const __m256 xe = _mm256_broadcast_ss(xi + kk);
        even_lo = _mm256_fmadd_ps(_mm256_load_ps(w[kk]), xe, even_lo);
        even_hi = _mm256_fmadd_ps(_mm256_load_ps(w[kk] + 8), xe, even_hi);
      }
      float* a = acc + i * kTileRows;
      _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), _mm256_add_ps(even_lo, odd_lo)));
      _mm256_storeu_ps(a + 8, _mm256_add_ps(_mm256_loadu_ps(a + 8), _mm256_add_ps(even_hi, odd_hi)));
    }
  }
}

// Sum of x[0, count), count <= 32.
float sum_block(const float* x, int count) {
  alignas(32) float buf[kBlockK] = {};
  std::memcpy(buf, x, size_t(count) * sizeof(float));
  __m256 v = _mm256_add_ps(_mm256_add_ps(_mm256_load_ps(buf), _mm256_load_ps(buf + 8)),
                           _mm256_add_ps(_mm256_load_ps(buf + 16), _mm256_load_ps(buf + 24)));
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

// The precise product of one tile and one token (decode) in the uniform scheme, with no dequantized
// buffer: per group, sum_k s (Q - Z) x = s (sum_k Q x - Z sum_k x), so each weight costs one convert and
// one FMA into a group sum (four chains: two per row half, by chunk side), and s, Z apply once per group.
// The subtraction costs a few ulps of sum |Q x| against sum |(Q - Z) x|: far inside fp32's precise bound.
template <int kBits>
void precise_tile_uniform_token(const DequantTile& t, const float* x, float* acc) {
  const int64_t per_group = t.group_size / kBlockK, kblocks = k_blocks(t.k);
  const __m256 zero = _mm256_setzero_ps();
  __m256 y_lo = zero, y_hi = zero;
  __m256 g_lo[2] = {zero, zero}, g_hi[2] = {zero, zero};
  float x_group = 0.0f;
  for (int64_t kb = 0; kb < kblocks; ++kb) {
    const float* xb = x + kb * kBlockK;
    x_group += sum_block(xb, int(t.k - kb * kBlockK < kBlockK ? t.k - kb * kBlockK : kBlockK));
    for_each_kblock_element<kBits, true>(t, kb, [&](int kk, int side, const __m256i(&)[kBits], __m256i code) {
      const Rows q = row_bytes_to_float(side ? _mm256_extracti128_si256(code, 1) : _mm256_castsi256_si128(code));
      const __m256 xv = _mm256_broadcast_ss(xb + kk);
      g_lo[side] = _mm256_fmadd_ps(q.lo, xv, g_lo[side]);
      g_hi[side] = _mm256_fmadd_ps(q.hi, xv, g_hi[side]);
    });
    if ((kb + 1) % per_group != 0 && kb + 1 != kblocks) continue;
    const int64_t g = kb / per_group;
    const float* s = t.coef + g * kTileRows;
    const float* z = t.zero + g * kTileRows;
    const __m256 xs = _mm256_set1_ps(x_group);
    const __m256 sum_lo = _mm256_fnmadd_ps(_mm256_loadu_ps(z), xs, _mm256_add_ps(g_lo[0], g_lo[1]));
    const __m256 sum_hi = _mm256_fnmadd_ps(_mm256_loadu_ps(z + 8), xs, _mm256_add_ps(g_hi[0], g_hi[1]));
    y_lo = _mm256_fmadd_ps(_mm256_loadu_ps(s), sum_lo, y_lo);
    y_hi = _mm256_fmadd_ps(_mm256_loadu_ps(s + 8), sum_hi, y_hi);
    g_lo[0] = g_lo[1] = g_hi[0] = g_hi[1] = zero;
    x_group = 0.0f;
  }
  _mm256_storeu_ps(acc, _mm256_add_ps(_mm256_loadu_ps(acc), y_lo));
  _mm256_storeu_ps(acc + 8, _mm256_add_ps(_mm256_loadu_ps(acc + 8), y_hi));
}

}  // namespace

void dequant_tile_avx2(const DequantTile& t) {
  with_bits_scheme(t.bits, t.scheme, [&](auto q, auto s) {
    constexpr int kBits = decltype(q)::value;
    constexpr Scheme kScheme = decltype(s)::value;
    t.bf16 ? dequant_tile<kBits, kScheme, true>(t) : dequant_tile<kBits, kScheme, false>(t);
  });
}

void precise_tile_avx2(const DequantTile& t, const float* x, int64_t x_stride, int64_t n, float* acc) {
  with_bits_scheme(t.bits, t.scheme, [&](auto q, auto s) {
    constexpr int kBits = decltype(q)::value;
    if constexpr (decltype(s)::value == Scheme::uniform) {
      if (n == 1) return precise_tile_uniform_token<kBits>(t, x, acc);
    }
    precise_tile<kBits, decltype(s)::value>(t, x, x_stride, n, acc);
  });
}

}  // namespace detail
}  // namespace lut
}  // namespace fastops
