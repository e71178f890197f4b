// CUDA per-step trie operations (trie.h): mask, bitmask, candidates, advance.
//
//  * trie_mask_kernel<elem bytes> (grid rows x row chunks of 32 KB, 256 threads): the CTA marks its
//    chunk's allowed tokens in a shared bitmap (binary search of the chunk's token range among the node's
//    children, shared atomicOr), then writes -inf over the chunk with 16-byte stores; a vector holding an
//    allowed element is read and blended by the thread that writes it, so no value is ever saved across
//    threads. Chunks without children skip the bitmap and its barriers. The unaligned head and the tail
//    of a strided row are written with scalar stores (chunk geometry: trie_cuda_layout.h).
//  * trie_bitmask_kernel (grid rows x chunks of 2048 words, 256 threads): the same marking, into shared
//    words, then the chunk's words go out with 16-byte stores; no global atomics.
//  * trie_candidates_kernel<dtype> (one CTA of up to 4 warps per row): optional row logsumexp (16-byte
//    loads, block reduction), then each warp keeps a top-k list of 64-bit keys (score order bits, ~edge)
//    in shared memory and merges 32 candidates at a time (bitonic sort + merge by ranks) when any beats
//    the k-th key; warp 0 merges the other warps' lists and writes the row.
//  * trie_advance_kernel (one thread per row): binary search of the token among the node's children.
// All kernels take node ids outside [0, num_nodes) as "no node" and never read or write out of bounds.
// Index math lives in trie_cuda_layout.h (tested on the CPU).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "common/cuda_utils.cuh"
#include "common/errors.h"
#include "trie/trie.h"
#include "trie/trie_cuda_layout.h"

