// CUDA sparse (sparse.h): strip-bitmap weight x dense activation, load-as-sparse / compute-as-dense, and
// the two packing passes. Format: sparse_format.h; all index math lives in sparse_cuda_layout.h (emulated
// on the CPU by sparse_cuda_layout_test.cpp).
//
// Kernels:
//  * spmm_kernel<f16|bf16, NT> ("spmm_mma_kernel"). A block is 4 warps = 4 consecutive 16-row strips on
//    one K range (split) and one tile of 8 NT tokens (NT = 1, 2, 4). Per 64-column chunk a 4-stage
//    cp.async pipeline stages each warp's 32 masks (4-byte copies) and the chunk's values (16-byte copies
//    of the aligned window around them), and the block's shared x tile (16-byte copies with zero fill past
//    k and n, or guarded loads when x rows are not 16-byte aligned). Lane i takes mask i of the chunk; popc
//    + a warp scan give every unit's value offset; per k16 step each lane shuffles in the masks / offsets of
//    its two units and builds its A registers from its rows' bits (zero where clear). B comes from the x
//    tile by ldmatrix.x4; mma.sync.m16n8k16 accumulates in fp32.
//  * spmm_kernel<f32, NT> ("spmm_simt_kernel"): the same pipeline (3 stages) and decode; lane l owns row l % 16 and
//    4 NT tokens and accumulates with fp32 FMA on CUDA cores (no tf32 anywhere).
//  * spmm_splitk_reduce_kernel: sums the fp32 split-K partials in split order (deterministic), adds bias,
//    converts. With one split the main kernel's epilogue writes y directly.
//  * sparse_pack_count_kernel / sparse_pack_fill_kernel: one warp per (strip, chunk), lane = unit: the
//    unit's 32 elements, a mask from their raw bits, popc + warp scan for the value positions.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/cuda_utils.cuh"
#include "sparse/sparse.h"
#include "sparse/sparse_cuda_layout.h"

