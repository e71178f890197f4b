// CPU LUT GEMM: per-token table construction, the portable int8-table kernel and the dispatch to the
// SIMD kernels; the portable dequantization kernels (the dense path's dequantize_cpu and the precise
// mode). Inputs are validated by the caller.
//
// Work split: tables are built once per call (parallel over (token, group)); the GEMM then runs
// parallel over 16-row tiles, each tile streaming its contiguous packed weights once per token
// block. Integer sums (per scale block: lut_cpu_kernels.h) are flushed into fp32 row accumulators
// with coefficient * table unit; the zero-point term offset * S_G is added once per group.
// The precise mode dequantizes each tile one k block at a time and multiplies it with fp32 x.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/aligned_buffer.h"
#include "common/cpu_features.h"
#include "common/dtype.h"
#include "common/parallel.h"
#include "lut/lut.h"
#include "lut/lut_cpu_kernels.h"

namespace fastops {
namespace lut {
namespace {

using detail::Int8Tables;
using detail::kTableBytes;
using detail::kTableEntries;
using detail::kTableSlots;

// x[n, 32 kb .. 32 kb + 31] as fp32, zero past K.
template <DType D>
void gather_block(const GemmProblem& p, int64_t n, int64_t kb, float* xs) {
  const int64_t k0 = kb * kBlockK;
  for (int j = 0; j < kBlockK; ++j) {
    const int64_t k = k0 + j;
    xs[j] = k < p.k ? load_elem<D>(p.x, n * p.x_stride_n + k * p.x_stride_k) : 0.0f;
  }
}

// The 8 table entries with the MSB set, T(8 + c) for c < 8, of the chunk x[0..3].
void msb_entries(const float* x, float* t) {
  for (int c = 0; c < 8; ++c)
    t[c] = x[3] + ((c & 1) ? x[0] : -x[0]) + ((c & 2) ? x[1] : -x[1]) + ((c & 4) ? x[2] : -x[2]);
}

// Round to nearest even for |v| < 2^22 without a libm call (baseline x86-64 has no roundps).
float round_even(float v) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  return (v + kMagic) - kMagic;
}

}  // namespace

namespace detail {
// Written as flat loops over the MSB entries so the compiler vectorizes them.
float int8_block_scalar(const float* xs, int blocks, int8_t* lut) {
  constexpr int kMaxChunks = 2 * kTableSlots;
  const int chunks = blocks * kTableSlots;
  float msb[8 * kMaxChunks];
  float absmax = 0.0f;
  for (int u = 0; u < chunks; ++u) {
    const float* x = xs + kChunk * u;
    msb_entries(x, msb + 8 * u);
    absmax = std::max(absmax, std::fabs(x[0]) + std::fabs(x[1]) + std::fabs(x[2]) + std::fabs(x[3]));
  }
  if (absmax == 0.0f) {
    std::memset(lut, 0, size_t(blocks) * kTableBytes);
    return 0.0f;
  }
  const float inv = 127.0f / absmax;
  int8_t h8[8 * kMaxChunks], r8[8 * kMaxChunks];
  for (int i = 0; i < 8 * chunks; ++i) {
    const float q = msb[i] * inv;
    const float h = std::min(127.0f, std::max(-127.0f, round_even(q)));
    const float r = std::min(2.0f, std::max(-2.0f, round_even(detail::kResidualSteps * (q - h))));
    h8[i] = int8_t(int(h));
    r8[i] = int8_t(int(r));
  }
  for (int u = 0; u < chunks; ++u) {
    int8_t* hi = lut + (u / kTableSlots) * kTableBytes;
    int8_t* res = hi + kTableSlots * kTableEntries;
    const int base = detail::table_slot(u % kTableSlots) * kTableEntries;
    for (int c = 0; c < 8; ++c) {
      hi[base + 8 + c] = h8[8 * u + c];
      hi[base + 7 - c] = int8_t(-h8[8 * u + c]);  // 7 - c == (8 + c) ^ 15
      res[base + 8 + c] = r8[8 * u + c];
      res[base + 7 - c] = int8_t(-r8[8 * u + c]);
    }
  }
  return absmax / (127.0f * detail::kResidualSteps);
}
}  // namespace detail

namespace {
using Int8BlockFn = float (*)(const float*, int, int8_t*);

// Tables of token n, group G: every scale block of the group, plus the group's fp32 sum of x.
template <DType D>
void build_group(const GemmProblem& p, Int8BlockFn int8_block, int64_t n, int64_t group, int64_t kblocks,
                 int64_t ngroups, int8_t* tables, float* unit, float* group_sum) {
  const int64_t per_group = p.group_size / kBlockK;
  const int64_t kb_end = std::min(kblocks, (group + 1) * per_group);
  const int per_scale = detail::blocks_per_scale(p.scheme, p.bits, p.group_size);
  float sum = 0.0f;
  for (int64_t kb0 = group * per_group; kb0 < kb_end; kb0 += per_scale) {
    const int blocks = int(std::min<int64_t>(per_scale, kb_end - kb0));
    float xs[2 * kBlockK];
    for (int b = 0; b < blocks; ++b) gather_block<D>(p, n, kb0 + b, xs + b * kBlockK);
    for (int j = 0; j < blocks * kBlockK; ++j) sum += xs[j];
    const int64_t slot = n * kblocks + kb0;
    const float u = int8_block(xs, blocks, tables + slot * kTableBytes);
    for (int b = 0; b < blocks; ++b) unit[slot + b] = u;
  }
  group_sum[n * ngroups + group] = sum;
}

// Table views for the portable kernel: entry(n, kb, slot, idx) in integer units of unit(n, kb).
struct Int8View {
  using Acc = int32_t;
  const Int8Tables& t;
  Acc entry(int64_t n, int64_t kb, int slot, int idx, bool with_residual) const {
    const int8_t* lut = t.lut + (n * t.kblocks + kb) * kTableBytes + slot * kTableEntries + idx;
    return detail::kResidualSteps * lut[0] + (with_residual ? lut[kTableSlots * kTableEntries] : 0);
  }
};

template <DType D>
void store_tile(const GemmProblem& p, int64_t n, int64_t tile, const float* acc) {
  const int64_t m0 = tile * kTileRows;
  const int rows = int(std::min<int64_t>(kTileRows, p.m - m0));
  for (int r = 0; r < rows; ++r) {
    float v = acc[r];
    if (p.bias) v = v + load_elem<D>(p.bias, m0 + r);
    store_elem<D>(p.y, n * p.y_stride_n + m0 + r, v);
  }
}

// Portable kernel for one tile and a token range, table entries through View (Int8View). Follows the
// AVX2 and AVX-512 kernels' order of fp32 operations exactly (see lut_cpu_kernels.h). Sums are
// flushed once per scale block of `per_scale` (1 or 2) k blocks.
template <DType D, Scheme S, class View>
void tile_portable(const GemmProblem& p, const View& view, const float* unit, const float* group_sum,
                   int64_t kblocks, int64_t ngroups, int per_scale, int64_t tile, int64_t n_begin,
                   int64_t n_end) {
  using Acc = typename View::Acc;
  const int bits = p.bits;
  const int64_t mp = row_tiles(p.m) * kTileRows, m0 = tile * kTileRows;
  const int ncoef = S == Scheme::bcq ? bits : 1;
  const int64_t per_group = p.group_size / kBlockK;
  const uint8_t* wtile = p.planes + block_offset(tile, 0, 0, kblocks, bits);
  for (int64_t n = n_begin; n < n_end; ++n) {
    float acc[kTileRows] = {};
    for (int64_t g = 0; g < ngroups; ++g) {
      float coef[4][kTileRows], offset[kTileRows];
      for (int r = 0; r < kTileRows; ++r) {
        const float z = half_to_float(p.zeros[g * mp + m0 + r]);
        for (int a = 0; a < ncoef; ++a) {
          const float s = half_to_float(p.scales[(g * ncoef + a) * mp + m0 + r]);
          coef[a][r] = S == Scheme::bcq ? s : uniform_plane_coef(s, 0);
        }
        offset[r] = S == Scheme::bcq ? z : uniform_offset(half_to_float(p.scales[g * mp + m0 + r]), z, bits);
      }
      const int64_t kb_end = std::min(kblocks, (g + 1) * per_group);
      Acc sum[kTileRows] = {};
      for (int64_t kb = g * per_group; kb < kb_end; ++kb) {
        const float u = unit[n * kblocks + kb];
        const bool scale_end = per_scale == 1 || kb % 2 == 1 || kb + 1 == kb_end;  // pairs start even
        for (int plane = bits - 1; plane >= 0; --plane) {
          const uint8_t* blk = wtile + (kb * bits + plane) * kBlockBytes;
          const Acc weight = S == Scheme::uniform ? Acc(1 << plane) : Acc(1);
          const bool with_residual = detail::uses_residual(S, bits, plane);
          for (int r = 0; r < kTileRows; ++r) {
            Acc lookups = 0;
            for (int slot = 0; slot < kTableSlots; ++slot) {
              const int lane = 2 * (slot / 4) + slot % 2, nibble = (slot / 2) % 2;
              const int idx = (blk[lane * 16 + r] >> (4 * nibble)) & 15;
              lookups += view.entry(n, kb, slot, idx, with_residual);
            }
            sum[r] += weight * lookups;
          }
          if (S == Scheme::bcq || (plane == 0 && scale_end)) {
            const int a = S == Scheme::bcq ? plane : 0;
            for (int r = 0; r < kTileRows; ++r) {
              acc[r] = std::fma(float(sum[r]), coef[a][r] * u, acc[r]);
              sum[r] = 0;
            }
          }
        }
      }
      const float sg = group_sum[n * ngroups + g];
      for (int r = 0; r < kTileRows; ++r) acc[r] = std::fma(offset[r], sg, acc[r]);
    }
    store_tile<D>(p, n, tile, acc);
  }
}

// Call f with the runtime scheme as a compile-time constant (std::integral_constant; dtypes:
// with_dtype in common/dtype.h).
template <class F>
void with_scheme(Scheme s, F&& f) {
  if (s == Scheme::bcq)
    f(std::integral_constant<Scheme, Scheme::bcq>{});
  else
    f(std::integral_constant<Scheme, Scheme::uniform>{});
}

}  // namespace

namespace detail {
void int8_tile_scalar(const GemmProblem& p, const Int8Tables& t, int64_t tile, int64_t n_begin,
                      int64_t n_end) {
  with_dtype(p.dtype, [&](auto d) {
    with_scheme(p.scheme, [&](auto s) {
      tile_portable<d.value, s.value>(p, Int8View{t}, t.unit, t.group_sum, t.kblocks, t.ngroups,
                                      blocks_per_scale(p.scheme, p.bits, p.group_size), tile, n_begin, n_end);
    });
  });
}
}  // namespace detail

namespace {
// The table builder and tile kernel of one ISA; they produce bit-identical results on every ISA.
struct Int8Kernels {
  Int8BlockFn block;
  void (*tile)(const GemmProblem&, const Int8Tables&, int64_t, int64_t, int64_t);
  const char* name;
};
Int8Kernels int8_kernels() {
#ifdef FASTOPS_HAVE_AVX2_KERNELS
  const CpuFeatures& f = cpu_features();
  // The AVX-512 kernel builds no tables of its own: the AVX2 builder's are the same bytes.
  if (active_isa() >= Isa::avx512 && f.avx512bw && f.avx512_vbmi && f.avx512_vnni)
    return {detail::int8_block_avx2, detail::int8_tile_avx512, "avx512-int8"};
  if (active_isa() >= Isa::avx2) return {detail::int8_block_avx2, detail::int8_tile_avx2, "avx2-int8"};
#endif
  return {detail::int8_block_scalar, detail::int8_tile_scalar, "scalar-int8"};
}
}  // namespace

namespace detail {
namespace {
// k block kb of the tile: row r's value at k = 32 kb + kk (k < K) goes to out[kk * stride + r].
template <class T>
void dequant_kblock_scalar(const DequantTile& t, int64_t kb, T* out, int64_t stride) {
  const int64_t per_group = t.group_size / kBlockK;
  const int ncoef = t.scheme == Scheme::bcq ? t.bits : 1;
  const float* coef = t.coef + (kb / per_group) * ncoef * kTileRows;
  const float* zero = t.zero + (kb / per_group) * kTileRows;
  for (int kk = 0; kk < kBlockK && kb * kBlockK + kk < t.k; ++kk) {
    const BitPos pos = bit_position(0, kk);  // row 0's byte; row r's is r bytes on
    for (int r = 0; r < kTileRows; ++r) {
      int code = 0;
      for (int i = 0; i < t.bits; ++i)
        code |= ((t.planes[(kb * t.bits + i) * kBlockBytes + pos.byte + r] >> pos.bit) & 1) << i;
      float v;
      if (t.scheme == Scheme::uniform) {
        v = coef[r] * (float(code) - zero[r]);
      } else {
        v = zero[r];
        for (int i = 0; i < t.bits; ++i) v += ((code >> i) & 1) ? coef[i * kTileRows + r] : -coef[i * kTileRows + r];
      }
      if constexpr (std::is_same_v<T, uint16_t>)
        out[kk * stride + r] = float_to_bf16(v);
      else
        out[kk * stride + r] = v;
    }
  }
}
}  // namespace

void dequant_tile_scalar(const DequantTile& t) {
  for (int64_t kb = 0; kb < k_blocks(t.k); ++kb) {
    if (t.bf16)
      dequant_kblock_scalar(t, kb, static_cast<uint16_t*>(t.out) + kb * kBlockK * t.out_stride, t.out_stride);
    else
      dequant_kblock_scalar(t, kb, static_cast<float*>(t.out) + kb * kBlockK * t.out_stride, t.out_stride);
  }
}

void precise_tile_scalar(const DequantTile& t, const float* x, int64_t x_stride, int64_t n, float* acc) {
  float w[kBlockK][kTileRows];
  for (int64_t kb = 0; kb < k_blocks(t.k); ++kb) {
    dequant_kblock_scalar(t, kb, &w[0][0], kTileRows);
    const int kcount = int(std::min<int64_t>(kBlockK, t.k - kb * kBlockK));
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = x + i * x_stride + kb * kBlockK;
      float sum[kTileRows] = {};
      for (int kk = 0; kk < kcount; ++kk)
        for (int r = 0; r < kTileRows; ++r) sum[r] += w[kk][r] * xi[kk];
      for (int r = 0; r < kTileRows; ++r) acc[i * kTileRows + r] += sum[r];
    }
  }
}
}  // namespace detail