namespace fastops {
namespace trie {
namespace {

using namespace cuda_layout;

constexpr int kFillThreads = 256;
constexpr int kMaskChunkBytes = 32768;     // per CTA: 8 16-byte stores per thread
constexpr int kBitmaskChunkWords = 2048;   // per CTA: 2 16-byte stores per thread
constexpr int kCandWarpsMax = 4;
constexpr int kCandLoadsAhead = 4;  // candidate batches whose loads are in flight together
constexpr int kAdvanceThreads = 256;
constexpr int kMaxGridY = 65535;
constexpr unsigned kFullWarp = 0xffffffffu;

// What every kernel needs to find a row's children.
struct TrieView {
  const int32_t* indptr;
  const int32_t* tokens;
  const uint8_t* alive;
  int64_t num_nodes, rows_per_mask;
  __device__ __forceinline__ EdgeRange children(int32_t node) const { return child_edges(indptr, num_nodes, node); }
  __device__ __forceinline__ const uint8_t* alive_of(int64_t r) const {
    return alive_row(alive, rows_per_mask, num_nodes, r);
  }
};

// Sets bit (t - origin) of the shared `bitmap` for every alive child token t in [tok_lo, tok_hi), after
// zeroing its first `words` words. Returns false, touching nothing, when no child lies in the range. The
// result depends only on data every thread reads alike, so the barriers inside are reached uniformly.
__device__ bool mark_allowed_tokens(uint32_t* bitmap, int words, const TrieView& tv, EdgeRange kids,
                                    const uint8_t* alive, int64_t tok_lo, int64_t tok_hi, int64_t origin) {
  const EdgeRange in = edges_with_tokens_in(tv.tokens, kids, tok_lo, tok_hi);
  if (in.begin >= in.end) return false;
  for (int i = threadIdx.x; i < words; i += blockDim.x) bitmap[i] = 0;
  __syncthreads();
  for (int64_t e = in.begin + threadIdx.x; e < in.end; e += blockDim.x) {
    const int64_t t = tv.tokens[e];
    if (t >= tok_lo && t < tok_hi && edge_alive(alive, e)) {  // range re-checked: never trust the sort order
      const int64_t bit = t - origin;
      atomicOr(&bitmap[bit / 32], 1u << (bit % 32));
    }
  }
  __syncthreads();
  return true;
}

// ---------------------------------------------------------------------------------------------------
// mask
struct MaskArgs {
  TrieView tv;
  const int32_t* node_ids;
  void* logits;
  int64_t vocab, row_stride;
  uint32_t ninf_word;  // -inf of the dtype, repeated to fill 32 bits
};

__device__ __forceinline__ uint32_t blend(uint32_t old, uint32_t fill, uint32_t keep) {
  return (old & keep) | (fill & ~keep);
}

template <int kElemBytes>
__global__ void __launch_bounds__(kFillThreads) trie_mask_kernel(MaskArgs a) {
  using Unit = std::conditional_t<kElemBytes == 4, uint32_t, uint16_t>;
  constexpr int kVec = kVecBytes / kElemBytes;
  constexpr int64_t kChunk = kMaskChunkBytes / kElemBytes;
  __shared__ uint32_t bitmap[mask_bitmap_words(kChunk)];

  const int64_t r = blockIdx.x;
  unsigned char* row = static_cast<unsigned char*>(a.logits) + r * a.row_stride * kElemBytes;
  const RowChunk ch =
      row_chunk(a.vocab, head_units(reinterpret_cast<uintptr_t>(row), kElemBytes, a.vocab), kChunk, blockIdx.y);
  if (ch.begin >= ch.end) return;
  const int64_t origin = mask_bitmap_origin(ch);
  const bool any = mark_allowed_tokens(bitmap, int((ch.end - origin + 31) / 32), a.tv, a.tv.children(a.node_ids[r]),
                                       a.tv.alive_of(r), ch.begin, ch.end, origin);

  const uint32_t fill = a.ninf_word;
  uint4* vecs = reinterpret_cast<uint4*>(row + ch.aligned * kElemBytes);
  const int nvec = int(chunk_vectors(ch, kVec));
  for (int j = threadIdx.x; j < nvec; j += kFillThreads) {
    const uint32_t keep = any ? mask_vector_bits(bitmap, j, kVec) : 0u;
    if (keep == (1u << kVec) - 1u) continue;
    uint4 v = make_uint4(fill, fill, fill, fill);
    if (keep) {  // some elements allowed: keep their values
      const uint4 old = vecs[j];
      v.x = blend(old.x, fill, keep_word_mask(keep, 0, kElemBytes));
      v.y = blend(old.y, fill, keep_word_mask(keep, 1, kElemBytes));
      v.z = blend(old.z, fill, keep_word_mask(keep, 2, kElemBytes));
      v.w = blend(old.w, fill, keep_word_mask(keep, 3, kElemBytes));
    }
    vecs[j] = v;
  }
  Unit* units = reinterpret_cast<Unit*>(row);
  const int nscalar = int(chunk_scalars(ch, kVec));
  for (int i = threadIdx.x; i < nscalar; i += kFillThreads) {
    const int64_t u = chunk_scalar_unit(ch, kVec, i);
    if (!(any && bitmap_bit(bitmap, u - origin))) units[u] = Unit(fill);
  }
}

// ---------------------------------------------------------------------------------------------------
// bitmask
struct BitmaskArgs {
  TrieView tv;
  const int32_t* node_ids;
  uint32_t* out;
  int64_t vocab, words;  // words = ceil(vocab / 32) per row
};

__global__ void __launch_bounds__(kFillThreads) trie_bitmask_kernel(BitmaskArgs a) {
  constexpr int kVec = kVecBytes / 4;
  __shared__ __align__(16) uint32_t bitmap[kBitmaskPadWords + kBitmaskChunkWords];

  const int64_t r = blockIdx.x;
  uint32_t* row = a.out + r * a.words;
  const RowChunk ch =
      row_chunk(a.words, head_units(reinterpret_cast<uintptr_t>(row), 4, a.words), kBitmaskChunkWords, blockIdx.y);
  if (ch.begin >= ch.end) return;
  const bool any = mark_allowed_tokens(bitmap, int(bitmask_shared_word(ch, ch.end)), a.tv,
                                       a.tv.children(a.node_ids[r]), a.tv.alive_of(r), 32 * ch.begin,
                                       min(a.vocab, 32 * ch.end), bitmask_bitmap_origin(ch));

  uint4* vecs = reinterpret_cast<uint4*>(row + ch.aligned);
  const uint4* shared_vecs = reinterpret_cast<const uint4*>(bitmap + kBitmaskPadWords);
  const int nvec = int(chunk_vectors(ch, kVec));
  for (int j = threadIdx.x; j < nvec; j += kFillThreads) vecs[j] = any ? shared_vecs[j] : make_uint4(0, 0, 0, 0);
  const int nscalar = int(chunk_scalars(ch, kVec));
  for (int i = threadIdx.x; i < nscalar; i += kFillThreads) {
    const int64_t u = chunk_scalar_unit(ch, kVec, i);
    row[u] = any ? bitmap[bitmask_shared_word(ch, u)] : 0u;
  }
}

// ---------------------------------------------------------------------------------------------------
// candidates
template <DType D>
constexpr int elem_bytes() {
  return D == DType::f32 ? 4 : 2;
}
// One element from its raw bits (the low 16 bits for fp16/bf16).
template <DType D>
__device__ __forceinline__ float elem_to_float(uint32_t bits) {
  if constexpr (D == DType::f32) return __uint_as_float(bits);
  else if constexpr (D == DType::bf16) return __uint_as_float(bits << 16);
  else return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
}
template <DType D>
__device__ __forceinline__ float load_elem(const unsigned char* row, int64_t i) {
  if constexpr (D == DType::f32) return elem_to_float<D>(__ldg(reinterpret_cast<const unsigned int*>(row) + i));
  else return elem_to_float<D>(__ldg(reinterpret_cast<const unsigned short*>(row) + i));
}
template <DType D>
__device__ __forceinline__ void vec_to_floats(const uint4& v, float* out) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (elem_bytes<D>() == 4) {
      out[i] = elem_to_float<D>(w[i]);
    } else {
      out[2 * i] = elem_to_float<D>(w[i] & 0xffffu);
      out[2 * i + 1] = elem_to_float<D>(w[i] >> 16);
    }
  }
}

// logsumexp over the whole row, computed by the whole CTA; every thread gets the same value.
template <DType D>
__device__ float row_logsumexp(const unsigned char* row, int64_t vocab) {
  constexpr int kBytes = elem_bytes<D>(), kVec = kVecBytes / kBytes;
  __shared__ float warp_max[kCandWarpsMax], warp_sum[kCandWarpsMax];
  const RowChunk all = whole_row(vocab, head_units(reinterpret_cast<uintptr_t>(row), kBytes, vocab));
  const uint4* vecs = reinterpret_cast<const uint4*>(row + all.aligned * kBytes);
  const int64_t nvec = chunk_vectors(all, kVec);
  LseAcc acc;
  // kCandLoadsAhead independent 16-byte loads per thread before any math: enough bytes in flight.
  for (int64_t j0 = threadIdx.x; j0 < nvec; j0 += kCandLoadsAhead * int64_t(blockDim.x)) {
    uint4 v[kCandLoadsAhead];
#pragma unroll
    for (int u = 0; u < kCandLoadsAhead; ++u) {
      const int64_t j = j0 + u * int64_t(blockDim.x);
      if (j < nvec) v[u] = __ldg(vecs + j);
    }
#pragma unroll
    for (int u = 0; u < kCandLoadsAhead; ++u) {
      if (j0 + u * int64_t(blockDim.x) >= nvec) break;
      float x[kVec];
      vec_to_floats<D>(v[u], x);
      acc.add(x, kVec);
    }
  }
  for (int64_t i = threadIdx.x; i < chunk_scalars(all, kVec); i += blockDim.x) {
    const float x = load_elem<D>(row, chunk_scalar_unit(all, kVec, i));
    acc.add(&x, 1);
  }
  // Butterfly: both partners compute the same (commutative) merge, so every lane ends equal.
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float om = __shfl_xor_sync(kFullWarp, acc.m, off), os = __shfl_xor_sync(kFullWarp, acc.s, off);
    acc.merge(om, os);
  }
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = acc.m, warp_sum[threadIdx.x / 32] = acc.s;
  __syncthreads();
  LseAcc total;
  for (int w = 0; w < int(blockDim.x / 32); ++w) total.merge(warp_max[w], warp_sum[w]);
  return total.value();
}