namespace fastops {
namespace sparse {
namespace {

using namespace cuda_layout;

constexpr unsigned kFullWarp = 0xffffffffu;

template <DType D>
constexpr int kElemBytes = D == DType::f32 ? 4 : 2;
// Elements move as raw bits; only the arithmetic converts.
template <DType D>
using Raw = std::conditional_t<D == DType::f32, uint32_t, uint16_t>;

// ---------------------------------------------------------------------------------------------------
// PTX wrappers.
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16-byte cp.async; the bytes past src_bytes are zero-filled (src must still be a valid address).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// d += A * B, fp32 accumulate.
template <DType D>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (D == DType::f16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

template <DType D>
__device__ __forceinline__ float to_float(Raw<D> r) {
  if constexpr (D == DType::f16) return __half2float(__ushort_as_half(r));
  if constexpr (D == DType::bf16) return __bfloat162float(__ushort_as_bfloat16(r));
  if constexpr (D == DType::f32) return __uint_as_float(r);
}
template <DType D>
__device__ __forceinline__ Raw<D> from_float(float v) {
  if constexpr (D == DType::f16) return __half_as_ushort(__float2half_rn(v));
  if constexpr (D == DType::bf16) return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  if constexpr (D == DType::f32) return __float_as_uint(v);
}

// Exclusive prefix of popc(mask) over the lanes: the first value of this lane's unit inside the chunk.
__device__ __forceinline__ int warp_exclusive_offset(uint32_t mask, int lane) {
  const int count = __popc(mask);
  int inclusive = count;
#pragma unroll
  for (int d = 1; d < kWarpSize; d *= 2) {
    const int v = __shfl_up_sync(kFullWarp, inclusive, d);
    if (lane >= d) inclusive += v;
  }
  return inclusive - count;
}

// ---------------------------------------------------------------------------------------------------
// spmm.
struct SpmmArgs {
  const uint32_t* masks;
  const void* values;
  uint64_t values_addr;  // the values pointer as an address, for the copy windows
  const int64_t* strip_offsets;
  const int32_t* chunk_offsets;
  const void* x;
  void* y;
  const void* bias;
  float* workspace;  // split-K partials, when plan.splits > 1
  int64_t m, k, n, x_stride, y_stride;
  int64_t units;    // U
  bool x_vec;       // x rows 16-byte aligned: cp.async
  bool values_vec;  // values 16-byte aligned: cp.async windows
  SpmmPlan plan;
};

template <DType D>
__device__ __forceinline__ void write_y(const SpmmArgs& a, int64_t token, int64_t row, float v) {
  if (a.bias != nullptr) v += to_float<D>(static_cast<const Raw<D>*>(a.bias)[row]);
  static_cast<Raw<D>*>(a.y)[token * a.y_stride + row] = from_float<D>(v);
}
template <DType D>
__device__ __forceinline__ void write_output(const SpmmArgs& a, int64_t split, int64_t token, int64_t row, float v) {
  if (a.plan.splits > 1)
    a.workspace[workspace_index(split, token, row, a.n, a.m)] = v;
  else
    write_y<D>(a, token, row, v);
}

// MMA decode + accumulate of one staged chunk for one warp (16-bit weights).
template <DType D, int NT>
struct MmaChunk {
  float acc[NT][4];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
  }

  // The 32-bit A register of a column pair: low half the even column.
  static __device__ __forceinline__ uint32_t value_pair(const uint16_t* win, uint32_t mask, int unit_offset, int head,
                                                        int bit0) {
    const PairSlots s = pair_slots(mask, unit_offset, head, bit0);
    const uint32_t lo = s.has_lo ? win[s.lo] : 0u;
    const uint32_t hi = s.has_hi ? win[s.hi] : 0u;
    return lo | (hi << 16);
  }

  __device__ __forceinline__ void chunk(const unsigned char* stage, int warp, int lane, int head) {
    constexpr int esz = 2;
    const uint32_t mask = reinterpret_cast<const uint32_t*>(stage + stage_mask_offset(warp))[lane];
    const int offset = warp_exclusive_offset(mask, lane);
    const uint16_t* win = reinterpret_cast<const uint16_t*>(stage + stage_window_offset(warp, esz));
    const uint32_t xs = smem_u32(stage + stage_x_offset(esz));

    uint32_t b[NT][kStepsPerChunk][2];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int kp = 0; kp < kStepsPerChunk / 2; ++kp) {
        uint32_t r[4];
        ldsm_x4(r, xs + uint32_t(x_smem_elem(ldsm_b_token(lane, nt), ldsm_b_col(lane, kp), esz) * esz));
#pragma unroll
        for (int j = 0; j < 4; ++j) b[nt][ldsm_b_step(kp, j)][ldsm_b_reg(j)] = r[j];
      }

#pragma unroll
    for (int step = 0; step < kStepsPerChunk; ++step) {
      uint32_t a[4];
#pragma unroll
      for (int pair = 0; pair < 2; ++pair) {  // registers 2 pair and 2 pair + 1 share one unit
        const int unit = a_unit(lane, step, 2 * pair);
        const uint32_t unit_mask = __shfl_sync(kFullWarp, mask, unit);
        const int unit_offset = __shfl_sync(kFullWarp, offset, unit);
#pragma unroll
        for (int r = 2 * pair; r < 2 * pair + 2; ++r)
          a[r] = value_pair(win, unit_mask, unit_offset, head, a_bit(lane, r, 0));
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) mma_16816<D>(acc[nt], a, b[nt][step]);
    }
  }