namespace {
// A tile's view for the dequantizing kernels, its fp16 group parameters converted into coef / zero
// ([ngroups][A][16] and [ngroups][16], DequantTile).
detail::DequantTile dequant_tile_view(const PackedWeight& w, int64_t tile, std::vector<float>& coef,
                                      std::vector<float>& zero) {
  const int64_t ngroups = num_groups(w.k, w.group_size), mp = row_tiles(w.m) * kTileRows, m0 = tile * kTileRows;
  const int ncoef = w.scheme == Scheme::bcq ? w.bits : 1;
  coef.resize(size_t(ngroups * ncoef * kTileRows));
  zero.resize(size_t(ngroups * kTileRows));
  for (int64_t g = 0; g < ngroups; ++g)
    for (int r = 0; r < kTileRows; ++r) {
      zero[g * kTileRows + r] = half_to_float(w.zeros[g * mp + m0 + r]);
      for (int a = 0; a < ncoef; ++a)
        coef[(g * ncoef + a) * kTileRows + r] = half_to_float(w.scales[(g * ncoef + a) * mp + m0 + r]);
    }
  detail::DequantTile t{};
  t.planes = w.planes + block_offset(tile, 0, 0, k_blocks(w.k), w.bits);
  t.coef = coef.data();
  t.zero = zero.data();
  t.k = w.k;
  t.group_size = w.group_size;
  t.bits = w.bits;
  t.scheme = w.scheme;
  return t;
}

bool use_avx2_dequant() {
#ifdef FASTOPS_HAVE_AVX2_KERNELS
  return active_isa() >= Isa::avx2;
#else
  return false;
#endif
}

// The precise mode: per tile, the dequantized weights times fp32 x (converted once, [n][k]).
template <DType D>
void gemm_precise(const GemmProblem& p, int nthreads) {
  std::vector<float> xf(size_t(p.n * p.k));
  parallel_for(p.n, 16, nthreads, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      for (int64_t k = 0; k < p.k; ++k) xf[i * p.k + k] = load_elem<D>(p.x, i * p.x_stride_n + k * p.x_stride_k);
  });
  const auto tile_fn = use_avx2_dequant() ? detail::precise_tile_avx2 : detail::precise_tile_scalar;
  parallel_for(row_tiles(p.m), 4, nthreads, [&](int64_t b, int64_t e) {
    std::vector<float> coef, zero, acc(size_t(p.n * kTileRows));
    for (int64_t tile = b; tile < e; ++tile) {
      const detail::DequantTile t = dequant_tile_view(p, tile, coef, zero);
      std::fill(acc.begin(), acc.end(), 0.0f);
      tile_fn(t, xf.data(), p.k, p.n, acc.data());
      for (int64_t i = 0; i < p.n; ++i) store_tile<D>(p, i, tile, acc.data() + i * kTileRows);
    }
  });
}
}  // namespace