// Sorts one key per lane into descending lane order.
__device__ __forceinline__ uint64_t warp_sort_desc(uint64_t key, int lane) {
#pragma unroll
  for (int size = 2; size <= 32; size <<= 1)
#pragma unroll
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      const uint64_t other = __shfl_xor_sync(kFullWarp, key, stride);
      if (bitonic_keeps_max(lane, size, stride) == (other > key)) key = other;
    }
  return key;
}

// A warp's top-k list in shared memory: `cur` holds the k best keys so far, descending, 0 = empty slot;
// a merge writes the new list into `spare` and swaps. `batch` holds the 32 keys being merged.
struct WarpTopK {
  uint64_t* cur;
  uint64_t* spare;
  uint64_t* batch;
  int k;

  // Offers one key per lane (0 = none); `sorted`: the keys are already descending over the lanes.
  // Called by all 32 lanes.
  __device__ void offer(uint64_t key, bool sorted, int lane) {
    if (key <= cur[k - 1]) key = 0;  // not better than the k-th: most batches stop at the ballot
    const unsigned wanted = __ballot_sync(kFullWarp, key != 0);
    if (wanted == 0) return;
    const int n = __popc(wanted);
    if (!sorted) {
      if (n == 1) {
        const uint64_t only = __shfl_sync(kFullWarp, key, __ffs(wanted) - 1);
        key = lane == 0 ? only : 0;
      } else {
        key = warp_sort_desc(key, lane);
      }
    }
    batch[lane] = key;  // keys 0 .. n-1 are the candidates, descending
    __syncwarp();
    // Merge by ranks: keys are unique, so each survivor's rank in the union is its own index plus the
    // number of greater keys in the other list. Empty slots (0) of `cur` land after every candidate.
    for (int j = lane; j < k; j += 32) {
      const uint64_t v = cur[j];
      const int rank = j + count_greater(batch, n, v);
      if (rank < k) spare[rank] = v;
    }
    if (key != 0) {
      const int rank = lane + count_greater(cur, k, key);
      if (rank < k) spare[rank] = key;
    }
    __syncwarp();
    uint64_t* t = cur;
    cur = spare;
    spare = t;
  }
};

