// CUDA bitgemm (bitgemm.h): exact 1..8-bit integer GEMM on the binary tensor cores, and the fused
// quantize + pack of activations. Binary products are always mma.sync .and.popc (AND is native on sm_80
// and sm_90; XOR is emulated on sm_90 and never used). The operand format is bitgemm_format.h; all index
// math lives in bitgemm_cuda_layout.h (emulated on the CPU by bitgemm_cuda_layout_test.cpp).
//
// Kernels (dispatch in make_plan):
//  * bitgemm_stacked_kernel (M > 16; integer mode and single-group scaled mode). One CTA (4 warps)
//    runs one binary GEMM of 128 stacked X rows x 128 stacked Y rows (X = A, Y = W): bits_a planes of
//    128 / bits_a real A rows stacked along M, bits_w planes of ~128 / bits_w real W rows along N, the
//    plane counts being run-time values (ABQ-LLM style, research note section 3). 4-stage cp.async
//    pipeline of 512-bit k slices (16-byte copies, zero-fill outside the operands), swizzled shared rows,
//    ldmatrix.x4 fragments, warp tile 64 x 64 stacked = 32 m16n8k256 MMAs per k step, no recombination
//    in the main loop. Epilogue: accumulators -> shared memory, each output sums its bits_a * bits_w
//    plane products with integer ratios, adds the offset / row-sum corrections and writes int32, or
//    scale * C (+ bias) in fp16 / bf16 / fp32, once, with 16-byte stores.
//  * bitgemm_planes_kernel<64, 64, 2, 2> (M > 16, scaled with several K groups). Real-row tiles; per
//    k step every warp loops over the plane pairs and folds each pair's MMA result into one int32
//    accumulator per output with its integer ratio (the (0,0) pair accumulates in the MMA itself), so a
//    group flush is a per-thread fp32 update: acc += a_scale * w_scale * C_g, exact C_g. Group row sums
//    come from popcounts of the fragment registers (no pre-pass). group_size % 256 == 128 uses two
//    m16n8k128 passes on the k steps a group boundary cuts.
//  * bitgemm_planes_kernel<128, 16, 4, 1> (decode, M <= 16, every mode). Same kernel with the roles
//    swapped: X = W (128 rows per CTA, the m16 side), Y = A (planes of up to 16 rows, the n8 side), so
//    the weight planes stream through a cp.async pipeline of 16-byte copies with up to 4 stages in flight
//    and many CTAs per SM; split-K over K when N is small.
//  * bitgemm_splitk_reduce_kernel: sums split-K partials in split order (deterministic): int32 partials
//    (exact, corrections applied once here) or fp32 partials of grouped outputs.
//  * quantize_stats_kernel / quantize_stats_final_kernel / quantize_pack_kernel: per-tensor statistics,
//    then one warp per row: row statistics, quantization per the header rules (single fp32 ops, no FMA
//    contraction), bit planes formed by warp ballots and written as 16-byte words, padding zeroed.
//
// sm_90a: a wgmma path (wgmma.mma_async.m64nNk256.s32.b1.b1.and.popc = BGMMA, TMA loads with 128-byte
// swizzle, warp-specialized producer / consumer warpgroups, persistent grid) belongs in its own
// translation unit (bitgemm_cuda_sm90a.cu built with ARCHS 90a-real) and would replace
// bitgemm_stacked_kernel on sm_90 devices from gemm_cuda's dispatch. It is not written yet: sm_90 runs
// these mma.sync kernels.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "bitgemm/bitgemm.h"
#include "bitgemm/bitgemm_cuda_layout.h"
#include "common/cuda_utils.cuh"

