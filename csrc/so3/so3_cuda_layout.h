// Index math of the CUDA tensor-product kernels (so3_cuda.cu), as small host/device functions so that
// so3_cuda_layout_test.cpp can run them on the CPU: the path table a block stages, the packed CG
// nonzeros and their per-block sorted copies, the mode-dependent enumeration of (u, v, w) triples by the
// thread that owns an output / x1 / x2 / weight index, the per-thread arithmetic of the channelwise
// ("fast") uvu paths and of the general paths, the slices of the visiting order a block owns and the
// segment (row) boundaries inside them, the ring of prefetched sample indices, the shared-memory layout,
// the launch plan and the shared-weight workspace.
//
// Work decomposition (so3_cuda.cu has the pipeline):
//  * A block owns a contiguous slice [p0, p1) of the visiting order (the sorted `order` when the reduction
//    is keyed and deterministic, else the identity) and walks it one sample at a time, all threads on the
//    same sample. The reduced row (forward: the output row; backward: the grad_x1 row) is accumulated in
//    shared memory. Deterministic: the block owns the rows that start in its slice, runs past p1 to
//    finish its last row, and zeroes the empty rows before each of its rows (and after the batch's last
//    row), so every row is written exactly once by plain stores. Atomic: rows are flushed with atomicAdd
//    whenever the key changes (after the caller zeroed the destination).
//  * Inside a sample, thread `tid` of `nthreads` owns the multiplicity indices o = tid + s nthreads of
//    every path: output channel w (forward, weight gradient), x1 channel u (grad_x1), x2 channel v
//    (grad_x2 of the general paths). Validated plans have blocks that coincide exactly or are disjoint, so
//    an accumulator element has one owner for every path and needs no barrier between paths.
//  * Fast paths (uvu, mul2 == 1, 2l1+1 and 2l3+1 <= 7; MACE's case): per sample and path the block
//    contracts x2 once into M[i][k] = sum_j c_ijk x2[j] (one thread per entry, the CG terms pre-sorted by
//    entry at block start), then thread u computes t[k] = sum_i M[i][k] x1[u,i] with i and k unrolled.
//    grad_x2 needs a reduction over u: one warp per path forms B[i][k] = sum_u W[u] x1[u,i] G[u,k]
//    (lane = (i, slice of u), shuffle tree over the slices), and one thread per x2 element contracts B
//    with the CG terms sorted by j.
#pragma once
#include <cstdint>

#include "common/hd.h"
#include "so3/so3.h"

// Full unrolling in device code (host compilers warn about the CUDA pragma).
#if defined(__CUDA_ARCH__)
#define FASTOPS_SO3_UNROLL _Pragma("unroll")
#else
#define FASTOPS_SO3_UNROLL
#endif