struct CandArgs {
  TrieView tv;
  const int32_t* node_ids;
  const void* logits;
  int64_t vocab, row_stride;
  bool log_softmax;
  int k;
  float* scores;
  int32_t* tokens;
  int32_t* next_nodes;
};

template <DType D>
__device__ __forceinline__ uint64_t candidate_key(const CandArgs& a, const unsigned char* row, const uint8_t* alive,
                                                  int64_t e, int64_t end, float lse) {
  if (e >= end || !edge_alive(alive, e)) return 0;
  const int64_t t = a.tv.tokens[e];
  if (t < 0 || t >= a.vocab) return 0;
  return topk_key(load_elem<D>(row, t) - lse, e);
}

// Dynamic shared memory per warp: 2 lists of k keys, the 32-key merge batch and the staged candidates.
__host__ __device__ constexpr int64_t cand_warp_keys(int64_t k) { return 2 * k + 32 * (1 + kCandLoadsAhead); }

template <DType D>
__global__ void __launch_bounds__(kCandWarpsMax * 32) trie_candidates_kernel(CandArgs a) {
  extern __shared__ uint64_t cand_smem[];
  __shared__ uint64_t* warp_lists[kCandWarpsMax];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  const int64_t r = blockIdx.x;
  const unsigned char* row = static_cast<const unsigned char*>(a.logits) + r * a.row_stride * elem_bytes<D>();
  const float lse = a.log_softmax ? row_logsumexp<D>(row, a.vocab) : 0.f;

  uint64_t* mine = cand_smem + warp * cand_warp_keys(a.k);
  WarpTopK top{mine, mine + a.k, mine + 2 * a.k, a.k};
  uint64_t* staged = mine + 2 * a.k + 32;  // lane l's candidates at l, 32 + l, ...: read back by lane l only
  for (int i = lane; i < a.k; i += 32) top.cur[i] = 0;
  __syncwarp();

  // Each warp takes a contiguous share of the children (coalesced token and alive reads).
  constexpr int kStep = 32 * kCandLoadsAhead;
  const EdgeRange kids = a.tv.children(a.node_ids[r]);
  const int64_t degree = kids.end - kids.begin;
  const int64_t share = ((degree + nwarps - 1) / nwarps + kStep - 1) / kStep * kStep;
  const int64_t wb = kids.begin + min(degree, warp * share), we = min(kids.end, wb + share);
  const uint8_t* alive = a.tv.alive_of(r);
  for (int64_t base = wb; base < we; base += kStep) {
    uint64_t keys[kCandLoadsAhead];
#pragma unroll
    for (int b = 0; b < kCandLoadsAhead; ++b) keys[b] = candidate_key<D>(a, row, alive, base + 32 * b + lane, we, lse);
#pragma unroll
    for (int b = 0; b < kCandLoadsAhead; ++b) staged[32 * b + lane] = keys[b];
#pragma unroll 1  // one copy of the merge code
    for (int b = 0; b < kCandLoadsAhead; ++b) top.offer(staged[32 * b + lane], false, lane);
  }
  if (lane == 0) warp_lists[warp] = top.cur;
  __syncthreads();
  if (warp != 0) return;

  for (int w = 1; w < nwarps; ++w) {
    const uint64_t* list = warp_lists[w];
    for (int s = 0; s < a.k; s += 32) {
      if (list[s] <= top.cur[a.k - 1]) break;  // descending: nothing further down can qualify
      top.offer(s + lane < a.k ? list[s + lane] : 0, true, lane);
    }
  }
  const int64_t out0 = r * a.k;
  for (int i = lane; i < a.k; i += 32) {
    const uint64_t key = top.cur[i];
    const int64_t e = topk_key_edge(key);
    a.scores[out0 + i] = key ? load_elem<D>(row, a.tv.tokens[e]) - lse : -INFINITY;  // as keyed (NaN kept)
    a.tokens[out0 + i] = key ? a.tv.tokens[e] : -1;
    a.next_nodes[out0 + i] = key ? int32_t(e + 1) : -1;
  }
}