namespace fastops {
namespace bitgemm {
namespace {

using namespace cuda_layout;

constexpr unsigned kFullWarp = 0xffffffffu;
constexpr int kMaxGridY = 65535;
constexpr int64_t kDecodeMaxM = 16;
// Plane-loop kernel configurations (X rows, Y rows, warps along X, warps along Y).
constexpr int kMainBX = 64, kMainBY = 64, kMainWX = 2, kMainWY = 2;
constexpr int kDecBX = 128, kDecBY = 16, kDecWX = 4, kDecWY = 1;

template <int N>
using IntC = std::integral_constant<int, N>;

// ---------------------------------------------------------------------------------------------------
// PTX wrappers.
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16-byte cp.async; src_bytes = 0 zero-fills the destination (src must still be a valid address).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// wait_group takes an immediate: run-time stage counts 2..4 wait for n = stages - 2 in 0..2.
__device__ __forceinline__ void cp_async_wait_dyn(int n) {
  if (n <= 0)
    cp_async_wait<0>();
  else if (n == 1)
    cp_async_wait<1>();
  else
    cp_async_wait<2>();
}
__device__ __forceinline__ void ldsm_x4(uint32_t r[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// d += popc(A AND B) over 256 bits.
__device__ __forceinline__ void mma_k256(uint32_t d[4], const uint32_t a[4], const uint32_t b[2]) {
  asm("mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// d = popc(A AND B) over 256 bits.
__device__ __forceinline__ void mma_k256_fresh(uint32_t d[4], const uint32_t a[4], const uint32_t b[2]) {
  asm("mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%10,%10,%10};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(0));
}
__device__ __forceinline__ void mma_k128(uint32_t d[4], uint32_t a0, uint32_t a1, uint32_t b0) {
  asm("mma.sync.aligned.m16n8k128.row.col.s32.b1.b1.s32.and.popc {%0,%1,%2,%3}, {%4,%5}, {%6}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a0), "r"(a1), "r"(b0));
}
__device__ __forceinline__ void mma_k128_fresh(uint32_t d[4], uint32_t a0, uint32_t a1, uint32_t b0) {
  asm("mma.sync.aligned.m16n8k128.row.col.s32.b1.b1.s32.and.popc {%0,%1,%2,%3}, {%4,%5}, {%6}, "
      "{%7,%7,%7,%7};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a0), "r"(a1), "r"(b0), "r"(0));
}
// Mode 0: the whole k step (k256); mode 1 + h: k-half h only (k128).
template <int Mode>
__device__ __forceinline__ void mma_acc(uint32_t d[4], const uint32_t a[4], const uint32_t b[2]) {
  if constexpr (Mode == 0) {
    mma_k256(d, a, b);
  } else {
    mma_k128(d, a[half_a_reg(Mode - 1, 0)], a[half_a_reg(Mode - 1, 1)], b[half_b_reg(Mode - 1)]);
  }
}
template <int Mode>
__device__ __forceinline__ void mma_fresh(uint32_t d[4], const uint32_t a[4], const uint32_t b[2]) {
  if constexpr (Mode == 0) {
    mma_k256_fresh(d, a, b);
  } else {
    mma_k128_fresh(d, a[half_a_reg(Mode - 1, 0)], a[half_a_reg(Mode - 1, 1)], b[half_b_reg(Mode - 1)]);
  }
}
// Popcounts of the fragment words that belong to the k range of `Mode`: A rows lane/4 (r = 0) and
// lane/4 + 8 (r = 1), B column lane/4.
template <int Mode>
__device__ __forceinline__ int32_t popc_a(const uint32_t a[4], int r) {
  if constexpr (Mode == 0) return __popc(a[r]) + __popc(a[2 + r]);
  return __popc(a[half_a_reg(Mode - 1, r)]);
}
template <int Mode>
__device__ __forceinline__ int32_t popc_b(const uint32_t b[2]) {
  if constexpr (Mode == 0) return __popc(b[0]) + __popc(b[1]);
  return __popc(b[half_b_reg(Mode - 1)]);
}

// ---------------------------------------------------------------------------------------------------
// Problem view shared by the GEMM kernels. X is the operand on the MMA's m16 side, Y on the n8 side;
// out(x, y) = out[x * stride + y] (X = A) or out[y * stride + x] (transposed: X = W).
struct Side {
  const uint32_t* planes;
  const int32_t* offset;
  const int32_t* rowsum;
  const float* scale;
  int64_t scale_row, scale_group;
  int64_t rows;
  int bits;
  Format fmt;
};

struct GemmArgs {
  Side x, y;
  int64_t k, wpr, nsteps;
  int64_t gs, groups;
  bool grouped, scaled, transposed;
  bool vec16;        // both plane arrays 16-byte aligned: 16-byte cp.async
  bool vec_out;      // 4 consecutive y of a row can be stored with one vector store (stacked kernel)
  bool vec_partial;  // the same for the int32 split-K partials
  void* out;
  int64_t out_stride;
  DType out_dtype;
  const void* bias;
  void* partial;  // split-K partials [split][x.rows][y.rows] (int32 or fp32)
  SplitK split;
  int64_t unit_steps;
  int64_t tiles_x, tiles_y;
  int stages;
  int rows_x_tile, rows_y_tile;  // stacked kernel: real rows per plane of the CTA tile
};

__device__ __forceinline__ int64_t out_index(const GemmArgs& a, int64_t x, int64_t y) {
  return a.transposed ? y * a.out_stride + x : x * a.out_stride + y;
}
__device__ __forceinline__ float load_bias(const GemmArgs& a, int64_t x, int64_t y) {
  const int64_t n = a.transposed ? x : y;
  switch (a.out_dtype) {
    case DType::f16: return __half2float(static_cast<const __half*>(a.bias)[n]);
    case DType::bf16: return __bfloat162float(static_cast<const __nv_bfloat16*>(a.bias)[n]);
    default: return static_cast<const float*>(a.bias)[n];
  }
}
__device__ __forceinline__ void store_scaled(const GemmArgs& a, int64_t idx, float v) {
  switch (a.out_dtype) {
    case DType::f16: static_cast<__half*>(a.out)[idx] = __float2half_rn(v); break;
    case DType::bf16: static_cast<__nv_bfloat16*>(a.out)[idx] = __float2bfloat16_rn(v); break;
    default: static_cast<float*>(a.out)[idx] = v;
  }
}
__device__ __forceinline__ float scale_at(const Side& s, int64_t row, int64_t g) {
  return __ldg(s.scale + row * s.scale_row + g * s.scale_group);
}
// Final output of an ungrouped problem from the plane sum `combined` = sum_ij c_ij P_ij over all of k.
__device__ __forceinline__ void write_final_ungrouped(const GemmArgs& a, int64_t x, int64_t y, uint32_t combined) {
  const int32_t c = corrected_value(combined, __ldg(a.x.offset + x), __ldg(a.y.offset + y), __ldg(a.x.rowsum + x),
                                    __ldg(a.y.rowsum + y), a.k);
  if (!a.scaled) {
    static_cast<int32_t*>(a.out)[out_index(a, x, y)] = c;
    return;
  }
  float v = accumulate_scaled(0.f, scale_at(a.x, x, 0), scale_at(a.y, y, 0), c);
  if (a.bias) v = fadd_rn(v, load_bias(a, x, y));
  store_scaled(a, out_index(a, x, y), v);
}
__device__ __forceinline__ void write_final_grouped(const GemmArgs& a, int64_t x, int64_t y, float v) {
  if (a.bias) v = fadd_rn(v, load_bias(a, x, y));
  store_scaled(a, out_index(a, x, y), v);
}
__device__ __forceinline__ int64_t partial_index(const GemmArgs& a, int64_t split, int64_t x, int64_t y) {
  return (split * a.x.rows + x) * a.y.rows + y;
}

// Four consecutive outputs (x, y0 .. y0 + count - 1) of the stacked kernel: corrections, scaling, one
// vector store when the row allows it.
__device__ __forceinline__ void write_final4(const GemmArgs& a, int64_t x, int64_t y0, const uint32_t s[4], int count) {
  const int32_t ox = __ldg(a.x.offset + x), rsx = __ldg(a.x.rowsum + x);
  int32_t c[4];
#pragma unroll
  for (int e = 0; e < 4; ++e)
    c[e] = e < count ? corrected_value(s[e], ox, __ldg(a.y.offset + y0 + e), rsx, __ldg(a.y.rowsum + y0 + e), a.k) : 0;
  const int64_t idx = x * a.out_stride + y0;  // the stacked kernel is never transposed
  if (!a.scaled) {
    if (a.vec_out && count == 4) {
      *reinterpret_cast<int4*>(static_cast<int32_t*>(a.out) + idx) = make_int4(c[0], c[1], c[2], c[3]);
    } else {
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (e < count) static_cast<int32_t*>(a.out)[idx + e] = c[e];
    }
    return;
  }
  const float sx = scale_at(a.x, x, 0);
  float v[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    v[e] = 0.f;
    if (e < count) {
      v[e] = accumulate_scaled(0.f, sx, scale_at(a.y, y0 + e, 0), c[e]);
      if (a.bias) v[e] = fadd_rn(v[e], load_bias(a, x, y0 + e));
    }
  }
  if (a.vec_out && count == 4) {
    switch (a.out_dtype) {
      case DType::f16: {
        __half2 lo = __floats2half2_rn(v[0], v[1]), hi = __floats2half2_rn(v[2], v[3]);
        *reinterpret_cast<uint2*>(static_cast<__half*>(a.out) + idx) =
            make_uint2(*reinterpret_cast<uint32_t*>(&lo), *reinterpret_cast<uint32_t*>(&hi));
        break;
      }
      case DType::bf16: {
        __nv_bfloat162 lo = __floats2bfloat162_rn(v[0], v[1]), hi = __floats2bfloat162_rn(v[2], v[3]);
        *reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(a.out) + idx) =
            make_uint2(*reinterpret_cast<uint32_t*>(&lo), *reinterpret_cast<uint32_t*>(&hi));
        break;
      }
      default: *reinterpret_cast<float4*>(static_cast<float*>(a.out) + idx) = make_float4(v[0], v[1], v[2], v[3]);
    }
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e)
      if (e < count) store_scaled(a, idx + e, v[e]);
  }
}

// ---------------------------------------------------------------------------------------------------
// Stacked kernel. grid = (tiles_x * tiles_y, splits), 128 threads, dynamic shared memory:
// [row table 2 KB][4 stages x 16 KB | epilogue buffer 68 KB].
__global__ void __launch_bounds__(stacked::kThreads) bitgemm_stacked_kernel(GemmArgs a) {
  using namespace stacked;
  extern __shared__ __align__(128) unsigned char smem[];
  int64_t* row_table = reinterpret_cast<int64_t*>(smem);
  unsigned char* stage_mem = smem + kRowTableBytes;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const TileXY tile = tile_coords(blockIdx.x, a.tiles_x, a.tiles_y);
  const int64_t split = blockIdx.y;
  const int64_t s0 = split_step_begin(a.split, split, a.unit_steps, a.nsteps);
  const int64_t s1 = split_step_end(a.split, split, a.unit_steps, a.nsteps);
  const int rpx = a.rows_x_tile, rpy = a.rows_y_tile;
  const int64_t x0 = tile.x * rpx, y0 = tile.y * rpy;

  // Word offset of every stacked row in its operand (-1: zero row: unused plane slot or past the end).
  for (int sr = tid; sr < kStageRows; sr += kThreads) {
    const bool is_x = sr < kStack;
    const StackedRow st = unstack(is_x ? sr : sr - kStack, is_x ? rpx : rpy);
    const int bits = is_x ? a.x.bits : a.y.bits;
    const int64_t rows = is_x ? a.x.rows : a.y.rows;
    const int64_t row = (is_x ? x0 : y0) + st.row;
    row_table[sr] = (st.plane < bits && row < rows) ? (int64_t(st.plane) * rows + row) * a.wpr : -1;
  }
  __syncthreads();

  const int64_t nst = (s1 - s0 + kStageSteps - 1) / kStageSteps;
  auto load_stage = [&](int slot, int64_t t) {
    const uint32_t base = smem_u32(stage_mem + slot * kStageBytes);
    const int64_t step0 = s0 + t * kStageSteps;
#pragma unroll
    for (int i = 0; i < kChunksPerThread; ++i) {
      const int c = tid + i * kThreads;
      const int sr = copy_row(c), ch = copy_chunk(c);
      const int64_t off = row_table[sr];
      const uint32_t* pl = sr < kStack ? a.x.planes : a.y.planes;
      const bool valid = off >= 0 && step0 + chunk_step(ch) < s1;
      const uint32_t* src = valid ? pl + off + step0 * kStepWords + chunk_word(ch) : pl;
      const uint32_t dst = base + smem_chunk_offset(sr, ch);
      if (a.vec16) {
        cp_async16(dst, src, valid ? 16 : 0);
      } else {
#pragma unroll
        for (int w = 0; w < 4; ++w) cp_async4(dst + 4 * w, valid ? src + w : pl, valid ? 4 : 0);
      }
    }
  };

  uint32_t acc[kMT][kNT][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nst) load_stage(s, s);
    cp_async_commit();
  }
  for (int64_t t = 0; t < nst; ++t) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // stage t landed for everyone; everyone is done with stage t - 1
    if (t + kStages - 1 < nst) load_stage(int((t + kStages - 1) % kStages), t + kStages - 1);
    cp_async_commit();
    const uint32_t base = smem_u32(stage_mem + int(t % kStages) * kStageBytes);
#pragma unroll
    for (int ks = 0; ks < kStageSteps; ++ks) {
      if (s0 + t * kStageSteps + ks >= s1) break;
      uint32_t af[kMT][4], bf[kNT][2];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
        ldsm_x4(af[mt], base + smem_chunk_offset(stacked_x_tile_row(warp, mt) + ldsm_a_row(lane), ldsm_a_chunk(lane, ks)));
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        uint32_t r[4];
        ldsm_x4(r, base + smem_chunk_offset(stacked_y_tile_row(warp, np) + ldsm_b_row(lane), ldsm_b_chunk(lane, ks)));
        bf[2 * np][0] = r[0];
        bf[2 * np][1] = r[1];
        bf[2 * np + 1][0] = r[2];
        bf[2 * np + 1][1] = r[3];
      }
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) mma_k256(acc[mt][nt], af[mt], bf[nt]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // all warps are done reading the stages: the buffer becomes the epilogue's

  // Stacked accumulators -> shared memory.
  int32_t* epi = reinterpret_cast<int32_t*>(stage_mem);
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = stacked_acc_row(warp, mt, lane, 2 * h), c = stacked_acc_col(warp, nt, lane, 2 * h);
        *reinterpret_cast<uint2*>(epi + epi_word(r, c)) = make_uint2(acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1]);
      }
  __syncthreads();

  // Recombination: output (m, 4 columns) = base * sum_ij ra_i rw_j S[plane i row m][plane j cols].
  const int bx = a.x.bits, by = a.y.bits;
  const int vx = int(min(int64_t(rpx), a.x.rows - x0));
  const int vy = int(min(int64_t(rpy), a.y.rows - y0));
  const int g4 = (vy + 3) / 4;
  const uint32_t base = uint32_t(base_coeff(a.x.fmt, bx) * base_coeff(a.y.fmt, by));
  const bool split_k = a.split.splits > 1;
  for (int u = tid; u < vx * g4; u += kThreads) {
    const int m = recover_row(u, g4), n4 = recover_col4(u, g4);
    uint32_t s[4] = {0u, 0u, 0u, 0u};
    for (int i = 0; i < bx; ++i) {
      const uint32_t ra = uint32_t(plane_ratio(a.x.fmt, bx, i));
      const int32_t* row = epi + epi_word(stack_row(i, m, rpx), 0);
      for (int j = 0; j < by; ++j) {
        const uint32_t r = ra * uint32_t(plane_ratio(a.y.fmt, by, j));
        const uint4 v = *reinterpret_cast<const uint4*>(row + stack_row(j, 4 * n4, rpy));
        s[0] += r * v.x;
        s[1] += r * v.y;
        s[2] += r * v.z;
        s[3] += r * v.w;
      }
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) s[e] *= base;
    const int64_t x = x0 + m, yb = y0 + 4 * n4;
    const int count = int(min(int64_t(4), a.y.rows - yb));
    if (split_k) {
      uint32_t* part = static_cast<uint32_t*>(a.partial) + partial_index(a, split, x, yb);
      if (a.vec_partial && count == 4) {
        *reinterpret_cast<uint4*>(part) = make_uint4(s[0], s[1], s[2], s[3]);
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (e < count) part[e] = s[e];
      }
    } else {
      write_final4(a, x, yb, s, count);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Plane-loop kernel. grid = (tiles_x * tiles_y, splits), 32 WX WY threads, dynamic shared memory
// stages x (bits_x BX + bits_y BY) x 64 bytes.
template <int BX, int BY, int WX, int WY>
__global__ void __launch_bounds__(32 * WX * WY) bitgemm_planes_kernel(GemmArgs a) {
  constexpr int kThreads = 32 * WX * WY;
  constexpr int MT = BX / WX / 16, NT = BY / WY / 8;
  static_assert(MT >= 1 && NT >= 2 && NT % 2 == 0, "warp tile: m16 tiles x pairs of n8 tiles");
  extern __shared__ __align__(128) unsigned char smem[];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wx = warp % WX, wy = warp / WX;
  const TileXY tile = tile_coords(blockIdx.x, a.tiles_x, a.tiles_y);
  const int64_t split = blockIdx.y;
  const int64_t s0 = split_step_begin(a.split, split, a.unit_steps, a.nsteps);
  const int64_t s1 = split_step_end(a.split, split, a.unit_steps, a.nsteps);
  const int bx = a.x.bits, by = a.y.bits;
  const int stage_rows = planes_stage_rows(bx, by, BX, BY);
  const int stage_bytes = stage_rows * kRowBytes;
  const int64_t x0 = tile.x * BX, y0 = tile.y * BY;
  const int S = a.stages;
  const int64_t nst = (s1 - s0 + kStageSteps - 1) / kStageSteps;

  auto load_stage = [&](int slot, int64_t t) {
    const uint32_t base = smem_u32(smem + slot * stage_bytes);
    const int64_t step0 = s0 + t * kStageSteps;
    const int chunks = stage_rows * kChunksPerRow;
    for (int c = tid; c < chunks; c += kThreads) {
      const int sr = copy_row(c), ch = copy_chunk(c);
      const PlaneRow pr = planes_unstack(sr, bx, BX, BY);
      const uint32_t* pl = pr.side == 0 ? a.x.planes : a.y.planes;
      const int64_t rows = pr.side == 0 ? a.x.rows : a.y.rows;
      const int64_t row = (pr.side == 0 ? x0 : y0) + pr.row;
      const bool valid = row < rows && step0 + chunk_step(ch) < s1;
      const uint32_t* src = valid ? pl + (int64_t(pr.plane) * rows + row) * a.wpr + step0 * kStepWords + chunk_word(ch) : pl;
      const uint32_t dst = base + smem_chunk_offset(sr, ch);
      if (a.vec16) {
        cp_async16(dst, src, valid ? 16 : 0);
      } else {
#pragma unroll
        for (int w = 0; w < 4; ++w) cp_async4(dst + 4 * w, valid ? src + w : pl, valid ? 4 : 0);
      }
    }
  };

  uint32_t tot[MT][NT][4];   // sum over plane pairs of ratio * P, this group (or all of k)
  float facc[MT][NT][4];     // grouped: sum over finished groups of sx sy C_g
  int32_t px[MT][2], py[NT]; // grouped: this lane's share of the group row sums (X rows g, g + 8; Y row g)
  int32_t ox[MT][2], oy[NT][2];
  bool mt_ok[MT], nt_ok[NT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    mt_ok[mt] = x0 + (wx * MT + mt) * 16 < a.x.rows;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t x = x0 + planes_acc_row(wx, MT, mt, lane, 2 * h);
      ox[mt][h] = (a.grouped && x < a.x.rows) ? __ldg(a.x.offset + x) : 0;
      px[mt][h] = 0;
    }
  }
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    nt_ok[nt] = y0 + (wy * NT + nt) * 8 < a.y.rows;
    py[nt] = 0;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t y = y0 + planes_acc_col(wy, NT, nt, lane, e);
      oy[nt][e] = (a.grouped && y < a.y.rows) ? __ldg(a.y.offset + y) : 0;
    }
  }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        tot[mt][nt][e] = 0;
        facc[mt][nt][e] = 0.f;
      }
  const uint32_t c00 = uint32_t(base_coeff(a.x.fmt, bx) * base_coeff(a.y.fmt, by));

  // One k step (mode 0) or one k-half of it (modes 1, 2) over all plane pairs.
  auto process = [&](uint32_t base, int ks, auto mode_c) {
    constexpr int kMode = decltype(mode_c)::value;
#pragma unroll 1
    for (int xi = 0; xi < bx; ++xi) {
      uint32_t xf[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
        ldsm_x4(xf[mt], base + smem_chunk_offset(planes_x_row(xi, (wx * MT + mt) * 16 + ldsm_a_row(lane), BX),
                                                 ldsm_a_chunk(lane, ks)));
      if (a.grouped) {
        const int32_t cx = plane_coeff(a.x.fmt, bx, xi);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          px[mt][0] += cx * popc_a<kMode>(xf[mt], 0);
          px[mt][1] += cx * popc_a<kMode>(xf[mt], 1);
        }
      }
      const int32_t rx = plane_ratio(a.x.fmt, bx, xi);
#pragma unroll 1
      for (int yj = 0; yj < by; ++yj) {
        uint32_t yf[NT][2];
#pragma unroll
        for (int np = 0; np < NT / 2; ++np) {
          uint32_t r[4];
          ldsm_x4(r, base + smem_chunk_offset(planes_y_row(yj, (wy * NT + 2 * np) * 8 + ldsm_b_row(lane), bx, BX, BY),
                                              ldsm_b_chunk(lane, ks)));
          yf[2 * np][0] = r[0];
          yf[2 * np][1] = r[1];
          yf[2 * np + 1][0] = r[2];
          yf[2 * np + 1][1] = r[3];
        }
        if (a.grouped && xi == 0) {
          const int32_t cy = plane_coeff(a.y.fmt, by, yj);
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) py[nt] += cy * popc_b<kMode>(yf[nt]);
        }
        const int32_t r = rx * plane_ratio(a.y.fmt, by, yj);
        if (r == 1) {
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
              if (mt_ok[mt] && nt_ok[nt]) mma_acc<kMode>(tot[mt][nt], xf[mt], yf[nt]);
        } else {
#pragma unroll
          for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
              if (mt_ok[mt] && nt_ok[nt]) {
                uint32_t p[4];
                mma_fresh<kMode>(p, xf[mt], yf[nt]);
#pragma unroll
                for (int e = 0; e < 4; ++e) tot[mt][nt][e] += uint32_t(r) * p[e];
              }
        }
      }
    }
  };

  // End of group g: exact C_g per output, scaled into facc; resets the group state. Called uniformly.
  auto flush = [&](int64_t g) {
    int32_t rsy[NT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        px[mt][h] += __shfl_xor_sync(kFullWarp, px[mt][h], 1);
        px[mt][h] += __shfl_xor_sync(kFullWarp, px[mt][h], 2);
      }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      int32_t v = py[nt];
      v += __shfl_xor_sync(kFullWarp, v, 1);
      v += __shfl_xor_sync(kFullWarp, v, 2);
#pragma unroll
      for (int e = 0; e < 2; ++e) rsy[nt][e] = __shfl_sync(kFullWarp, v, rowsum_src_lane(frag_c_col(lane, e)));
    }
    if (g < a.groups) {
      const int64_t kg = group_cols(g, a.gs, a.k);
      float sx[MT][2], sy[NT][2];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t x = x0 + planes_acc_row(wx, MT, mt, lane, 2 * h);
          sx[mt][h] = x < a.x.rows ? scale_at(a.x, x, g) : 0.f;
        }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t y = y0 + planes_acc_col(wy, NT, nt, lane, e);
          sy[nt][e] = y < a.y.rows ? scale_at(a.y, y, g) : 0.f;
        }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int32_t c = corrected_value(c00 * tot[mt][nt][e], ox[mt][e / 2], oy[nt][e % 2], px[mt][e / 2],
                                              rsy[nt][e % 2], kg);
            facc[mt][nt][e] = accumulate_scaled(facc[mt][nt][e], sx[mt][e / 2], sy[nt][e % 2], c);
          }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      px[mt][0] = px[mt][1] = 0;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) tot[mt][nt][e] = 0;
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) py[nt] = 0;
  };

  for (int s = 0; s < S - 1; ++s) {
    if (s < nst) load_stage(s, s);
    cp_async_commit();
  }
  for (int64_t t = 0; t < nst; ++t) {
    cp_async_wait_dyn(S - 2);
    __syncthreads();
    if (t + S - 1 < nst) load_stage(int((t + S - 1) % S), t + S - 1);
    cp_async_commit();
    const uint32_t base = smem_u32(smem + int(t % S) * stage_bytes);
#pragma unroll 1
    for (int ks = 0; ks < kStageSteps; ++ks) {
      const int64_t step = s0 + t * kStageSteps + ks;
      if (step >= s1) break;
      if (!a.grouped) {
        process(base, ks, IntC<0>{});
      } else {
        const StepGroups sg = step_groups(step, s1, a.gs);
        if (sg.split_mid) {
          process(base, ks, IntC<1>{});
          flush(sg.g0);
          process(base, ks, IntC<2>{});
        } else {
          process(base, ks, IntC<0>{});
        }
        if (sg.flush_end) flush(sg.g1);
      }
    }
  }
  cp_async_wait<0>();

  const bool split_k = a.split.splits > 1;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t x = x0 + planes_acc_row(wx, MT, mt, lane, e);
        const int64_t y = y0 + planes_acc_col(wy, NT, nt, lane, e);
        if (x >= a.x.rows || y >= a.y.rows) continue;
        if (a.grouped) {
          if (split_k)
            static_cast<float*>(a.partial)[partial_index(a, split, x, y)] = facc[mt][nt][e];
          else
            write_final_grouped(a, x, y, facc[mt][nt][e]);
        } else {
          const uint32_t combined = c00 * tot[mt][nt][e];
          if (split_k)
            static_cast<uint32_t*>(a.partial)[partial_index(a, split, x, y)] = combined;
          else
            write_final_ungrouped(a, x, y, combined);
        }
      }
}