void dequantize_cpu(const DequantProblem& p, int nthreads) {
  if (p.rows <= 0 || p.k <= 0) return;
  const int64_t elem = p.out_dtype == DType::bf16 ? 2 : 4;
  const auto tile_fn = use_avx2_dequant() ? detail::dequant_tile_avx2 : detail::dequant_tile_scalar;
  const int64_t first_tile = p.row_begin / kTileRows;
  parallel_for(row_tiles(p.rows), 1, nthreads, [&](int64_t b, int64_t e) {
    std::vector<float> coef, zero;
    for (int64_t i = b; i < e; ++i) {
      detail::DequantTile t = dequant_tile_view(p, first_tile + i, coef, zero);
      t.out = static_cast<unsigned char*>(p.out) + i * kTileRows * elem;
      t.out_stride = p.out_stride;
      t.bf16 = p.out_dtype == DType::bf16;
      tile_fn(t);
    }
  });
}

const char* cpu_kernel_name(bool precise) {
  if (precise) return use_avx2_dequant() ? "avx2-dequant-fp32" : "scalar-dequant-fp32";
  return int8_kernels().name;
}

void gemm_cpu(const GemmProblem& p, bool precise, int nthreads) {
  if (p.m <= 0 || p.n <= 0) return;
  if (precise) return with_dtype(p.dtype, [&](auto d) { gemm_precise<d.value>(p, nthreads); });
  const int64_t kblocks = k_blocks(p.k), ngroups = num_groups(p.k, p.group_size);
  const int64_t tiles = row_tiles(p.m);

  // Tables: one (token, group) pair per work item.
  AlignedBuffer table_store;
  table_store.resize(size_t(p.n * kblocks * kTableBytes));
  int8_t* tables = reinterpret_cast<int8_t*>(table_store.data());
  std::vector<float> unit(size_t(p.n * kblocks)), group_sum(size_t(p.n * ngroups));
  const Int8Kernels kernels = int8_kernels();
  const int64_t groups_per_piece = std::max<int64_t>(1, 1024 / p.group_size);
  parallel_for(p.n * ngroups, groups_per_piece, nthreads, [&](int64_t b, int64_t e) {
    with_dtype(p.dtype, [&](auto d) {
      for (int64_t i = b; i < e; ++i)
        build_group<d.value>(p, kernels.block, i / ngroups, i % ngroups, kblocks, ngroups, tables, unit.data(),
                             group_sum.data());
    });
  });

  // GEMM: items are (tile, token range); tokens are split only when tiles alone cannot keep
  // every thread busy.
  const int64_t min_items = 8 * int64_t(std::max(1, nthreads));
  // Items go out in a few contiguous pieces per thread: each thread then streams long runs of
  // packed weights, which its software prefetch covers (single tiles alternating between threads
  // left N = 1 well short of memory bandwidth); four pieces per thread keep the load balanced.
  const int64_t pieces = 4 * int64_t(std::max(1, nthreads));
  const int64_t token_splits = tiles >= min_items ? 1 : std::min(p.n, (min_items + tiles - 1) / tiles);
  const int64_t tokens_per_item = (p.n + token_splits - 1) / token_splits;
  const int64_t items = tiles * token_splits;
  const Int8Tables int8_tables{tables, unit.data(), group_sum.data(), kblocks, ngroups};
  parallel_for(items, (items + pieces - 1) / pieces, nthreads, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t tile = i / token_splits, n0 = (i % token_splits) * tokens_per_item;
      const int64_t n1 = std::min(p.n, n0 + tokens_per_item);
      if (n0 >= n1) continue;
      kernels.tile(p, int8_tables, tile, n0, n1);
    }
  });
}

}  // namespace lut
}  // namespace fastops
