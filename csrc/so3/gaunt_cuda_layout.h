// Index math of the dense Gaunt and CP kernels (gaunt_cuda.cu) as small host/device functions, so that
// gaunt_cuda_layout_test.cpp can emulate the kernels' work decomposition on the CPU.
//
// Both products are one shape of computation over "rows" (Gaunt: samples; CP: (edge, channel) pairs) and
// "points" (Gaunt: grid points; CP: rank):
//     out[row, k] = scale(row) * sum_p Z[p, k] * F1[row, p] * F2[group(row), p]
//     F1[row, p] = sum_i x1[row, i] Y1[i, p],   F2[g, p] = sum_j x2[g, j] Y2[j, p]
// Gaunt: group(row) = row, scale 1, Z [points, dim_out]. CP: rows are edge-major (row = e * channels + c),
// group(row) = e (F2 is computed once per edge of a tile, not once per channel), scale = w[e, c],
// Z = F3^T (F3 is [dim_out, rank], so the Z chunk is read transposed).
//
// Work decomposition (flash-attention-like: F1, F2 and their product never leave the SM):
//  * A work item is (row tile of kRows consecutive rows, column tile of at most kMaxColTile output
//    columns); blocks stride over the work items. The output tile [kRows, columns] lives in registers:
//    warp w owns rows w * kRowsPerWarp .. + kRowsPerWarp, lane l owns columns l + 32 j (j < NC, NC a
//    template parameter: the column groups a warp needs).
//  * Points go in chunks of kChunk. Per chunk the block stages Y1, Y2 (rows of the contraction dimension
//    in k-chunks of kc, usually one) and the Z chunk [kChunk, columns] in shared memory with cp.async; the
//    x1 / x2 tiles (transposed: [i][slot]) are staged once per work item when one k-chunk covers dim1 and
//    dim2 ("resident"), else with every k-chunk. Zero-fill covers rows past the end, points past the end
//    and the unused x2 slots, so F1, F2 and P are finite and exactly zero where they are padding (phase B
//    runs over whole chunks). Phase-B lanes past the tile's columns read in-bounds values they never store.
//  * Phase A: thread tid owns a kMicroRows x kMicroPoints micro-tile (slots phase_a_slot(tid) ..,
//    points phase_a_point(tid) ..) of F1 and of F2, accumulated over the k-chunks in registers. The
//    product P [kChunk][kRows] goes to shared memory: directly F1 * F2 (Gaunt: group = row), or through
//    F2 in shared memory (CP: several rows share one edge's F2; only threads whose slots hold an edge of
//    the tile compute F2).
//  * Phase B: out tile += P^T-chunk x Z-chunk: per point, kRowsPerWarp P values (vector broadcast loads)
//    times NC Z values (one per lane and column group, conflict-free) in FFMA / DFMA.
#pragma once
#include <cstdint>

#include "common/hd.h"

// Unrolling in device code (host compilers warn about the CUDA pragma). The staging loops and phase B stay
// rolled: unrolling them makes the compiler hoist loads and addresses past the 128-register budget of two
// blocks per SM (phase B still has 8 NC independent FMAs per point; the SM's other warps hide the loads).
#if defined(__CUDA_ARCH__)
#define FASTOPS_GAUNT_UNROLL _Pragma("unroll")
#define FASTOPS_GAUNT_UNROLL_4 _Pragma("unroll 4")
#define FASTOPS_GAUNT_UNROLL_1 _Pragma("unroll 1")
#else
#define FASTOPS_GAUNT_UNROLL
#define FASTOPS_GAUNT_UNROLL_4
#define FASTOPS_GAUNT_UNROLL_1
#endif