namespace fastops {
namespace so3 {
namespace cuda_layout {

constexpr int kWarpSize = 32;
constexpr int kMinThreads = 32;
constexpr int kMaxThreads = 256;
constexpr int kMaxFastDim = 7;  // fast paths: 2l1+1 and 2l3+1 at most 7 (l <= 3)
constexpr int kIndexBits = 10;  // packed CG nonzero: i, j, k in 10 bits each
constexpr int kIndexMask = (1 << kIndexBits) - 1;
constexpr int kMaxPackedDim = 1 << kIndexBits;  // largest 2l+1 the kernels take (l <= 511)
constexpr int kVecBytes = 16;                   // cp.async / vector shared loads
constexpr int kInfoChunk = 32;                  // sample indices are prefetched one warp-load at a time
constexpr int kInfoRing = 2 * kInfoChunk;
constexpr int64_t kMinSlice = 8;           // samples per block at least
constexpr int64_t kWaves = 4;              // target blocks = resident blocks x kWaves
constexpr int64_t kSharedBlocksPerSm = 2;  // shared-weight gradient: at most this many partials per SM
constexpr int64_t kSharedPartialElems = int64_t(1) << 25;  // and at most 32M partial elements (128 MB fp32)
constexpr int64_t kMaxGrid = 2147483647;

FASTOPS_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
FASTOPS_HD int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
FASTOPS_HD int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
FASTOPS_HD int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// ---------------------------------------------------------------------------------------------------
// CG nonzeros, packed (i, j, k) in one int32 (i lowest).
FASTOPS_HD int32_t pack_ijk(int i, int j, int k) {
  return int32_t(uint32_t(i) | (uint32_t(j) << kIndexBits) | (uint32_t(k) << (2 * kIndexBits)));
}
FASTOPS_HD int cg_i(int32_t p) { return int(uint32_t(p) & kIndexMask); }
FASTOPS_HD int cg_j(int32_t p) { return int((uint32_t(p) >> kIndexBits) & kIndexMask); }
FASTOPS_HD int cg_k(int32_t p) { return int((uint32_t(p) >> (2 * kIndexBits)) & kIndexMask); }

// ---------------------------------------------------------------------------------------------------
// One path as a block keeps it in shared memory (int32: every size is bounded by the shared-memory layout
// or by weight_numel < 2^31, checked on the host). fast >= 0: ordinal among the fast paths, whose M / B
// matrices start at m_off, sorted CG copies at f_off and per-j term ranges at j_off.
struct PathInfo {
  int32_t mode, d1, d2, d3, mul1, mul2, mul_out;
  int32_t x1_off, x2_off, out_off, w_off, cg_begin, cg_count;
  int32_t fast, m_off, f_off, j_off, pad;
};

FASTOPS_HD PathInfo load_path_info(const int64_t* paths, int64_t p) {
  const int64_t* f = paths + p * kPathFields;
  PathInfo P;
  P.mode = int32_t(f[kMode]);
  P.d1 = int32_t(2 * f[kL1] + 1);
  P.d2 = int32_t(2 * f[kL2] + 1);
  P.d3 = int32_t(2 * f[kL3] + 1);
  P.mul1 = int32_t(f[kMul1]);
  P.mul2 = int32_t(f[kMul2]);
  P.mul_out = int32_t(f[kMulOut]);
  P.x1_off = int32_t(f[kX1Offset]);
  P.x2_off = int32_t(f[kX2Offset]);
  P.out_off = int32_t(f[kOutOffset]);
  P.w_off = f[kWeightOffset] < 0 ? -1 : int32_t(f[kWeightOffset]);
  P.cg_begin = int32_t(f[kCgBegin]);
  P.cg_count = int32_t(f[kCgCount]);
  P.fast = -1;
  P.m_off = P.f_off = P.j_off = P.pad = 0;
  return P;
}

FASTOPS_HD bool fast_eligible(const PathInfo& P) {
  return P.mode == int32_t(Mode::uvu) && P.mul2 == 1 && P.mul_out == P.mul1 && P.d1 <= kMaxFastDim &&
         P.d3 <= kMaxFastDim;
}
// Elements per 16-byte vector; rows of M / B are padded to it so a row is whole vector loads.
FASTOPS_HD constexpr int vec_elems(int esz) { return kVecBytes / esz; }
FASTOPS_HD constexpr int m_row_stride(int d3, int vec) { return (d3 + vec - 1) / vec * vec; }
FASTOPS_HD int m_size(const PathInfo& P, int vec) { return P.d1 * m_row_stride(P.d3, vec); }

struct FastTotals {
  int64_t num_fast, m_total, f_total, j_total;
};
FASTOPS_HD bool same_totals(const FastTotals& a, const FastTotals& b) {
  return a.num_fast == b.num_fast && a.m_total == b.m_total && a.f_total == b.f_total && a.j_total == b.j_total;
}
// Marks the fast paths and lays out their tables in path order (the host runs it on its copy of the plan
// to size shared memory, thread 0 of every block on the staged copy).
FASTOPS_HD FastTotals assign_fast_offsets(PathInfo* paths, int64_t n, int vec) {
  FastTotals t{0, 0, 0, 0};
  for (int64_t p = 0; p < n; ++p) {
    PathInfo& P = paths[p];
    if (!fast_eligible(P)) {
      P.fast = -1;
      P.m_off = P.f_off = P.j_off = 0;
      continue;
    }
    P.fast = int32_t(t.num_fast++);
    P.m_off = int32_t(t.m_total);
    P.f_off = int32_t(t.f_total);
    P.j_off = int32_t(t.j_total);
    t.m_total += m_size(P, vec);
    t.f_total += P.cg_count;
    t.j_total += P.d2;
  }
  return t;
}

// ---------------------------------------------------------------------------------------------------
// Multiplicity triples. The owner of index o of a role enumerates the (u, v, w) it contributes to as
// pairs (a, b) in [0, na) x [0, nb):
//   role out (owner w)  uvw (u=a, v=b)   uvu (u=w, v=b)   uuw (u=v=a)   uuu (u=v=w)
//   role x1  (owner u)  uvw (v=a, w=b)   uvu (v=a, w=u)   uuw (v=u, w=b) uuu (v=w=u)
//   role x2  (owner v)  uvw (u=a, w=b)   uvu (u=a, w=a)   uuw (u=v, w=b) uuu (u=w=v)
// Over all owners every valid triple of the mode comes out exactly once.
enum Role : int { kRoleOut = 0, kRoleX1 = 1, kRoleX2 = 2 };
struct Triple {
  int u, v, w;
};
struct PairExtent {
  int na, nb;
};
FASTOPS_HD int role_owners(const PathInfo& P, int role) {
  return role == kRoleOut ? P.mul_out : role == kRoleX1 ? P.mul1 : P.mul2;
}
FASTOPS_HD PairExtent pair_extent(const PathInfo& P, int role) {
  const Mode m = Mode(P.mode);
  if (role == kRoleOut) {
    if (m == Mode::uvw) return {P.mul1, P.mul2};
    if (m == Mode::uvu) return {1, P.mul2};
    if (m == Mode::uuw) return {P.mul1, 1};
    return {1, 1};
  }
  if (role == kRoleX1) {
    if (m == Mode::uvw) return {P.mul2, P.mul_out};
    if (m == Mode::uvu) return {P.mul2, 1};
    if (m == Mode::uuw) return {1, P.mul_out};
    return {1, 1};
  }
  if (m == Mode::uvw) return {P.mul1, P.mul_out};
  if (m == Mode::uvu) return {P.mul1, 1};
  if (m == Mode::uuw) return {1, P.mul_out};
  return {1, 1};
}
FASTOPS_HD Triple pair_triple(const PathInfo& P, int role, int o, int a, int b) {
  const Mode m = Mode(P.mode);
  if (role == kRoleOut) {
    if (m == Mode::uvw) return {a, b, o};
    if (m == Mode::uvu) return {o, b, o};
    if (m == Mode::uuw) return {a, a, o};
    return {o, o, o};
  }
  if (role == kRoleX1) {
    if (m == Mode::uvw) return {o, a, b};
    if (m == Mode::uvu) return {o, a, o};
    if (m == Mode::uuw) return {o, o, b};
    return {o, o, o};
  }
  if (m == Mode::uvw) return {a, o, b};
  if (m == Mode::uvu) return {a, o, a};
  if (m == Mode::uuw) return {o, o, b};
  return {o, o, o};
}
// Index of W[u, v, w] inside the path's weight block (so3.h: row-major block shapes).
FASTOPS_HD int32_t weight_index(const PathInfo& P, const Triple& t) {
  const Mode m = Mode(P.mode);
  if (m == Mode::uvw) return (t.u * P.mul2 + t.v) * P.mul_out + t.w;
  if (m == Mode::uvu) return t.u * P.mul2 + t.v;
  if (m == Mode::uuw) return t.u * P.mul_out + t.w;
  return t.u;
}
FASTOPS_HD int64_t weight_block_size(const PathInfo& P) {
  const Mode m = Mode(P.mode);
  if (m == Mode::uvw) return int64_t(P.mul1) * P.mul2 * P.mul_out;
  if (m == Mode::uvu) return int64_t(P.mul1) * P.mul2;
  if (m == Mode::uuw) return int64_t(P.mul1) * P.mul_out;
  return P.mul1;
}
template <class T>
FASTOPS_HD T path_weight(const PathInfo& P, const T* wrow, const Triple& t) {
  return P.w_off >= 0 ? wrow[P.w_off + weight_index(P, t)] : T(1);
}

// ---------------------------------------------------------------------------------------------------
// Per-block sorted copies of a fast path's nonzeros (n = cg_begin + r, r < cg_count):
//   by entry e = i * m_row_stride + k (for M), ties in r order;  by j (for grad_x2), ties in r order.
struct Range {
  int32_t start, count;
};
FASTOPS_HD int entry_of(int32_t packed, int d3p) { return cg_i(packed) * d3p + cg_k(packed); }
FASTOPS_HD int rank_by_entry(const int32_t* idx, int begin, int count, int r, int d3p) {
  const int key = entry_of(idx[begin + r], d3p);
  int rank = 0;
  for (int q = 0; q < count; ++q) {
    const int kq = entry_of(idx[begin + q], d3p);
    rank += (kq < key || (kq == key && q < r)) ? 1 : 0;
  }
  return rank;
}
FASTOPS_HD int rank_by_j(const int32_t* idx, int begin, int count, int r) {
  const int key = cg_j(idx[begin + r]);
  int rank = 0;
  for (int q = 0; q < count; ++q) {
    const int kq = cg_j(idx[begin + q]);
    rank += (kq < key || (kq == key && q < r)) ? 1 : 0;
  }
  return rank;
}
// Terms of entry e / of component j in the sorted copy (absolute positions: base = f_off).
FASTOPS_HD Range range_by_entry(const int32_t* idx, int begin, int count, int e, int d3p, int base) {
  int less = 0, equal = 0;
  for (int q = 0; q < count; ++q) {
    const int kq = entry_of(idx[begin + q], d3p);
    less += kq < e ? 1 : 0;
    equal += kq == e ? 1 : 0;
  }
  return Range{base + less, equal};
}
FASTOPS_HD Range range_by_j(const int32_t* idx, int begin, int count, int j, int base) {
  int less = 0, equal = 0;
  for (int q = 0; q < count; ++q) {
    const int kq = cg_j(idx[begin + q]);
    less += kq < j ? 1 : 0;
    equal += kq == j ? 1 : 0;
  }
  return Range{base + less, equal};
}

// ---------------------------------------------------------------------------------------------------
// Fast-path arithmetic. M (and B) of a path: [d1][m_row_stride(d3)] at m_off, pad columns zero (M) or
// unused (B); the block base is 16-byte aligned and a row is whole vectors.
template <class T, int N>
FASTOPS_HD void load_row(const T* p, T (&r)[N]) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4) {
    static_assert(N % 4 == 0, "fp32 rows are whole float4");
FASTOPS_SO3_UNROLL
    for (int q = 0; q < N / 4; ++q) {
      const float4 v = reinterpret_cast<const float4*>(p)[q];
      r[4 * q] = v.x, r[4 * q + 1] = v.y, r[4 * q + 2] = v.z, r[4 * q + 3] = v.w;
    }
  } else {
    static_assert(N % 2 == 0, "fp64 rows are whole double2");
FASTOPS_SO3_UNROLL
    for (int q = 0; q < N / 2; ++q) {
      const double2 v = reinterpret_cast<const double2*>(p)[q];
      r[2 * q] = v.x, r[2 * q + 1] = v.y;
    }
  }
#else
  for (int n = 0; n < N; ++n) r[n] = p[n];
#endif
}

// M entry e of a fast path for the staged x2 row: sum of its terms (sorted copy, r order).
template <class T>
FASTOPS_HD T fast_m_entry(const PathInfo& P, int e, int d3p, const Range* ent, const int32_t* mt_idx,
                          const T* mt_val, const T* x2s) {
  if (e % d3p >= P.d3) return T(0);
  const Range r = ent[P.m_off + e];
  T s = T(0);
  for (int q = r.start; q < r.start + r.count; ++q) s += mt_val[q] * x2s[P.x2_off + cg_j(mt_idx[q])];
  return s;
}

// Forward, thread of channel u: acc[u, k] += w * sum_i M[i][k] x1[u, i].
template <class T, int D1, int D3>
FASTOPS_HD void fast_forward_u(const PathInfo& P, int u, const T* x1s, const T* M, T w, T* acc) {
  constexpr int D3P = m_row_stride(D3, vec_elems(int(sizeof(T))));
  const T* xu = x1s + P.x1_off + u * D1;
  T x[D1];
FASTOPS_SO3_UNROLL
  for (int i = 0; i < D1; ++i) x[i] = xu[i];
  T t[D3];
FASTOPS_SO3_UNROLL
  for (int k = 0; k < D3; ++k) t[k] = T(0);
FASTOPS_SO3_UNROLL
  for (int i = 0; i < D1; ++i) {
    T row[D3P];
    load_row<T, D3P>(M + i * D3P, row);
FASTOPS_SO3_UNROLL
    for (int k = 0; k < D3; ++k) t[k] += row[k] * x[i];
  }
  T* a = acc + P.out_off + u * D3;
FASTOPS_SO3_UNROLL
  for (int k = 0; k < D3; ++k) a[k] += w * t[k];
}

// Backward, thread of channel u (G: the staged grad_out row): gx1[u, i] += w sum_k M[i][k] G[u, k] (when
// gx1 is not null); returns dW[u] = sum_k G[u, k] sum_i M[i][k] x1[u, i].
template <class T, int D1, int D3>
FASTOPS_HD T fast_backward_u(const PathInfo& P, int u, const T* x1s, const T* M, const T* gs, T w, T* gx1) {
  constexpr int D3P = m_row_stride(D3, vec_elems(int(sizeof(T))));
  const T* xu = x1s + P.x1_off + u * D1;
  const T* gu = gs + P.out_off + u * D3;
  T s[D3], t[D3];
FASTOPS_SO3_UNROLL
  for (int k = 0; k < D3; ++k) s[k] = gu[k], t[k] = T(0);
  T* g1 = gx1 ? gx1 + P.x1_off + u * D1 : nullptr;
FASTOPS_SO3_UNROLL
  for (int i = 0; i < D1; ++i) {
    T row[D3P];
    load_row<T, D3P>(M + i * D3P, row);
    const T q = xu[i];
    T r = T(0);
FASTOPS_SO3_UNROLL
    for (int k = 0; k < D3; ++k) {
      t[k] += row[k] * q;
      r += row[k] * s[k];
    }
    if (g1) g1[i] += w * r;
  }
  T dw = T(0);
FASTOPS_SO3_UNROLL
  for (int k = 0; k < D3; ++k) dw += s[k] * t[k];
  return dw;
}

// grad_x2 of a fast path, warp part: lane = (i = lane % D1, slice s = lane / D1 < S = 32 / D1) sums
// W[u] x1[u, i] G[u, k] over u = s, s + S, ...; a shuffle tree over s (bmat_tree_adds, partner lane
// lane + step D1) leaves B[i][k] in the lanes of slice 0.
template <int D1>
FASTOPS_HD constexpr int bmat_slices() { return kWarpSize / D1; }
FASTOPS_HD int bmat_row(int lane, int d1) { return lane % d1; }
FASTOPS_HD int bmat_slice(int lane, int d1) { return lane / d1; }
FASTOPS_HD bool bmat_tree_adds(int s, int step, int slices) { return s % (2 * step) == 0 && s + step < slices; }
template <class T, int D1, int D3>
FASTOPS_HD void bmat_lane_partial(const PathInfo& P, int lane, const T* x1s, const T* gs, const T* wrow,
                                  T (&acc)[D3]) {
  constexpr int S = bmat_slices<D1>();
  const int i = bmat_row(lane, D1), s = bmat_slice(lane, D1);
FASTOPS_SO3_UNROLL
  for (int k = 0; k < D3; ++k) acc[k] = T(0);
  if (s >= S) return;
  for (int u = s; u < P.mul1; u += S) {
    const T w = P.w_off >= 0 ? wrow[P.w_off + u] : T(1);
    const T y = w * x1s[P.x1_off + u * D1 + i];
    const T* g = gs + P.out_off + u * D3;
FASTOPS_SO3_UNROLL
    for (int k = 0; k < D3; ++k) acc[k] += y * g[k];
  }
}

// grad_x2 element e (0 <= e < dim2) from the fast paths whose x2 block holds it: sum of c B[i][k] over
// the terms with j = e - x2_off, paths in order, terms in the j-sorted order.
template <class T>
FASTOPS_HD T fast_gx2_element(const PathInfo* paths, int num_paths, int e, const Range* jrun,
                              const int32_t* jt_idx, const T* jt_val, const T* bmat, int vec) {
  T s = T(0);
  for (int p = 0; p < num_paths; ++p) {
    const PathInfo& P = paths[p];
    if (P.fast < 0 || e < P.x2_off || e >= P.x2_off + P.d2) continue;
    const int d3p = m_row_stride(P.d3, vec);
    const Range r = jrun[P.j_off + (e - P.x2_off)];
    for (int q = r.start; q < r.start + r.count; ++q) {
      const int32_t id = jt_idx[q];
      s += jt_val[q] * bmat[P.m_off + cg_i(id) * d3p + cg_k(id)];
    }
  }
  return s;
}

// ---------------------------------------------------------------------------------------------------
// General paths, one owner index at a time (staged rows x1s, x2s, gs; wrow: the sample's weight row).
// One owner of a role: dst[owner, m] += c sum_pairs W a[.] b[.] for every nonzero, where (a, b) are the
// two staged rows the role's element multiplies: out: (x1, x2), x1: (x2, G), x2: (x1, G).
template <class T>
FASTOPS_HD void general_owner(const PathInfo& P, Role role, int owner, const int32_t* cg_idx, const T* cg_val,
                              const T* x1s, const T* x2s, const T* gs, const T* wrow, T* dst) {
  const PairExtent ext = pair_extent(P, role);
  for (int n = P.cg_begin; n < P.cg_begin + P.cg_count; ++n) {
    const int32_t id = cg_idx[n];
    const int i = cg_i(id), j = cg_j(id), k = cg_k(id);
    T s = T(0);
    for (int a = 0; a < ext.na; ++a)
      for (int b = 0; b < ext.nb; ++b) {
        const Triple t = pair_triple(P, role, owner, a, b);
        const T x1 = role == kRoleX1 ? T(1) : x1s[P.x1_off + t.u * P.d1 + i];
        const T x2 = role == kRoleX2 ? T(1) : x2s[P.x2_off + t.v * P.d2 + j];
        const T g = role == kRoleOut ? T(1) : gs[P.out_off + t.w * P.d3 + k];
        s += path_weight(P, wrow, t) * x1 * x2 * g;
      }
    const int64_t at = role == kRoleOut ? P.out_off + owner * P.d3 + k
                       : role == kRoleX1 ? P.x1_off + owner * P.d1 + i : P.x2_off + owner * P.d2 + j;
    dst[at] += cg_val[n] * s;
  }
}
// Forward, owner w: acc[w, k] += c sum_pairs W x1[u, i] x2[v, j] for every nonzero.
template <class T>
FASTOPS_HD void general_forward_owner(const PathInfo& P, int w, const int32_t* cg_idx, const T* cg_val,
                                      const T* x1s, const T* x2s, const T* wrow, T* acc) {
  general_owner<T>(P, kRoleOut, w, cg_idx, cg_val, x1s, x2s, nullptr, wrow, acc);
}
// grad_x1, owner u: gx1[u, i] += c sum_pairs W x2[v, j] G[w, k].
template <class T>
FASTOPS_HD void general_gx1_owner(const PathInfo& P, int u, const int32_t* cg_idx, const T* cg_val, const T* x2s,
                                  const T* gs, const T* wrow, T* gx1) {
  general_owner<T>(P, kRoleX1, u, cg_idx, cg_val, nullptr, x2s, gs, wrow, gx1);
}
// grad_x2, owner v: gx2[v, j] += c sum_pairs W x1[u, i] G[w, k].
template <class T>
FASTOPS_HD void general_gx2_owner(const PathInfo& P, int v, const int32_t* cg_idx, const T* cg_val, const T* x1s,
                                  const T* gs, const T* wrow, T* gx2) {
  general_owner<T>(P, kRoleX2, v, cg_idx, cg_val, x1s, nullptr, gs, wrow, gx2);
}
// grad_weight of a weighted path, owner w: gw[W(u, v, w)] (+)= sum_n c x1[u, i] x2[v, j] G[w, k].
template <class T>
FASTOPS_HD void general_gw_owner(const PathInfo& P, int w, const int32_t* cg_idx, const T* cg_val, const T* x1s,
                                 const T* x2s, const T* gs, T* gwrow, bool add) {
  const PairExtent ext = pair_extent(P, kRoleOut);
  for (int a = 0; a < ext.na; ++a)
    for (int b = 0; b < ext.nb; ++b) {
      const Triple t = pair_triple(P, kRoleOut, w, a, b);
      T s = T(0);
      for (int n = P.cg_begin; n < P.cg_begin + P.cg_count; ++n) {
        const int32_t id = cg_idx[n];
        s += cg_val[n] * x1s[P.x1_off + t.u * P.d1 + cg_i(id)] * x2s[P.x2_off + t.v * P.d2 + cg_j(id)] *
             gs[P.out_off + t.w * P.d3 + cg_k(id)];
      }
      T* dst = gwrow + P.w_off + weight_index(P, t);
      *dst = add ? *dst + s : s;
    }
}

// ---------------------------------------------------------------------------------------------------
// Visiting. Position pos of the visiting sequence is sample t (order[pos] when the reduction is keyed and
// deterministic, else pos); its rows: x1 row r1, output / grad_out row ro. The key of the reduction is
// ro (forward) or r1 (backward); both equal t when the index is absent.
struct Visit {
  int64_t t, r1, ro;
};
FASTOPS_HD int64_t visit_key(const Visit& v, bool backward) { return backward ? v.r1 : v.ro; }

// Slice of block b.
FASTOPS_HD int64_t slice_begin(int64_t block, int64_t slice) { return block * slice; }
FASTOPS_HD int64_t slice_end(int64_t block, int64_t slice, int64_t batch) { return min64(batch, (block + 1) * slice); }
// A row starts at pos when pos == 0 or the key changes there.
FASTOPS_HD bool is_row_start(int64_t pos, int64_t key_prev, int64_t key) { return pos == 0 || key != key_prev; }
// Whether the block goes on to position next: inside its slice, or (deterministic rows) finishing the row.
FASTOPS_HD bool continues(bool det_rows, int64_t next, int64_t p1, int64_t batch, int64_t key_next, int64_t key) {
  if (next >= batch) return false;
  if (next < p1) return true;
  return det_rows && key_next == key;
}
FASTOPS_HD bool row_ends(bool has_next, int64_t key_next, int64_t key) { return !has_next || key_next != key; }
struct RowRange {
  int64_t begin, end;  // empty when end <= begin
};
// Empty rows a deterministic block zeroes: before its first row (first: the position that starts it)...
FASTOPS_HD RowRange gap_before(int64_t first, int64_t key_prev, int64_t key_first) {
  return RowRange{first == 0 ? 0 : key_prev + 1, key_first};
}
// ...and after a row it finishes: up to the next row when it continues, up to `rows` after the batch's
// last sample, nothing when the next row belongs to the next block (which zeroes that gap).
FASTOPS_HD RowRange gap_after(bool has_next, int64_t next, int64_t batch, int64_t key, int64_t key_next,
                              int64_t rows) {
  if (has_next) return RowRange{key + 1, key_next};
  if (next >= batch) return RowRange{key + 1, rows};
  return RowRange{0, 0};
}

// Ring of visits, kInfoRing slots. Chunk c = positions [c kInfoChunk, (c + 1) kInfoChunk). A block loads
// the chunks of its first position and the one after before it starts; at position pos with
// pos % kInfoChunk == 0 (after the first barrier of that step) it loads chunk pos / kInfoChunk + 1, over
// the slots of chunk pos / kInfoChunk - 1, which no later step reads.
FASTOPS_HD int ring_slot(int64_t pos) { return int(pos % kInfoRing); }
FASTOPS_HD bool ring_loads_at(int64_t pos) { return pos % kInfoChunk == 0; }
FASTOPS_HD int64_t ring_chunk(int64_t pos) { return pos / kInfoChunk; }

// ---------------------------------------------------------------------------------------------------
// Launch plan: threads cover the widest multiplicity (one owner index per thread), blocks target a few
// waves of resident blocks with at least kMinSlice samples each.
FASTOPS_HD int block_threads(int64_t max_mul) {
  const int64_t t = round_up(max64(max_mul, 1), kWarpSize);
  return int(min64(max64(t, kMinThreads), kMaxThreads));
}
struct LaunchPlan {
  int64_t slice, blocks;
};
FASTOPS_HD LaunchPlan make_launch(int64_t batch, int64_t target_blocks, int64_t max_blocks) {
  if (batch <= 0) return LaunchPlan{1, 0};
  const int64_t want = max64(1, min64(target_blocks, min64(max_blocks, kMaxGrid)));
  const int64_t slice = max64(kMinSlice, ceil_div(batch, want));
  return LaunchPlan{slice, ceil_div(batch, slice)};
}
// Shared-weight gradient: per-block partials [blocks][weight_numel] in the workspace. The bound depends
// only on the batch, the weight size and the GPU, so the workspace size is known before the plan is
// looked at. At most kSharedPartialElems elements in all: a large weight (a 2M-element uvw path) would
// otherwise take 2 x SMs copies (2 GB on an H100); it gets fewer, longer slices instead.
FASTOPS_HD int64_t shared_weight_partials(int64_t batch, int64_t sm_count, int64_t weight_numel) {
  if (batch <= 0) return 0;
  const int64_t by_memory = max64(1, kSharedPartialElems / max64(1, weight_numel));
  return min64(min64(ceil_div(batch, kMinSlice), max64(1, kSharedBlocksPerSm * sm_count)), by_memory);
}
FASTOPS_HD int64_t partial_offset(int64_t block, int64_t weight_numel) { return block * weight_numel; }

// ---------------------------------------------------------------------------------------------------
// Shared memory of a block, every region 16-byte aligned (byte offsets):
//   paths [num_paths] PathInfo | cg_idx [num_cg] int32 | cg_val [num_cg] T
//   mt_idx, mt_val [f_total] (sorted by entry) | jt_idx, jt_val [f_total] (by j; backward with grad_x2)
//   ent [m_total] Range | jrun [j_total] Range (backward with grad_x2)
//   m [nbuf][m_total] T | bmat [m_total] T (backward with grad_x2)
//   x1 [nbuf][x1_len] | x2 [nbuf][x2_len] | g [nbuf][g_len] (backward) | w [w_bufs][w_len] (staged weights)
//   acc [acc_dim] (forward output row / grad_x1 row) | gx2 [dim2] (backward with grad_x2)
//   gw [weight_numel] (shared-weight gradient partial kept in shared memory) | ring [kInfoRing] Visit
//   scratch 32 bytes
struct SmemSizes {
  int64_t num_paths, num_cg, m_total, f_total, j_total;
  int64_t dim1, dim2, dim_out, weight_numel, acc_dim;
  int esz, nbuf;
  bool backward, want_gx2, stage_w, shared_w, gw_smem;
};
struct SmemLayout {
  int64_t paths, cg_idx, cg_val, mt_idx, mt_val, jt_idx, jt_val, ent, jrun, m, bmat, x1, x2, g, w, acc, gx2, gw,
      ring, scratch, total;
  int64_t m_len, x1_len, x2_len, g_len, w_len;  // elements per buffer (buffer b at region + b * len)
  int32_t nbuf;
};
FASTOPS_HD int64_t align16(int64_t bytes) { return round_up(bytes, 16); }
FASTOPS_HD SmemLayout make_smem_layout(const SmemSizes& s) {
  const int64_t esz = s.esz, vec = vec_elems(s.esz);
  SmemLayout L;
  L.nbuf = s.nbuf;
  L.m_len = round_up(s.m_total, vec);
  L.x1_len = round_up(s.dim1, vec);
  L.x2_len = round_up(s.dim2, vec);
  L.g_len = s.backward ? round_up(s.dim_out, vec) : 0;
  L.w_len = s.stage_w ? round_up(s.weight_numel, vec) : 0;
  const bool jt = s.backward && s.want_gx2;
  const int64_t w_bufs = !s.stage_w ? 0 : s.shared_w ? 1 : s.nbuf;
  int64_t o = 0;
  L.paths = o, o += align16(s.num_paths * int64_t(sizeof(PathInfo)));
  L.cg_idx = o, o += align16(s.num_cg * 4);
  L.cg_val = o, o += align16(s.num_cg * esz);
  L.mt_idx = o, o += align16(s.f_total * 4);
  L.mt_val = o, o += align16(s.f_total * esz);
  L.jt_idx = o, o += jt ? align16(s.f_total * 4) : 0;
  L.jt_val = o, o += jt ? align16(s.f_total * esz) : 0;
  L.ent = o, o += align16(s.m_total * int64_t(sizeof(Range)));
  L.jrun = o, o += jt ? align16(s.j_total * int64_t(sizeof(Range))) : 0;
  L.m = o, o += s.nbuf * L.m_len * esz;
  L.bmat = o, o += jt ? L.m_len * esz : 0;
  L.x1 = o, o += s.nbuf * L.x1_len * esz;
  L.x2 = o, o += s.nbuf * L.x2_len * esz;
  L.g = o, o += s.nbuf * L.g_len * esz;
  L.w = o, o += w_bufs * L.w_len * esz;
  L.acc = o, o += align16(s.acc_dim * esz);
  L.gx2 = o, o += jt ? align16(s.dim2 * esz) : 0;
  L.gw = o, o += s.backward && s.gw_smem ? align16(s.weight_numel * esz) : 0;
  L.ring = o, o += align16(kInfoRing * int64_t(sizeof(Visit)));
  L.scratch = o, o += 32;
  L.total = o;
  return L;
}

}  // namespace cuda_layout
}  // namespace so3
}  // namespace fastops
