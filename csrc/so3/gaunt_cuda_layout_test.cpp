// CPU checks of the dense Gaunt / CP CUDA kernels' index math (gaunt_cuda_layout.h). Unit checks: the group
// bound of a row tile, the packed x2 slots, the shared-memory layout (aligned, disjoint regions that hold
// what the kernel addresses; two fp32 L = 8 blocks per H100 SM) and the k-chunk choice. Then whole grids of
// gaunt_dense_kernel / cp_forward_kernel are emulated block by block and thread by thread with the same
// helpers and the kernels' phase order (per k-chunk: staging with zero-fill, then phase A; the F2 chunk
// through shared memory when grouped; P; phase B; the epilogue), for both tile configurations (fp32, fp64:
// values are doubles either way), on odd shapes, and compared with a direct evaluation of gaunt.h's
// formulas. Shared memory is poisoned with NaN wherever the kernel's data is dead (each work item, each
// restaged buffer), so a read of an unstaged element shows up in the result; every staged element must be
// written once per stage, every global read must lie inside its array, and every output element must be
// written exactly once (the row-stride gaps never).
#include "so3/gaunt_cuda_layout_test.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/selftest.h"
#include "so3/gaunt_cuda_layout.h"

namespace fastops {
namespace so3 {
namespace {

using namespace gaunt_cuda_layout;
using Checker = SelfTestChecker;

using selftest::str;
using selftest::kPoison;
constexpr int64_t kH100SmemPerSm = 233472;         // 228 KB, of which 1 KB per resident block is reserved
constexpr int64_t kReservedPerBlock = 1024;

// ---------------------------------------------------------------------------------------------------
// Unit checks.
void check_groups(Checker& ck) {
  for (int rows : {32, 64})
    for (int64_t gs = 1; gs <= 150; ++gs) {
      const RowMap m{gs, 0, 0, 0, 0};
      int64_t worst = 0;
      for (int64_t begin = 0; begin < 3 * gs + 2 * rows; ++begin) {
        const int64_t g = (begin + rows - 1) / gs - begin / gs + 1;
        worst = g > worst ? g : worst;
        DenseTile t;
        t.row_begin = begin, t.rows = rows, t.group0 = begin / gs, t.groups = int32_t(g);
        const uint32_t packed = packed_x2_slots<true, 4>(m, t, rows - 4);
        for (int r = 0; r < 4; ++r)
          if (unpack_x2_slot(packed, r) != int((begin + rows - 4 + r) / gs - begin / gs))
            ck.expect(false, "packed_x2_slots rows " + str(rows) + " gs " + str(gs) + " begin " + str(begin));
      }
      ck.expect(worst <= max_tile_groups(rows, gs),
                "max_tile_groups(" + str(rows) + ", " + str(gs) + ") = " + str(max_tile_groups(rows, gs)) +
                    " below a tile's " + str(worst) + " groups");
    }
}

template <int E>
void check_layout_one(Checker& ck, int d1, int d2, int64_t dim_out, int kc, bool grouped, int64_t gs) {
  using C = DenseConfig<E>;
  const DenseLayout L = make_dense_layout<C>(E, d1, d2, dim_out, kc, grouped, gs);
  const std::string tag = "layout E " + str(E) + " d " + str(d1) + "," + str(d2) + " out " + str(dim_out) +
                          " kc " + str(kc) + (grouped ? " grouped gs " + str(gs) : "");
  const int64_t off[] = {L.x1, L.x2, L.y1, L.y2, L.p, L.q, L.z, L.total};
  const int64_t need[] = {int64_t(L.kc1) * L.x1_stride * E,   int64_t(L.kc2) * L.x2_stride * E,
                          int64_t(L.kc1) * C::kChunk * E,     int64_t(L.kc2) * C::kChunk * E,
                          int64_t(C::kChunk) * L.p_stride * E, int64_t(C::kChunk) * L.q_stride * E,
                          int64_t(C::kChunk) * L.max_cols * E};
  for (int r = 0; r < 7; ++r) {
    ck.expect(off[r] % 16 == 0, tag + ": region " + str(r) + " not 16-byte aligned");
    ck.expect(off[r + 1] - off[r] >= need[r], tag + ": region " + str(r) + " too small");
  }
  // 16-byte rows for the vector accesses; slot strides cover every slot a micro-tile touches.
  ck.expect((int64_t(L.x1_stride) * E) % 16 == 0 && (int64_t(L.x2_stride) * E) % 16 == 0 &&
                (int64_t(L.p_stride) * E) % 16 == 0 && (int64_t(C::kChunk) * E) % 16 == 0,
            tag + ": row strides not 16-byte multiples");
  ck.expect(L.x1_stride >= C::kRows && L.p_stride >= C::kRows && L.x2_stride >= L.x2_slots &&
                L.x2_slots % C::kMicroRows == 0 && (!grouped || L.q_stride >= L.x2_slots),
            tag + ": slot strides");
  ck.expect(L.x2_slots >= (grouped ? max_tile_groups(C::kRows, gs) : C::kRows), tag + ": x2 slots");
  ck.expect(L.max_cols == (dim_out < kMaxColTile ? dim_out : kMaxColTile), tag + ": max_cols");
}

void check_layouts(Checker& ck) {
  for (int d : {1, 9, 25, 81, 128, 200})
    for (int64_t out : {int64_t(1), int64_t(49), int64_t(289), int64_t(1000)})
      for (int kc : {1, 7, 128}) {
        check_layout_one<4>(ck, d, d / 2 + 1, out, kc, false, 1);
        check_layout_one<8>(ck, d / 3 + 1, d, out, kc, false, 1);
        for (int64_t gs : {1, 3, 128}) {
          check_layout_one<4>(ck, d, d, out, kc, true, gs);
          check_layout_one<8>(ck, d, d, out, kc, true, gs);
        }
      }
  // L = 8 (dims 81, dim_out 289): the x tiles stay resident and two blocks share an H100 SM.
  using C4 = DenseConfig<4>;
  using C8 = DenseConfig<8>;
  const int kc4 = choose_k_chunk<C4>(4, 81, 81, 289, false, 1, selftest::kSmemOptInSm90);
  const int kc8 = choose_k_chunk<C8>(8, 81, 81, 289, false, 1, selftest::kSmemOptInSm90);
  ck.expect(kc4 == 81 && kc8 == 81, "L = 8: one k-chunk (kc " + str(kc4) + ", " + str(kc8) + ")");
  const int64_t t4 = make_dense_layout<C4>(4, 81, 81, 289, kc4, false, 1).total;
  const int64_t t8 = make_dense_layout<C8>(8, 81, 81, 289, kc8, false, 1).total;
  ck.expect(2 * (t4 + kReservedPerBlock) <= kH100SmemPerSm, "L = 8 fp32: " + str(t4) + " bytes, not 2 blocks/SM");
  ck.expect(2 * (t8 + kReservedPerBlock) <= kH100SmemPerSm, "L = 8 fp64: " + str(t8) + " bytes, not 2 blocks/SM");
  // CP at L = 8 with 128 channels: resident too.
  ck.expect(choose_k_chunk<C4>(4, 81, 81, 81, true, 128, selftest::kSmemOptInSm80) == 81, "CP L = 8 kc");
  // The chosen chunk is the largest that fits, and the smallest layout fits any sm_80+ part.
  for (int64_t limit : {int64_t(60000), int64_t(99 * 1024), selftest::kSmemOptInSm80, selftest::kSmemOptInSm90}) {
    const int kc = choose_k_chunk<C8>(8, 200, 150, 1000, false, 1, limit);
    const bool fits = kc > 0 && make_dense_layout<C8>(8, 200, 150, 1000, kc, false, 1).total <= limit;
    const bool largest = kc == 128 || make_dense_layout<C8>(8, 200, 150, 1000, kc + 1, false, 1).total > limit;
    ck.expect(fits && largest, "choose_k_chunk limit " + str(limit) + " -> " + str(kc));
  }
  ck.expect(make_dense_layout<C4>(4, 1000, 1000, 100000, 1, false, 1).total <= 99 * 1024 &&
                make_dense_layout<C8>(8, 1000, 1000, 100000, 1, true, 1).total <= 99 * 1024,
            "one-row k-chunks fit 99 KB");
  ck.expect(k_chunks(0, 0, 5) == 1 && k_chunks(81, 25, 16) == 6 && k_rows(25, 1, 16) == 9 && k_rows(25, 2, 16) == 0,
            "k_chunks / k_rows");
  ck.expect(col_groups(1) == 1 && col_groups(32) == 1 && col_groups(33) == 2 && col_groups(289) == 10 &&
                col_groups(5000) == kMaxColGroups,
            "col_groups");
}

// ---------------------------------------------------------------------------------------------------
// Emulation.
struct Array {
  std::string name;
  std::vector<double> v;
};

// A launch in the kernel's terms (DenseArgs), plus the reference output.
struct DenseCase {
  std::string name;
  bool grouped = false;
  int64_t rows = 0;
  RowMap map{1, 0, 0, 0, 0};
  int d1 = 0, d2 = 0, dim_out = 0, points = 0;
  int64_t out_stride = 0, z_point_stride = 0, z_col_stride = 1;
  Array x1, x2, y1, y2, z, w;
  bool has_w = false;
  std::vector<double> want, want_abs;  // [rows, dim_out] and the sums of |terms| (tolerance scale)
};

std::vector<double> random_vector(std::mt19937_64& rng, int64_t n) {
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<double> v(static_cast<size_t>(n));
  for (auto& e : v) e = u(rng);
  return v;
}

// out[s, k] = sum_g Z[g, k] (sum_i x1[s, i] Y1[i, g]) (sum_j x2[s, j] Y2[j, g])   (gaunt.h)
DenseCase gaunt_case(std::mt19937_64& rng, int64_t samples, int d1, int d2, int dim_out, int points,
                     int64_t x1_stride, int64_t x2_stride, int64_t out_stride) {
  DenseCase c;
  c.name = "gaunt samples " + str(samples) + " dims " + str(d1) + "," + str(d2) + " out " + str(dim_out) +
           " points " + str(points) + " strides " + str(x1_stride) + "," + str(x2_stride) + "," + str(out_stride);
  c.rows = samples;
  c.map = RowMap{1, x1_stride, 0, x2_stride, 0};
  c.d1 = d1, c.d2 = d2, c.dim_out = dim_out, c.points = points;
  c.out_stride = out_stride, c.z_point_stride = dim_out, c.z_col_stride = 1;
  c.x1 = {"x1", random_vector(rng, (samples - 1) * x1_stride + d1)};
  c.x2 = {"x2", random_vector(rng, (samples - 1) * x2_stride + d2)};
  c.y1 = {"y1", random_vector(rng, int64_t(d1) * points)};
  c.y2 = {"y2", random_vector(rng, int64_t(d2) * points)};
  c.z = {"z", random_vector(rng, int64_t(points) * dim_out)};
  c.want.assign(size_t(samples * dim_out), 0.0);
  c.want_abs.assign(size_t(samples * dim_out), 0.0);
  for (int64_t s = 0; s < samples; ++s)
    for (int g = 0; g < points; ++g) {
      double f1 = 0, f2 = 0, a1 = 0, a2 = 0;
      for (int i = 0; i < d1; ++i) {
        f1 += c.x1.v[size_t(s * x1_stride + i)] * c.y1.v[size_t(i * points + g)];
        a1 += std::fabs(c.x1.v[size_t(s * x1_stride + i)] * c.y1.v[size_t(i * points + g)]);
      }
      for (int j = 0; j < d2; ++j) {
        f2 += c.x2.v[size_t(s * x2_stride + j)] * c.y2.v[size_t(j * points + g)];
        a2 += std::fabs(c.x2.v[size_t(s * x2_stride + j)] * c.y2.v[size_t(j * points + g)]);
      }
      for (int k = 0; k < dim_out; ++k) {
        const double zz = c.z.v[size_t(g * dim_out + k)];
        c.want[size_t(s * dim_out + k)] += zz * f1 * f2;
        c.want_abs[size_t(s * dim_out + k)] += std::fabs(zz) * a1 * a2;
      }
    }
  return c;
}

// out[e, c, k] = w[e, c] sum_r F3[k, r] (sum_i F1[i, r] x[e, c, i]) (sum_j F2[j, r] y[e, j])   (gaunt.h)
DenseCase cp_case(std::mt19937_64& rng, int64_t edges, int64_t channels, int d1, int d2, int dim_out, int rank,
                  int64_t x_stride, int64_t x_channel_stride, int64_t y_stride, int64_t w_stride) {
  DenseCase c;
  c.name = "cp edges " + str(edges) + " channels " + str(channels) + " dims " + str(d1) + "," + str(d2) + " out " +
           str(dim_out) + " rank " + str(rank) + " strides " + str(x_stride) + "," + str(x_channel_stride) + "," +
           str(y_stride) + "," + str(w_stride);
  c.grouped = true;
  c.rows = edges * channels;
  c.map = RowMap{channels, x_stride, x_channel_stride, y_stride, w_stride};
  c.d1 = d1, c.d2 = d2, c.dim_out = dim_out, c.points = rank;
  c.out_stride = dim_out, c.z_point_stride = 1, c.z_col_stride = rank;
  c.x1 = {"x", random_vector(rng, (edges - 1) * x_stride + (channels - 1) * x_channel_stride + d1)};
  c.x2 = {"y", random_vector(rng, (edges - 1) * y_stride + d2)};
  c.y1 = {"f1", random_vector(rng, int64_t(d1) * rank)};
  c.y2 = {"f2", random_vector(rng, int64_t(d2) * rank)};
  c.z = {"f3", random_vector(rng, int64_t(dim_out) * rank)};
  c.w = {"w", random_vector(rng, (edges - 1) * w_stride + channels)};
  c.has_w = true;
  c.want.assign(size_t(c.rows * dim_out), 0.0);
  c.want_abs.assign(size_t(c.rows * dim_out), 0.0);
  for (int64_t e = 0; e < edges; ++e)
    for (int r = 0; r < rank; ++r) {
      double q = 0, qa = 0;
      for (int j = 0; j < d2; ++j) {
        q += c.y2.v[size_t(j * rank + r)] * c.x2.v[size_t(e * y_stride + j)];
        qa += std::fabs(c.y2.v[size_t(j * rank + r)] * c.x2.v[size_t(e * y_stride + j)]);
      }
      for (int64_t ch = 0; ch < channels; ++ch) {
        double p = 0, pa = 0;
        for (int i = 0; i < d1; ++i) {
          const double t = c.y1.v[size_t(i * rank + r)] * c.x1.v[size_t(e * x_stride + ch * x_channel_stride + i)];
          p += t, pa += std::fabs(t);
        }
        const double wc = c.w.v[size_t(e * w_stride + ch)];
        for (int k = 0; k < dim_out; ++k) {
          const double f3 = c.z.v[size_t(int64_t(k) * rank + r)];
          c.want[size_t((e * channels + ch) * dim_out + k)] += wc * f3 * p * q;
          c.want_abs[size_t((e * channels + ch) * dim_out + k)] += std::fabs(wc * f3) * pa * qa;
        }
      }
    }
  return c;
}

// Shared memory of one block: doubles at the layout's offsets / E, with per-stage write counts.
struct Smem {
  std::vector<double> v;
  std::vector<int> writes;
  void poison(int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) v[size_t(e)] = kPoison;
  }
};

template <int E, bool kGrouped, int NC>
struct Emulator {
  using C = DenseConfig<E>;
  static constexpr int MR = C::kMicroRows, MP = C::kMicroPoints, TM = C::kRowsPerWarp, PC = C::kChunk;
  struct Micro {
    double v[MR][MP];
  };
  struct Acc {
    double v[TM][NC];
  };