namespace fastops {
namespace so3 {
namespace gaunt_cuda_layout {

constexpr int kWarpSize = 32;
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kMaxColGroups = 10;                          // NC <= 10: 320 columns (dim_out 289 = L 8) per tile
constexpr int kMaxColTile = kMaxColGroups * kWarpSize;     // wider outputs take several column tiles
constexpr int kMaxKChunk = 128;                            // x / Y rows staged at once (dim <= 128: one chunk)
constexpr int64_t kMaxGrid = 2147483647;

FASTOPS_HD constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
FASTOPS_HD constexpr int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
FASTOPS_HD constexpr int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
FASTOPS_HD constexpr int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Tile shapes per element size. fp32: 64 rows x 32 points per chunk, 4 x 2 phase-A micro-tiles, 8 rows per
// warp in phase B (80 accumulators at NC = 10). fp64 halves rows and points: the register budget of 2
// blocks per SM (128 registers) holds 4 x 10 doubles, and L = 8 fits two blocks' shared memory (~104 KB).
// Phase B per point and warp: 2 broadcast 16-byte P loads + NC conflict-free Z loads for 8 NC (fp32) FMAs.
template <int kElemBytes>
struct DenseConfig;
template <>
struct DenseConfig<4> {
  static constexpr int kRows = 64, kChunk = 32, kMicroRows = 4, kMicroPoints = 2, kRowsPerWarp = 8;
};
template <>
struct DenseConfig<8> {
  static constexpr int kRows = 32, kChunk = 16, kMicroRows = 2, kMicroPoints = 1, kRowsPerWarp = 4;
};

template <class C>
FASTOPS_HD constexpr bool config_consistent(int elem_bytes) {
  return C::kRows == kWarps * C::kRowsPerWarp &&
         (C::kRows / C::kMicroRows) * (C::kChunk / C::kMicroPoints) == kThreads &&
         C::kMicroRows * elem_bytes == 16 &&                 // one 16-byte x load / P store per micro-row set
         (C::kRowsPerWarp * elem_bytes) % 16 == 0 &&        // phase-B P loads are whole 16-byte vectors
         C::kMicroPoints * elem_bytes <= 16 && (C::kMicroPoints & (C::kMicroPoints - 1)) == 0;
}
static_assert(config_consistent<DenseConfig<4>>(4), "fp32 dense tile");
static_assert(config_consistent<DenseConfig<8>>(8), "fp64 dense tile");

// ---------------------------------------------------------------------------------------------------
// Rows. A row r is (group r / group_size, inner r % group_size): Gaunt group_size 1, CP group_size =
// channels (group = edge, inner = channel).
struct RowMap {
  int64_t group_size;
  int64_t x1_stride, x1_inner_stride;  // x1 element (r, i) at group * x1_stride + inner * x1_inner_stride + i
  int64_t x2_stride;                   // x2 element (g, j) at g * x2_stride + j (0 broadcasts a row)
  int64_t w_stride;                    // scale of row r at group * w_stride + inner (CP)
};
// kGrouped false: group_size is 1 (Gaunt), and the row maps need no division.
template <bool kGrouped>
FASTOPS_HD int64_t row_group(const RowMap& m, int64_t row) {
  return kGrouped ? row / m.group_size : row;
}
template <bool kGrouped>
FASTOPS_HD int64_t x1_row_offset(const RowMap& m, int64_t row) {
  if (!kGrouped) return row * m.x1_stride;
  const int64_t g = row / m.group_size;
  return g * m.x1_stride + (row - g * m.group_size) * m.x1_inner_stride;
}
FASTOPS_HD int64_t x2_row_offset(const RowMap& m, int64_t group) { return group * m.x2_stride; }
template <bool kGrouped>
FASTOPS_HD int64_t w_offset(const RowMap& m, int64_t row) {
  if (!kGrouped) return row * m.w_stride;
  const int64_t g = row / m.group_size;
  return g * m.w_stride + (row - g * m.group_size);
}

// Most groups kRows consecutive rows can touch: floor((rows-1)/gs) + 2, at most rows.
FASTOPS_HD int64_t max_tile_groups(int64_t rows, int64_t group_size) {
  return min64(rows, (rows - 1) / group_size + 2);
}

// ---------------------------------------------------------------------------------------------------
// Work items: row tile major, column tile minor.
struct DenseTile {
  int64_t row_begin;  // first row
  int32_t rows;       // valid rows (<= kRows)
  int32_t col0;       // first output column
  int32_t cols;       // columns of this tile (<= kMaxColTile)
  int64_t group0;     // group of the first row
  int32_t groups;     // groups of the valid rows (x2 slots that hold data)
};
FASTOPS_HD int64_t col_tiles(int64_t dim_out) { return ceil_div(dim_out, kMaxColTile); }
FASTOPS_HD int64_t work_items(int64_t rows, int64_t dim_out, int tile_rows) {
  return ceil_div(rows, tile_rows) * col_tiles(dim_out);
}
template <bool kGrouped>
FASTOPS_HD DenseTile dense_tile(int64_t work, int64_t rows, int64_t dim_out, int tile_rows, const RowMap& m) {
  const int64_t ct = col_tiles(dim_out);
  DenseTile t;
  t.row_begin = (work / ct) * tile_rows;
  t.rows = int32_t(min64(tile_rows, rows - t.row_begin));
  t.col0 = int32_t((work % ct) * kMaxColTile);
  t.cols = int32_t(min64(kMaxColTile, dim_out - t.col0));
  t.group0 = row_group<kGrouped>(m, t.row_begin);
  t.groups = int32_t(row_group<kGrouped>(m, t.row_begin + t.rows - 1) - t.group0 + 1);
  return t;
}
// x2 slot of tile row `slot` (rows past the tile's end map to slot 0: their results are not stored).
template <bool kGrouped>
FASTOPS_HD int x2_slot_of_row(const RowMap& m, const DenseTile& t, int slot) {
  return slot < t.rows ? int(row_group<kGrouped>(m, t.row_begin + slot) - t.group0) : 0;
}
// The x2 slots of a thread's MR phase-A rows, 8 bits each (slots < kRows <= 64), so the grouped kernel keeps
// them in one register across the point chunks.
template <bool kGrouped, int MR>
FASTOPS_HD uint32_t packed_x2_slots(const RowMap& m, const DenseTile& t, int slot0) {
  static_assert(MR <= 4, "four 8-bit slots per word");
  uint32_t packed = 0;
  for (int r = 0; r < MR; ++r) packed |= uint32_t(x2_slot_of_row<kGrouped>(m, t, slot0 + r)) << (8 * r);
  return packed;
}
FASTOPS_HD int unpack_x2_slot(uint32_t packed, int r) { return int((packed >> (8 * r)) & 0xffu); }

// Points and contraction rows.
FASTOPS_HD int point_chunks(int points, int chunk) { return int(ceil_div(points, chunk)); }
FASTOPS_HD int chunk_points(int points, int c, int chunk) { return int(min64(chunk, points - int64_t(c) * chunk)); }
// k-chunks per point chunk: at least one (so the Z chunk is staged even when dim1 = dim2 = 0).
FASTOPS_HD int k_chunks(int dim1, int dim2, int kc) { return int(max64(1, ceil_div(max64(dim1, dim2), kc))); }
FASTOPS_HD int k_rows(int dim, int q, int kc) { return int(max64(0, min64(kc, int64_t(dim) - int64_t(q) * kc))); }

// ---------------------------------------------------------------------------------------------------
// Thread ownership.
template <class C>
FASTOPS_HD constexpr int phase_a_slot(int tid) {
  return (tid / (C::kChunk / C::kMicroPoints)) * C::kMicroRows;
}
template <class C>
FASTOPS_HD constexpr int phase_a_point(int tid) {
  return (tid % (C::kChunk / C::kMicroPoints)) * C::kMicroPoints;
}
template <class C>
FASTOPS_HD constexpr int phase_b_row(int warp) {
  return warp * C::kRowsPerWarp;
}
FASTOPS_HD constexpr int phase_b_col(int lane, int j) { return lane + kWarpSize * j; }
// Column the last column group reads: lanes past the tile's width read its last column (unstored), so the
// read stays inside the Z buffer. The other groups' columns are below kMaxColTile - 32 and stay inside it
// too (they pass the width only in the last column tile of a dim_out > kMaxColTile product).
FASTOPS_HD int phase_b_last_col(int lane, int nc, int cols) {
  return int(min64(phase_b_col(lane, nc - 1), cols - 1));
}
// Column groups a tile of `cols` columns needs.
FASTOPS_HD int col_groups(int64_t dim_out) { return int(ceil_div(min64(dim_out, kMaxColTile), kWarpSize)); }

// Staging copies: warps stride over rows, lanes over columns, the dimension contiguous in global memory
// (so a warp's cp.async requests coalesce). f(r, c, base) with base = row_base(r), computed once per row.
template <class B, class F>
FASTOPS_HD void for_each_staged(int warp, int lane, int rows, int cols, B&& row_base, F&& f) {
  FASTOPS_GAUNT_UNROLL_1
  for (int r = warp; r < rows; r += kWarps) {
    const auto base = row_base(r);
    FASTOPS_GAUNT_UNROLL_1
    for (int c = lane; c < cols; c += kWarpSize) f(r, c, base);
  }
}

// ---------------------------------------------------------------------------------------------------
// Shared memory (elements of T unless noted). Slot-major tiles ([i][slot], P [point][slot]) pad each row by
// one micro-tile so the transposed staging writes and the phase-A stores of P spread over the banks while
// every row stays 16-byte aligned.
FASTOPS_HD constexpr int slot_stride(int slots, int micro) { return int(round_up(slots, micro)) + micro; }
FASTOPS_HD int xs_index(int i, int slot, int stride) { return i * stride + slot; }
template <class C>
FASTOPS_HD int ys_index(int i, int p) {
  return i * C::kChunk + p;
}
FASTOPS_HD int ps_index(int p, int slot, int stride) { return p * stride + slot; }
FASTOPS_HD int zs_index(int p, int col, int cols) { return p * cols + col; }

// Global element offsets.
FASTOPS_HD int64_t y_offset(int i, int64_t p, int points) { return int64_t(i) * points + p; }
FASTOPS_HD int64_t z_offset(int64_t p, int64_t col, int64_t point_stride, int64_t col_stride) {
  return p * point_stride + col * col_stride;
}

FASTOPS_HD constexpr int64_t align16(int64_t bytes) { return round_up(bytes, 16); }

struct DenseLayout {
  int32_t kc;                    // contraction rows per k-chunk
  int32_t kc1, kc2;              // rows of the x1 / Y1 and x2 / Y2 buffers: min(dim, kc)
  int32_t x1_stride, x2_stride;  // slot strides of the x tiles
  int32_t x2_slots;              // slots of the x2 tile (kRows, or the groups a tile can touch, whole micro-tiles)
  int32_t p_stride, q_stride;    // slot strides of P and of F2 (q only when grouped)
  int32_t max_cols;              // columns of the Z buffer: min(dim_out, kMaxColTile)
  int64_t x1, x2, y1, y2, p, q, z, total;  // byte offsets, total bytes
};

template <class C>
FASTOPS_HD DenseLayout make_dense_layout(int elem_bytes, int dim1, int dim2, int64_t dim_out, int kc,
                                         bool grouped, int64_t group_size) {
  DenseLayout L;
  L.kc = kc;
  L.kc1 = int32_t(min64(dim1, kc));
  L.kc2 = int32_t(min64(dim2, kc));
  L.x2_slots = int32_t(grouped ? round_up(max_tile_groups(C::kRows, group_size), C::kMicroRows) : C::kRows);
  L.x1_stride = slot_stride(C::kRows, C::kMicroRows);
  L.x2_stride = slot_stride(L.x2_slots, C::kMicroRows);
  L.p_stride = slot_stride(C::kRows, C::kMicroRows);
  L.q_stride = grouped ? L.x2_slots : 0;
  L.max_cols = int32_t(min64(dim_out, kMaxColTile));
  const int64_t e = elem_bytes;
  int64_t o = 0;
  L.x1 = o, o += align16(int64_t(L.kc1) * L.x1_stride * e);
  L.x2 = o, o += align16(int64_t(L.kc2) * L.x2_stride * e);
  L.y1 = o, o += align16(int64_t(L.kc1) * C::kChunk * e);
  L.y2 = o, o += align16(int64_t(L.kc2) * C::kChunk * e);
  L.p = o, o += align16(int64_t(C::kChunk) * L.p_stride * e);
  L.q = o, o += align16(int64_t(C::kChunk) * L.q_stride * e);
  L.z = o, o += align16(int64_t(C::kChunk) * L.max_cols * e);
  L.total = o;
  return L;
}

// The largest k-chunk (<= kMaxKChunk) whose layout fits `smem_limit` bytes; 0 if none does.
template <class C>
FASTOPS_HD int choose_k_chunk(int elem_bytes, int dim1, int dim2, int64_t dim_out, bool grouped,
                              int64_t group_size, int64_t smem_limit) {
  const int top = int(max64(1, min64(kMaxKChunk, max64(dim1, dim2))));
  for (int kc = top; kc >= 1; --kc)
    if (make_dense_layout<C>(elem_bytes, dim1, dim2, dim_out, kc, grouped, group_size).total <= smem_limit)
      return kc;
  return 0;
}

// ---------------------------------------------------------------------------------------------------
// Vector shared-memory accesses of N elements (16 / 8 bytes in device code, scalar on the host).
template <class T, int N>
FASTOPS_HD void load_vec(const T* p, T (&v)[N]) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4 && N % 4 == 0) {
    FASTOPS_GAUNT_UNROLL
    for (int q = 0; q < N / 4; ++q) {
      const float4 t = reinterpret_cast<const float4*>(p)[q];
      v[4 * q] = t.x, v[4 * q + 1] = t.y, v[4 * q + 2] = t.z, v[4 * q + 3] = t.w;
    }
  } else if constexpr (sizeof(T) == 4 && N == 2) {
    const float2 t = *reinterpret_cast<const float2*>(p);
    v[0] = t.x, v[1] = t.y;
  } else if constexpr (sizeof(T) == 8 && N % 2 == 0) {
    FASTOPS_GAUNT_UNROLL
    for (int q = 0; q < N / 2; ++q) {
      const double2 t = reinterpret_cast<const double2*>(p)[q];
      v[2 * q] = t.x, v[2 * q + 1] = t.y;
    }
  } else {
    FASTOPS_GAUNT_UNROLL
    for (int q = 0; q < N; ++q) v[q] = p[q];
  }
#else
  for (int q = 0; q < N; ++q) v[q] = p[q];
#endif
}
template <class T, int N>
FASTOPS_HD void store_vec(T* p, const T (&v)[N]) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4 && N == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else if constexpr (sizeof(T) == 8 && N == 2) {
    *reinterpret_cast<double2*>(p) = make_double2(v[0], v[1]);
  } else {
    FASTOPS_GAUNT_UNROLL
    for (int q = 0; q < N; ++q) p[q] = v[q];
  }
#else
  for (int q = 0; q < N; ++q) p[q] = v[q];
#endif
}

