// AVX-512 int8-table LUT GEMM kernel (compiled with -mavx512f/bw/vl/dq/vbmi/vnni -mavx2 -mfma
// -mf16c; called only after a CPUID check for AVX512BW, VBMI and VNNI). Tables and their integer
// bounds: lut_cpu_kernels.h.
//
// Per 64-byte plane block (16 rows x 32 k of one bit plane): one load and, for each half of the
// 128-byte hi (or residual) table set of a k block, one vpermb that gathers the bytes of row r into
// dword r, one vpsrlvw that brings the wanted nibble down and one vpternlogd that masks it and adds
// its table's offset: index vectors for vpermb lookups into a 64-byte table, which holds the four
// chunk tables of two plane block lanes (vpshufb's per-lane tables would put four rows, not four
// chunks of one row, into a dword). Per token and plane that is two vpermb lookups, each summed with
// vpdpbusd, whose unsigned operand carries the plane weight (uniform: 4 * 2^plane; bcq: 4),
// straight into one int32 lane per row: no unpacking, no int16 stage. The small residual lookups
// are summed in int8 and join with one vpdpbusd (weight 2^(bits - 1); bcq: 1) at the flush, which
// is then one conversion and one fma per scale block (bcq: per plane). The integer sums equal the
// scalar kernel's (int32 cannot overflow: the int16 bounds of lut_cpu_kernels.h hold a fortiori)
// and the fp32 operations are the same, in the same order, so results agree with the scalar and
// AVX2 kernels bit for bit.
//
// On Zen 4 (512-bit ops on 256-bit pipes) a dependent vpermb + vpdpbusd pair costs about 1.1 TSC
// ticks in a loop, vpermt2b + vpdpbusd about 1.7: a first version with one vpermt2b over the whole
// 128-byte set per 64 lookups needed half this index work but ran N = 16 in 5.0 ms against 4.8
// (11008 x 4096, q = 4). From N = 4 on the lookups bound the kernel.
//
// This file must not use inline functions shared with other translation units (dtype.h helpers,
// std containers): the linker could keep this AVX-512 copy for callers on CPUs without AVX-512
// (common/avx2_convert.h has TU-local conversions).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "common/avx2_convert.h"
#include "lut/lut_cpu_kernels.h"

// GCC 12 reports the _mm512_undefined_* placeholders of its own intrinsic headers as "may be used
// uninitialized" once they are inlined here; no value of this file is.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace fastops {
namespace lut {
namespace detail {
namespace {

// The 128-byte hi (or residual) table set of a k block splits into two 64-byte halves, one vpermb
// table each: half h holds slots 4h .. 4h + 3, the chunks of plane block lanes 2h and 2h + 1 (both
// nibbles: lut_cpu_kernels.h). The index vector of half h puts row r's four lookups in dword r:
// byte 4 r + b is nibble b / 2 of lane 2h + b % 2, whose table starts at byte 16 b of the half.
struct IndexBytes {
  alignas(64) uint8_t gather[2][64];  // vpermb control: plane block byte behind each index byte
  alignas(64) uint8_t table_offset[64];
};
constexpr IndexBytes make_index_bytes() {
  IndexBytes k{};
  for (int h = 0; h < 2; ++h)
    for (int r = 0; r < kTileRows; ++r)
      for (int b = 0; b < 4; ++b) {
        const int lane = 2 * h + b % 2, nibble = b / 2, chunk = lane + 4 * nibble;
        k.gather[h][4 * r + b] = uint8_t(16 * lane + r);
        k.table_offset[4 * r + b] = uint8_t(kTableEntries * (table_slot(chunk) - 4 * h));  // same for both h
      }
  return k;
}
constexpr IndexBytes kIndexBytes = make_index_bytes();
static_assert(kIndexBytes.table_offset[3] == 48 && kIndexBytes.gather[1][4 * 15 + 3] == 16 * 3 + 15,
              "index layout");

// vpermb indices of one plane block into the two table halves.
struct PlaneIndex {
  __m512i half[2];
};

struct IndexConstants {
  __m512i gather[2], table_offset, nibble_shift, nibble_mask;
};

IndexConstants load_index_constants() {
  return {{_mm512_load_si512(kIndexBytes.gather[0]), _mm512_load_si512(kIndexBytes.gather[1])},
          _mm512_load_si512(kIndexBytes.table_offset),
          _mm512_set1_epi32(4 << 16),  // vpsrlvw counts: bytes 2, 3 of each dword take high nibbles
          _mm512_set1_epi8(0x0f)};
}

PlaneIndex plane_index(const uint8_t* block, const IndexConstants& k) {
  const __m512i bytes = _mm512_loadu_si512(block);
  constexpr int kAndOr = 0xea;  // vpternlog truth table of (a & b) | c
  PlaneIndex idx;
  for (int h = 0; h < 2; ++h) {
    const __m512i nibbles = _mm512_srlv_epi16(_mm512_permutexvar_epi8(k.gather[h], bytes), k.nibble_shift);
    idx.half[h] = _mm512_ternarylogic_epi32(nibbles, k.nibble_mask, k.table_offset, kAndOr);
  }
  return idx;
}

// 16 fp16 row values of a tile as fp32.
__m512 load_half_rows(const uint16_t* h) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h)));
}