  Checker& ck;
  const DenseCase& c;
  const DenseLayout L;
  const int k_chunks_;
  const int64_t grid;
  std::string tag;
  std::vector<double> out;
  std::vector<int> out_writes;
  bool global_ok = true, stage_ok = true, extent_ok = true;
  Smem sm;

  Emulator(Checker& checker, const DenseCase& cs, const DenseLayout& layout, int64_t grid_blocks, std::string t)
      : ck(checker), c(cs), L(layout), k_chunks_(k_chunks(cs.d1, cs.d2, layout.kc)), grid(grid_blocks), tag(std::move(t)) {}

  int64_t el(int64_t byte_offset) const { return byte_offset / E; }
  // cp.async with zero-fill: element `dst` of the buffer [lo, hi) <- a[src] if valid.
  void copy(int64_t lo, int64_t hi, int64_t dst, const Array& a, int64_t src, bool valid) {
    if (valid && (src < 0 || src >= int64_t(a.v.size()))) {
      global_ok = false;
      return;
    }
    if (dst < lo || dst >= hi) {
      extent_ok = false;
      return;
    }
    sm.v[size_t(dst)] = valid ? a.v[size_t(src)] : 0.0;
    ++sm.writes[size_t(dst)];
  }
  // Every element of [region + index(r, c)] for r < rows, c < cols written exactly once since the reset.
  template <class Index>
  void expect_staged(int64_t region, int rows, int cols, Index&& index) {
    int64_t bad = 0;
    for (int r = 0; r < rows; ++r)
      for (int q = 0; q < cols; ++q) {
        const int64_t e = region + index(r, q);
        if (e < 0 || e >= int64_t(sm.writes.size()) || sm.writes[size_t(e)] != 1) ++bad;
      }
    if (bad) stage_ok = false;
  }
  void reset_writes() { std::fill(sm.writes.begin(), sm.writes.end(), 0); }