  __device__ __forceinline__ void store(const SpmmArgs& a, int64_t split, int64_t strip, int64_t token0,
                                        int lane) const {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t row = strip * kStripRows + frag_c_row(lane, e);
        const int64_t token = token0 + nt * kNTileTokens + frag_c_col(lane, e);
        if (row < a.m && token < a.n) write_output<D>(a, split, token, row, acc[nt][e]);
      }
  }
};

// SIMT decode + fp32 FMA of one staged chunk for one warp (fp32 weights).
template <int NT>
struct SimtChunk {
  static constexpr int kTokens = simt_tokens_per_lane(NT);
  float acc[kTokens];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int j = 0; j < kTokens; ++j) acc[j] = 0.f;
  }

  __device__ __forceinline__ void chunk(const unsigned char* stage, int warp, int lane, int head) {
    constexpr int esz = 4;
    const uint32_t mask = reinterpret_cast<const uint32_t*>(stage + stage_mask_offset(warp))[lane];
    const int offset = warp_exclusive_offset(mask, lane);
    const float* win = reinterpret_cast<const float*>(stage + stage_window_offset(warp, esz));
    const float* xs = reinterpret_cast<const float*>(stage + stage_x_offset(esz));
    const int bit0 = unit_bit(simt_row(lane), 0);
#pragma unroll 4
    for (int u = 0; u < kUnitsPerChunk; ++u) {
      const uint32_t unit_mask = __shfl_sync(kFullWarp, mask, u);
      const int unit_offset = __shfl_sync(kFullWarp, offset, u);
      const PairSlots s = pair_slots(unit_mask, unit_offset, head, bit0);
      const float v0 = s.has_lo ? win[s.lo] : 0.f;
      const float v1 = s.has_hi ? win[s.hi] : 0.f;
#pragma unroll
      for (int j = 0; j < kTokens; ++j) {
        const float2 xp =
            *reinterpret_cast<const float2*>(xs + x_smem_elem(simt_token(lane, j, NT), kUnitCols * u, esz));
        acc[j] = fmaf(v1, xp.y, fmaf(v0, xp.x, acc[j]));
      }
    }
  }

  __device__ __forceinline__ void store(const SpmmArgs& a, int64_t split, int64_t strip, int64_t token0,
                                        int lane) const {
    const int64_t row = strip * kStripRows + simt_row(lane);
#pragma unroll
    for (int j = 0; j < kTokens; ++j) {
      const int64_t token = token0 + simt_token(lane, j, NT);
      if (row < a.m && token < a.n) write_output<DType::f32>(a, split, token, row, acc[j]);
    }
  }
};

// One warp's strip within the current tile.
struct StripState {
  int64_t strip;
  int64_t value_begin;          // strip_offsets[strip]
  int strip_values;             // values of the strip: bound(C)
  int bounds_cur, bounds_next;  // chunk bounds of batches bound_batch(j) and bound_batch(j) + 1
  uint32_t heads;               // window head of each stage (set_stage_head)
};

__device__ __forceinline__ int load_bounds(const SpmmArgs& a, const StripState& st, int64_t chunk0, int nchunks,
                                           int batch, int lane) {
  const int64_t c = bound_chunk(chunk0, batch, lane);
  if (c - chunk0 > nchunks) return 0;
  return c < a.plan.chunks ? a.chunk_offsets[chunk_index(st.strip, c, a.plan.chunks)] : st.strip_values;
}

