// CUDA lut_gemm: y[n, m] = bias[m] + sum_k x[n, k] W[m, k], W in the packed format of lut_format.h.
//
// Two paths (dispatch in make_plan):
//  * lut_small_n_kernel (N <= kLutMaxTokens for fp16/bf16 x; every N for fp32 x, NT tokens per pass):
//    each CTA builds fp32 tables T_t(c) for NT tokens over one K slice in shared memory, once, then
//    streams the plane blocks of up to 128 row tiles of that slice with 16-byte loads; one table lookup
//    plus one add per 4 weights and plane. Partial sums of split-K slices go to the workspace and are
//    summed in a fixed order by lut_splitk_reduce_kernel (deterministic, no atomics).
//  * lut_mma_kernel (larger N, fp16/bf16 x): per 32-wide k block, cp.async stages the plane blocks
//    and x, the planes are dequantized (fp32 math, one rounding) into a 128 x 32 shared tile of x's
//    dtype, and mma.sync.m16n8k16 (ldmatrix operands) accumulates in fp32. Same split-K reduction.
// fp32 x always takes the LUT path: its fp32 tables keep fp32 accuracy; a tensor-core fp32 path would
// need 3 products per mma for the same accuracy.
// Index math lives in lut_cuda_layout.h (tested on the CPU).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/cuda_utils.cuh"
#include "common/errors.h"
#include "lut/lut.h"
#include "lut/lut_cuda_layout.h"