// Phase A: f[a][b] += sum_{i < n} xs[i * xs_stride + a] * ys[i * ys_stride + b] (xs: the thread's first
// slot of an x tile, ys: its first point of a Y chunk).
template <class T, int MR, int MP>
FASTOPS_HD void project_accumulate(const T* xs, int xs_stride, const T* ys, int ys_stride, int n, T (&f)[MR][MP]) {
  FASTOPS_GAUNT_UNROLL_4
  for (int i = 0; i < n; ++i) {
    T a[MR], b[MP];
    load_vec(xs + i * xs_stride, a);
    load_vec(ys + i * ys_stride, b);
    FASTOPS_GAUNT_UNROLL
    for (int r = 0; r < MR; ++r) {
      FASTOPS_GAUNT_UNROLL
      for (int q = 0; q < MP; ++q) f[r][q] += a[r] * b[q];
    }
  }
}

// Phase B: acc[r][j] += sum_{p < PC} ps[p * ps_stride + r] * Z(p, column j), where column j < NC-1 is
// zs[p * zs_stride + 32 j] and the last is zs_last[p * zs_stride] (phase_b_last_col).
template <class T, int TM, int NC, int PC>
FASTOPS_HD void output_accumulate(const T* ps, int ps_stride, const T* zs, const T* zs_last, int zs_stride,
                                  T (&acc)[TM][NC]) {
  FASTOPS_GAUNT_UNROLL_1
  for (int p = 0; p < PC; ++p) {
    T a[TM], b[NC];
    load_vec(ps + p * ps_stride, a);
    FASTOPS_GAUNT_UNROLL
    for (int j = 0; j + 1 < NC; ++j) b[j] = zs[p * zs_stride + kWarpSize * j];
    b[NC - 1] = zs_last[p * zs_stride];
    FASTOPS_GAUNT_UNROLL
    for (int r = 0; r < TM; ++r) {
      FASTOPS_GAUNT_UNROLL
      for (int j = 0; j < NC; ++j) acc[r][j] += a[r] * b[j];
    }
  }
}

}  // namespace gaunt_cuda_layout
}  // namespace so3
}  // namespace fastops