// Stages the block's x tile of the chunk starting at column col0: tokens token0.., zero past k and n.
template <DType D, int NT>
__device__ __forceinline__ void stage_x(const SpmmArgs& a, unsigned char* xs, int64_t col0, int64_t token0) {
  constexpr int esz = kElemBytes<D>, per_granule = kGranuleBytes / esz;
  const Raw<D>* x = static_cast<const Raw<D>*>(a.x);
  for (int g = threadIdx.x; g < x_tile_granules(esz, NT); g += kThreads) {
    const int token = x_granule_token(g, esz), col = x_granule_col(g, esz);
    const int64_t t = token0 + token, c = col0 + col;
    unsigned char* dst = xs + x_smem_elem(token, col, esz) * esz;
    if (a.x_vec) {
      const int bytes = t < a.n ? x_copy_bytes(c, a.k, esz) : 0;
      cp_async16(smem_u32(dst), bytes > 0 ? x + t * a.x_stride + c : x, bytes);
    } else {
      uint32_t words[4] = {0u, 0u, 0u, 0u};  // little-endian: element e in word e * esz / 4
#pragma unroll
      for (int e = 0; e < per_granule; ++e)
        if (t < a.n && c + e < a.k) words[e * esz / 4] |= uint32_t(x[t * a.x_stride + c + e]) << (8 * (e * esz % 4));
      *reinterpret_cast<uint4*>(dst) = make_uint4(words[0], words[1], words[2], words[3]);
    }
  }
}

// Issues the copies of relative chunk j (of nchunks from chunk0) into stage j % stages: the x tile by the
// whole block, masks and values by each active warp.
template <DType D, int NT>
__device__ __forceinline__ void issue_chunk(const SpmmArgs& a, unsigned char* smem, StripState& st, bool active,
                                            int64_t chunk0, int nchunks, int j, int64_t token0, int warp, int lane) {
  constexpr int esz = kElemBytes<D>;
  const int stage = j % pipeline_stages(esz);
  unsigned char* base = smem + stage * stage_bytes(esz, NT);
  const int64_t chunk = chunk0 + j;
  stage_x<D, NT>(a, base + stage_x_offset(esz), chunk * kChunkCols, token0);
  if (!active) return;

  if (j > 0 && bound_lane(j) == 0) {
    st.bounds_cur = st.bounds_next;
    st.bounds_next = load_bounds(a, st, chunk0, nchunks, bound_batch(j) + 1, lane);
  }
  const int start = __shfl_sync(kFullWarp, st.bounds_cur, bound_lane(j));
  const int end =
      __shfl_sync(kFullWarp, bound_batch(j + 1) == bound_batch(j) ? st.bounds_cur : st.bounds_next, bound_lane(j + 1));

  cp_async4(smem_u32(base + stage_mask_offset(warp)) + 4u * uint32_t(lane),
            a.masks + mask_index(st.strip, chunk_unit(chunk, lane), a.units));

  const ValueWindow w = value_window(a.values_addr, esz, st.value_begin + start, st.value_begin + end);
  st.heads = set_stage_head(st.heads, stage, w.head);
  unsigned char* win = base + stage_window_offset(warp, esz);
  if (a.values_vec) {
    for (int g = lane; g < w.granules; g += kWarpSize)
      cp_async16(smem_u32(win) + uint32_t(g * kGranuleBytes),
                 reinterpret_cast<const void*>(w.first_byte + uint64_t(g) * kGranuleBytes), kGranuleBytes);
  } else {
    const int room = window_bytes(esz) / esz - w.head;
    const int count = end - start < room ? end - start : room;
    const Raw<D>* src = static_cast<const Raw<D>*>(a.values) + st.value_begin + start;
    Raw<D>* dst = reinterpret_cast<Raw<D>*>(win);
    for (int e = lane; e < count; e += kWarpSize) dst[window_slot(w.head, e)] = src[e];
  }
}