namespace fastops {
namespace lut {
namespace {

using namespace cuda_layout;

// Largest N (tokens) served by the LUT kernel for fp16/bf16 x. Lookups cost grows with N while the
// dequantize + mma cost does not, and shared-memory lookups stop being hidden under HBM time at ~2-3
// tokens (research/lutgemm.md section 5).
constexpr int64_t kLutMaxTokens = 2;
constexpr int kMaxGridYZ = 65535;

// ---------------------------------------------------------------------------------------------------
// Scalar element access in the runtime dtype (x, bias, y): off the hot loops, so no templates needed.
__device__ __forceinline__ float load_as_float(const void* base, int64_t idx, DType dt) {
  switch (dt) {
    case DType::f16: return __half2float(static_cast<const __half*>(base)[idx]);
    case DType::bf16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[idx]);
    default: return static_cast<const float*>(base)[idx];
  }
}
__device__ __forceinline__ void store_from_float(void* base, int64_t idx, float v, DType dt) {
  switch (dt) {
    case DType::f16: static_cast<__half*>(base)[idx] = __float2half_rn(v); break;
    case DType::bf16: static_cast<__nv_bfloat16*>(base)[idx] = __float2bfloat16_rn(v); break;
    default: static_cast<float*>(base)[idx] = v;
  }
}
__device__ __forceinline__ float half_bits_to_float(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// Output of one (n, m): straight to y (with bias) when K is not split, else a partial sum.
struct OutputSink {
  void* y;
  int64_t y_stride_n;
  const void* bias;
  DType dtype;
  float* partial;  // nullptr: write y
  int64_t n, m, mp;
  __device__ __forceinline__ void put(int64_t split, int64_t token, int64_t row, float v) const {
    if (partial) {
      partial[(split * n + token) * mp + row] = v;
    } else {
      if (bias) v += load_as_float(bias, row, dtype);
      store_from_float(y, token * y_stride_n + row, v, dtype);
    }
  }
};

struct Weights {
  const uint8_t* planes;
  const uint16_t* scales;
  const uint16_t* zeros;
  int64_t mtiles, mp, kblocks, kb_per_group;
  int bits;
  Scheme scheme;
  bool planes_aligned;  // 16-byte aligned planes: vector loads / cp.async
  bool coefs_aligned;   // 16-byte aligned scales and zeros
};

struct Activations {
  const void* x;
  int64_t n, k, stride_n, stride_k;
  DType dtype;
  bool vec_ok;  // 2-byte dtype, unit k stride, rows 16-byte aligned: cp.async of 8 elements
};

// Quantization group of k block kb. 32-bit division: k blocks number < 2^32 for any K that fits in
// memory, and 64-bit division costs registers the LUT kernel does not have.
__device__ __forceinline__ int64_t quant_group(int64_t kb, const Weights& w) {
  return uint32_t(kb) / uint32_t(w.kb_per_group);
}

// 16 plane bytes; the byte path only runs for a misaligned planes pointer.
__device__ __forceinline__ uint4 load_plane16(const uint8_t* p, bool aligned) {
  if (aligned) return __ldg(reinterpret_cast<const uint4*>(p));
  uint32_t w[4] = {0, 0, 0, 0};
#pragma unroll
  for (int i = 0; i < 16; ++i) w[i / 4] |= uint32_t(__ldg(p + i)) << (8 * (i % 4));
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// 16 consecutive fp16 values (one row tile's coefficients), raw as 8 half2 words.
__device__ __forceinline__ void load_row16_raw(const uint16_t* src, bool aligned, uint32_t out[8]) {
  if (aligned) {
    const uint4 lo = __ldg(reinterpret_cast<const uint4*>(src)), hi = __ldg(reinterpret_cast<const uint4*>(src) + 1);
    out[0] = lo.x, out[1] = lo.y, out[2] = lo.z, out[3] = lo.w;
    out[4] = hi.x, out[5] = hi.y, out[6] = hi.z, out[7] = hi.w;
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = uint32_t(__ldg(src + 2 * i)) | (uint32_t(__ldg(src + 2 * i + 1)) << 16);
  }
}
__device__ __forceinline__ float half_of(const uint32_t raw[8], int r) {
  const uint32_t w = raw[r / 2];
  return half_bits_to_float(uint16_t(r % 2 ? w >> 16 : w & 0xffffu));
}
__device__ __forceinline__ void load_row16(const uint16_t* src, bool aligned, float out[16]) {
  uint32_t raw[8];
  load_row16_raw(src, aligned, raw);
#pragma unroll
  for (int r = 0; r < 16; ++r) out[r] = half_of(raw, r);
}

// ---------------------------------------------------------------------------------------------------
// LUT kernel. grid = (row groups of blockDim / 2 tiles, K splits, token groups of NT).
struct LutArgs {
  Weights w;
  Activations x;
  OutputSink out;
  SplitK split;
  int64_t split_offset, token_group_offset;  // for grids larger than 65535 in y / z
};

// Two CTAs per SM for one token; two tokens need more than 128 registers (16 more accumulators).
template <int NT>
__global__ void __launch_bounds__(kLutMaxThreads, NT == 1 ? 2 : 1) lut_small_n_kernel(LutArgs a) {
  // tables: [NT][kLutMaxSliceKb][8 chunks][16] fp32; k block bases are 512-byte aligned (lut_table_offset).
  __shared__ __align__(1024) unsigned char tables[NT * kLutTokenTableBytes];
  __shared__ float pair_sums[NT][kLutMaxSliceKb][kLutThreadsPerTile];  // S over each pair's 4 chunks

  const int tid = threadIdx.x;
  const int64_t split = a.split_offset + blockIdx.y;
  const int64_t n0 = (a.token_group_offset + blockIdx.z) * NT;
  const int64_t split_kb0 = split_begin(a.split, split), split_kb1 = split_end(a.split, split, a.w.kblocks);

  const int pair = lut_thread_pair(tid);
  const int64_t tile = int64_t(blockIdx.x) * (blockDim.x / kLutThreadsPerTile) + lut_thread_tile(tid);
  const bool active = tile < a.w.mtiles;
  const int bits = a.w.bits;
  const bool bcq = a.w.scheme == Scheme::bcq;
  const uint8_t* tile_planes = a.w.planes + block_offset(active ? tile : 0, 0, 0, a.w.kblocks, bits);

  float acc[NT][kTileRows];
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int r = 0; r < kTileRows; ++r) acc[t][r] = 0.f;

  // The group-sum term offset[r] * S_G is applied once per group (flush_group) from the running sum
  // of x over this pair's chunks; keeping only s[r] live keeps the kernel free of spills.
  int64_t group = -1;
  uint32_t scale[kTileRows / 2];  // uniform: s of the current group (fp16 pairs)
  float group_x_sum[NT];
  auto flush_group = [&]() {
    float offset[kTileRows];
    load_row16(a.w.zeros + group * a.w.mp + tile * kTileRows, a.w.coefs_aligned, offset);
#pragma unroll
    for (int r = 0; r < kTileRows; ++r) {
      if (!bcq) offset[r] = uniform_offset(half_of(scale, r), offset[r], bits);
#pragma unroll
      for (int t = 0; t < NT; ++t) acc[t][r] = fmaf(offset[r], group_x_sum[t], acc[t][r]);
    }
  };

  // The split is walked in chunks of at most kLutMaxSliceKb k blocks, the tables' capacity.
  for (int64_t kb0 = split_kb0; kb0 < split_kb1; kb0 += kLutMaxSliceKb) {
    const int nkb = int(min(int64_t(kLutMaxSliceKb), split_kb1 - kb0));
    __syncthreads();  // the previous chunk's tables are no longer read
    // Tables for this chunk, built once and shared by all row tiles of the CTA.
    for (int e = tid; e < NT * nkb * 8; e += blockDim.x) {
      const int chunk = e % 8, kbl = (e / 8) % nkb, t = e / (8 * nkb);
      const int64_t token = n0 + t;
      float xv[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t k = (kb0 + kbl) * kBlockK + chunk * kChunk + j;
        xv[j] = (token < a.x.n && k < a.x.k)
                    ? load_as_float(a.x.x, token * a.x.stride_n + k * a.x.stride_k, a.x.dtype)
                    : 0.f;
      }
      float* tab = reinterpret_cast<float*>(tables + t * kLutTokenTableBytes + lut_kb_base(kbl, 0) +
                                            lut_entry_byte(chunk, 0));
#pragma unroll
      for (int c = 8; c < 16; ++c) {
        const float v = lut_table_entry(c, xv);
        tab[c] = v;
        tab[c ^ 15] = -v;
      }
    }
    __syncthreads();
    // Sum of x over the chunks of each pair (T(15) = the chunk sum): multiplies the per-row offset.
    for (int e = tid; e < NT * nkb * kLutThreadsPerTile; e += blockDim.x) {
      const int pr = e % 2, kbl = (e / 2) % nkb, t = e / (2 * nkb);
      float s = 0.f;
#pragma unroll
      for (int slot = 0; slot < kLutLanesPerThread; ++slot)
#pragma unroll
        for (int hi = 0; hi < 2; ++hi)
          s += *reinterpret_cast<const float*>(tables + t * kLutTokenTableBytes + lut_kb_base(kbl, 0) +
                                               lut_entry_byte(lut_chunk(lut_lane(pr, slot), hi), 15));
      pair_sums[t][kbl][pr] = s;
    }
    __syncthreads();
    if (!active) continue;

    for (int kbl = 0; kbl < nkb; ++kbl) {
      const int64_t kb = kb0 + kbl;
      uint4 planes[kLutLanesPerThread][4];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int slot = 0; slot < kLutLanesPerThread; ++slot)
          if (i < bits)
            planes[slot][i] = load_plane16(tile_planes + (kb * bits + i) * kBlockBytes + lut_lane(pair, slot) * 16,
                                           a.w.planes_aligned);

      const int64_t g = quant_group(kb, a.w);
      if (g != group) {  // new quantization group
        if (group >= 0) flush_group();
        group = g;
#pragma unroll
        for (int t = 0; t < NT; ++t) group_x_sum[t] = 0.f;
        if (!bcq) load_row16_raw(a.w.scales + g * a.w.mp + tile * kTileRows, a.w.coefs_aligned, scale);
      }
#pragma unroll
      for (int t = 0; t < NT; ++t) group_x_sum[t] += pair_sums[t][kbl][pair];

      const uint32_t base_lo = lut_kb_base(kbl, 0), base_hi = lut_kb_base(kbl, 1);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        if (i >= bits) break;
        float coef[kTileRows];
        if (bcq) {
          load_row16(a.w.scales + (g * bits + i) * a.w.mp + tile * kTileRows, a.w.coefs_aligned, coef);
        } else {
#pragma unroll
          for (int r = 0; r < kTileRows; ++r) coef[r] = uniform_plane_coef(half_of(scale, r), i);
        }
#pragma unroll
        for (int wi = 0; wi < 4; ++wi) {  // 32-bit word wi of a lane = rows 4 wi .. 4 wi + 3
          uint32_t offs[kLutLanesPerThread][2];
#pragma unroll
          for (int slot = 0; slot < kLutLanesPerThread; ++slot) {
            const uint4 v = planes[slot][i];
            const uint32_t word = wi == 0 ? v.x : wi == 1 ? v.y : wi == 2 ? v.z : v.w;
            offs[slot][0] = lut_offset_bytes(word, lut_lane(pair, slot), 0);
            offs[slot][1] = lut_offset_bytes(word, lut_lane(pair, slot), 1);
          }
#pragma unroll
          for (int b = 0; b < 4; ++b) {
            uint32_t addr[kLutLanesPerThread][2];
#pragma unroll
            for (int slot = 0; slot < kLutLanesPerThread; ++slot) {
              addr[slot][0] = lut_table_offset(offs[slot][0], base_lo, b);
              addr[slot][1] = lut_table_offset(offs[slot][1], base_hi, b);
            }
#pragma unroll
            for (int t = 0; t < NT; ++t) {
              const unsigned char* tt = tables + t * kLutTokenTableBytes;
              float v = 0.f;
#pragma unroll
              for (int slot = 0; slot < kLutLanesPerThread; ++slot)
#pragma unroll
                for (int hi = 0; hi < 2; ++hi) v += *reinterpret_cast<const float*>(tt + addr[slot][hi]);
              acc[t][4 * wi + b] = fmaf(coef[4 * wi + b], v, acc[t][4 * wi + b]);
            }
          }
        }
      }
    }
  }
  if (active && group >= 0) flush_group();