  void run() {
    sm.v.assign(size_t(el(L.total)), kPoison);
    sm.writes.assign(size_t(el(L.total)), 0);
    out.assign(size_t(c.rows * c.out_stride), kPoison);
    out_writes.assign(out.size(), 0);
    const int64_t work = work_items(c.rows, c.dim_out, C::kRows);
    // Blocks in reverse order: the result must not depend on it.
    for (int64_t b = grid - 1; b >= 0; --b)
      for (int64_t w = b; w < work; w += grid) run_work(w);
  }

  void run_work(int64_t work) {
    sm.poison(0, el(L.total));  // nothing survives from the previous work item
    const DenseTile t = dense_tile<kGrouped>(work, c.rows, c.dim_out, C::kRows, c.map);
    const int64_t xs1 = el(L.x1), xs2 = el(L.x2), ys1 = el(L.y1), ys2 = el(L.y2), ps = el(L.p), qs = el(L.q),
                  zs = el(L.z), ztop = el(L.total);
    std::vector<Acc> acc(kThreads);
    for (auto& a : acc)
      for (auto& row : a.v)
        for (auto& e : row) e = 0.0;
    const bool resident = k_chunks_ == 1;
    const int nchunks = point_chunks(c.points, PC);
    for (int ch = 0; ch < nchunks; ++ch) {
      const int p0 = ch * PC, np = chunk_points(c.points, ch, PC);
      std::vector<Micro> f1(kThreads), f2(kThreads);
      for (int tid = 0; tid < kThreads; ++tid)
        for (int r = 0; r < MR; ++r)
          for (int q = 0; q < MP; ++q) f1[size_t(tid)].v[r][q] = f2[size_t(tid)].v[r][q] = 0.0;
      for (int kq = 0; kq < k_chunks_; ++kq) {
        const int k0 = kq * L.kc, n1 = k_rows(c.d1, kq, L.kc), n2 = k_rows(c.d2, kq, L.kc);
        const bool stage_x = !resident || ch == 0;
        // Dead data: the buffers restaged in this k-chunk.
        if (stage_x) sm.poison(xs1, ys1);
        sm.poison(ys1, ps);
        if (kq == 0) sm.poison(zs, el(L.total));
        reset_writes();
        for (int tid = 0; tid < kThreads; ++tid) {
          const int warp = tid / kWarpSize, lane = tid % kWarpSize;
          if (stage_x) {
            for_each_staged(
                warp, lane, C::kRows, n1,
                [&](int slot) { return slot < t.rows ? x1_row_offset<kGrouped>(c.map, t.row_begin + slot) + k0 : int64_t(-1); },
                [&](int slot, int i, int64_t base) {
                  copy(xs1, xs2, xs1 + xs_index(i, slot, L.x1_stride), c.x1, base + i, base >= 0);
                });
            for_each_staged(
                warp, lane, L.x2_slots, n2,
                [&](int slot) { return slot < t.groups ? x2_row_offset(c.map, t.group0 + slot) + k0 : int64_t(-1); },
                [&](int slot, int i, int64_t base) {
                  copy(xs2, ys1, xs2 + xs_index(i, slot, L.x2_stride), c.x2, base + i, base >= 0);
                });
          }
          for_each_staged(
              warp, lane, n1, PC, [&](int i) { return y_offset(k0 + i, p0, c.points); },
              [&](int i, int p, int64_t base) { copy(ys1, ys2, ys1 + ys_index<C>(i, p), c.y1, base + p, p < np); });
          for_each_staged(
              warp, lane, n2, PC, [&](int i) { return y_offset(k0 + i, p0, c.points); },
              [&](int i, int p, int64_t base) { copy(ys2, ps, ys2 + ys_index<C>(i, p), c.y2, base + p, p < np); });
          if (kq == 0) {
            if (c.z_col_stride == 1)
              for_each_staged(
                  warp, lane, PC, t.cols,
                  [&](int p) { return p < np ? z_offset(p0 + p, t.col0, c.z_point_stride, 1) : int64_t(-1); },
                  [&](int p, int col, int64_t base) { copy(zs, ztop, zs + zs_index(p, col, t.cols), c.z, base + col, base >= 0); });
            else
              for_each_staged(
                  warp, lane, t.cols, PC,
                  [&](int col) { return z_offset(p0, t.col0 + col, c.z_point_stride, c.z_col_stride); },
                  [&](int col, int p, int64_t base) {
                    copy(zs, ztop, zs + zs_index(p, col, t.cols), c.z, base + p * c.z_point_stride, p < np);
                  });
          }
        }
        if (stage_x) {
          expect_staged(xs1, n1, C::kRows, [&](int i, int s) { return xs_index(i, s, L.x1_stride); });
          expect_staged(xs2, n2, L.x2_slots, [&](int i, int s) { return xs_index(i, s, L.x2_stride); });
        }
        expect_staged(ys1, n1, PC, [&](int i, int p) { return ys_index<C>(i, p); });
        expect_staged(ys2, n2, PC, [&](int i, int p) { return ys_index<C>(i, p); });
        if (kq == 0) expect_staged(zs, PC, t.cols, [&](int p, int col) { return zs_index(p, col, t.cols); });
        // Phase A (reads stay inside the staged rows / slots).
        for (int tid = 0; tid < kThreads; ++tid) {
          const int slot0 = phase_a_slot<C>(tid), pt0 = phase_a_point<C>(tid);
          const bool in1 = (n1 == 0 || xs_index(n1 - 1, slot0 + MR - 1, L.x1_stride) < xs2 - xs1) &&
                           (n1 == 0 || ys_index<C>(n1 - 1, pt0 + MP - 1) < ys2 - ys1) && slot0 + MR <= C::kRows;
          const bool owns_f2 = !kGrouped || slot0 < t.groups;  // only they read the x2 tile
          const bool in2 = !owns_f2 || ((n2 == 0 || xs_index(n2 - 1, slot0 + MR - 1, L.x2_stride) < ys1 - xs2) &&
                                        (n2 == 0 || ys_index<C>(n2 - 1, pt0 + MP - 1) < ps - ys2) &&
                                        slot0 + MR <= L.x2_slots);
          if (!in1 || !in2 || pt0 + MP > PC) {
            extent_ok = false;
            continue;
          }
          project_accumulate(&sm.v[size_t(xs1 + slot0)], L.x1_stride, &sm.v[size_t(ys1 + pt0)], PC, n1,
                             f1[size_t(tid)].v);
          if (owns_f2) {
            project_accumulate(&sm.v[size_t(xs2 + slot0)], L.x2_stride, &sm.v[size_t(ys2 + pt0)], PC, n2,
                               f2[size_t(tid)].v);
          }
        }
      }
      // P chunk.
      sm.poison(ps, zs);
      reset_writes();
      if (kGrouped) {
        for (int tid = 0; tid < kThreads; ++tid) {
          const int slot0 = phase_a_slot<C>(tid), pt0 = phase_a_point<C>(tid);
          if (slot0 >= t.groups) continue;
          for (int q = 0; q < MP; ++q)
            for (int r = 0; r < MR; ++r) {
              const int64_t e = qs + ps_index(pt0 + q, slot0 + r, L.q_stride);
              if (e >= zs) {
                extent_ok = false;
                continue;
              }
              sm.v[size_t(e)] = f2[size_t(tid)].v[r][q];
              ++sm.writes[size_t(e)];
            }
        }
        expect_staged(qs, PC, t.groups, [&](int p, int s) { return ps_index(p, s, L.q_stride); });
      }
      for (int tid = 0; tid < kThreads; ++tid) {
        const int slot0 = phase_a_slot<C>(tid), pt0 = phase_a_point<C>(tid);
        const uint32_t qslots = kGrouped ? packed_x2_slots<kGrouped, MR>(c.map, t, slot0) : 0u;
        for (int q = 0; q < MP; ++q) {
          double v[MR];
          for (int r = 0; r < MR; ++r) {
            if (kGrouped) {
              const int s = unpack_x2_slot(qslots, r);
              if (s >= t.groups || qs + ps_index(pt0 + q, s, L.q_stride) >= zs) {
                extent_ok = false;
                v[r] = 0.0;
                continue;
              }
              v[r] = f1[size_t(tid)].v[r][q] * sm.v[size_t(qs + ps_index(pt0 + q, s, L.q_stride))];
            } else {
              v[r] = f1[size_t(tid)].v[r][q] * f2[size_t(tid)].v[r][q];
            }
          }
          const int64_t e = ps + ps_index(pt0 + q, slot0, L.p_stride);
          if (e + MR > qs) {
            extent_ok = false;
            continue;
          }
          store_vec(&sm.v[size_t(e)], v);
          for (int r = 0; r < MR; ++r) ++sm.writes[size_t(e + r)];
        }
      }
      expect_staged(ps, PC, C::kRows, [&](int p, int s) { return ps_index(p, s, L.p_stride); });
      // Phase B (every Z read inside the Z buffer; the last column group inside the tile's columns).
      for (int tid = 0; tid < kThreads; ++tid) {
        const int warp = tid / kWarpSize, lane = tid % kWarpSize, row0 = phase_b_row<C>(warp);
        const int last = phase_b_last_col(lane, NC, t.cols);
        const int64_t zmax = zs_index(PC - 1, NC > 1 ? phase_b_col(lane, NC - 2) : 0, t.cols);
        if (last >= t.cols || zmax >= ztop - zs || zs_index(PC - 1, last, t.cols) >= ztop - zs ||
            ps_index(PC - 1, row0 + TM - 1, L.p_stride) >= qs - ps) {
          extent_ok = false;
          continue;
        }
        output_accumulate<double, TM, NC, PC>(&sm.v[size_t(ps + row0)], L.p_stride, &sm.v[size_t(zs + phase_b_col(lane, 0))],
                                              &sm.v[size_t(zs + last)], t.cols, acc[size_t(tid)].v);
      }
    }
    // Epilogue.
    for (int tid = 0; tid < kThreads; ++tid) {
      const int warp = tid / kWarpSize, lane = tid % kWarpSize, row0 = phase_b_row<C>(warp);
      for (int r = 0; r < TM; ++r) {
        if (row0 + r >= t.rows) break;
        const int64_t row = t.row_begin + row0 + r;
        double s = 1.0;
        if (c.has_w) {
          const int64_t wo = w_offset<kGrouped>(c.map, row);
          if (wo < 0 || wo >= int64_t(c.w.v.size())) {
            global_ok = false;
            continue;
          }
          s = c.w.v[size_t(wo)];
        }
        for (int j = 0; j < NC; ++j) {
          const int col = phase_b_col(lane, j);
          if (col >= t.cols) continue;
          const int64_t o = row * c.out_stride + t.col0 + col;
          if (t.col0 + col >= c.dim_out || o >= int64_t(out.size())) {
            global_ok = false;
            continue;
          }
          out[size_t(o)] = acc[size_t(tid)].v[r][j] * s;
          ++out_writes[size_t(o)];
        }
      }
    }
  }