template <DType D, int NT>
__global__ void __launch_bounds__(kThreads) spmm_kernel(const SpmmArgs a) {
  using Compute = std::conditional_t<D == DType::f32, SimtChunk<NT>, MmaChunk<D, NT>>;
  constexpr int esz = kElemBytes<D>;
  constexpr int kStages = pipeline_stages(esz);
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const SpmmPlan& p = a.plan;

  const TileCoords tc = tile_coords(p, blockIdx.x);
  const int64_t chunk0 = split_chunk_begin(p, tc.split);
  const int nchunks = int(split_chunk_end(p, tc.split) - chunk0);
  const int64_t token0 = tile_token0(tc, NT);
  StripState st;
  st.strip = tile_strip(tc, warp);
  st.heads = 0;
  const bool active = st.strip < p.strips;  // warp-uniform; idle warps still stage x and hit barriers
  if (active) {
    st.value_begin = a.strip_offsets[st.strip];
    st.strip_values = int(a.strip_offsets[st.strip + 1] - st.value_begin);
    st.bounds_cur = load_bounds(a, st, chunk0, nchunks, 0, lane);
    st.bounds_next = load_bounds(a, st, chunk0, nchunks, 1, lane);
  }
  Compute compute;
  compute.zero();

  // One commit group per chunk (empty past the end), so wait_group<kStages - 2> leaves chunk j ready.
#pragma unroll
  for (int j = 0; j < kStages - 1; ++j) {
    if (j < nchunks) issue_chunk<D, NT>(a, smem, st, active, chunk0, nchunks, j, token0, warp, lane);
    cp_async_commit();
  }
  for (int j = 0; j < nchunks; ++j) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // chunk j visible to all warps; stage (j - 1) % kStages free for reuse
    const int ahead = j + kStages - 1;
    if (ahead < nchunks) issue_chunk<D, NT>(a, smem, st, active, chunk0, nchunks, ahead, token0, warp, lane);
    cp_async_commit();
    const int stage = j % kStages;
    if (active) compute.chunk(smem + stage * stage_bytes(esz, NT), warp, lane, stage_head(st.heads, stage));
  }
  if (active) compute.store(a, tc.split, st.strip, token0, lane);
}

constexpr int kReduceThreads = 256;

template <DType D>
__global__ void __launch_bounds__(kReduceThreads) spmm_splitk_reduce_kernel(const SpmmArgs a) {
  const int64_t total = a.n * a.m;
  for (int64_t i = int64_t(blockIdx.x) * kReduceThreads + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * kReduceThreads) {
    const int64_t token = i / a.m, row = i % a.m;
    float v = 0.f;
    for (int64_t s = 0; s < a.plan.splits; ++s) v += a.workspace[workspace_index(s, token, row, a.n, a.m)];
    write_y<D>(a, token, row, v);
  }
}

// ---------------------------------------------------------------------------------------------------
// Packing.
struct PackArgs {
  const void* w;
  int64_t m, k, stride_r, stride_c;
  int64_t strips, chunks, units;
  int32_t* counts;
  const int64_t* strip_offsets;
  const int32_t* chunk_offsets;
  uint32_t* masks;
  void* values;
};
constexpr int kPackThreads = 256;
constexpr int kPackWarps = kPackThreads / kWarpSize;

// The 32 elements of unit `unit` of strip `strip` (zero outside the matrix) and their mask.
template <typename R>
__device__ __forceinline__ uint32_t load_unit(const PackArgs& a, int64_t strip, int64_t unit, R (&raw)[kUnitElems]) {
  const R* w = static_cast<const R*>(a.w);
  uint32_t mask = 0;
#pragma unroll
  for (int bit = 0; bit < kUnitElems; ++bit) {
    const int64_t row = elem_row(strip, bit), col = elem_col(unit, bit);
    raw[bit] = row < a.m && col < a.k ? __ldg(w + elem_offset(row, col, a.stride_r, a.stride_c)) : R(0);
    if (nonzero_bits(raw[bit], int(sizeof(R)))) mask |= 1u << bit;
  }
  return mask;
}

template <typename R>
__global__ void __launch_bounds__(kPackThreads) sparse_pack_count_kernel(const PackArgs a) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t total = a.strips * a.chunks;
  for (int64_t id = int64_t(blockIdx.x) * kPackWarps + threadIdx.x / kWarpSize; id < total;
       id += int64_t(gridDim.x) * kPackWarps) {
    const int64_t s = pack_warp_strip(id, a.chunks), c = pack_warp_chunk(id, a.chunks);
    R raw[kUnitElems];
    const uint32_t mask = load_unit(a, s, chunk_unit(c, lane), raw);
    const unsigned count = __reduce_add_sync(kFullWarp, unsigned(__popc(mask)));
    if (lane == 0) a.counts[chunk_index(s, c, a.chunks)] = int32_t(count);
  }
}