// Split-K reduction, in split order.
__global__ void bitgemm_splitk_reduce_kernel(GemmArgs a) {
  const int64_t total = a.x.rows * a.y.rows;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = idx / a.y.rows, y = idx % a.y.rows;
    if (a.grouped) {
      float s = 0.f;
      for (int64_t sp = 0; sp < a.split.splits; ++sp) s = fadd_rn(s, static_cast<const float*>(a.partial)[sp * total + idx]);
      write_final_grouped(a, x, y, s);
    } else {
      uint32_t s = 0;
      for (int64_t sp = 0; sp < a.split.splits; ++sp) s += static_cast<const uint32_t*>(a.partial)[sp * total + idx];
      write_final_ungrouped(a, x, y, s);
    }
  }
}

// k == 0: every product is empty: 0, or bias in scaled mode.
__global__ void bitgemm_fill_kernel(GemmArgs a) {
  const int64_t total = a.x.rows * a.y.rows;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = idx / a.y.rows, y = idx % a.y.rows;
    if (a.scaled)
      store_scaled(a, out_index(a, x, y), a.bias ? load_bias(a, x, y) : 0.f);
    else
      static_cast<int32_t*>(a.out)[out_index(a, x, y)] = 0;
  }
}

// ---------------------------------------------------------------------------------------------------
// Quantize + pack.
struct QuantArgs {
  const void* x;
  DType dtype;
  int64_t rows, k, x_stride;
  int bits;
  Format fmt;
  bool per_tensor;
  uint32_t* planes;
  int32_t* offset;
  int32_t* rowsum;
  float* scales;
  int64_t wpr;
  bool vec16;    // planes 16-byte aligned
  float* stats;  // per tensor: [stat_blocks][3] partials, then the final (absmax, min, max)
  int64_t stat_blocks;
};
constexpr int kQuantThreads = 256;
constexpr int kQuantRowsPerBlock = kQuantThreads / 32;

