// Private to the CPU bitgemm: the per-ISA kernels that bitgemm_cpu.cpp (driver + scalar kernels) and
// bitgemm_cpu_avx2.cpp implement, and the ISA-independent epilogue both instantiate.
//
// Two inner methods (bitgemm_cpu.cpp picks one per call):
//   popcount: register tiles of pop_rows_a x pop_rows_w plane-rows (one bit plane of one operand row;
//             the tile shape is the ISA's: CpuKernels),
//             P = popcount(a AND w) straight from the packed planes; the driver weights each P with
//             plane_coeff(a) * plane_coeff(w).
//   int8:     operand rows are unpacked to small integers once per cache block (UnpackSpec), then
//             register tiles of dot_rows_u x dot_rows_s unpacked rows (the ISA's shape) take integer
//             dot products.
//             "Narrow" tiles multiply u8 (U side) by s8 (S side) with vpmaddubsw; "wide" tiles use
//             int16 on both sides. Unpacked element order inside each 128-element span is the ISA's
//             choice: both operands go through the same ISA's unpack, and a dot product does not care.
#pragma once
#include <cstdint>

#include "bitgemm/bitgemm.h"

namespace fastops {
namespace bitgemm {
namespace detail {

constexpr int kMaxPopRows = 8;  // bound on either side of any ISA's popcount tile
constexpr int kMaxDotRows = 8;  // bound on either side of any ISA's dot tile
constexpr int kMaxPanelRows = 8;  // bound on any ISA's panel_gemm rows
constexpr int64_t kChunkBytes = 32;  // one AVX2 vector; dot tiles count their length in these
constexpr int64_t kSpanBits = 128;   // k granularity of every kernel (group sizes are multiples)

// Unpacked value of element c of one operand row, from bit planes [plane_begin, plane_end):
//   sum_j 2^(j - plane_begin) * b_j(c) - bias,  b_j = bit j, inverted for j = flip_plane
// Stored as uint8/int8 (narrow) or int16 (wide). flip_plane = bits - 1 turns a signed operand's
// two's-complement top bit into offset binary (the code plus 2^(bits-1)); flip_plane = -1: none.
struct UnpackSpec {
  int plane_begin = 0, plane_end = 0;
  int flip_plane = -1;
  int bias = 0;
  bool wide = false;
};

// Counts over nbytes (a multiple of kSpanBits / 8) of pop_rows_a (or fewer: popcount_short) +
// pop_rows_w plane-rows: out[i * pop_rows_w + j] = popcount(a[i] AND w[j]); out has room for
// kMaxPopRows^2 counts (a tile may write zeros past its own).
using PopcountTileFn = void (*)(const uint32_t* const* a, const uint32_t* const* w, int64_t nbytes,
                                uint32_t* out);
// Unpacks words [0, nwords) (a multiple of 4) of one row, given as one pointer per plane (entries
// outside the spec's planes are not read), into nwords * 32 elements at out.
using UnpackFn = void (*)(const uint32_t* const* plane_rows, const UnpackSpec& spec, int64_t nwords, void* out);
// Integer dot products over nchunks kChunkBytes chunks: out[i * dot_rows_s + j] = sum u[i] * s[j].
// Narrow tiles add vpmaddubsw pairs in int16 for up to flush_every chunks (the caller's exactness
// bound), then widen them with weight coef[j] (narrow_exact ISAs ignore flush_every). Wide tiles
// ignore coef and flush_every. nchunks is even (kSpanBits elements of at least a byte).
using DotTileFn = void (*)(const void* const* u, const void* const* s, const int16_t* coef, int64_t nchunks,
                           int flush_every, uint32_t* out);
// Register-blocked u8 x s8 GEMM on a W panel, for narrow int8 plans with many A rows (null where the
// ISA has none): for i < rows, n < cols,
//   c[i * ldc + n] += sum over q < kquads, b < 4 of a[i][4 q + b] * panel[(q * panel_cols + n) * 4 + b]
// (wrapping uint32), A the u8 side when a_is_u, else the panel. All panel_rows A rows are read (point
// the missing ones at zeros); only rows < rows and columns < cols are stored.
using PanelGemmFn = void (*)(const uint8_t* const* a, const uint8_t* panel, int64_t kquads, bool a_is_u, uint32_t* c,
                             int64_t ldc, int rows, int cols);
// sums[g * sums_stride] += coeff * popcount(row words [g * group_words, min(.., nwords))) for g < ngroups.
using GroupPopcountFn = void (*)(const uint32_t* row, int64_t nwords, int64_t group_words, int64_t ngroups,
                                 int32_t coeff, int32_t* sums, int64_t sums_stride);

// One output row of one k group over columns [0, n) (all pointers already at the first column):
//   C = gg * dot + owz * rsa + oaz * rsw + ow * koa          (uint32, wrapping; bitgemm_cpu.cpp)
// Integer mode stores C. Scaled mode adds sa * sw * C into facc (fp32), and on the last group writes
// facc (+ bias) in out_dtype instead.
struct EpilogueRow {
  const uint32_t* dot = nullptr;
  int64_t n = 0;
  uint32_t gg = 1, rsa = 0, oaz = 0, koa = 0;
  const int32_t *owz = nullptr, *rsw = nullptr, *ow = nullptr;
  bool scaled = false, first = true, last = true;
  float sa = 1.0f;
  const float* sw = nullptr;
  float* facc = nullptr;  // n floats (scratch when first && last)
  void* out = nullptr;
  DType out_dtype = DType::f32;
  const void* bias = nullptr;
};
using EpilogueRowFn = void (*)(const EpilogueRow& e);
// Writes vals[0, n) (+ bias[0, n) when not null, both in out_dtype) to out.
using StoreRowFn = void (*)(const float* vals, const void* bias, void* out, DType dtype, int64_t n);

// The ISA-independent part of EpilogueRowFn: plain loops the compiler vectorizes for the including
// translation unit's ISA. Each TU instantiates it with its own store_row, so no copy is shared.
template <StoreRowFn kStoreRow>
void epilogue_row(const EpilogueRow& e) {
  const uint32_t* dot = e.dot;
  const int32_t *owz = e.owz, *rsw = e.rsw, *ow = e.ow;
  const uint32_t gg = e.gg, rsa = e.rsa, oaz = e.oaz, koa = e.koa;
  auto exact = [&](int64_t i) {
    return gg * dot[i] + uint32_t(owz[i]) * rsa + oaz * uint32_t(rsw[i]) + uint32_t(ow[i]) * koa;
  };
  if (!e.scaled) {
    int32_t* out = static_cast<int32_t*>(e.out);
    for (int64_t i = 0; i < e.n; ++i) out[i] = int32_t(exact(i));
    return;
  }
  float* facc = e.facc;
  const float* sw = e.sw;
  const float sa = e.sa;
  if (e.first) {
    for (int64_t i = 0; i < e.n; ++i) facc[i] = float(int32_t(exact(i))) * (sa * sw[i]);
  } else {
    for (int64_t i = 0; i < e.n; ++i) facc[i] += float(int32_t(exact(i))) * (sa * sw[i]);
  }
  if (e.last) kStoreRow(facc, e.bias, e.out, e.out_dtype, e.n);
}

// Activation quantization (bitgemm.h): the row's parameters.
struct QuantParams {
  Format fmt = Format::signed_int;
  int bits = 0;
  float inv = 1.0f;
  // value = clamp(rint((x * inv + add) * mul) + zero, qmin, qmax): add = qmax, mul = 1/2 for bipolar,
  // zero = the zero point for unsigned; otherwise add = zero = 0 and mul = 1 (exact no-ops).
  float add = 0.0f, mul = 1.0f, zero = 0.0f;
  float qmin = 0.0f, qmax = 0.0f;
};
// lo = min(0, x[0..k)), hi = max(0, x[0..k)).
using MinMaxFn = void (*)(const void* x, DType dtype, int64_t k, float* lo, float* hi);
// Quantizes x[0..k) and writes the row's words [0, nwords) of every plane (plane_rows[j]; padding
// zero); returns the sum of the values (wrapping uint32). Every product is rounded on its own (no
// fused multiply-add), so all ISAs agree bit for bit.
using QuantizeRowFn = uint32_t (*)(const void* x, DType dtype, int64_t k, const QuantParams& q,
                                   uint32_t* const* plane_rows, int64_t nwords);

// Everything one ISA provides. dot_narrow is null where there is no narrow tile (scalar).
struct CpuKernels {
  const char* isa;
  // Relative costs per W row and K element that pick the method: popcount takes
  //   m * bits_a * bits_w * popcount_cost   (every plane pair of every A row),
  // the int8 dot products bits_w * unpack_cost + m * dot_cost (W unpacked once, then one dot per A
  // row); the cheaper one runs. Fitted per ISA on a Zen 4 core pair, 2 threads, 2026-12-06 (M in
  // 1..16 x N = 11008 x K = 4096 and M = N = K = 1024..4096).
  int popcount_cost, unpack_cost, dot_cost;
  // Narrow tiles accumulate u8 x s8 products exactly in int32 (vpdpbusd), so neither the int16 pair
  // bound nor flush_every applies; coef still weights each S row.
  bool narrow_exact;
  int pop_rows_a, pop_rows_w;  // popcount tile shape (<= kMaxPopRows)
  int dot_rows_u, dot_rows_s;  // dot tile shape (<= kMaxDotRows; dot_rows_s even: 4-bit part pairs)
  PopcountTileFn popcount_tile;
  UnpackFn unpack;
  DotTileFn dot_narrow, dot_wide;
  GroupPopcountFn group_popcount;
  EpilogueRowFn epilogue_row;
  MinMaxFn minmax;
  QuantizeRowFn quantize_row;
  int panel_rows, panel_cols;  // panel_gemm's tile (<= kMaxPanelRows; panel_cols a multiple of 16)
  PanelGemmFn panel_gemm;
  // popcount_short[r - 1]: tiles of r < pop_rows_a A plane-rows by pop_rows_w, for tasks with fewer A
  // plane-rows than a tile (decode: one row of 1..3 bits); null: popcount_tile on zero-padded rows.
  PopcountTileFn popcount_short[kMaxPopRows];
};

#ifdef FASTOPS_HAVE_AVX2_KERNELS
const CpuKernels& avx2_kernels();
// AVX-512 F/BW/VL/DQ + VPOPCNTDQ + VNNI; the kernels that gain nothing from 512 bits are AVX2's.
const CpuKernels& avx512_kernels();
#endif

}  // namespace detail
}  // namespace bitgemm
}  // namespace fastops