template <typename R>
__global__ void __launch_bounds__(kPackThreads) sparse_pack_fill_kernel(const PackArgs a) {
  const int lane = threadIdx.x % kWarpSize;
  R* values = static_cast<R*>(a.values);
  const int64_t total = a.strips * a.chunks;
  for (int64_t id = int64_t(blockIdx.x) * kPackWarps + threadIdx.x / kWarpSize; id < total;
       id += int64_t(gridDim.x) * kPackWarps) {
    const int64_t s = pack_warp_strip(id, a.chunks), c = pack_warp_chunk(id, a.chunks);
    const int64_t unit = chunk_unit(c, lane);
    R raw[kUnitElems];
    const uint32_t mask = load_unit(a, s, unit, raw);
    const int offset = warp_exclusive_offset(mask, lane);
    a.masks[mask_index(s, unit, a.units)] = mask;
    R* dst = values + a.strip_offsets[s] + a.chunk_offsets[chunk_index(s, c, a.chunks)] + offset;
    int rank = 0;
#pragma unroll
    for (int bit = 0; bit < kUnitElems; ++bit)
      if ((mask >> bit) & 1u) dst[rank++] = raw[bit];
  }
  if (blockIdx.x == 0 && threadIdx.x < kValuePad) values[a.strip_offsets[a.strips] + threadIdx.x] = R(0);
}

// ---------------------------------------------------------------------------------------------------
// Host side.
bool valid_dtype(DType d) { return d == DType::f32 || d == DType::f16 || d == DType::bf16; }
int elem_bytes(DType d) { return d == DType::f32 ? 4 : 2; }
bool aligned(const void* p, std::size_t n) { return reinterpret_cast<std::uintptr_t>(p) % n == 0; }

[[noreturn]] void bad_argument(const char* fn, const std::string& what) {
  throw std::invalid_argument(std::string("fastops: sparse ") + fn + ": " + what);
}

// Sizes and dtype only: all spmm_cuda_workspace_bytes gets (its problem carries no pointers).
void validate_spmm_sizes(const SpmmProblem& p, const char* fn) {
  const Weight& w = p.w;
  if (!valid_dtype(w.dtype)) bad_argument(fn, "unsupported dtype " + std::to_string(int(w.dtype)));
  if (w.m < 0 || w.k < 0 || p.n < 0) bad_argument(fn, "negative size");
  if (w.k > kMaxCols) bad_argument(fn, "k=" + std::to_string(w.k) + " exceeds " + std::to_string(kMaxCols));
}

void validate_spmm(const SpmmProblem& p) {
  const char* fn = "spmm_cuda";
  const Weight& w = p.w;
  validate_spmm_sizes(p, fn);
  if (p.n == 0 || w.m == 0) return;
  const std::size_t esz = std::size_t(elem_bytes(w.dtype));
  if (p.y == nullptr || !aligned(p.y, esz)) bad_argument(fn, "y must be a non-null, element-aligned pointer");
  if (p.bias != nullptr && !aligned(p.bias, esz)) bad_argument(fn, "bias must be element-aligned");
  if (p.n > 1 && p.y_stride < w.m) bad_argument(fn, "y_stride must be >= m");
  if (w.strip_offsets == nullptr || !aligned(w.strip_offsets, 8)) bad_argument(fn, "null or misaligned strip_offsets");
  if (w.k == 0) return;
  if (p.x == nullptr || !aligned(p.x, esz)) bad_argument(fn, "x must be a non-null, element-aligned pointer");
  if (p.n > 1 && p.x_stride < w.k) bad_argument(fn, "x_stride must be >= k");
  if (w.k > 1 && p.x_col_stride != 1) bad_argument(fn, "x must have unit column stride");
  if (w.masks == nullptr || !aligned(w.masks, 4) || w.chunk_offsets == nullptr || !aligned(w.chunk_offsets, 4))
    bad_argument(fn, "null or misaligned masks / chunk_offsets");
  if (w.values == nullptr || !aligned(w.values, esz))
    bad_argument(fn, "values must be a non-null, element-aligned pointer");
}