__device__ __forceinline__ float load_x(const QuantArgs& q, int64_t idx) {
  switch (q.dtype) {
    case DType::f16: return __half2float(__ushort_as_half(__ldg(static_cast<const unsigned short*>(q.x) + idx)));
    case DType::bf16: return __bfloat162float(__ushort_as_bfloat16(__ldg(static_cast<const unsigned short*>(q.x) + idx)));
    default: return __ldg(static_cast<const float*>(q.x) + idx);
  }
}
struct Stats {
  float absmax, mn, mx;
};
__device__ __forceinline__ Stats stats_init() { return Stats{0.f, __int_as_float(0x7f800000), __int_as_float(0xff800000)}; }
__device__ __forceinline__ void stats_add(Stats& s, float v) {
  s.absmax = fmaxf(s.absmax, fabsf(v));
  s.mn = fminf(s.mn, v);
  s.mx = fmaxf(s.mx, v);
}
__device__ __forceinline__ void stats_merge(Stats& s, const Stats& o) {
  s.absmax = fmaxf(s.absmax, o.absmax);
  s.mn = fminf(s.mn, o.mn);
  s.mx = fmaxf(s.mx, o.mx);
}
__device__ __forceinline__ Stats stats_warp_reduce(Stats s) {
#pragma unroll
  for (int d = 16; d >= 1; d /= 2) {
    Stats o;
    o.absmax = __shfl_xor_sync(kFullWarp, s.absmax, d);
    o.mn = __shfl_xor_sync(kFullWarp, s.mn, d);
    o.mx = __shfl_xor_sync(kFullWarp, s.mx, d);
    stats_merge(s, o);
  }
  return s;
}
// Block-wide reduction (kQuantThreads threads); the result is valid in thread 0.
__device__ __forceinline__ Stats stats_block_reduce(Stats s) {
  __shared__ Stats partial[kQuantThreads / 32];
  s = stats_warp_reduce(s);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x == 0)
    for (int w = 1; w < kQuantThreads / 32; ++w) stats_merge(s, partial[w]);
  return s;
}