  // The two threads of a tile hold partial sums of the same rows: add them, each stores 8 rows.
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int r = 0; r < kTileRows; ++r) acc[t][r] += __shfl_xor_sync(0xffffffffu, acc[t][r], 1);
  if (!active) return;
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const int64_t token = n0 + t;
    if (token >= a.x.n) break;
#pragma unroll
    for (int i = 0; i < kTileRows / 2; ++i) {
      const int64_t row = tile * kTileRows + pair * (kTileRows / 2) + i;
      if (row < a.out.m) a.out.put(split, token, row, pair ? acc[t][i + 8] : acc[t][i]);
    }
  }
}

// Sums the split-K partials in split order (deterministic) and adds the bias. With zero splits (K = 0)
// it writes y = bias (or 0).
__global__ void lut_splitk_reduce_kernel(OutputSink out, int64_t splits) {
  const int64_t total = out.n * out.m;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t token = idx / out.m, row = idx % out.m;
    float s = 0.f;
    for (int64_t sp = 0; sp < splits; ++sp) s += out.partial[(sp * out.n + token) * out.mp + row];
    if (out.bias) s += load_as_float(out.bias, row, out.dtype);
    store_from_float(out.y, token * out.y_stride_n + row, s, out.dtype);
  }
}

// ---------------------------------------------------------------------------------------------------
// Tensor-core kernel. grid = (row blocks of 128, token blocks of BN, K splits).
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16-byte cp.async; src_bytes = 0 zero-fills the destination (src must still be a valid address).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