// ---------------------------------------------------------------------------------------------------
// advance
__global__ void __launch_bounds__(kAdvanceThreads)
    trie_advance_kernel(TrieView tv, const int32_t* node_ids, const int32_t* step_tokens, int64_t rows,
                        int32_t* next_nodes) {
  const int64_t r = int64_t(blockIdx.x) * kAdvanceThreads + threadIdx.x;
  if (r >= rows) return;
  const EdgeRange kids = tv.children(node_ids[r]);
  const int32_t t = step_tokens[r];
  const int64_t e = lower_bound_token(tv.tokens, kids.begin, kids.end, t);
  next_nodes[r] = (e < kids.end && tv.tokens[e] == t && edge_alive(tv.alive_of(r), e)) ? int32_t(e + 1) : -1;
}

// ---------------------------------------------------------------------------------------------------
// Host side
TrieView make_view(const Index& ix, const Subset& s, const char* op) {
  FASTOPS_CHECK_VALUE(!s.alive || s.rows_per_mask >= 1,
                      std::string("trie ") + op + ": rows_per_mask must be >= 1 with a subset");
  return TrieView{ix.indptr, ix.tokens, s.alive, ix.num_nodes, s.rows_per_mask};
}

int dtype_bytes(DType dtype) { return dtype == DType::f32 ? 4 : 2; }

// Grid (rows, chunks): rows on x (up to 2^31 - 1), chunks on y.
dim3 row_chunk_grid(int64_t rows, int64_t chunks, const char* op) {
  FASTOPS_CHECK_VALUE(rows <= INT32_MAX, std::string("trie ") + op + ": too many rows for one launch");
  FASTOPS_CHECK_VALUE(chunks <= kMaxGridY, std::string("trie ") + op + ": vocab too large");
  return dim3(unsigned(rows), unsigned(chunks));
}

void check_elem_aligned(const void* p, int bytes, const char* op) {
  FASTOPS_CHECK_VALUE(reinterpret_cast<uintptr_t>(p) % bytes == 0,
                      std::string("trie ") + op + ": pointer not aligned to its element size");
}

}  // namespace

void mask_cuda(const Index& ix, const Subset& s, const int32_t* node_ids, int64_t rows, void* logits, DType dtype,
               int64_t vocab, int64_t row_stride, std::uintptr_t stream_handle) {
  const TrieView tv = make_view(ix, s, "mask_cuda");
  if (rows == 0 || vocab == 0) return;
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const int bytes = dtype_bytes(dtype);
  check_elem_aligned(logits, bytes, "mask_cuda");
  const uint32_t ninf = dtype == DType::f32 ? 0xff800000u : dtype == DType::f16 ? 0xfc00fc00u : 0xff80ff80u;
  const MaskArgs args{tv, node_ids, logits, vocab, row_stride, ninf};
  const dim3 grid = row_chunk_grid(rows, max_row_chunks(vocab, kMaskChunkBytes / bytes), "mask_cuda");
  if (bytes == 4) {
    trie_mask_kernel<4><<<grid, kFillThreads, 0, stream>>>(args);
    check_launch("trie_mask_kernel<4>");
  } else {
    trie_mask_kernel<2><<<grid, kFillThreads, 0, stream>>>(args);
    check_launch("trie_mask_kernel<2>");
  }
}