  void compare() {
    int64_t bad = 0, first_bad = -1, bad_writes = 0;
    for (int64_t row = 0; row < c.rows; ++row)
      for (int64_t e = 0; e < c.out_stride; ++e) {
        const size_t o = size_t(row * c.out_stride + e);
        if (e >= c.dim_out) {
          if (out_writes[o] != 0) ++bad_writes;
          continue;
        }
        const double want = c.want[size_t(row * c.dim_out + e)];
        const double scale = 1.0 + c.want_abs[size_t(row * c.dim_out + e)];
        if (!(std::fabs(out[o] - want) <= 1e-12 * scale)) {
          if (first_bad < 0) first_bad = int64_t(o);
          ++bad;
        }
        if (out_writes[o] != 1) ++bad_writes;
      }
    ck.expect(bad == 0, tag + ": " + str(bad) + " wrong elements (first at " + str(first_bad) + ")");
    ck.expect(bad_writes == 0, tag + ": " + str(bad_writes) + " elements not written exactly once (or gaps written)");
    ck.expect(global_ok, tag + ": a global read, scale or output write outside its array");
    ck.expect(stage_ok, tag + ": a staged shared-memory element not written exactly once per stage");
    ck.expect(extent_ok, tag + ": a shared-memory read outside its buffer's staged extent");
  }
};

template <int E, bool kGrouped, int NC = 1>
void emulate_nc(Checker& ck, const DenseCase& c, const DenseLayout& L, int64_t grid, const std::string& tag) {
  if constexpr (NC < kMaxColGroups) {
    if (col_groups(c.dim_out) != NC) return emulate_nc<E, kGrouped, NC + 1>(ck, c, L, grid, tag);
  }
  Emulator<E, kGrouped, NC> em(ck, c, L, grid, tag);
  em.run();
  em.compare();
}

// Runs one case with tile configuration E: the launch's k-chunk (kc 0: choose_k_chunk for an H100) and grid
// (0: one block per work item, as launched; smaller grids exercise the grid-stride loop).
template <int E>
void emulate(Checker& ck, const DenseCase& c, int kc, int64_t grid) {
  using C = DenseConfig<E>;
  const int64_t gs = c.map.group_size;
  if (kc == 0) kc = choose_k_chunk<C>(E, c.d1, c.d2, c.dim_out, c.grouped, gs, selftest::kSmemOptInSm90);
  const DenseLayout L = make_dense_layout<C>(E, c.d1, c.d2, c.dim_out, kc, c.grouped, gs);
  const int64_t work = work_items(c.rows, c.dim_out, C::kRows);
  if (grid == 0 || grid > work) grid = work;
  const std::string tag = c.name + " E " + str(E) + " kc " + str(kc) + " grid " + str(grid);
  if (c.grouped)
    emulate_nc<E, true>(ck, c, L, grid, tag);
  else
    emulate_nc<E, false>(ck, c, L, grid, tag);
}

void run_emulations(Checker& ck, std::mt19937_64& rng) {
  struct G {
    int64_t samples;
    int d1, d2, dim_out, points;
    int64_t x1_stride, x2_stride, out_stride;
    int kc;
    int64_t grid;
  };
  const G gaunt[] = {
      {1, 1, 1, 1, 1, 1, 1, 1, 0, 0},
      {37, 9, 25, 49, 25, 11, 0, 50, 0, 0},           // x2 broadcast, padded x1 / out rows
      {1000, 25, 9, 1, 37, 25, 9, 1, 0, 5},           // dim_out 1, grid-stride loop
      {100, 81, 81, 289, 561, 81, 81, 289, 0, 0},     // L = 8
      {65, 4, 16, 16, 32, 0, 16, 16, 0, 1},           // x1 broadcast, one block for every tile
      {70, 81, 25, 400, 33, 81, 30, 401, 16, 0},      // two column tiles, 6 k-chunks (x tiles restaged)
      {37, 130, 5, 49, 20, 130, 5, 49, 0, 0},         // dim1 past kMaxKChunk
      {33, 1, 81, 81, 561, 1, 81, 81, 7, 3},          // odd k-chunk
  };
  for (const G& g : gaunt) {
    const DenseCase c = gaunt_case(rng, g.samples, g.d1, g.d2, g.dim_out, g.points, g.x1_stride, g.x2_stride, g.out_stride);
    emulate<4>(ck, c, g.kc, g.grid);
    emulate<8>(ck, c, g.kc, g.grid);
  }
  struct P {
    int64_t edges, channels;
    int d1, d2, dim_out, rank;
    int64_t x_pad, x_channel_pad, y_stride_pad, w_stride;  // w_stride < 0: channels (contiguous)
    int kc;
    int64_t grid;
  };
  const P cps[] = {
      {1, 1, 1, 1, 1, 1, 0, 0, 0, -1, 0, 0},
      {5, 3, 9, 9, 9, 28, 1, 2, 3, 0, 0, 0},          // padded x rows / channels, shared w
      {37, 128, 25, 16, 49, 112, 0, 0, 0, -1, 0, 0},  // channels >= tile: two edges per tile at most
      {3, 128, 81, 81, 81, 448, 0, 0, 0, -1, 0, 0},   // L = 8, rank 7 L^2
      {11, 1, 81, 49, 81, 112, 0, 0, 0, 0, 0, 0},     // one channel: a group per row
      {9, 70, 16, 9, 300, 28, 0, 0, 0, -1, 5, 0},     // wide output (NC 10), k-chunks of 5
      {40, 3, 9, 25, 25, 28, 0, 0, 0, -1, 0, 2},      // groups straddling tiles, grid-stride loop
  };
  for (const P& p : cps) {
    const int64_t xcs = p.d1 + p.x_channel_pad;
    const int64_t xs = p.channels * xcs + p.x_pad;
    const int64_t ws = p.w_stride < 0 ? p.channels : p.w_stride;
    const DenseCase c = cp_case(rng, p.edges, p.channels, p.d1, p.d2, p.dim_out, p.rank, xs, xcs, p.d2 + p.y_stride_pad, ws);
    emulate<4>(ck, c, p.kc, p.grid);
    emulate<8>(ck, c, p.kc, p.grid);
  }
}

}  // namespace

int gaunt_cuda_layout_selftest(std::string* report) {
  Checker ck{report};
  std::mt19937_64 rng(20260112);
  check_groups(ck);
  check_layouts(ck);
  run_emulations(ck, rng);
  if (report)
    *report += "gaunt cuda layout selftest: " + std::to_string(ck.checks) + " checks, " + std::to_string(ck.failures) +
               " failures\n";
  return ck.failures;
}

}  // namespace so3
}  // namespace fastops