// Per-tensor pass 1: block b reduces rows b, b + grid, ... (max / min are order-independent).
__global__ void __launch_bounds__(kQuantThreads) quantize_stats_kernel(QuantArgs q) {
  Stats s = stats_init();
  for (int64_t r = blockIdx.x; r < q.rows; r += gridDim.x)
    for (int64_t c = threadIdx.x; c < q.k; c += kQuantThreads) stats_add(s, load_x(q, r * q.x_stride + c));
  s = stats_block_reduce(s);
  if (threadIdx.x == 0) {
    q.stats[3 * blockIdx.x + 0] = s.absmax;
    q.stats[3 * blockIdx.x + 1] = s.mn;
    q.stats[3 * blockIdx.x + 2] = s.mx;
  }
}
// Per-tensor pass 2: the partials -> the final statistics and the tensor's scale.
__global__ void __launch_bounds__(kQuantThreads) quantize_stats_final_kernel(QuantArgs q) {
  Stats s = stats_init();
  for (int64_t b = threadIdx.x; b < q.stat_blocks; b += kQuantThreads)
    stats_merge(s, Stats{q.stats[3 * b], q.stats[3 * b + 1], q.stats[3 * b + 2]});
  s = stats_block_reduce(s);
  if (threadIdx.x == 0) {
    float* fin = q.stats + 3 * q.stat_blocks;
    fin[0] = s.absmax;
    fin[1] = s.mn;
    fin[2] = s.mx;
    q.scales[0] = quant_params(q.fmt, q.bits, s.absmax, s.mn, s.mx).scale;
  }
}

