// fastops::trie - constrained decoding over a prefix tree of valid token sequences, flattened into
// CSR arrays (STATIC, "Vectorizing the Trie"). Framework-free: pointers, sizes, a stream.
//
// Index layout ("csr-bfs", version 1):
//   Nodes are numbered breadth-first: the root is node 0, then every node of depth 1, then depth 2, ...;
//   within a depth, nodes follow the lexicographic order of their prefixes. Every node but the root has
//   exactly one incoming edge, so edges and nodes share numbering: edge e leads to node e + 1.
//   indptr[u] .. indptr[u + 1] (int32, num_nodes + 1 entries) are the edges out of node u, so node u's
//   children are the nodes indptr[u] + 1 .. indptr[u + 1]; tokens[e] (int32, num_nodes - 1 entries) is
//   the model token on edge e (codebook token + level offset), ascending within a node.
//   A node without children ends exactly one item (items are deduplicated; with eos_token_id every item
//   ends with an EOS edge). Node id -1 means "no node" (an illegal token was taken): its row allows nothing.
//   Bytes: 8 per node (4 indptr + 4 token) <= 8 per item per level.
// Subsets: `alive` (uint8, one per node, 1 = at least one valid item below) restricts every operation
//   to alive children. Rows r use alive + (r / rows_per_mask) * num_nodes (one mask per request).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <utility>
#include <vector>

#include "common/dtype.h"

namespace fastops {
namespace trie {

struct Index {
  const int32_t* indptr = nullptr;  // [num_nodes + 1]
  const int32_t* tokens = nullptr;  // [num_nodes - 1]
  int64_t num_nodes = 0;
};

struct Subset {
  const uint8_t* alive = nullptr;  // nullptr: every item is valid; else [num_masks][num_nodes]
  int64_t rows_per_mask = 1;       // rows r use mask r / rows_per_mask
};

// Build (CPU): `seqs` holds N sequences as CSR over int32 or int64 tokens (seq i = seqs[offsets[i] ..
// offsets[i+1])), already mapped to model tokens, each of length >= 1; offsets run from 0 to the length of
// seqs. A token outside [0, token_limit) (token_limit <= 2^31 - 1) is a ValueError naming the first one,
// "sequences[row][col] = v is outside [0, token_limit)". Sorts them lexicographically (a shorter
// sequence before its extensions), then fills `out`. Duplicates are removed when `dedupe` (the first
// input row is kept); otherwise, and for a sequence that is a proper prefix of another, ValueError naming
// the (original) rows. More than `max_nodes` nodes is a ValueError (int32 node ids).
//
// The arrays are sized without being zeroed: the build writes every element from the thread that
// computes it, so the page faults and first writes of ~60 MB (1e6 items x 8 levels) run in parallel
// instead of in a serial fill.
template <class T>
struct DefaultInitAllocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = DefaultInitAllocator<U>;
  };
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;  // default-initialization: no value is written
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
template <class T>
using UninitVector = std::vector<T, DefaultInitAllocator<T>>;

struct BuildResult {
  UninitVector<int32_t> indptr;        // [num_nodes + 1]
  UninitVector<int32_t> tokens;        // [num_nodes - 1]
  UninitVector<int64_t> perm;          // [N]: sorted position of input row i, -1 for a dropped duplicate
  UninitVector<int64_t> depth_starts;  // [max_len + 2]: nodes of depth d are depth_starts[d] .. depth_starts[d + 1]
  int64_t num_items = 0;             // after dedupe
  int64_t max_degree = 0;
};
constexpr int64_t kMaxNodes = INT32_MAX;
template <class T>  // int32_t or int64_t
void build_cpu(const T* seqs, const int64_t* offsets, int64_t n, int64_t token_limit, bool dedupe, int nthreads,
               BuildResult* out, int64_t max_nodes = kMaxNodes);

// Per-step operations; node_ids[R] (int32). CPU versions parallel over rows with nthreads.
// mask: logits[r, t] = -inf for every token t not allowed at node_ids[r]; in place, rows strided.
void mask_cpu(const Index& ix, const Subset& s, const int32_t* node_ids, int64_t rows, void* logits, DType dtype,
              int64_t vocab, int64_t row_stride, int nthreads);
// bitmask: out[r, w] bit b set when token 32 w + b is allowed (int32 words, ceil(vocab / 32) per row).
void bitmask_cpu(const Index& ix, const Subset& s, const int32_t* node_ids, int64_t rows, int64_t vocab,
                 int32_t* out, int nthreads);
// candidates: the k allowed children with the largest score per row, descending (ties: smaller token
// first); score = logits[r, t], or logits[r, t] - logsumexp(logits[r, :]) when log_softmax. Padding:
// score -inf, token -1, next -1. scores are float32.
void candidates_cpu(const Index& ix, const Subset& s, const int32_t* node_ids, int64_t rows, const void* logits,
                    DType dtype, int64_t vocab, int64_t row_stride, bool log_softmax, int64_t k, float* scores,
                    int32_t* tokens, int32_t* next_nodes, int nthreads);
// advance: next[r] = child of node_ids[r] along token tokens[r] (alive), or -1.
void advance_cpu(const Index& ix, const Subset& s, const int32_t* node_ids, const int32_t* tokens, int64_t rows,
                 int32_t* next_nodes, int nthreads);

// CUDA versions: same semantics, on `stream`, no host synchronization.
void mask_cuda(const Index& ix, const Subset& s, const int32_t* node_ids, int64_t rows, void* logits, DType dtype,
               int64_t vocab, int64_t row_stride, std::uintptr_t stream);
void bitmask_cuda(const Index& ix, const Subset& s, const int32_t* node_ids, int64_t rows, int64_t vocab,
                  int32_t* out, std::uintptr_t stream);
void candidates_cuda(const Index& ix, const Subset& s, const int32_t* node_ids, int64_t rows, const void* logits,
                     DType dtype, int64_t vocab, int64_t row_stride, bool log_softmax, int64_t k, float* scores,
                     int32_t* tokens, int32_t* next_nodes, std::uintptr_t stream);
void advance_cuda(const Index& ix, const Subset& s, const int32_t* node_ids, const int32_t* tokens, int64_t rows,
                  int32_t* next_nodes, std::uintptr_t stream);

}  // namespace trie
}  // namespace fastops
