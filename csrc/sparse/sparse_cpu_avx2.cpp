// AVX2 SpMM kernels (sparse_cpu_kernels.h). AVX2 has no expand instruction, so each mask byte (4 rows x
// 2 columns) picks a shuffle from a 256-entry table: PSHUFB for 16-bit values (bf16 straight into fp32
// slots), VPERMPS + a lane mask for fp32. One token: two strips at a time decode straight into FMAs
// against the broadcast fp32 pair of x. More tokens: units are expanded into a tile of fp32 (r, j) pairs
// (16 registers leave no room to decode in the multiply loop), then FMA one strip by up to kBlock tokens
// at a time; the pairs are summed once in the epilogue. Very sparse strip groups with several tokens take
// the sparse path (below) instead.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/avx2_convert.h"
#include "sparse/sparse_cpu_kernels.h"

namespace fastops {
namespace sparse {
namespace detail {
namespace {

constexpr int G = kGroupStrips;
constexpr int64_t kTileUnits = 32;  // 32 units x 4 strips x 128 bytes: half of L1
constexpr int kBlock = 3;  // tokens per register block: 4 x 3 accumulators + 3 broadcasts

// Shuffles that expand the values of one mask byte (elements 2 r + j, r < 4) to 8 slots.
struct ExpandTables {
  alignas(32) uint8_t bf16_f32[256][32];   // PSHUFB control: bytes of bf16 value `rank` into the high half of
                                           // each fp32 slot, or 0x80 (zero); first: its address is b << 5
  alignas(16) uint8_t shuffle16[256][16];  // the same for 16-bit slots
  alignas(32) int32_t perm32[256][8];      // VPERMPS index of each slot's value
  alignas(32) int32_t keep32[256][8];      // all ones where the slot's bit is set

  ExpandTables() {
    for (int b = 0; b < 256; ++b) {
      int rank = 0;
      for (int i = 0; i < 8; ++i) {
        const bool set = (b >> i) & 1;
        shuffle16[b][2 * i] = set ? uint8_t(2 * rank) : 0x80;
        shuffle16[b][2 * i + 1] = set ? uint8_t(2 * rank + 1) : 0x80;
        bf16_f32[b][4 * i] = bf16_f32[b][4 * i + 1] = 0x80;
        bf16_f32[b][4 * i + 2] = shuffle16[b][2 * i];
        bf16_f32[b][4 * i + 3] = shuffle16[b][2 * i + 1];
        perm32[b][i] = set ? rank : 0;
        keep32[b][i] = set ? -1 : 0;
        rank += set;
      }
    }
  }
};

const ExpandTables& tables() {
  static const ExpandTables t;
  return t;
}

// One unit as fp32 (r, j) pairs: q[i] holds rows 4i .. 4i + 3.
struct Unit {
  __m256 q[4];
};

// Expands the unit whose mask is at mask_ptr from the strip values at pv (advanced past them). The mask
// bytes are read from memory: one load each instead of a shift and a zero-extension.
template <DType D>
inline Unit expand_unit(const uint32_t* mask_ptr, const void*& pv, const ExpandTables& tab) {
  const uint8_t* mask = reinterpret_cast<const uint8_t*>(mask_ptr);  // byte q: bits 8q .. 8q + 7
  Unit w;
  if constexpr (D == DType::f32) {
    const float* p = static_cast<const float*>(pv);
    for (int q = 0; q < 4; ++q) {
      const unsigned b = mask[q];
      const __m256 v = _mm256_permutevar8x32_ps(_mm256_loadu_ps(p),
                                                _mm256_load_si256(reinterpret_cast<const __m256i*>(tab.perm32[b])));
      w.q[q] = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(tab.keep32[b]))));
      p += __builtin_popcount(b);
    }
    pv = p;
  } else if constexpr (D == DType::bf16) {
    // One in-lane shuffle of the values (both halves of the register) makes the fp32 slots.
    const uint16_t* p = static_cast<const uint16_t*>(pv);
    for (int q = 0; q < 4; ++q) {
      const unsigned b = mask[q];
      const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      w.q[q] = _mm256_castsi256_ps(
          _mm256_shuffle_epi8(v, _mm256_load_si256(reinterpret_cast<const __m256i*>(tab.bf16_f32[b]))));
      p += __builtin_popcount(b);
    }
    pv = p;
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(pv);
    for (int q = 0; q < 4; ++q) {
      const unsigned b = mask[q];
      const __m128i v = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)),
                                         _mm_load_si128(reinterpret_cast<const __m128i*>(tab.shuffle16[b])));
      w.q[q] = _mm256_cvtph_ps(v);
      p += __builtin_popcount(b);
    }
    pv = p;
  }
  return w;
}