// One warp per row: statistics (per row), codes, ballot-packed planes (16-byte stores), offset, rowsum.
__global__ void __launch_bounds__(kQuantThreads) quantize_pack_kernel(QuantArgs q) {
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * kQuantRowsPerBlock + (threadIdx.x >> 5);
  if (r >= q.rows) return;  // whole warp
  const int64_t row_base = r * q.x_stride;
  QuantParams qp;
  if (q.per_tensor) {
    const float* fin = q.stats + 3 * q.stat_blocks;
    qp = quant_params(q.fmt, q.bits, fin[0], fin[1], fin[2]);
  } else {
    Stats s = stats_init();
    for (int64_t c = lane; c < q.k; c += 4 * 32) {
      float v[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) v[e] = c + 32 * e < q.k ? load_x(q, row_base + c + 32 * e) : 0.f;
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (c + 32 * e < q.k) stats_add(s, v[e]);
    }
    s = stats_warp_reduce(s);
    qp = quant_params(q.fmt, q.bits, s.absmax, s.mn, s.mx);
  }

  int32_t rs = 0;
  const int64_t blocks = q.wpr / 4;  // 128 columns per block; wpr is a multiple of 8
  for (int64_t b = 0; b < blocks; ++b) {
    int32_t code[4];
    bool valid[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t c = pack_col(b, e, lane);
      valid[e] = c < q.k;
      code[e] = valid[e] ? quant_code(q.fmt, q.bits, load_x(q, row_base + c), qp) : 0;
      if (valid[e]) rs += code_rowsum_term(q.fmt, code[e]);
    }
    for (int i = 0; i < q.bits; ++i) {
      uint32_t w[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) w[e] = __ballot_sync(kFullWarp, valid[e] && code_bit(code[e], i));
      if (lane == i) {
        uint32_t* dst = q.planes + (int64_t(i) * q.rows + r) * q.wpr + 4 * b;
        if (q.vec16) {
          *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
        } else {
#pragma unroll
          for (int e = 0; e < 4; ++e) dst[e] = w[e];
        }
      }
    }
  }
#pragma unroll
  for (int d = 16; d >= 1; d /= 2) rs += __shfl_xor_sync(kFullWarp, rs, d);
  if (lane == 0) {
    q.offset[r] = qp.offset;
    q.rowsum[r] = rs;
    if (!q.per_tensor) q.scales[r] = qp.scale;
  }
}