// y[n, m0 .. m0 + rows) = acc + bias, through the AVX2 conversions (the same rounding as the other
// kernels) on the two 8-row halves. A partial tile goes through a buffer: bias and y hold only m
// elements.
template <DType D>
void store_tile(const GemmProblem& p, int64_t n, int64_t m0, __m512 acc) {
  constexpr int64_t elem = D == DType::f32 ? 4 : 2;
  const int64_t rows = p.m - m0 < kTileRows ? p.m - m0 : kTileRows;
  alignas(64) unsigned char buf[kTileRows * 4] = {};
  __m256 lo = _mm512_extractf32x8_ps(acc, 0), hi = _mm512_extractf32x8_ps(acc, 1);
  if (p.bias) {
    const unsigned char* b = static_cast<const unsigned char*>(p.bias) + m0 * elem;
    if (rows < kTileRows) b = static_cast<const unsigned char*>(std::memcpy(buf, b, rows * elem));
    lo = _mm256_add_ps(lo, load8<D>(b));
    hi = _mm256_add_ps(hi, load8<D>(b + 8 * elem));
  }
  unsigned char* y = static_cast<unsigned char*>(p.y) + (n * p.y_stride_n + m0) * elem;
  unsigned char* dst = rows == kTileRows ? y : buf;
  store8<D>(dst, lo);
  store8<D>(dst + 8 * elem, hi);
  if (rows < kTileRows) std::memcpy(y, buf, rows * elem);
}

// acc += coef * unit * (int32 row sums + res_weight * int8 residual sums), and clears the sums.
void flush(__m512i (&sum)[2], __m512i& res, __m512i res_weight, __m512 coef, float unit, __m512& acc) {
  const __m512i total = _mm512_dpbusd_epi32(_mm512_add_epi32(sum[0], sum[1]), res_weight, res);
  acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), _mm512_mul_ps(coef, _mm512_set1_ps(unit)), acc);
  sum[0] = sum[1] = res = _mm512_setzero_si512();
}

// Software prefetch of the weight stream into L2, 16 KiB ahead (one q = 2 tile): the hardware
// prefetcher stops at 4 KiB pages. The AVX2 kernel's 4 KiB into L1 left this faster loop short of
// memory bandwidth at N = 1 (Zen 4, 11008 x 4096, q = 2: 20 GB/s, against 24 to 25 with L2 as the
// target at 4 to 16 KiB; L2 can keep more misses in flight than L1).
constexpr uintptr_t kPrefetchBytes = 16384;