SpmmPlan spmm_plan(const SpmmProblem& p) {
  return make_spmm_plan(p.w.m, p.w.k, p.n, current_device_sm_count(), elem_bytes(p.w.dtype));
}

template <DType D, int NT>
void launch_spmm(const SpmmArgs& args, cudaStream_t stream) {
  const char* name = D == DType::f32 ? "spmm_simt_kernel" : "spmm_mma_kernel";
  const auto kernel = spmm_kernel<D, NT>;
  constexpr int smem = smem_bytes(kElemBytes<D>, NT);
  if (smem > dynamic_smem_limit(reinterpret_cast<const void*>(kernel), name))
    throw std::runtime_error(std::string("fastops: sparse ") + name + " needs " + std::to_string(smem) +
                             " bytes of shared memory per block, more than this GPU has");
  kernel<<<unsigned(args.plan.tiles), kThreads, smem, stream>>>(args);
  check_launch(name);
}

template <DType D>
void run_spmm(const SpmmArgs& args, int sms, cudaStream_t stream) {
  switch (args.plan.ntiles) {
    case 1:
      launch_spmm<D, 1>(args, stream);
      break;
    case 2:
      launch_spmm<D, 2>(args, stream);
      break;
    default:
      if constexpr (D == DType::f32)
        throw std::logic_error("fastops: sparse spmm_cuda: fp32 plan with more than 2 n8 tiles");
      else
        launch_spmm<D, 4>(args, stream);
  }
  if (args.plan.splits > 1) {
    const int64_t blocks = min64(ceil_div(args.n * args.m, kReduceThreads), int64_t(sms) * 8);
    spmm_splitk_reduce_kernel<D><<<unsigned(max64(blocks, 1)), kReduceThreads, 0, stream>>>(args);
    check_launch("spmm_splitk_reduce_kernel");
  }
}

void validate_pack(const PackProblem& p, const char* fn) {
  if (!valid_dtype(p.dtype)) bad_argument(fn, "unsupported dtype " + std::to_string(int(p.dtype)));
  if (p.m < 0 || p.k < 0) bad_argument(fn, "negative size");
  if (p.k > kMaxCols) bad_argument(fn, "k=" + std::to_string(p.k) + " exceeds " + std::to_string(kMaxCols));
  if (p.m > 0 && p.k > 0 && (p.w == nullptr || !aligned(p.w, std::size_t(elem_bytes(p.dtype)))))
    bad_argument(fn, "w must be a non-null, element-aligned pointer");
}

PackArgs pack_args(const PackProblem& p) {
  PackArgs a{};
  a.w = p.w;
  a.m = p.m;
  a.k = p.k;
  a.stride_r = p.stride_r;
  a.stride_c = p.stride_c;
  a.strips = num_strips(p.m);
  a.chunks = chunks_per_strip(p.k);
  a.units = units_per_strip(p.k);
  return a;
}

unsigned pack_blocks(const PackArgs& a) {
  return unsigned(min64(max64(ceil_div(a.strips * a.chunks, kPackWarps), 1), kMaxGridX));
}

}  // namespace

std::size_t spmm_cuda_workspace_bytes(const SpmmProblem& p) {
  validate_spmm_sizes(p, "spmm_cuda_workspace_bytes");
  if (p.n == 0 || p.w.m == 0) return 0;
  return std::size_t(workspace_bytes(spmm_plan(p), p.n, p.w.m));
}