// ---------------------------------------------------------------------------------------------------
// Host side.
enum class Path { fill, stacked, planes_main, planes_decode };

struct Plan {
  Path path = Path::fill;
  bool transposed = false, grouped = false;
  int64_t tiles_x = 0, tiles_y = 0;
  SplitK split{1, 1};
  int64_t unit_steps = kStageSteps;
  int stages = 0;
  std::size_t smem = 0;
  std::size_t workspace = 0;
  int rows_x_tile = 0, rows_y_tile = 0;
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
bool aligned(const void* p, std::size_t n) { return reinterpret_cast<std::uintptr_t>(p) % n == 0; }

struct DeviceInfo {
  int sms = 1, smem_optin = 48 * 1024;
};
DeviceInfo device_info() {
  int device = 0;
  DeviceInfo d;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device),
             "cudaDeviceGetAttribute(MultiProcessorCount)");
  check_cuda(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
             "cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin)");
  return d;
}

Plan make_plan(const GemmProblem& p, const DeviceInfo& dev) {
  Plan plan;
  const int64_t m = p.a.rows, n = p.w.rows;
  const int64_t nsteps = k_steps(p.k);
  const int64_t groups = p.scaled ? num_groups(p.k, p.group_size) : 1;
  plan.grouped = p.scaled && p.group_size > 0 && groups > 1;
  if (m == 0 || n == 0) return plan;
  if (p.k <= 0 || nsteps == 0) {
    plan.path = Path::fill;
    return plan;
  }
  int bx = 0, by = 0, tile_bx = 0, tile_by = 0;
  if (m <= kDecodeMaxM) {
    plan.path = Path::planes_decode;
    plan.transposed = true;
    tile_bx = kDecBX;
    tile_by = kDecBY;
    bx = p.w.bits;
    by = p.a.bits;
    plan.tiles_x = ceil_div(n, kDecBX);
    plan.tiles_y = ceil_div(m, kDecBY);
  } else if (plan.grouped) {
    plan.path = Path::planes_main;
    tile_bx = kMainBX;
    tile_by = kMainBY;
    bx = p.a.bits;
    by = p.w.bits;
    plan.tiles_x = ceil_div(m, kMainBX);
    plan.tiles_y = ceil_div(n, kMainBY);
  } else {
    plan.path = Path::stacked;
    plan.rows_x_tile = stacked_rows_x(p.a.bits);
    plan.rows_y_tile = stacked_rows_y(p.w.bits);
    plan.tiles_x = ceil_div(m, plan.rows_x_tile);
    plan.tiles_y = ceil_div(n, plan.rows_y_tile);
  }
  if (plan.tiles_x * plan.tiles_y > int64_t(0x7fffffff))
    throw std::runtime_error("fastops: bitgemm gemm_cuda: output too large for one launch");

  if (plan.path == Path::stacked) {
    plan.stages = stacked::kStages;
    plan.smem = stacked::kRowTableBytes + std::max(stacked::kStages * stacked::kStageBytes, stacked::kEpiBytes);
  } else {
    const std::size_t stage_bytes = std::size_t(planes_stage_rows(bx, by, tile_bx, tile_by)) * kRowBytes;
    // Leave room for two CTAs per SM when the stages allow it; at least double buffering.
    int stages = int(std::min<std::size_t>(kMaxStages, std::size_t(dev.smem_optin / 2) / stage_bytes));
    stages = std::max(stages, 2);
    if (std::size_t(stages) * stage_bytes > std::size_t(dev.smem_optin))
      throw std::runtime_error("fastops: bitgemm gemm_cuda: bits_a=" + std::to_string(p.a.bits) +
                               ", bits_w=" + std::to_string(p.w.bits) +
                               " need more shared memory per block than this GPU has");
    plan.stages = stages;
    plan.smem = std::size_t(stages) * stage_bytes;
  }

  // Split K while the grid is smaller than two waves; a split keeps >= 4 k steps (decode) or >= 8.
  plan.unit_steps = plan.grouped ? group_unit_steps(p.group_size) : kStageSteps;
  const int64_t units = ceil_div(nsteps, plan.unit_steps);
  const int64_t ctas = plan.tiles_x * plan.tiles_y;
  const int64_t target = 2 * int64_t(dev.sms);
  const int64_t want = ctas >= target ? 1 : ceil_div(target, ctas);
  const int64_t min_steps = plan.path == Path::planes_decode ? 4 : 8;
  const int64_t max_splits = std::min<int64_t>(kMaxGridY, std::max<int64_t>(1, nsteps / min_steps));
  plan.split = make_split_k(units, want, max_splits);
  plan.workspace = plan.split.splits > 1 ? std::size_t(plan.split.splits) * std::size_t(m) * std::size_t(n) * 4 : 0;
  return plan;
}

Side make_side(const Operand& o, const float* scale, int64_t scale_row, int64_t scale_group) {
  Side s;
  s.planes = o.planes;
  s.offset = o.offset;
  s.rowsum = o.rowsum;
  s.scale = scale;
  s.scale_row = scale_row;
  s.scale_group = scale_group;
  s.rows = o.rows;
  s.bits = o.bits;
  s.fmt = o.fmt;
  return s;
}

std::size_t out_elem_bytes(const GemmProblem& p) {
  if (!p.scaled) return 4;
  return p.out_dtype == DType::f32 ? 4 : 2;
}