// Sums the (r, j) pairs of two 8-float registers (rows 4q..4q+3 and 4q+4..4q+7) into 8 rows.
inline __m256 sum_pairs(__m256 a, __m256 b) {
  // hadd gives rows 0 1 4 5 2 3 6 7 (per 128-bit half); restore the order.
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_hadd_ps(a, b)), 0xd8));
}

template <DType D>
void store_rows8(__m256 v, const Task& t, int64_t token, int64_t r0, int rows) {
  char* row = static_cast<char*>(t.y) + token * t.y_stride * (D == DType::f32 ? 4 : 2);
  constexpr int kBytes = D == DType::f32 ? 4 : 2;
  if (rows >= 8) {
    if (t.bias) v = _mm256_add_ps(v, load8<D>(static_cast<const char*>(t.bias) + r0 * kBytes));
    store8<D>(row + r0 * kBytes, v);
    return;
  }
  alignas(32) char buf[32] = {};
  if (t.bias) {
    std::memcpy(buf, static_cast<const char*>(t.bias) + r0 * kBytes, size_t(rows) * kBytes);
    v = _mm256_add_ps(v, load8<D>(buf));
  }
  store8<D>(buf, v);
  std::memcpy(row + r0 * kBytes, buf, size_t(rows) * kBytes);
}

// acc[i][q] += tile unit u (rows 4q..4q+3 of one strip, stride G units) x the pair of token i, u < nu.
// The loop runs on local copies: on the caller's array GCC stored every accumulator on every unit
// (1.7x slower at 8 tokens).
template <int NT>
inline void multiply_tile(const float* tile, int64_t nu, const float* const* xrows, int64_t u0, __m256 (&acc)[NT][4]) {
  __m256 a[NT][4];
  for (int i = 0; i < NT; ++i)
    for (int q = 0; q < 4; ++q) a[i][q] = acc[i][q];
  for (int64_t u = 0; u < nu; ++u) {
    const float* w = tile + u * G * 32;
    __m256 b[NT];
    for (int i = 0; i < NT; ++i)
      b[i] = _mm256_castpd_ps(_mm256_broadcast_sd(reinterpret_cast<const double*>(xrows[i] + 2 * (u0 + u))));
    for (int q = 0; q < 4; ++q) {
      const __m256 wq = _mm256_load_ps(w + 8 * q);
      for (int i = 0; i < NT; ++i) a[i][q] = _mm256_fmadd_ps(wq, b[i], a[i][q]);
    }
  }
  for (int i = 0; i < NT; ++i)
    for (int q = 0; q < 4; ++q) acc[i][q] = a[i][q];
}

// One strip x NT tokens over tile units [0, nu).
template <DType D, int NT>
void strip_tokens(const Task& t, const Streams<void>& s, int g, int64_t tok, int64_t u0, int64_t nu,
                  const float* tile, bool first, bool last) {
  const float* xrows[kBlock];
  for (int i = 0; i < NT; ++i) xrows[i] = static_cast<const float*>(t.x.data) + (t.token0 + tok + i) * t.x.stride;
  float* partial = t.scratch + tok * G * 32;
  __m256 acc[NT][4];
  for (int i = 0; i < NT; ++i)
    for (int q = 0; q < 4; ++q)
      acc[i][q] = first ? _mm256_setzero_ps() : _mm256_load_ps(partial + (i * G + g) * 32 + 8 * q);
  multiply_tile<NT>(tile + g * 32, nu, xrows, u0, acc);
  for (int i = 0; i < NT; ++i) {
    if (!last) {
      for (int q = 0; q < 4; ++q) _mm256_store_ps(partial + (i * G + g) * 32 + 8 * q, acc[i][q]);
      continue;
    }
    const int64_t r0 = (t.strip0 + g) * kStripRows;
    store_rows8<D>(sum_pairs(acc[i][0], acc[i][1]), t, tok + i, r0, s.rows[g]);
    if (s.rows[g] > 8) store_rows8<D>(sum_pairs(acc[i][2], acc[i][3]), t, tok + i, r0 + 8, s.rows[g] - 8);
  }
}