// fp32 accumulators (one row per lane) of one tile for tokens [n0, n0 + NB): the tile's weights are
// decoded into indices once per k block and looked up for all NB tokens. Each token sums the two
// table halves' lookups into separate int32 vectors, which halves its vpdpbusd dependency chain
// (measured 4% faster at N = 16 than one vector per token).
template <Scheme S, int Bits, int NB>
void accumulate_tile(const GemmProblem& p, const Int8Tables& t, int64_t tile, int64_t n0, __m512* out) {
  constexpr int bits = Bits;
  const int64_t kblocks = t.kblocks, mp = row_tiles(p.m) * kTileRows, m0 = tile * kTileRows;
  const int64_t per_group = p.group_size / kBlockK;
  const int ncoef = S == Scheme::bcq ? bits : 1;
  const int per_scale = blocks_per_scale(S, bits, p.group_size);
  const uint8_t* wtile = p.planes + block_offset(tile, 0, 0, kblocks, bits);
  const IndexConstants index_constants = load_index_constants();
  __m512 acc[NB];
  for (int j = 0; j < NB; ++j) acc[j] = _mm512_setzero_ps();

  for (int64_t g = 0; g < t.ngroups; ++g) {
    __m512 coef[4], offset;
    const __m512 z = load_half_rows(p.zeros + g * mp + m0);
    for (int a = 0; a < ncoef; ++a) coef[a] = load_half_rows(p.scales + (g * ncoef + a) * mp + m0);
    if (S == Scheme::uniform) {  // coef = s / 2, offset = s ((2^q - 1) / 2 - Z): lut_format.h
      offset = _mm512_mul_ps(coef[0], _mm512_sub_ps(_mm512_set1_ps(float((1 << bits) - 1) * 0.5f), z));
      coef[0] = _mm512_mul_ps(coef[0], _mm512_set1_ps(0.5f));
    } else {
      offset = z;
    }

    const int64_t kb_end = (g + 1) * per_group < kblocks ? (g + 1) * per_group : kblocks;
    // The residual weight is 2^(bits - 1) for the uniform top plane, 1 for bcq (lut_cpu_kernels.h).
    const __m512i res_weight = _mm512_set1_epi8(char(S == Scheme::uniform ? 1 << (bits - 1) : 1));
    __m512i sum[NB][2], res[NB];
    for (int j = 0; j < NB; ++j) sum[j][0] = sum[j][1] = res[j] = _mm512_setzero_si512();
    for (int64_t kb = g * per_group; kb < kb_end; ++kb) {
      const uint8_t* blk = wtile + kb * bits * kBlockBytes;
      // Tiles are contiguous, so this runs ahead into the next tile too. Integer address math:
      // the hint may point past the array (prefetches never fault).
      for (int l = 0; l < bits; ++l)
        _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(blk) + kPrefetchBytes +
                                                   l * kBlockBytes),
                     _MM_HINT_T1);
      PlaneIndex idx[bits];
      for (int plane = 0; plane < bits; ++plane) idx[plane] = plane_index(blk + plane * kBlockBytes, index_constants);
      // Last k block of its scale block (pairs start at even k blocks: lut_cpu_kernels.h).
      const bool scale_end = per_scale == 1 || kb % 2 == 1 || kb + 1 == kb_end;
      for (int j = 0; j < NB; ++j) {
        const int8_t* lut = t.lut + ((n0 + j) * kblocks + kb) * kTableBytes;
        const int8_t* res_lut = lut + kTableSlots * kTableEntries;
        const float unit = t.unit[(n0 + j) * kblocks + kb];
        for (int plane = bits - 1; plane >= 0; --plane) {
          const __m512i weight = _mm512_set1_epi8(char(S == Scheme::uniform ? 4 << plane : 4));
          for (int h = 0; h < 2; ++h) {
            const __m512i hi = _mm512_permutexvar_epi8(idx[plane].half[h], _mm512_load_si512(lut + 64 * h));
            sum[j][h] = _mm512_dpbusd_epi32(sum[j][h], weight, hi);
          }
          // Residual lookups (|r| <= 2) are summed in int8 until the flush: at most 8 per byte.
          if (uses_residual(S, bits, plane))
            res[j] = _mm512_add_epi8(
                res[j], _mm512_add_epi8(_mm512_permutexvar_epi8(idx[plane].half[0], _mm512_load_si512(res_lut)),
                                        _mm512_permutexvar_epi8(idx[plane].half[1], _mm512_load_si512(res_lut + 64))));
          if (S == Scheme::bcq) flush(sum[j], res[j], res_weight, coef[plane], unit, acc[j]);
        }
        if (S == Scheme::uniform && scale_end) flush(sum[j], res[j], res_weight, coef[0], unit, acc[j]);
      }
    }
    for (int j = 0; j < NB; ++j)
      acc[j] = _mm512_fmadd_ps(offset, _mm512_set1_ps(t.group_sum[(n0 + j) * t.ngroups + g]), acc[j]);
  }
  for (int j = 0; j < NB; ++j) out[j] = acc[j];
}

template <Scheme S, int Bits, int NB, DType D>
void token_block(const GemmProblem& p, const Int8Tables& t, int64_t tile, int64_t n0) {
  __m512 acc[NB];
  accumulate_tile<S, Bits, NB>(p, t, tile, n0, acc);
  for (int j = 0; j < NB; ++j) store_tile<D>(p, n0 + j, tile * kTileRows, acc[j]);
}

constexpr int kTokenBlock = 4;

// Blocks of kTokenBlock tokens, then the rest as blocks of 2 and 1.
template <Scheme S, int Bits, DType D>
void tile_tokens(const GemmProblem& p, const Int8Tables& t, int64_t tile, int64_t n_begin, int64_t n_end) {
  int64_t n = n_begin;
  for (; n + kTokenBlock <= n_end; n += kTokenBlock) token_block<S, Bits, kTokenBlock, D>(p, t, tile, n);
  for (; n + 2 <= n_end; n += 2) token_block<S, Bits, 2, D>(p, t, tile, n);
  if (n < n_end) token_block<S, Bits, 1, D>(p, t, tile, n);
}

}  // namespace

void int8_tile_avx512(const GemmProblem& p, const Int8Tables& t, int64_t tile, int64_t n_begin, int64_t n_end) {
  with_tile_params(p, [&](auto scheme, auto bits, auto dtype) {
    tile_tokens<decltype(scheme)::value, decltype(bits)::value, decltype(dtype)::value>(p, t, tile, n_begin, n_end);
  });
}

}  // namespace detail
}  // namespace lut
}  // namespace fastops