GemmArgs make_args(const GemmProblem& p, const Plan& plan, void* workspace) {
  GemmArgs a{};
  const Side sa = make_side(p.a, p.a_scale, p.a_scale_stride_row, p.a_scale_stride_group);
  const Side sw = make_side(p.w, p.w_scale, p.w_scale_stride_row, p.w_scale_stride_group);
  a.x = plan.transposed ? sw : sa;
  a.y = plan.transposed ? sa : sw;
  a.k = p.k;
  a.wpr = words_per_row(p.k);
  a.nsteps = k_steps(p.k);
  a.gs = p.group_size;
  a.groups = p.scaled ? num_groups(p.k, p.group_size) : 1;
  a.grouped = plan.grouped;
  a.scaled = p.scaled;
  a.transposed = plan.transposed;
  a.vec16 = aligned(p.a.planes, 16) && aligned(p.w.planes, 16);
  const std::size_t esz = out_elem_bytes(p);
  a.vec_out = !plan.transposed && aligned(p.out, 4 * esz) && p.out_stride % 4 == 0;
  a.vec_partial = aligned(workspace, 16) && a.y.rows % 4 == 0;
  a.out = p.out;
  a.out_stride = p.out_stride;
  a.out_dtype = p.scaled ? p.out_dtype : DType::f32;
  a.bias = p.scaled ? p.bias : nullptr;
  a.partial = workspace;
  a.split = plan.split;
  a.unit_steps = plan.unit_steps;
  a.tiles_x = plan.tiles_x;
  a.tiles_y = plan.tiles_y;
  a.stages = plan.stages;
  a.rows_x_tile = plan.rows_x_tile;
  a.rows_y_tile = plan.rows_y_tile;
  return a;
}

template <typename Kernel>
void launch_gemm_kernel(Kernel kernel, const char* name, const Plan& plan, int threads, const GemmArgs& args,
                        cudaStream_t stream) {
  if (int64_t(plan.smem) > dynamic_smem_limit(reinterpret_cast<const void*>(kernel), name))
    throw std::runtime_error(std::string("fastops: bitgemm ") + name + " needs " + std::to_string(plan.smem) +
                             " bytes of shared memory per block, more than this GPU allows");
  const dim3 grid(unsigned(plan.tiles_x * plan.tiles_y), unsigned(plan.split.splits));
  kernel<<<grid, threads, plan.smem, stream>>>(args);
  check_launch(name);
}

int elementwise_blocks(int64_t total, int sms) {
  return int(std::max<int64_t>(1, std::min<int64_t>(ceil_div(total, 256), int64_t(sms) * 8)));
}

}  // namespace

std::size_t gemm_cuda_workspace_bytes(const GemmProblem& p) {
  if (p.a.rows == 0 || p.w.rows == 0) return 0;
  return make_plan(p, device_info()).workspace;
}

void gemm_cuda(const GemmProblem& p, void* workspace, std::uintptr_t stream_handle) {
  if (p.a.rows == 0 || p.w.rows == 0) return;
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const DeviceInfo dev = device_info();
  const Plan plan = make_plan(p, dev);
  if (plan.workspace > 0 && workspace == nullptr)
    throw std::runtime_error("fastops: bitgemm gemm_cuda needs a workspace of gemm_cuda_workspace_bytes() bytes");
  GemmArgs args = make_args(p, plan, workspace);

  switch (plan.path) {
    case Path::fill: {
      // k == 0: x = A, y = W, never transposed.
      const int64_t total = p.a.rows * p.w.rows;
      bitgemm_fill_kernel<<<elementwise_blocks(total, dev.sms), 256, 0, stream>>>(args);
      check_launch("bitgemm_fill_kernel");
      return;
    }
    case Path::stacked:
      launch_gemm_kernel(bitgemm_stacked_kernel, "bitgemm_stacked_kernel", plan, stacked::kThreads, args, stream);
      break;
    case Path::planes_main:
      launch_gemm_kernel(bitgemm_planes_kernel<kMainBX, kMainBY, kMainWX, kMainWY>, "bitgemm_planes_kernel<64, 64>",
                         plan, 32 * kMainWX * kMainWY, args, stream);
      break;
    case Path::planes_decode:
      launch_gemm_kernel(bitgemm_planes_kernel<kDecBX, kDecBY, kDecWX, kDecWY>, "bitgemm_planes_kernel<128, 16>",
                         plan, 32 * kDecWX * kDecWY, args, stream);
      break;
  }
  if (plan.split.splits > 1) {
    const int64_t total = p.a.rows * p.w.rows;
    bitgemm_splitk_reduce_kernel<<<elementwise_blocks(total, dev.sms), 256, 0, stream>>>(args);
    check_launch("bitgemm_splitk_reduce_kernel");
  }
}

std::size_t quantize_pack_cuda_workspace_bytes(const QuantizePackProblem& p) {
  if (!p.per_tensor) return 0;
  return std::size_t(quant_stat_blocks(p.rows) + 1) * 3 * sizeof(float);
}

void quantize_pack_cuda(const QuantizePackProblem& p, void* workspace, std::uintptr_t stream_handle) {
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  QuantArgs q{};
  q.x = p.x;
  q.dtype = p.dtype;
  q.rows = p.rows;
  q.k = p.k;
  q.x_stride = p.x_stride;
  q.bits = p.bits;
  q.fmt = p.fmt;
  q.per_tensor = p.per_tensor;
  q.planes = p.planes;
  q.offset = p.offset;
  q.rowsum = p.rowsum;
  q.scales = p.scales;
  q.wpr = words_per_row(p.k);
  q.vec16 = aligned(p.planes, 16);
  q.stats = static_cast<float*>(workspace);
  q.stat_blocks = quant_stat_blocks(p.rows);
  if (p.per_tensor) {
    if (workspace == nullptr)
      throw std::runtime_error(
          "fastops: bitgemm quantize_pack_cuda needs a workspace of quantize_pack_cuda_workspace_bytes() bytes");
    quantize_stats_kernel<<<unsigned(q.stat_blocks), kQuantThreads, 0, stream>>>(q);
    check_launch("quantize_stats_kernel");
    quantize_stats_final_kernel<<<1, kQuantThreads, 0, stream>>>(q);
    check_launch("quantize_stats_final_kernel");
  }
  if (p.rows == 0) return;
  const int64_t blocks = ceil_div(p.rows, kQuantRowsPerBlock);
  if (blocks > int64_t(0x7fffffff)) throw std::runtime_error("fastops: bitgemm quantize_pack_cuda: too many rows");
  quantize_pack_kernel<<<unsigned(blocks), kQuantThreads, 0, stream>>>(q);
  check_launch("quantize_pack_kernel");
}

}  // namespace bitgemm
}  // namespace fastops