template <typename T>
struct MmaType;
template <>
struct MmaType<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ void mma(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
};
template <>
struct MmaType<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
  static __device__ __forceinline__ void mma(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

struct MmaArgs {
  Weights w;
  Activations x;
  OutputSink out;
  SplitK split;
  int64_t token_block_offset;  // for grids larger than 65535 in y
};

template <typename T, int kWarpN8>
__global__ void __launch_bounds__(kMmaThreads) lut_mma_kernel(MmaArgs a) {
  constexpr int kBlockN = 2 * 8 * kWarpN8;
  constexpr int kWarpN = kBlockN / 2;
  static_assert(kWarpN8 % 2 == 0, "B operands are loaded two n8 tiles per ldmatrix.x4");
  __shared__ __align__(128) uint8_t plane_s[kMmaStages][kMmaTilesPerCta * kPlaneTileBytes];
  __shared__ __align__(128) T x_s[kMmaStages][kBlockN * kSmemRowHalves];
  __shared__ __align__(128) T w_s[kMmaBlockM * kSmemRowHalves];

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t tile0 = int64_t(blockIdx.x) * kMmaTilesPerCta;
  const int64_t n0 = (a.token_block_offset + blockIdx.y) * kBlockN;
  const int64_t split = blockIdx.z;
  const int64_t kb0 = split_begin(a.split, split);
  const int64_t nkb = split_end(a.split, split, a.w.kblocks) - kb0;
  const int bits = a.w.bits;

  auto load_stage = [&](int stage, int64_t kb) {
    const int plane_chunks = kMmaTilesPerCta * bits * 4;  // 16-byte pieces of the q plane blocks
    for (int c = tid; c < plane_chunks; c += kMmaThreads) {
      const int tile = c / (4 * bits), piece = c % (4 * bits);
      uint8_t* dst = &plane_s[stage][tile * kPlaneTileBytes + piece * 16];
      const bool valid = tile0 + tile < a.w.mtiles;
      const uint8_t* src = valid ? a.w.planes + block_offset(tile0 + tile, kb, 0, a.w.kblocks, bits) + piece * 16
                                 : a.w.planes;
      if (a.w.planes_aligned) {
        cp_async16(dst, src, valid ? 16 : 0);
      } else {
        for (int i = 0; i < 16; ++i) dst[i] = valid ? src[i] : 0;
      }
    }
    const T* x = static_cast<const T*>(a.x.x);
    for (int c = tid; c < kBlockN * 4; c += kMmaThreads) {
      const int row = c / 4, piece = c % 4;
      const int64_t token = n0 + row, k = kb * kBlockK + piece * 8;
      T* dst = &x_s[stage][row * kSmemRowHalves + piece * 8];
      if (a.x.vec_ok && token < a.x.n && k + 8 <= a.x.k) {
        cp_async16(dst, x + token * a.x.stride_n + k, 16);
      } else if (token < a.x.n) {  // K tail or strided / misaligned x
        for (int e = 0; e < 8; ++e)
          dst[e] = k + e < a.x.k ? x[token * a.x.stride_n + (k + e) * a.x.stride_k] : MmaType<T>::from_float(0.f);
      } else {  // padding token: a plain store, since x itself may be misaligned (cp.async needs an aligned source)
        *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
      }
    }
  };

  auto dequantize = [&](int stage, int64_t kb) {
    const int64_t g = quant_group(kb, a.w);
    for (int item = tid; item < kDequantItems; item += kMmaThreads) {
      const DequantItem d = dequant_item(item);
      const int64_t tile = tile0 + d.tile;
      float wv[8];
      if (tile < a.w.mtiles) {
        uint8_t bytes[4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
          bytes[i] = i < bits ? plane_s[stage][d.tile * kPlaneTileBytes + i * kBlockBytes + d.lane * 16 + d.row] : 0;
        const uint32_t gathered = gather_plane_bytes(bytes, bits);
        const int64_t row = tile * kTileRows + d.row;
        const float z = half_bits_to_float(__ldg(a.w.zeros + g * a.w.mp + row));
        if (a.w.scheme == Scheme::uniform) {  // w = s Q - s Z, Q exact from the 2^23 + Q float
          const float s = half_bits_to_float(__ldg(a.w.scales + g * a.w.mp + row));
          const float sz = -s * z;
#pragma unroll
          for (int p = 0; p < 8; ++p)
            wv[p] = fmaf(__uint_as_float(code_as_magic_float_bits(gathered, p)) - 8388608.f, s, sz);
        } else {  // w = z - sum_i alpha_i + sum_{i: bit set} 2 alpha_i
          float two_alpha[4], base = z;
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float al = i < bits ? half_bits_to_float(__ldg(a.w.scales + (g * bits + i) * a.w.mp + row)) : 0.f;
            two_alpha[i] = 2.f * al;
            base -= al;
          }
#pragma unroll
          for (int p = 0; p < 8; ++p) {
            float v = base;
#pragma unroll
            for (int i = 0; i < 4; ++i)
              if ((gathered >> (8 * i + p)) & 1u) v += two_alpha[i];
            wv[p] = v;
          }
        }
      } else {
#pragma unroll
        for (int p = 0; p < 8; ++p) wv[p] = 0.f;
      }
      // Nibble bits 0-3 are k = 4 lane .. 4 lane + 3, bits 4-7 the same 16 k later.
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        uint2 v;
        v.x = MmaType<T>::pack(wv[4 * h], wv[4 * h + 1]);
        v.y = MmaType<T>::pack(wv[4 * h + 2], wv[4 * h + 3]);
        *reinterpret_cast<uint2*>(&w_s[wtile_offset(d.row + d.tile * kTileRows, nibble_bit_k(d.lane, 4 * h))]) = v;
      }
    }
  };

  const int wm = warp % kMmaWarpsM, wn = warp / kMmaWarpsM;
  float acc[2][kWarpN8][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < kWarpN8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

#pragma unroll
  for (int s = 0; s < kMmaStages - 1; ++s) {
    if (s < nkb) load_stage(s, kb0 + s);
    cp_async_commit();
  }
  for (int64_t it = 0; it < nkb; ++it) {
    const int stage = int(it % kMmaStages);
    cp_async_wait<kMmaStages - 2>();
    __syncthreads();  // stage `it` landed; everyone is done with iteration it - 1 (its stage and w_s)
    dequantize(stage, kb0 + it);
    if (it + kMmaStages - 1 < nkb) load_stage(int((it + kMmaStages - 1) % kMmaStages), kb0 + it + kMmaStages - 1);
    cp_async_commit();
    __syncthreads();  // w_s complete
#pragma unroll
    for (int ks = 0; ks < kBlockK; ks += 16) {
      uint32_t af[2][4], bf[kWarpN8][2];
#pragma unroll
      for (int i = 0; i < 2; ++i)
        ldmatrix_x4(af[i], &w_s[wtile_offset(wm * kMmaWarpM + i * 16 + ldsm_a_row(lane), ks + ldsm_a_k(lane))]);
#pragma unroll
      for (int jp = 0; jp < kWarpN8 / 2; ++jp) {
        uint32_t r[4];
        ldmatrix_x4(r, &x_s[stage][(wn * kWarpN + jp * 16 + ldsm_b_n(lane)) * kSmemRowHalves + ks + ldsm_b_k(lane)]);
        bf[2 * jp][0] = r[0];
        bf[2 * jp][1] = r[1];
        bf[2 * jp + 1][0] = r[2];
        bf[2 * jp + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < kWarpN8; ++j) MmaType<T>::mma(acc[i][j], af[i], bf[j]);
    }
  }
  cp_async_wait<0>();  // no cp.async may outlive the CTA's shared memory

#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < kWarpN8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t row = tile0 * kTileRows + wm * kMmaWarpM + i * 16 + mma_c_row(lane, e);
        const int64_t token = n0 + wn * kWarpN + j * 8 + mma_c_col(lane, e);
        if (row < a.out.m && token < a.x.n) a.out.put(split, token, row, acc[i][j][e]);
      }
}

// ---------------------------------------------------------------------------------------------------
// Host side.
enum class Path { lut1, lut2, mma_n32, mma_n128 };

struct Plan {
  Path path;
  SplitK split;
  int64_t row_blocks, token_blocks;
  int threads;
  std::size_t workspace;
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

Plan make_plan(const GemmProblem& p, int sms) {
  Plan plan{};
  const int64_t mtiles = row_tiles(p.m), kblocks = k_blocks(p.k), mp = mtiles * kTileRows;
  const int64_t target_ctas = 2 * int64_t(sms);  // about one wave at two CTAs per SM
  const bool lut = p.dtype == DType::f32 || p.n <= kLutMaxTokens;
  if (kblocks == 0) {  // nothing to multiply: only the reduce kernel runs (y = bias)
    plan.split = SplitK{0, 1};
  } else if (lut) {
    const int nt = p.n == 1 ? 1 : 2;
    plan.path = nt == 1 ? Path::lut1 : Path::lut2;
    plan.threads = int(std::min<int64_t>(kLutMaxThreads, ceil_div(kLutThreadsPerTile * mtiles, 32) * 32));
    plan.row_blocks = ceil_div(mtiles, plan.threads / kLutThreadsPerTile);
    plan.token_blocks = ceil_div(p.n, nt);
    plan.split = make_split_k(kblocks, std::min<int64_t>(ceil_div(target_ctas, plan.row_blocks * plan.token_blocks),
                                                         kMaxGridYZ),
                              INT64_MAX);
  } else {
    const int bn = p.n <= 32 ? 32 : 128;
    plan.path = bn == 32 ? Path::mma_n32 : Path::mma_n128;
    plan.threads = kMmaThreads;
    plan.row_blocks = ceil_div(mtiles, kMmaTilesPerCta);
    plan.token_blocks = ceil_div(p.n, bn);
    // Split K only while each slice keeps at least 4 k blocks to pipeline.
    const int64_t want = std::min(ceil_div(target_ctas, plan.row_blocks * plan.token_blocks), ceil_div(kblocks, 4));
    plan.split = make_split_k(kblocks, std::min<int64_t>(want, kMaxGridYZ), INT64_MAX);
  }
  plan.workspace = plan.split.splits > 1 ? std::size_t(plan.split.splits * p.n * mp) * sizeof(float) : 0;
  return plan;
}

bool aligned16(const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; }

void validate(const GemmProblem& p) {
  FASTOPS_CHECK_VALUE(p.bits >= 1 && p.bits <= 4, "lut gemm_cuda: bits must be in 1..4");
  FASTOPS_CHECK_VALUE(p.group_size > 0 && p.group_size % kGroupMultiple == 0,
                      "lut gemm_cuda: group_size must be a positive multiple of 32");
  FASTOPS_CHECK_VALUE(p.n >= 0 && p.m >= 0 && p.k >= 0, "lut gemm_cuda: negative size");
}

template <int NT>
void launch_lut(const Plan& plan, const LutArgs& base, cudaStream_t stream) {
  for (int64_t s0 = 0; s0 < plan.split.splits; s0 += kMaxGridYZ)
    for (int64_t t0 = 0; t0 < plan.token_blocks; t0 += kMaxGridYZ) {
      LutArgs args = base;
      args.split_offset = s0;
      args.token_group_offset = t0;
      const dim3 grid(unsigned(plan.row_blocks), unsigned(std::min<int64_t>(kMaxGridYZ, plan.split.splits - s0)),
                      unsigned(std::min<int64_t>(kMaxGridYZ, plan.token_blocks - t0)));
      lut_small_n_kernel<NT><<<grid, plan.threads, 0, stream>>>(args);
      check_launch(NT == 1 ? "lut_small_n_kernel<1>" : "lut_small_n_kernel<2>");
    }
}

template <typename T, int kWarpN8>
void launch_mma(const Plan& plan, const MmaArgs& base, cudaStream_t stream, const char* name) {
  for (int64_t t0 = 0; t0 < plan.token_blocks; t0 += kMaxGridYZ) {
    MmaArgs args = base;
    args.token_block_offset = t0;
    const dim3 grid(unsigned(plan.row_blocks), unsigned(std::min<int64_t>(kMaxGridYZ, plan.token_blocks - t0)),
                    unsigned(plan.split.splits));
    lut_mma_kernel<T, kWarpN8><<<grid, kMmaThreads, 0, stream>>>(args);
    check_launch(name);
  }
}

}  // namespace

std::size_t gemm_cuda_workspace_bytes(const GemmProblem& p) {
  validate(p);
  if (p.n == 0 || p.m == 0) return 0;
  return make_plan(p, current_device_sm_count()).workspace;
}

void gemm_cuda(const GemmProblem& p, void* workspace, std::uintptr_t stream_handle) {
  validate(p);
  if (p.n == 0 || p.m == 0) return;
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const Plan plan = make_plan(p, current_device_sm_count());
  if (plan.workspace > 0 && workspace == nullptr)
    throw std::runtime_error("fastops: lut gemm_cuda needs a workspace of gemm_cuda_workspace_bytes() bytes");

  const int64_t mtiles = row_tiles(p.m);
  // A group wider than K is one group: clamping keeps kb_per_group within quant_group's 32 bits.
  Weights w{p.planes, p.scales, p.zeros, mtiles, mtiles * kTileRows, k_blocks(p.k),
            std::min<int64_t>(p.group_size / kBlockK, std::max<int64_t>(k_blocks(p.k), 1)),
            p.bits, p.scheme, aligned16(p.planes), aligned16(p.scales) && aligned16(p.zeros)};
  const std::size_t esize = p.dtype == DType::f32 ? 4 : 2;
  Activations x{p.x, p.n, p.k, p.x_stride_n, p.x_stride_k, p.dtype,
                esize == 2 && p.x_stride_k == 1 && aligned16(p.x) && (p.x_stride_n * 2) % 16 == 0};
  OutputSink out{p.y, p.y_stride_n, p.bias, p.dtype, plan.workspace > 0 ? static_cast<float*>(workspace) : nullptr,
                 p.n, p.m, w.mp};

  if (plan.split.splits > 0) {
    switch (plan.path) {
      case Path::lut1: launch_lut<1>(plan, LutArgs{w, x, out, plan.split, 0, 0}, stream); break;
      case Path::lut2: launch_lut<2>(plan, LutArgs{w, x, out, plan.split, 0, 0}, stream); break;
      case Path::mma_n32:
      case Path::mma_n128: {
        const MmaArgs args{w, x, out, plan.split, 0};
        const bool wide = plan.path == Path::mma_n128;
        if (p.dtype == DType::f16)
          wide ? launch_mma<__half, 8>(plan, args, stream, "lut_mma_kernel<f16, 128>")
               : launch_mma<__half, 2>(plan, args, stream, "lut_mma_kernel<f16, 32>");
        else
          wide ? launch_mma<__nv_bfloat16, 8>(plan, args, stream, "lut_mma_kernel<bf16, 128>")
               : launch_mma<__nv_bfloat16, 2>(plan, args, stream, "lut_mma_kernel<bf16, 32>");
        break;
      }
    }
  }
  if (plan.workspace > 0 || plan.split.splits == 0) {  // split K, or K = 0 (y = bias)
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>(ceil_div(p.n * p.m, threads), int64_t(current_device_sm_count()) * 8);
    lut_splitk_reduce_kernel<<<unsigned(blocks), threads, 0, stream>>>(out, plan.split.splits);
    check_launch("lut_splitk_reduce_kernel");
  }
}

}  // namespace lut
}  // namespace fastops