// One token: two strips at a time decode straight into the multiply (2 x 4 accumulators), no tile.
template <DType D>
void one_token(const Task& t, Streams<void>& s, const ExpandTables& tab) {
  const int64_t units = units_per_strip(t.w->k);
  const double* x = reinterpret_cast<const double*>(static_cast<const float*>(t.x.data) + t.token0 * t.x.stride);
  for (int g0 = 0; g0 < G; g0 += 2) {
    if (!s.rows[g0]) continue;  // stand-in strips come last
    __m256 acc[2][4];
    for (auto& a : acc)
      for (auto& q : a) q = _mm256_setzero_ps();
    const uint32_t* masks[2] = {s.masks[g0], s.masks[g0 + 1]};
    const void* vals[2] = {s.vals[g0], s.vals[g0 + 1]};
    for (int64_t u = 0; u < units; ++u) {
      const __m256 b = _mm256_castpd_ps(_mm256_broadcast_sd(x + u));
      for (int g = 0; g < 2; ++g) {
        const Unit w = expand_unit<D>(masks[g] + u, vals[g], tab);
        for (int q = 0; q < 4; ++q) acc[g][q] = _mm256_fmadd_ps(w.q[q], b, acc[g][q]);
      }
    }
    for (int g = 0; g < 2; ++g) {
      const int rows = s.rows[g0 + g];
      const int64_t r0 = (t.strip0 + g0 + g) * kStripRows;
      if (rows) store_rows8<D>(sum_pairs(acc[g][0], acc[g][1]), t, 0, r0, rows);
      if (rows > 8) store_rows8<D>(sum_pairs(acc[g][2], acc[g][3]), t, 0, r0 + 8, rows - 8);
    }
  }
}

// ---- Sparse path (strip groups at most kSparsePathDensity dense, several tokens) ----------------------
// Work per nonzero instead of per element. Per 64-column chunk of one strip, the nonzeros' positions are
// decoded once into codes (column in the chunk * 16 + row, in value order) and their values widened to
// fp32; then, per block of 8 tokens, each nonzero adds value * x[column][8 tokens] (PackedX::by_column)
// into its row's 8 accumulators in memory. Measured on Zen 3 (2 threads, 11008 x 4096, bf16), against the
// dense tile: 8 tokens 7.5 -> 4.9 ms at 90% sparsity, 5.9 ms at 85%, even at 80% (kSparsePathDensity);
// 32 tokens 20.9 -> 14.9 ms at 90%. Decoding the codes costs about as much as the adds at 8 tokens.
constexpr int kSparseTokens = 8;                            // one ymm of accumulators per row
// Accumulator rows per token block: each row's adds are split four ways by column and unit parity (code
// & 63) so that consecutive nonzeros of a row do not chain through memory (store-to-load forwarding).
constexpr int kAccRows = 4 * kStripRows;
constexpr int64_t kChunkNnz = kUnitsPerChunk * kUnitElems;  // most nonzeros in a chunk (1024)

// Codes of a mask byte's set bits in order: bit i = 2 r + j (row r of the byte's 4, column j) as j * 16 + r.
struct CodeTable {
  alignas(16) uint16_t codes[256][8];
  CodeTable() {
    for (int b = 0; b < 256; ++b) {
      std::fill(codes[b], codes[b] + 8, uint16_t(0));
      for (int i = 0, rank = 0; i < 8; ++i)
        if ((b >> i) & 1) codes[b][rank++] = uint16_t((i & 1) * 16 + (i >> 1));
    }
  }
};

const CodeTable& code_table() {
  static const CodeTable t;
  return t;
}

// Codes of the nonzeros of chunk units [0, nu) (masks from mask_ptr); returns their count. Each mask byte
// stores 8 codes (its set bits' first, the rest overwritten next), so codes has room for kChunkNnz + 8.
inline int64_t decode_chunk(const uint32_t* mask_ptr, int64_t nu, uint16_t* codes, const CodeTable& tab) {
  const uint8_t* mask = reinterpret_cast<const uint8_t*>(mask_ptr);
  const __m128i row_step = _mm_set1_epi16(4), unit_step = _mm_set1_epi16(2 * 16);
  __m128i unit_base = _mm_setzero_si128();  // 2 u * 16: unit u's first column
  int64_t n = 0;
  for (int64_t u = 0; u < nu; ++u, unit_base = _mm_add_epi16(unit_base, unit_step)) {
    __m128i base = unit_base;  // + 4 q: byte q holds rows 4q .. 4q + 3
    for (int q = 0; q < 4; ++q, base = _mm_add_epi16(base, row_step)) {
      const unsigned b = mask[4 * u + q];
      const __m128i c = _mm_add_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(tab.codes[b])), base);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + n), c);
      n += __builtin_popcount(b);
    }
  }
  return n;
}