void spmm_cuda(const SpmmProblem& p, void* workspace, std::uintptr_t stream_handle) {
  validate_spmm(p);
  if (p.n == 0 || p.w.m == 0) return;
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const int sms = current_device_sm_count();
  SpmmArgs a{};
  a.plan = make_spmm_plan(p.w.m, p.w.k, p.n, sms, elem_bytes(p.w.dtype));
  if (!plan_launchable(a.plan)) bad_argument("spmm_cuda", "n * m too large for one launch");
  if (workspace_bytes(a.plan, p.n, p.w.m) > 0 && (workspace == nullptr || !aligned(workspace, 4)))
    bad_argument("spmm_cuda", "needs a workspace of spmm_cuda_workspace_bytes() bytes");
  a.masks = p.w.masks;
  a.values = p.w.values;
  a.values_addr = uint64_t(reinterpret_cast<std::uintptr_t>(p.w.values));
  a.strip_offsets = p.w.strip_offsets;
  a.chunk_offsets = p.w.chunk_offsets;
  a.x = p.x;
  a.y = p.y;
  a.bias = p.bias;
  a.workspace = static_cast<float*>(workspace);
  a.m = p.w.m;
  a.k = p.w.k;
  a.n = p.n;
  a.x_stride = p.x_stride;
  a.y_stride = p.y_stride;
  a.units = units_per_strip(p.w.k);
  const int esz = elem_bytes(p.w.dtype);
  a.x_vec = x_vec_ok(uint64_t(reinterpret_cast<std::uintptr_t>(p.x)), p.x_stride, p.n, esz);
  a.values_vec = aligned(p.w.values, kGranuleBytes);
  with_dtype(p.w.dtype, [&](auto d) { run_spmm<decltype(d)::value>(a, sms, stream); });
}

void pack_count_cuda(const PackProblem& p, int32_t* chunk_counts, std::uintptr_t stream_handle) {
  validate_pack(p, "pack_count_cuda");
  PackArgs a = pack_args(p);
  if (a.strips * a.chunks == 0) return;
  if (chunk_counts == nullptr) bad_argument("pack_count_cuda", "null chunk_counts");
  a.counts = chunk_counts;
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (p.dtype == DType::f32)
    sparse_pack_count_kernel<uint32_t><<<pack_blocks(a), kPackThreads, 0, stream>>>(a);
  else
    sparse_pack_count_kernel<uint16_t><<<pack_blocks(a), kPackThreads, 0, stream>>>(a);
  check_launch("sparse_pack_count_kernel");
}

void pack_fill_cuda(const PackProblem& p, const Weight& out, uint32_t* masks, void* values,
                    std::uintptr_t stream_handle) {
  const char* fn = "pack_fill_cuda";
  validate_pack(p, fn);
  PackArgs a = pack_args(p);
  if (values == nullptr || !aligned(values, std::size_t(elem_bytes(p.dtype))))
    bad_argument(fn, "values must be a non-null, element-aligned pointer");
  if (out.strip_offsets == nullptr) bad_argument(fn, "null out.strip_offsets");
  if (a.strips * a.chunks > 0 && (masks == nullptr || out.chunk_offsets == nullptr))
    bad_argument(fn, "null masks / out.chunk_offsets");
  a.strip_offsets = out.strip_offsets;
  a.chunk_offsets = out.chunk_offsets;
  a.masks = masks;
  a.values = values;
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  if (p.dtype == DType::f32)
    sparse_pack_fill_kernel<uint32_t><<<pack_blocks(a), kPackThreads, 0, stream>>>(a);
  else
    sparse_pack_fill_kernel<uint16_t><<<pack_blocks(a), kPackThreads, 0, stream>>>(a);
  check_launch("sparse_pack_fill_kernel");
}

}  // namespace sparse
}  // namespace fastops