void bitmask_cuda(const Index& ix, const Subset& s, const int32_t* node_ids, int64_t rows, int64_t vocab,
                  int32_t* out, std::uintptr_t stream_handle) {
  const TrieView tv = make_view(ix, s, "bitmask_cuda");
  if (rows == 0 || vocab == 0) return;
  check_elem_aligned(out, 4, "bitmask_cuda");
  const int64_t words = (vocab + 31) / 32;
  const BitmaskArgs args{tv, node_ids, reinterpret_cast<uint32_t*>(out), vocab, words};
  const dim3 grid = row_chunk_grid(rows, max_row_chunks(words, kBitmaskChunkWords), "bitmask_cuda");
  trie_bitmask_kernel<<<grid, kFillThreads, 0, reinterpret_cast<cudaStream_t>(stream_handle)>>>(args);
  check_launch("trie_bitmask_kernel");
}

void candidates_cuda(const Index& ix, const Subset& s, const int32_t* node_ids, int64_t rows, const void* logits,
                     DType dtype, int64_t vocab, int64_t row_stride, bool log_softmax, int64_t k, float* scores,
                     int32_t* tokens, int32_t* next_nodes, std::uintptr_t stream_handle) {
  const TrieView tv = make_view(ix, s, "candidates_cuda");
  if (rows == 0 || k <= 0) return;
  FASTOPS_CHECK_VALUE(rows <= INT32_MAX, "trie candidates_cuda: too many rows for one launch");
  check_elem_aligned(logits, dtype_bytes(dtype), "candidates_cuda");
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);

  const CandArgs args{tv, node_ids, logits, vocab, row_stride, log_softmax, int(k), scores, tokens, next_nodes};
  auto launch = [&](auto kernel, const char* name) {
    // The per-warp lists live in shared memory: fewer warps for large k, an error past the device's limit.
    const int64_t limit = dynamic_smem_limit(reinterpret_cast<const void*>(kernel), name);
    const int64_t warp_bytes = cand_warp_keys(k) * int64_t(sizeof(uint64_t));
    const int64_t warps = std::min<int64_t>(kCandWarpsMax, limit / warp_bytes);
    FASTOPS_CHECK_VALUE(warps >= 1, "trie candidates_cuda: k = " + std::to_string(k) +
                                        " exceeds this GPU's limit of " + std::to_string((limit / 8 - cand_warp_keys(0)) / 2));
    const int smem = int(warps * warp_bytes);
    kernel<<<unsigned(rows), unsigned(warps * 32), smem, stream>>>(args);
    check_launch(name);
  };
  switch (dtype) {
    case DType::f32: launch(trie_candidates_kernel<DType::f32>, "trie_candidates_kernel<f32>"); break;
    case DType::f16: launch(trie_candidates_kernel<DType::f16>, "trie_candidates_kernel<f16>"); break;
    case DType::bf16: launch(trie_candidates_kernel<DType::bf16>, "trie_candidates_kernel<bf16>"); break;
  }
}

void advance_cuda(const Index& ix, const Subset& s, const int32_t* node_ids, const int32_t* tokens, int64_t rows,
                  int32_t* next_nodes, std::uintptr_t stream_handle) {
  const TrieView tv = make_view(ix, s, "advance_cuda");
  if (rows == 0) return;
  const int64_t blocks = (rows + kAdvanceThreads - 1) / kAdvanceThreads;
  FASTOPS_CHECK_VALUE(blocks <= INT32_MAX, "trie advance_cuda: too many rows for one launch");
  trie_advance_kernel<<<unsigned(blocks), kAdvanceThreads, 0, reinterpret_cast<cudaStream_t>(stream_handle)>>>(
      tv, node_ids, tokens, rows, next_nodes);
  check_launch("trie_advance_kernel");
}

}  // namespace trie
}  // namespace fastops