// The chunk's n values as fp32 (f32: the stream itself); pv advances past them. Reads up to 7 values
// past them: the strip's successors or the values' kValuePad zeros.
template <DType D>
inline const float* widen_values(const void*& pv, int64_t n, float* out) {
  if constexpr (D == DType::f32) {
    const float* p = static_cast<const float*>(pv);
    pv = p + n;
    return p;
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(pv);
    for (int64_t i = 0; i < n; i += 8) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
      const __m256 f = D == DType::f16 ? _mm256_cvtph_ps(v)
                                       : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
      _mm256_storeu_ps(out + i, f);
    }
    pv = p + n;
    return out;
  }
}

// Rows 0..7 of an 8 x 8 block (row r at m + 8 r) transposed: out[t] holds element t of every row.
inline void transpose8(const float* m, __m256 (&out)[8]) {
  __m256 r[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_load_ps(m + 8 * i);
  for (int i = 0; i < 8; i += 2) {
    u[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    u[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4)
    for (int h = 0; h < 2; ++h) {
      r[i + h] = _mm256_shuffle_ps(u[i + h], u[i + h + 2], 0x44);
      r[i + h + 2] = _mm256_shuffle_ps(u[i + h], u[i + h + 2], 0xee);
    }
  // r[0..3]: columns {0, 4}, {2, 6}, {1, 5}, {3, 7} of rows 0-3; r[4..7] the same for rows 4-7.
  const int col_of[4] = {0, 2, 1, 3};
  for (int i = 0; i < 4; ++i) {
    out[col_of[i]] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
    out[col_of[i] + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
  }
}

template <DType D>
void sparse_strips(const Task& t, Streams<void>& s) {
  const CodeTable& tab = code_table();
  const int64_t units = units_per_strip(t.w->k), cs = t.x.column_stride;
  const int64_t blocks = (t.tokens + kSparseTokens - 1) / kSparseTokens;
  float* acc = t.scratch;  // [block][4 parts][16 rows][8 tokens]
  uint16_t* codes = reinterpret_cast<uint16_t*>(acc + blocks * kAccRows * kSparseTokens);
  float* widened = reinterpret_cast<float*>(codes + kChunkNnz + 16);
  for (int g = 0; g < G; ++g) {
    if (!s.rows[g]) continue;
    std::fill(acc, acc + blocks * kAccRows * kSparseTokens, 0.0f);
    for (int64_t u0 = 0; u0 < units; u0 += kUnitsPerChunk) {
      const int64_t n = decode_chunk(s.masks[g] + u0, std::min<int64_t>(kUnitsPerChunk, units - u0), codes, tab);
      const float* v = widen_values<D>(s.vals[g], n, widened);
      const float* x0 = t.x.by_column + 2 * u0 * cs + t.token0;
      for (int64_t b = 0; b < blocks; ++b) {
        float* a = acc + b * kAccRows * kSparseTokens;
        const float* x = x0 + b * kSparseTokens;
        const auto add = [&](int64_t i) __attribute__((always_inline)) {
          const size_t code = codes[i];
          float* ar = a + (code & 63) * kSparseTokens;
          const float* xc = x + (code >> 4) * cs;
          _mm256_store_ps(ar, _mm256_fmadd_ps(_mm256_broadcast_ss(v + i), _mm256_loadu_ps(xc), _mm256_load_ps(ar)));
        };
        int64_t i = 0;
        // Unrolled by 4: the loop's counter and branch were 3 of a nonzero's ~13 instructions (this loop is
        // instruction-bound); 10-15% faster at 90% sparsity, 8 and 32 tokens.
        for (; i + 4 <= n; i += 4) add(i), add(i + 1), add(i + 2), add(i + 3);
        for (; i < n; ++i) add(i);
      }
    }
    const int64_t r0 = (t.strip0 + g) * kStripRows;
    for (int64_t b = 0; b < blocks; ++b) {
      float* a = acc + b * kAccRows * kSparseTokens;  // parts 1..3 into part 0
      for (int e = 0; e < kStripRows * kSparseTokens; e += 8) {
        __m256 v = _mm256_load_ps(a + e);
        for (int part = 1; part < 4; ++part)
          v = _mm256_add_ps(v, _mm256_load_ps(a + part * kStripRows * kSparseTokens + e));
        _mm256_store_ps(a + e, v);
      }
      for (int half = 0; half < 2 && half * 8 < s.rows[g]; ++half) {
        __m256 rows[8];  // rows[tk]: rows 8 half .. 8 half + 7 of token 8 b + tk
        transpose8(a + 8 * half * kSparseTokens, rows);
        for (int tk = 0; tk < kSparseTokens && b * kSparseTokens + tk < t.tokens; ++tk)
          store_rows8<D>(rows[tk], t, b * kSparseTokens + tk, r0 + 8 * half, s.rows[g] - 8 * half);
      }
    }
  }
}

template <DType D>
void run_dtype(const Task& t) {
  Streams<void> s = open_streams<void>(t);
  const ExpandTables& tab = tables();
  if (t.tokens == 1) return one_token<D>(t, s, tab);
  const int64_t strip_end = std::min(t.strip0 + G, num_strips(t.w->m));
  if (t.x.by_column && strip_density(*t.w, t.strip0, strip_end) <= kSparsePathDensity) return sparse_strips<D>(t, s);
  const int64_t units = units_per_strip(t.w->k);
  float* tile = t.scratch + t.tokens * G * 32;
  for (int64_t u0 = 0; u0 < units; u0 += kTileUnits) {
    const int64_t nu = std::min(kTileUnits, units - u0);
    for (int64_t u = 0; u < nu; ++u)
      for (int g = 0; g < G; ++g) {
        const Unit w = expand_unit<D>(s.masks[g] + u0 + u, s.vals[g], tab);
        for (int q = 0; q < 4; ++q) _mm256_store_ps(tile + (u * G + g) * 32 + 8 * q, w.q[q]);
      }
    const bool first = u0 == 0, last = u0 + nu == units;
    for (int g = 0; g < G; ++g) {
      if (!s.rows[g]) continue;
      for (int64_t tok = 0; tok < t.tokens; tok += kBlock) {
        with_count<1, kBlock>(int(std::min<int64_t>(kBlock, t.tokens - tok)),
                              [&](auto c) { strip_tokens<D, c.value>(t, s, g, tok, u0, nu, tile, first, last); });
      }
    }
  }
}

void run(const Task& t) {
  switch (t.w->dtype) {
    case DType::bf16: return run_dtype<DType::bf16>(t);
    case DType::f16: return run_dtype<DType::f16>(t);
    default: return run_dtype<DType::f32>(t);
  }
}

int64_t scratch_floats(int64_t tokens) {
  const int64_t sparse_path = (tokens + kSparseTokens - 1) / kSparseTokens * kAccRows * kSparseTokens +
                              (kChunkNnz + 16) / 2 + kChunkNnz + 8;
  return std::max(tokens * G * 32 + kTileUnits * G * 32, sparse_path);
}

template <DType D>
void pack_x_rows(const void* x, int64_t x_stride, int64_t n, int64_t k, int64_t kp, float* out) {
  constexpr int kBytes = D == DType::f32 ? 4 : 2;
  for (int64_t t = 0; t < n; ++t) {
    const char* src = static_cast<const char*>(x) + t * x_stride * kBytes;
    float* dst = out + t * kp;
    int64_t c = 0;
    for (; c + 8 <= k; c += 8) _mm256_storeu_ps(dst + c, load8<D>(src + c * kBytes));
    if (c < k) {
      alignas(32) char buf[32] = {};
      std::memcpy(buf, src + c * kBytes, size_t(k - c) * kBytes);
      _mm256_storeu_ps(dst + c, load8<D>(buf));
      c += 8;
    }
    std::fill(dst + std::min(c, kp), dst + kp, 0.0f);
  }
}

void pack_x(const void* x, int64_t x_stride, DType dtype, int64_t n, int64_t k, int64_t kp, void* out) {
  float* o = static_cast<float*>(out);
  switch (dtype) {
    case DType::bf16: return pack_x_rows<DType::bf16>(x, x_stride, n, k, kp, o);
    case DType::f16: return pack_x_rows<DType::f16>(x, x_stride, n, k, kp, o);
    default: return pack_x_rows<DType::f32>(x, x_stride, n, k, kp, o);
  }
}

}  // namespace

const CpuKernels& avx2_kernels() {
  static const CpuKernels k = {"avx2", false, pack_x, run, scratch_floats, true};
  return k;
}

}  // namespace detail
}  // namespace sparse
}  // namespace fastops
