// CPU checks of the CUDA tensor-product kernels' index math (so3_cuda_layout.h) against definitions written
// independently from so3.h: the CG packing, the (u, v, w) triples each owner enumerates per mode and role,
// the weight-block indexing, the fast-path table offsets, the sorted CG copies and their ranges, the launch
// plan and the shared-memory layout. Then whole grids of so3_forward_kernel / so3_backward_kernel are
// emulated block by block and thread by thread with the same helpers and the kernels' phase order
// (table staging, the parallel row-start search, the visit ring with slot tags, single or double buffers,
// M per sample, the warp shuffle tree of B, row flushes and empty-row zeroing, per-sample grad_x2 and
// grad_weight, shared-weight partials and their reduction) on small random plans of every mode, and compared
// with a direct double-precision evaluation of so3.h; every output element must be written exactly once in
// deterministic mode, and every shared-memory accumulator element must have one owning thread.
#include "so3/so3_cuda_layout_test.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "common/selftest.h"
#include "so3/so3.h"
#include "so3/so3_cuda_layout.h"

namespace fastops {
namespace so3 {
namespace {

using namespace cuda_layout;
using Checker = SelfTestChecker;

using selftest::str;
using selftest::kPoison;

// ---------------------------------------------------------------------------------------------------
// Unit checks.
void check_packing(Checker& ck) {
  for (int i = 0; i < 40; ++i)
    for (int j = 0; j < 40; ++j)
      for (int k = 0; k < 40; ++k) {
        const int32_t p = pack_ijk(i, j, k);
        if (cg_i(p) != i || cg_j(p) != j || cg_k(p) != k)
          ck.expect(false, "pack_ijk(" + str(i) + ", " + str(j) + ", " + str(k) + ")");
      }
  for (int v : {0, 1, 511, 1000, kMaxPackedDim - 1}) {
    const int32_t p = pack_ijk(v, kMaxPackedDim - 1 - v, v);
    ck.expect(cg_i(p) == v && cg_j(p) == kMaxPackedDim - 1 - v && cg_k(p) == v, "pack_ijk extremes " + str(v));
  }
}

PathInfo info(Mode m, int mul1, int mul2, int mul_out) {
  PathInfo P{};
  P.mode = int32_t(m);
  P.mul1 = mul1;
  P.mul2 = mul2;
  P.mul_out = mul_out;
  P.d1 = P.d2 = P.d3 = 1;
  return P;
}

// Every valid (u, v, w) of a mode straight from so3.h's formulas.
std::set<std::tuple<int, int, int>> valid_triples(Mode m, int mul1, int mul2, int mul_out) {
  std::set<std::tuple<int, int, int>> s;
  for (int u = 0; u < mul1; ++u)
    for (int v = 0; v < mul2; ++v)
      for (int w = 0; w < mul_out; ++w) {
        const bool ok = m == Mode::uvw || (m == Mode::uvu && w == u) || (m == Mode::uuw && v == u) ||
                        (m == Mode::uuu && v == u && w == u);
        if (ok) s.insert({u, v, w});
      }
  return s;
}

void check_triples(Checker& ck) {
  const int muls[] = {0, 1, 2, 3, 5};
  for (int mode = 0; mode < 4; ++mode)
    for (int m1 : muls)
      for (int m2 : muls)
        for (int mo : muls) {
          const Mode m = Mode(mode);
          if ((m == Mode::uvu && mo != m1) || (m == Mode::uuw && m2 != m1) || (m == Mode::uuu && (m2 != m1 || mo != m1)))
            continue;
          const PathInfo P = info(m, m1, m2, mo);
          const auto valid = valid_triples(m, m1, m2, mo);
          const std::string what = "mode " + str(mode) + " muls " + str(m1) + "," + str(m2) + "," + str(mo);
          for (int role = 0; role < 3; ++role) {
            std::map<std::tuple<int, int, int>, int> seen;
            bool owner_ok = true;
            for (int o = 0; o < role_owners(P, role); ++o) {
              const PairExtent e = pair_extent(P, role);
              for (int a = 0; a < e.na; ++a)
                for (int b = 0; b < e.nb; ++b) {
                  const Triple t = pair_triple(P, role, o, a, b);
                  ++seen[{t.u, t.v, t.w}];
                  const int own = role == kRoleOut ? t.w : role == kRoleX1 ? t.u : t.v;
                  owner_ok = owner_ok && own == o;
                }
            }
            bool ok = seen.size() == valid.size();
            for (const auto& kv : seen) ok = ok && kv.second == 1 && valid.count(kv.first) == 1;
            ck.expect(ok, "pair_triple covers the valid triples once: " + what + " role " + str(role));
            ck.expect(owner_ok, "pair_triple keeps the owner's index: " + what + " role " + str(role));
          }
          std::set<int32_t> idx;
          bool in_range = true;
          for (const auto& t : valid) {
            const int32_t i = weight_index(P, Triple{std::get<0>(t), std::get<1>(t), std::get<2>(t)});
            idx.insert(i);
            in_range = in_range && i >= 0 && i < weight_block_size(P);
          }
          ck.expect(in_range && int64_t(idx.size()) == weight_block_size(P) && idx.size() == valid.size(),
                    "weight_index is a bijection onto the weight block: " + what);
        }
}

void check_load_path_info(Checker& ck, std::mt19937_64& rng) {
  for (int trial = 0; trial < 100; ++trial) {
    int64_t f[kPathFields];
    for (int64_t& v : f) v = int64_t(rng() % 5000);
    f[kMode] = int64_t(rng() % 4);
    f[kWeightOffset] = rng() % 3 ? f[kWeightOffset] : -1 - int64_t(rng() % 3);
    const PathInfo P = load_path_info(f, 0);
    const bool ok = P.mode == f[kMode] && P.d1 == 2 * f[kL1] + 1 && P.d2 == 2 * f[kL2] + 1 && P.d3 == 2 * f[kL3] + 1 &&
                    P.mul1 == f[kMul1] && P.mul2 == f[kMul2] && P.mul_out == f[kMulOut] && P.x1_off == f[kX1Offset] &&
                    P.x2_off == f[kX2Offset] && P.out_off == f[kOutOffset] &&
                    P.w_off == (f[kWeightOffset] < 0 ? -1 : f[kWeightOffset]) && P.cg_begin == f[kCgBegin] &&
                    P.cg_count == f[kCgCount] && P.fast == -1;
    ck.expect(ok, "load_path_info trial " + str(trial));
  }
}

void check_fast_offsets(Checker& ck, std::mt19937_64& rng) {
  for (int trial = 0; trial < 200; ++trial) {
    const int n = int(rng() % 12);
    std::vector<PathInfo> ps(static_cast<size_t>(n));
    for (auto& P : ps) {
      P = info(Mode(rng() % 4), 1 + int(rng() % 4), 1 + int(rng() % 2), 0);
      P.mul_out = rng() % 4 ? P.mul1 : P.mul1 + 1;
      P.d1 = 1 + 2 * int(rng() % 5);
      P.d2 = 1 + 2 * int(rng() % 5);
      P.d3 = 1 + 2 * int(rng() % 5);
      P.cg_count = int(rng() % 30);
    }
    for (int vec : {2, 4}) {
      std::vector<PathInfo> q = ps;
      const FastTotals t = assign_fast_offsets(q.data(), n, vec);
      int64_t nf = 0, m = 0, f = 0, j = 0;
      bool ok = true;
      for (const PathInfo& P : q) {
        const bool fast = P.mode == int(Mode::uvu) && P.mul2 == 1 && P.mul_out == P.mul1 && P.d1 <= 7 && P.d3 <= 7;
        if (!fast) {
          ok = ok && P.fast == -1;
          continue;
        }
        ok = ok && P.fast == nf && P.m_off == m && P.f_off == f && P.j_off == j;
        ok = ok && m_row_stride(P.d3, vec) % vec == 0 && m_row_stride(P.d3, vec) >= P.d3 &&
             m_row_stride(P.d3, vec) < P.d3 + vec;
        ++nf;
        m += int64_t(P.d1) * ((P.d3 + vec - 1) / vec * vec);
        f += P.cg_count;
        j += P.d2;
      }
      ck.expect(ok && t.num_fast == nf && t.m_total == m && t.f_total == f && t.j_total == j && same_totals(t, t),
                "assign_fast_offsets trial " + str(trial) + " vec " + str(vec));
    }
  }
}

void check_ranks(Checker& ck, std::mt19937_64& rng) {
  for (int trial = 0; trial < 300; ++trial) {
    const int d1 = 1 + 2 * int(rng() % 4), d2 = 1 + 2 * int(rng() % 5), d3 = 1 + 2 * int(rng() % 4);
    const int vec = rng() % 2 ? 2 : 4, d3p = m_row_stride(d3, vec);
    const int count = int(rng() % 50), begin = int(rng() % 5);
    std::vector<int32_t> idx(size_t(begin + count), pack_ijk(0, 0, 0));
    for (int r = 0; r < count; ++r)
      idx[size_t(begin + r)] = pack_ijk(int(rng() % d1), int(rng() % d2), int(rng() % d3));
    std::vector<int> by_e(static_cast<size_t>(count)), by_j(static_cast<size_t>(count));
    for (int r = 0; r < count; ++r) by_e[size_t(r)] = by_j[size_t(r)] = r;
    std::stable_sort(by_e.begin(), by_e.end(), [&](int x, int y) {
      return entry_of(idx[size_t(begin + x)], d3p) < entry_of(idx[size_t(begin + y)], d3p);
    });
    std::stable_sort(by_j.begin(), by_j.end(),
                     [&](int x, int y) { return cg_j(idx[size_t(begin + x)]) < cg_j(idx[size_t(begin + y)]); });
    bool ok = true;
    for (int q = 0; q < count; ++q) {
      ok = ok && rank_by_entry(idx.data(), begin, count, by_e[size_t(q)], d3p) == q;
      ok = ok && rank_by_j(idx.data(), begin, count, by_j[size_t(q)]) == q;
    }
    const int base = int(rng() % 100);
    int pos = 0;
    for (int e = 0; e < d1 * d3p; ++e) {
      const Range r = range_by_entry(idx.data(), begin, count, e, d3p, base);
      ok = ok && r.start == base + pos;
      for (int q = 0; q < r.count; ++q) ok = ok && entry_of(idx[size_t(begin + by_e[size_t(pos + q)])], d3p) == e;
      ok = ok && (e % d3p < d3 || r.count == 0);
      pos += r.count;
    }
    ok = ok && pos == count;
    pos = 0;
    for (int j = 0; j < d2; ++j) {
      const Range r = range_by_j(idx.data(), begin, count, j, base);
      ok = ok && r.start == base + pos;
      for (int q = 0; q < r.count; ++q) ok = ok && cg_j(idx[size_t(begin + by_j[size_t(pos + q)])]) == j;
      pos += r.count;
    }
    ck.expect(ok && pos == count, "rank_by_entry / rank_by_j / ranges trial " + str(trial));
  }
}

void check_launch_plan(Checker& ck) {
  for (int64_t batch = 0; batch < 300; batch += (batch < 40 ? 1 : 7))
    for (int64_t target : {int64_t(1), int64_t(3), int64_t(17), int64_t(1000)})
      for (int64_t maxb : {int64_t(1), int64_t(2), int64_t(5), kMaxGrid}) {
        const LaunchPlan lp = make_launch(batch, target, maxb);
        bool ok = lp.slice >= 1;
        if (batch == 0) {
          ok = ok && lp.blocks == 0;
        } else {
          ok = ok && lp.slice >= kMinSlice && lp.blocks * lp.slice >= batch && (lp.blocks - 1) * lp.slice < batch;
          ok = ok && lp.blocks <= std::max<int64_t>(1, std::min(target, maxb));
        }
        ck.expect(ok, "make_launch batch " + str(batch) + " target " + str(target) + " max " + str(maxb));
      }
  for (int64_t batch = 0; batch < 200; ++batch)
    for (int64_t sms : {1, 7, 132})
      for (int64_t wn : {int64_t(1), int64_t(5000), int64_t(1) << 21, int64_t(1) << 26}) {
        const int64_t parts = shared_weight_partials(batch, sms, wn);
        const LaunchPlan lp = make_launch(batch, 4 * sms * 8, parts);
        const bool bounded = parts <= kSharedBlocksPerSm * sms && (parts == 1 || parts * wn <= kSharedPartialElems);
        const bool full = wn > kSharedPartialElems / (kSharedBlocksPerSm * sms) ||
                          parts == std::min(ceil_div(batch, kMinSlice), kSharedBlocksPerSm * sms);
        ck.expect(batch == 0 ? parts == 0 : (parts >= 1 && lp.blocks <= parts && bounded && full),
                  "shared_weight_partials bounds the grid and the workspace: batch " + str(batch) + " sms " +
                      str(sms) + " weight_numel " + str(wn));
      }
  for (int64_t m = 0; m < 600; ++m) {
    const int t = block_threads(m);
    ck.expect(t % kWarpSize == 0 && t >= kMinThreads && t <= kMaxThreads && (t >= m || t == kMaxThreads) &&
                  (t < m + kWarpSize || t == kMinThreads),
              "block_threads " + str(m));
  }
}

void check_layout(Checker& ck, std::mt19937_64& rng) {
  for (int trial = 0; trial < 400; ++trial) {
    SmemSizes s{};
    s.num_paths = int64_t(rng() % 20);
    s.num_cg = int64_t(rng() % 500);
    s.m_total = int64_t(rng() % 300);
    s.f_total = int64_t(rng() % 400);
    s.j_total = int64_t(rng() % 50);
    s.dim1 = int64_t(rng() % 3000);
    s.dim2 = int64_t(rng() % 40);
    s.dim_out = int64_t(rng() % 3000);
    s.weight_numel = int64_t(rng() % 3000);
    s.esz = rng() % 2 ? 4 : 8;
    s.nbuf = rng() % 2 ? 1 : 2;
    s.backward = rng() % 2;
    s.acc_dim = s.backward ? (rng() % 2 ? s.dim1 : 0) : s.dim_out;
    s.want_gx2 = rng() % 2;
    s.stage_w = rng() % 2;
    s.shared_w = rng() % 2;
    s.gw_smem = rng() % 2;
    const SmemLayout L = make_smem_layout(s);
    const int64_t e = s.esz, vec = 16 / s.esz;
    const bool jt = s.backward && s.want_gx2;
    struct Reg {
      int64_t off, bytes;
      const char* name;
    };
    const int64_t wbufs = !s.stage_w ? 0 : s.shared_w ? 1 : s.nbuf;
    const Reg regs[] = {
        {L.paths, s.num_paths * int64_t(sizeof(PathInfo)), "paths"},
        {L.cg_idx, s.num_cg * 4, "cg_idx"},
        {L.cg_val, s.num_cg * e, "cg_val"},
        {L.mt_idx, s.f_total * 4, "mt_idx"},
        {L.mt_val, s.f_total * e, "mt_val"},
        {L.jt_idx, jt ? s.f_total * 4 : 0, "jt_idx"},
        {L.jt_val, jt ? s.f_total * e : 0, "jt_val"},
        {L.ent, s.m_total * int64_t(sizeof(Range)), "ent"},
        {L.jrun, jt ? s.j_total * int64_t(sizeof(Range)) : 0, "jrun"},
        {L.m, s.nbuf * L.m_len * e, "m"},
        {L.bmat, jt ? L.m_len * e : 0, "bmat"},
        {L.x1, s.nbuf * L.x1_len * e, "x1"},
        {L.x2, s.nbuf * L.x2_len * e, "x2"},
        {L.g, s.backward ? s.nbuf * L.g_len * e : 0, "g"},
        {L.w, wbufs * L.w_len * e, "w"},
        {L.acc, s.acc_dim * e, "acc"},
        {L.gx2, jt ? s.dim2 * e : 0, "gx2"},
        {L.gw, s.backward && s.gw_smem ? s.weight_numel * e : 0, "gw"},
        {L.ring, kInfoRing * int64_t(sizeof(Visit)), "ring"},
        {L.scratch, 16, "scratch"},
    };
    bool ok = L.m_len >= s.m_total && L.x1_len >= s.dim1 && L.x2_len >= s.dim2 &&
              (!s.backward || L.g_len >= s.dim_out) && (!s.stage_w || L.w_len >= s.weight_numel);
    ok = ok && L.m_len % vec == 0 && L.x1_len % vec == 0 && L.x2_len % vec == 0 && L.g_len % vec == 0 &&
         L.w_len % vec == 0 && L.nbuf == s.nbuf;
    std::vector<std::pair<int64_t, int64_t>> spans;
    for (const Reg& r : regs) {
      ok = ok && r.off % 16 == 0 && r.off >= 0 && r.off + r.bytes <= L.total;
      if (r.bytes > 0) spans.push_back({r.off, r.off + r.bytes});
    }
    std::sort(spans.begin(), spans.end());
    for (size_t i = 1; i < spans.size(); ++i) ok = ok && spans[i - 1].second <= spans[i].first;
    ck.expect(ok, "make_smem_layout trial " + str(trial));
  }
}

// ---------------------------------------------------------------------------------------------------
// Test plans and problems.
struct Irrep {
  int mul, l;
};
struct PathSpec {
  Mode mode;
  int b1, b2, bo;
  bool weighted;
};
struct TestPlan {
  std::vector<int64_t> paths;
  std::vector<int32_t> ijk;
  std::vector<double> val;
  int64_t dim1 = 0, dim2 = 0, dim_out = 0, wn = 0, num_paths = 0;
  PlanView view() const {
    PlanView v;
    v.dim1 = dim1, v.dim2 = dim2, v.dim_out = dim_out, v.weight_numel = wn;
    v.num_paths = num_paths, v.num_cg = int64_t(val.size());
    v.paths = paths.data(), v.cg_ijk = ijk.data(), v.cg_value = val.data();
    return v;
  }
};

double uniform(std::mt19937_64& rng, double lo, double hi) {
  return lo + (hi - lo) * double(rng() >> 11) / double(uint64_t(1) << 53);
}

TestPlan make_plan(const std::vector<Irrep>& in1, const std::vector<Irrep>& in2, const std::vector<Irrep>& out,
                   const std::vector<PathSpec>& specs, int weight_gap, std::mt19937_64& rng) {
  auto offsets = [](const std::vector<Irrep>& ir, int64_t* dim) {
    std::vector<int64_t> o;
    int64_t d = 0;
    for (const Irrep& r : ir) o.push_back(d), d += int64_t(r.mul) * (2 * r.l + 1);
    *dim = d;
    return o;
  };
  TestPlan tp;
  const auto o1 = offsets(in1, &tp.dim1), o2 = offsets(in2, &tp.dim2), oo = offsets(out, &tp.dim_out);
  for (const PathSpec& s : specs) {
    const Irrep a = in1[size_t(s.b1)], b = in2[size_t(s.b2)], c = out[size_t(s.bo)];
    PathInfo P = info(s.mode, a.mul, b.mul, c.mul);
    int64_t f[kPathFields];
    f[kMode] = int64_t(s.mode);
    f[kL1] = a.l, f[kL2] = b.l, f[kL3] = c.l;
    f[kMul1] = a.mul, f[kMul2] = b.mul, f[kMulOut] = c.mul;
    f[kX1Offset] = o1[size_t(s.b1)], f[kX2Offset] = o2[size_t(s.b2)], f[kOutOffset] = oo[size_t(s.bo)];
    if (s.weighted) tp.wn += weight_gap;
    f[kWeightOffset] = s.weighted ? tp.wn : -1;
    if (s.weighted) tp.wn += weight_block_size(P);
    f[kCgBegin] = int64_t(tp.val.size());
    const int d1 = 2 * a.l + 1, d2 = 2 * b.l + 1, d3 = 2 * c.l + 1;
    int64_t count = 0;
    for (int i = 0; i < d1; ++i)
      for (int j = 0; j < d2; ++j)
        for (int k = 0; k < d3; ++k)
          if (uniform(rng, 0, 1) < 0.4) {
            tp.ijk.insert(tp.ijk.end(), {i, j, k});
            tp.val.push_back(uniform(rng, 0.25, 1.25));
            ++count;
          }
    if (count == 0) {
      tp.ijk.insert(tp.ijk.end(), {d1 - 1, 0, d3 / 2});
      tp.val.push_back(0.75);
      ++count;
    }
    f[kCgCount] = count;
    tp.paths.insert(tp.paths.end(), f, f + kPathFields);
    ++tp.num_paths;
  }
  return tp;
}

struct Data {
  int64_t batch = 0, x1_rows = 0, out_rows = 0;
  int64_t x1_stride = 0, x2_stride = 0, w_stride = 0, g_stride = 0;
  std::vector<double> x1, x2, w, g;
  bool has_x1_index = false, has_out_index = false;
  std::vector<int64_t> x1_index, out_index, out_order, x1_order;
};

std::vector<int64_t> stable_order(const std::vector<int64_t>& key) {
  std::vector<int64_t> o(key.size());
  for (size_t i = 0; i < o.size(); ++i) o[i] = int64_t(i);
  std::stable_sort(o.begin(), o.end(), [&](int64_t a, int64_t b) { return key[size_t(a)] < key[size_t(b)]; });
  return o;
}

// index_kind: 0 none, 1 random, 2 all samples on one row, 3 sparse rows (empty rows between and around).
Data make_data(const TestPlan& tp, int64_t batch, int x1_kind, int out_kind, bool shared_w, std::mt19937_64& rng) {
  Data d;
  d.batch = batch;
  auto rows_for = [&](int kind, std::vector<int64_t>* idx, int64_t* rows) {
    if (kind == 0) {
      *rows = batch;
      return false;
    }
    *rows = kind == 2 ? 3 : kind == 3 ? 4 * batch + 5 : std::max<int64_t>(1, batch / 3 + 1);
    idx->resize(size_t(batch));
    for (int64_t t = 0; t < batch; ++t) {
      int64_t r = int64_t(rng() % uint64_t(*rows));
      if (kind == 2) r = 1;
      if (kind == 3) r = 2 + 4 * int64_t(rng() % uint64_t(batch));
      (*idx)[size_t(t)] = r;
    }
    return true;
  };
  d.has_x1_index = rows_for(x1_kind, &d.x1_index, &d.x1_rows);
  d.has_out_index = rows_for(out_kind, &d.out_index, &d.out_rows);
  if (d.has_out_index) d.out_order = stable_order(d.out_index);
  if (d.has_x1_index) d.x1_order = stable_order(d.x1_index);
  d.x1_stride = tp.dim1 + 3;
  d.x2_stride = tp.dim2 + 1;
  d.w_stride = shared_w ? 0 : tp.wn + 2;
  d.g_stride = tp.dim_out + 5;
  auto fill = [&](std::vector<double>& v, int64_t n) {
    v.resize(size_t(std::max<int64_t>(n, 0)));
    for (double& x : v) x = uniform(rng, 0.5, 1.5);
  };
  fill(d.x1, d.x1_rows * d.x1_stride);
  fill(d.x2, batch * d.x2_stride);
  fill(d.w, shared_w ? tp.wn : batch * d.w_stride);
  fill(d.g, d.out_rows * d.g_stride);
  return d;
}

// Direct evaluation of so3.h (double).
struct Reference {
  std::vector<double> out, gx1, gx2, gw;
};
Reference reference(const TestPlan& tp, const Data& d) {
  Reference r;
  r.out.assign(size_t(d.out_rows * tp.dim_out), 0.0);
  r.gx1.assign(size_t(d.x1_rows * tp.dim1), 0.0);
  r.gx2.assign(size_t(d.batch * tp.dim2), 0.0);
  const bool shared = d.w_stride == 0;
  r.gw.assign(size_t((shared ? 1 : d.batch) * tp.wn), 0.0);
  for (int64_t t = 0; t < d.batch; ++t) {
    const int64_t r1 = d.has_x1_index ? d.x1_index[size_t(t)] : t, ro = d.has_out_index ? d.out_index[size_t(t)] : t;
    const double* x1 = &d.x1[size_t(r1 * d.x1_stride)];
    const double* x2 = &d.x2[size_t(t * d.x2_stride)];
    const double* w = tp.wn ? &d.w[size_t(shared ? 0 : t * d.w_stride)] : nullptr;
    const double* g = &d.g[size_t(ro * d.g_stride)];
    for (int64_t p = 0; p < tp.num_paths; ++p) {
      const int64_t* f = &tp.paths[size_t(p * kPathFields)];
      const Mode m = Mode(f[kMode]);
      const int64_t d1 = 2 * f[kL1] + 1, d2 = 2 * f[kL2] + 1, d3 = 2 * f[kL3] + 1;
      const int64_t m1 = f[kMul1], m2 = f[kMul2], mo = f[kMulOut];
      for (const auto& uvw : valid_triples(m, int(m1), int(m2), int(mo))) {
        const int64_t u = std::get<0>(uvw), v = std::get<1>(uvw), ww = std::get<2>(uvw);
        const int64_t widx = m == Mode::uvw ? (u * m2 + v) * mo + ww : m == Mode::uvu ? u * m2 + v
                             : m == Mode::uuw ? u * mo + ww : u;
        const double W = f[kWeightOffset] >= 0 ? w[f[kWeightOffset] + widx] : 1.0;
        for (int64_t n = f[kCgBegin]; n < f[kCgBegin] + f[kCgCount]; ++n) {
          const int64_t i = tp.ijk[size_t(3 * n)], j = tp.ijk[size_t(3 * n + 1)], k = tp.ijk[size_t(3 * n + 2)];
          const double c = tp.val[size_t(n)];
          const double a = x1[f[kX1Offset] + u * d1 + i], b = x2[f[kX2Offset] + v * d2 + j];
          const double go = g[f[kOutOffset] + ww * d3 + k];
          r.out[size_t(ro * tp.dim_out + f[kOutOffset] + ww * d3 + k)] += W * c * a * b;
          r.gx1[size_t(r1 * tp.dim1 + f[kX1Offset] + u * d1 + i)] += W * c * b * go;
          r.gx2[size_t(t * tp.dim2 + f[kX2Offset] + v * d2 + j)] += W * c * a * go;
          if (f[kWeightOffset] >= 0) r.gw[size_t((shared ? 0 : t) * tp.wn + f[kWeightOffset] + widx)] += c * a * b * go;
        }
      }
    }
  }
  return r;
}

// ---------------------------------------------------------------------------------------------------
// Emulation of so3_tp_kernel (so3_cuda.cu) for T = double, one block at a time, every phase as a loop over
// the block's threads in the kernel's order.
struct EmuConfig {
  bool backward = false, deterministic = true;
  int nthreads = 32;
  int64_t slice = 8;
  int nbuf = 2;
  bool stage_w = true, gw_smem = true;
  bool want_x1 = true, want_x2 = true, want_w = true;
};

struct EmuOut {
  std::vector<double> out, gx2, gw, ws;  // out: forward output or grad_x1
  std::vector<int> writes, gx2_writes, gw_writes;
  int64_t blocks = 0;
};

struct Emulator {
  using T = double;
  static constexpr int kVec = vec_elems(int(sizeof(T)));
  Checker& ck;
  const TestPlan& tp;
  const Data& d;
  EmuConfig cfg;
  std::string tag;
  // host-side flags (as forward() / backward() set them)
  bool keyed = false, det_rows = false, sorted = false, has_acc = false, want_gx2 = false, want_gw = false;
  bool gw_add = false, shared_w = false, stage_w = false, gw_smem = false, path_sync = false, any_weight = false;
  int64_t acc_rows = 0, acc_dim = 0;
  FastTotals totals{};
  SmemLayout L{};
  const int64_t* order = nullptr;
  EmuOut& o;

  // per-block state
  std::vector<double> smem_store;
  unsigned char* smem = nullptr;
  int64_t block = 0;
  std::vector<int> ring_tag;
  std::vector<int> acc_owner, gx2_owner;
  bool race = false, ring_ok = true;

  Emulator(Checker& c, const TestPlan& p, const Data& data, const EmuConfig& conf, const std::string& t, EmuOut& out)
      : ck(c), tp(p), d(data), cfg(conf), tag(t), o(out) {}

  template <class U>
  U* region(int64_t off) const {
    return reinterpret_cast<U*>(smem + off);
  }
  PathInfo* paths() const { return region<PathInfo>(L.paths); }
  int32_t* cg_idx() const { return region<int32_t>(L.cg_idx); }
  T* cg_val() const { return region<T>(L.cg_val); }
  int32_t* mt_idx() const { return region<int32_t>(L.mt_idx); }
  T* mt_val() const { return region<T>(L.mt_val); }
  int32_t* jt_idx() const { return region<int32_t>(L.jt_idx); }
  T* jt_val() const { return region<T>(L.jt_val); }
  Range* ent() const { return region<Range>(L.ent); }
  Range* jrun() const { return region<Range>(L.jrun); }
  T* mbuf(int b) const { return region<T>(L.m) + b * L.m_len; }
  T* bmat() const { return region<T>(L.bmat); }
  T* x1buf(int b) const { return region<T>(L.x1) + b * L.x1_len; }
  T* x2buf(int b) const { return region<T>(L.x2) + b * L.x2_len; }
  T* gbuf(int b) const { return region<T>(L.g) + b * L.g_len; }
  T* wbuf(int b) const { return region<T>(L.w) + b * L.w_len; }
  T* acc() const { return region<T>(L.acc); }
  T* gx2own() const { return region<T>(L.gx2); }
  T* gwsm() const { return region<T>(L.gw); }
  Visit* ring() const { return region<Visit>(L.ring); }
  bool want_jt() const { return cfg.backward && want_gx2; }
  int nthr() const { return cfg.nthreads; }
  int num_paths() const { return int(tp.num_paths); }

  // The host side of forward() / backward().
  bool configure() {
    const PlanView plan = tp.view();
    std::vector<PathInfo> ps(static_cast<size_t>(plan.num_paths));
    for (int64_t p = 0; p < plan.num_paths; ++p) {
      ps[size_t(p)] = load_path_info(plan.paths, p);
      if (ps[size_t(p)].w_off >= 0) any_weight = true;
    }
    totals = assign_fast_offsets(ps.data(), plan.num_paths, kVec);
    shared_w = d.w_stride == 0;
    if (!cfg.backward) {
      keyed = d.has_out_index;
      has_acc = true;
      det_rows = cfg.deterministic || !keyed;
      sorted = keyed && det_rows;
      acc_rows = d.out_rows;
      acc_dim = tp.dim_out;
      order = d.has_out_index ? d.out_order.data() : nullptr;
    } else {
      keyed = d.has_x1_index;
      has_acc = cfg.want_x1 && tp.dim1 > 0;
      det_rows = has_acc && (cfg.deterministic || !keyed);
      sorted = has_acc && keyed && det_rows;
      acc_rows = d.x1_rows;
      acc_dim = has_acc ? tp.dim1 : 0;
      order = d.has_x1_index ? d.x1_order.data() : nullptr;
      want_gx2 = cfg.want_x2 && tp.dim2 > 0;
      want_gw = cfg.want_w && tp.wn > 0 && any_weight;
      // weight blocks tile [0, wn) exactly (test plans: disjoint, in path order) or a memset + add
      int64_t end = 0;
      bool exact = true;
      for (const PathInfo& P : ps) {
        if (P.w_off < 0 || weight_block_size(P) == 0) continue;
        exact = exact && P.w_off == end;
        end = P.w_off + weight_block_size(P);
      }
      exact = exact && end == tp.wn;
      gw_add = want_gw && (shared_w || !exact);
    }
    stage_w = cfg.stage_w && any_weight;
    gw_smem = cfg.backward && want_gw && shared_w && cfg.gw_smem;
    SmemSizes s{};
    s.num_paths = plan.num_paths, s.num_cg = plan.num_cg;
    s.m_total = totals.m_total, s.f_total = totals.f_total, s.j_total = totals.j_total;
    s.dim1 = tp.dim1, s.dim2 = tp.dim2, s.dim_out = tp.dim_out, s.weight_numel = tp.wn, s.acc_dim = acc_dim;
    s.esz = 8, s.nbuf = cfg.nbuf, s.backward = cfg.backward, s.want_gx2 = want_gx2, s.stage_w = stage_w;
    s.shared_w = shared_w, s.gw_smem = gw_smem;
    L = make_smem_layout(s);
    const int64_t out_len = cfg.backward ? d.x1_rows * tp.dim1 : d.out_rows * tp.dim_out;
    o.out.assign(size_t(out_len), has_acc && !det_rows ? 0.0 : kPoison);  // atomic mode: memset first
    o.writes.assign(size_t(out_len), 0);
    o.gx2.assign(size_t(d.batch * tp.dim2), kPoison);
    o.gx2_writes.assign(o.gx2.size(), 0);
    o.gw.assign(size_t((shared_w ? 1 : d.batch) * tp.wn), !shared_w && gw_add ? 0.0 : kPoison);
    o.gw_writes.assign(o.gw.size(), 0);
    o.blocks = ceil_div(d.batch, cfg.slice);
    if (want_gw && shared_w) o.ws.assign(size_t(o.blocks * tp.wn), kPoison);
    return true;
  }

  T* acc_out_row(int64_t key) { return &o.out[size_t(key * acc_dim)]; }

  void setup() {
    smem_store.assign(size_t(L.total / 8 + 4), kPoison);
    smem = reinterpret_cast<unsigned char*>(smem_store.data());
    ring_tag.assign(kInfoRing, -1);
    acc_owner.assign(size_t(std::max<int64_t>(acc_dim, 0)), -1);
    gx2_owner.assign(size_t(tp.dim2), -1);
    const PlanView plan = tp.view();
    for (int tid = 0; tid < nthr(); ++tid) {
      for (int p = tid; p < plan.num_paths; p += nthr()) paths()[p] = load_path_info(plan.paths, p);
      for (int n = tid; n < plan.num_cg; n += nthr()) {
        cg_idx()[n] = pack_ijk(plan.cg_ijk[3 * n], plan.cg_ijk[3 * n + 1], plan.cg_ijk[3 * n + 2]);
        cg_val()[n] = plan.cg_value[n];
      }
    }
    const FastTotals t = assign_fast_offsets(paths(), plan.num_paths, kVec);
    ck.expect(same_totals(t, totals), tag + ": device totals");
    for (int p = 0; p < num_paths(); ++p) {
      const PathInfo P = paths()[p];
      if (P.fast < 0) continue;
      const int d3p = m_row_stride(P.d3, kVec);
      for (int tid = 0; tid < nthr(); ++tid) {
        for (int r = tid; r < P.cg_count; r += nthr()) {
          const int n = P.cg_begin + r;
          const int re = P.f_off + rank_by_entry(cg_idx(), P.cg_begin, P.cg_count, r, d3p);
          mt_idx()[re] = cg_idx()[n];
          mt_val()[re] = cg_val()[n];
          if (want_jt()) {
            const int rj = P.f_off + rank_by_j(cg_idx(), P.cg_begin, P.cg_count, r);
            jt_idx()[rj] = cg_idx()[n];
            jt_val()[rj] = cg_val()[n];
          }
        }
        for (int e = tid; e < m_size(P, kVec); e += nthr())
          ent()[P.m_off + e] = range_by_entry(cg_idx(), P.cg_begin, P.cg_count, e, d3p, P.f_off);
        if (want_jt())
          for (int j = tid; j < P.d2; j += nthr()) jrun()[P.j_off + j] = range_by_j(cg_idx(), P.cg_begin, P.cg_count, j, P.f_off);
      }
    }
    if (cfg.backward && want_gw && shared_w) {
      T* part = gw_partial();
      for (int64_t e = 0; e < tp.wn; ++e) part[e] = 0.0;
    }
    if (stage_w && shared_w) std::memcpy(wbuf(0), d.w.data(), size_t(tp.wn) * sizeof(T));
  }
  T* gw_partial() { return gw_smem ? gwsm() : &o.ws[size_t(partial_offset(block, tp.wn))]; }

  int64_t sorted_key_at(int64_t pos) const {
    const int64_t t = order[pos];
    return cfg.backward ? d.x1_index[size_t(t)] : d.out_index[size_t(t)];
  }
  void load_ring_chunk(int64_t chunk) {
    for (int lane = 0; lane < kWarpSize; ++lane) {
      const int64_t pos = chunk * kInfoChunk + lane;
      if (pos >= d.batch) continue;
      const int64_t t = sorted ? order[pos] : pos;
      ring()[ring_slot(pos)] = Visit{t, d.has_x1_index ? d.x1_index[size_t(t)] : t,
                                     d.has_out_index ? d.out_index[size_t(t)] : t};
      ring_tag[size_t(ring_slot(pos))] = int(pos);
    }
  }
  Visit ring_read(int64_t pos) {
    if (ring_tag[size_t(ring_slot(pos))] != int(pos)) ring_ok = false;
    return ring()[ring_slot(pos)];
  }
  int64_t find_first_row_start(int64_t p0, int64_t p1) {
    int64_t found = std::numeric_limits<int64_t>::max();
    for (int64_t base = p0; base < p1; base += nthr()) {
      bool any = false;
      for (int tid = 0; tid < nthr(); ++tid) {
        const int64_t pos = base + tid;
        const bool hit = pos < p1 && is_row_start(pos, sorted_key_at(pos - 1), sorted_key_at(pos));
        if (hit) found = std::min(found, pos);
        any = any || hit;
      }
      if (any) break;
    }
    return found == std::numeric_limits<int64_t>::max() ? p1 : found;
  }
  void stage(const Visit& v, int b) {
    if (tp.dim1 > 0) std::memcpy(x1buf(b), &d.x1[size_t(v.r1 * d.x1_stride)], size_t(tp.dim1) * sizeof(T));
    if (tp.dim2 > 0) std::memcpy(x2buf(b), &d.x2[size_t(v.t * d.x2_stride)], size_t(tp.dim2) * sizeof(T));
    if (cfg.backward && tp.dim_out > 0)
      std::memcpy(gbuf(b), &d.g[size_t(v.ro * d.g_stride)], size_t(tp.dim_out) * sizeof(T));
    if (stage_w && !shared_w) std::memcpy(wbuf(b), &d.w[size_t(v.t * d.w_stride)], size_t(tp.wn) * sizeof(T));
  }
  const T* weight_row(const Visit& v, int b) {
    if (!any_weight) return nullptr;
    if (shared_w) return stage_w ? wbuf(0) : d.w.data();
    return stage_w ? wbuf(b) : &d.w[size_t(v.t * d.w_stride)];
  }
  void compute_m(int b) {
    const T* x2s = x2buf(b);
    T* M = mbuf(b);
    for (int tid = 0; tid < nthr(); ++tid)
      for (int p = 0; p < num_paths(); ++p) {
        const PathInfo& P = paths()[p];
        if (P.fast < 0) continue;
        const int d3p = m_row_stride(P.d3, kVec), ms = P.d1 * d3p;
        for (int e = tid; e < ms; e += nthr()) M[P.m_off + e] = fast_m_entry(P, e, d3p, ent(), mt_idx(), mt_val(), x2s);
      }
  }

  template <class F>
  static void with_dims(int d1, int d3, F&& f) {
    auto inner = [&](auto D1) {
      switch (d3) {
        case 1: f(D1, std::integral_constant<int, 1>{}); break;
        case 3: f(D1, std::integral_constant<int, 3>{}); break;
        case 5: f(D1, std::integral_constant<int, 5>{}); break;
        case 7: f(D1, std::integral_constant<int, 7>{}); break;
        default: break;
      }
    };
    switch (d1) {
      case 1: inner(std::integral_constant<int, 1>{}); break;
      case 3: inner(std::integral_constant<int, 3>{}); break;
      case 5: inner(std::integral_constant<int, 5>{}); break;
      case 7: inner(std::integral_constant<int, 7>{}); break;
      default: break;
    }
  }

  // Merges one thread's private contributions into a shared accumulator, checking single ownership.
  void merge(T* dst, const std::vector<T>& delta, std::vector<int>& owner, int tid) {
    for (size_t e = 0; e < delta.size(); ++e) {
      if (delta[e] == 0.0) continue;
      if (owner[e] == -1) owner[e] = tid;
      if (owner[e] != tid) race = true;
      dst[e] += delta[e];
    }
  }

  void forward_sample(int b, const T* wr) {
    const T* x1s = x1buf(b);
    const T* x2s = x2buf(b);
    const T* M = mbuf(b);
    for (int tid = 0; tid < nthr(); ++tid) {
      std::vector<T> da(size_t(acc_dim), 0.0);
      for (int p = 0; p < num_paths(); ++p) {
        const PathInfo P = paths()[p];
        if (P.fast >= 0) {
          with_dims(P.d1, P.d3, [&](auto D1, auto D3) {
            for (int u = tid; u < P.mul1; u += nthr()) {
              const T w = P.w_off >= 0 ? wr[P.w_off + u] : T(1);
              fast_forward_u<T, decltype(D1)::value, decltype(D3)::value>(P, u, x1s, M + P.m_off, w, da.data());
            }
          });
        } else {
          for (int w = tid; w < P.mul_out; w += nthr()) general_forward_owner(P, w, cg_idx(), cg_val(), x1s, x2s, wr, da.data());
        }
      }
      merge(acc(), da, acc_owner, tid);
    }
  }

  void backward_sample(const Visit& v, int b, const T* wr) {
    const T* x1s = x1buf(b);
    const T* x2s = x2buf(b);
    const T* gs = gbuf(b);
    const T* M = mbuf(b);
    // The weight-gradient row this sample writes (a per-sample global row, or the block's partial).
    T* gwr = !want_gw ? nullptr : shared_w ? gw_partial() : &o.gw[size_t(v.t * tp.wn)];
    std::vector<int> gw_owner(size_t(tp.wn), -1);
    for (int tid = 0; tid < nthr(); ++tid) {
      std::vector<T> da(size_t(acc_dim), 0.0), d2(size_t(tp.dim2), 0.0), dw(size_t(tp.wn), 0.0);
      T* g1 = has_acc ? da.data() : nullptr;
      for (int p = 0; p < num_paths(); ++p) {
        const PathInfo P = paths()[p];
        const bool dwp = want_gw && P.w_off >= 0;
        if (P.fast >= 0) {
          if (g1 || dwp)
            with_dims(P.d1, P.d3, [&](auto D1, auto D3) {
              for (int u = tid; u < P.mul1; u += nthr()) {
                const T w = P.w_off >= 0 ? wr[P.w_off + u] : T(1);
                const T dd = fast_backward_u<T, decltype(D1)::value, decltype(D3)::value>(P, u, x1s, M + P.m_off, gs, w, g1);
                if (dwp) dw[size_t(P.w_off + u)] = gw_add ? dw[size_t(P.w_off + u)] + dd : dd;
              }
            });
        } else {
          if (g1)
            for (int u = tid; u < P.mul1; u += nthr()) general_gx1_owner(P, u, cg_idx(), cg_val(), x2s, gs, wr, g1);
          if (want_gx2)
            for (int q = tid; q < P.mul2; q += nthr()) general_gx2_owner(P, q, cg_idx(), cg_val(), x1s, gs, wr, d2.data());
          if (dwp)
            for (int w = tid; w < P.mul_out; w += nthr()) general_gw_owner(P, w, cg_idx(), cg_val(), x1s, x2s, gs, dw.data(), gw_add);
        }
      }
      if (has_acc) merge(acc(), da, acc_owner, tid);
      if (want_gx2) merge(gx2own(), d2, gx2_owner, tid);
      if (want_gw) {
        for (int64_t e = 0; e < tp.wn; ++e) {
          if (dw[size_t(e)] == 0.0) continue;
          if (gw_owner[size_t(e)] == -1) gw_owner[size_t(e)] = tid;
          if (gw_owner[size_t(e)] != tid) race = true;
          if (gw_add) {
            gwr[e] += dw[size_t(e)];
          } else {
            gwr[e] = dw[size_t(e)];
            ++o.gw_writes[size_t(v.t * tp.wn + e)];
          }
        }
      }
    }
    if (want_gx2) {
      const int nwarps = nthr() / kWarpSize;
      for (int warp = 0; warp < nwarps; ++warp)
        for (int p = 0; p < num_paths(); ++p) {
          const PathInfo P = paths()[p];
          if (P.fast < 0 || P.fast % nwarps != warp) continue;
          with_dims(P.d1, P.d3, [&](auto D1, auto D3) { bmat_warp<decltype(D1)::value, decltype(D3)::value>(P, x1s, gs, wr); });
        }
    }
  }
  // fast_bmat_warp: partial sums per lane, then __shfl_down_sync steps (all lanes read before any adds).
  template <int D1, int D3>
  void bmat_warp(const PathInfo& P, const T* x1s, const T* gs, const T* wr) {
    constexpr int S = bmat_slices<D1>();
    constexpr int D3P = m_row_stride(D3, kVec);
    T acc_l[kWarpSize][D3];
    for (int lane = 0; lane < kWarpSize; ++lane) bmat_lane_partial<T, D1, D3>(P, lane, x1s, gs, wr, acc_l[lane]);
    for (int step = 1; step < S; step *= 2)
      for (int k = 0; k < D3; ++k) {
        T other[kWarpSize];
        for (int lane = 0; lane < kWarpSize; ++lane) {
          const int src = lane + step * D1;
          other[lane] = src < kWarpSize ? acc_l[src][k] : acc_l[lane][k];
        }
        for (int lane = 0; lane < kWarpSize; ++lane)
          if (bmat_tree_adds(bmat_slice(lane, D1), step, S)) acc_l[lane][k] += other[lane];
      }
    for (int lane = 0; lane < kWarpSize; ++lane)
      if (bmat_slice(lane, D1) == 0)
        for (int k = 0; k < D3; ++k) bmat()[P.m_off + bmat_row(lane, D1) * D3P + k] = acc_l[lane][k];
  }

  void finalize_gx2(const Visit& v) {
    for (int tid = 0; tid < nthr(); ++tid)
      for (int e = tid; e < tp.dim2; e += nthr()) {
        const T s = gx2own()[e] + fast_gx2_element(paths(), num_paths(), e, jrun(), jt_idx(), jt_val(), bmat(), kVec);
        gx2own()[e] = 0.0;
        o.gx2[size_t(v.t * tp.dim2 + e)] = s;
        ++o.gx2_writes[size_t(v.t * tp.dim2 + e)];
      }
  }
  void flush_row(int64_t key) {
    if (key < 0 || key >= acc_rows) {
      ck.expect(false, tag + ": flush of row " + str(key) + " outside [0, " + str(acc_rows) + ")");
      return;
    }
    T* dst = acc_out_row(key);
    for (int tid = 0; tid < nthr(); ++tid)
      for (int64_t e = tid; e < acc_dim; e += nthr()) {
        const T s = acc()[e];
        acc()[e] = 0.0;
        if (det_rows) {
          dst[e] = s;
          ++o.writes[size_t(key * acc_dim + e)];
        } else {
          dst[e] += s;
        }
      }
  }
  void zero_rows(const RowRange& r) {
    if (r.end <= r.begin) return;
    if (r.begin < 0 || r.end > acc_rows) {
      ck.expect(false, tag + ": zero rows [" + str(r.begin) + ", " + str(r.end) + ") outside the rows");
      return;
    }
    const int64_t n = (r.end - r.begin) * acc_dim;
    for (int tid = 0; tid < nthr(); ++tid)
      for (int64_t q = tid; q < n; q += nthr()) {
        const int64_t row = r.begin + q / acc_dim, e = q % acc_dim;
        o.out[size_t(row * acc_dim + e)] = 0.0;
        ++o.writes[size_t(row * acc_dim + e)];
      }
  }

  void walk(int64_t first, int64_t p1, int64_t key_prev) {
    load_ring_chunk(ring_chunk(first));
    load_ring_chunk(ring_chunk(first) + 1);
    Visit cur = ring_read(first);
    stage(cur, 0);
    compute_m(0);
    if (has_acc)
      for (int64_t e = 0; e < acc_dim; ++e) acc()[e] = 0.0;
    if (want_jt())
      for (int64_t e = 0; e < tp.dim2; ++e) gx2own()[e] = 0.0;
    if (det_rows) zero_rows(gap_before(first, key_prev, visit_key(cur, cfg.backward)));
    int64_t pos = first;
    int b = 0;
    for (;;) {
      const int64_t next = pos + 1;
      Visit nx{0, 0, 0};
      if (next < d.batch) nx = ring_read(next);
      const int64_t kc = visit_key(cur, cfg.backward), kn = next < d.batch ? visit_key(nx, cfg.backward) : -1;
      const bool has_next = continues(det_rows, next, p1, d.batch, kn, kc);
      const int nb = L.nbuf == 2 ? b ^ 1 : 0;
      if (has_next && L.nbuf == 2) stage(nx, nb);
      const T* wr = weight_row(cur, b);
      if (cfg.backward)
        backward_sample(cur, b, wr);
      else
        forward_sample(b, wr);
      if (want_jt()) finalize_gx2(cur);
      if (has_next && L.nbuf == 1) stage(nx, 0);
      if (has_next) compute_m(nb);
      if (ring_loads_at(pos)) load_ring_chunk(ring_chunk(pos) + 1);
      if (has_acc && row_ends(has_next, kn, kc)) {
        flush_row(kc);
        if (det_rows) zero_rows(gap_after(has_next, next, d.batch, kc, kn, acc_rows));
      }
      if (!has_next) break;
      pos = next;
      cur = nx;
      b = nb;
    }
  }

  void run_block(int64_t blk) {
    block = blk;
    setup();
    const int64_t p0 = slice_begin(blk, cfg.slice), p1 = slice_end(blk, cfg.slice, d.batch);
    int64_t first = p0, key_prev = p0 - 1;
    if (sorted && p0 > 0) {
      first = find_first_row_start(p0, p1);
      if (first < p1) key_prev = sorted_key_at(first - 1);
    }
    if (first < p1) walk(first, p1, key_prev);
    if (cfg.backward && want_gw && shared_w && gw_smem) {
      T* dst = &o.ws[size_t(partial_offset(blk, tp.wn))];
      for (int64_t e = 0; e < tp.wn; ++e) dst[e] = gwsm()[e];
    }
  }

  void run() {
    configure();
    // Blocks run in reverse order: deterministic results must not depend on it.
    for (int64_t blk = o.blocks - 1; blk >= 0; --blk) run_block(blk);
    if (cfg.backward && want_gw && shared_w) {  // so3_weight_reduce_kernel
      for (int64_t e = 0; e < tp.wn; ++e) {
        T s = 0.0;
        for (int64_t b = 0; b < o.blocks; ++b) s += o.ws[size_t(partial_offset(b, tp.wn) + e)];
        o.gw[size_t(e)] = s;
        ++o.gw_writes[size_t(e)];
      }
    }
    ck.expect(!race, tag + ": a shared-memory accumulator element has two owning threads");
    ck.expect(ring_ok, tag + ": a visit was read from a ring slot that did not hold it");
  }
};

bool close(double got, double want) {
  return std::isfinite(got) && std::fabs(got - want) <= 1e-11 * (1.0 + std::fabs(want));
}

void compare(Checker& ck, const std::string& what, const std::vector<double>& got, const std::vector<double>& want,
             const std::vector<int>* writes, bool exact_once) {
  if (got.size() != want.size()) {
    ck.expect(false, what + ": size");
    return;
  }
  int64_t bad = 0, first_bad = -1, bad_writes = 0;
  for (size_t e = 0; e < got.size(); ++e) {
    if (!close(got[e], want[e])) bad += 1, first_bad = first_bad < 0 ? int64_t(e) : first_bad;
    if (writes && exact_once && (*writes)[e] != 1) ++bad_writes;
  }
  ck.expect(bad == 0, what + ": " + str(bad) + " wrong elements (first " + str(first_bad) +
                          (first_bad >= 0 ? ": got " + std::to_string(got[size_t(first_bad)]) + " want " +
                                                std::to_string(want[size_t(first_bad)])
                                          : std::string()) +
                          ")");
  if (writes && exact_once) ck.expect(bad_writes == 0, what + ": " + str(bad_writes) + " elements not written exactly once");
}

struct Case {
  std::string name;
  std::vector<Irrep> in1, in2, out;
  std::vector<PathSpec> specs;
  int weight_gap = 0;  // unused weight elements before each weight block (grad_weight: memset + add)
};

std::vector<Case> cases() {
  std::vector<Case> cs;
  // MACE-like: channelwise uvu with mul2 = 1 (fast), one output block per path, plus an l = 4 x2 block
  // (still fast: only l1, l3 are bounded) and an l3 = 4 path (general).
  {
    Case c;
    c.name = "mace";
    c.in1 = {{37, 0}, {37, 1}, {37, 2}, {37, 3}};
    c.in2 = {{1, 0}, {1, 1}, {1, 2}, {1, 3}, {1, 4}};
    std::vector<std::tuple<int, int, int>> trip = {{0, 0, 0}, {0, 1, 1}, {1, 0, 1}, {1, 1, 0}, {1, 1, 2}, {1, 2, 1},
                                                   {2, 1, 3}, {2, 2, 2}, {3, 3, 3}, {3, 0, 3}, {2, 4, 2}, {3, 1, 4},
                                                   {2, 2, 0}};
    for (const auto& t : trip) {
      c.out.push_back({37, std::get<2>(t)});
      c.specs.push_back({Mode::uvu, std::get<0>(t), std::get<1>(t), int(c.out.size()) - 1, true});
    }
    cs.push_back(c);
  }
  // Every mode, shared output blocks, unweighted paths, uvu with mul2 > 1, uuw without weight (mul_out 1).
  {
    Case c;
    c.name = "modes";
    c.in1 = {{3, 0}, {5, 1}, {2, 2}, {33, 1}};
    c.in2 = {{2, 0}, {5, 1}, {1, 2}, {3, 1}, {33, 1}};
    c.out = {{4, 1}, {5, 1}, {2, 2}, {1, 1}, {5, 2}, {33, 0}, {3, 1}};
    c.specs = {
        {Mode::uvw, 0, 1, 0, true},  {Mode::uvw, 1, 0, 0, true},   {Mode::uvu, 1, 1, 1, true},
        {Mode::uvu, 1, 2, 1, false}, {Mode::uuu, 1, 1, 1, true},   {Mode::uuw, 1, 1, 2, true},
        {Mode::uuw, 1, 1, 3, false}, {Mode::uuu, 1, 1, 4, false},  {Mode::uvu, 3, 2, 5, true},
        {Mode::uvu, 3, 2, 5, false}, {Mode::uuu, 3, 4, 5, true},   {Mode::uvw, 2, 0, 6, false},
        {Mode::uvu, 2, 2, 2, true},  {Mode::uvu, 0, 3, 6, true},
    };
    // paths 8 and 9 share output block 5 (fast and general), 10 too; 12 and 5 share output block 2.
    cs.push_back(c);
    c.name = "gaps";
    c.weight_gap = 2;
    cs.push_back(c);
  }
  // Single multiplicities and one-element blocks.
  {
    Case c;
    c.name = "tiny";
    c.in1 = {{1, 0}, {1, 1}};
    c.in2 = {{1, 0}, {1, 1}};
    c.out = {{1, 0}, {1, 1}, {1, 1}};
    c.specs = {{Mode::uvu, 0, 0, 0, true}, {Mode::uvw, 1, 1, 1, true}, {Mode::uuu, 1, 1, 2, false},
               {Mode::uvu, 1, 1, 0, true}, {Mode::uuw, 1, 1, 1, true}};
    cs.push_back(c);
  }
  return cs;
}

void run_emulations(Checker& ck, std::mt19937_64& rng) {
  const auto cs = cases();
  int combo = 0;
  for (const Case& c : cs) {
    const TestPlan tp = make_plan(c.in1, c.in2, c.out, c.specs, c.weight_gap, rng);
    const int kinds[][2] = {{0, 0}, {1, 1}, {2, 0}, {3, 3}, {1, 2}, {3, 1}, {0, 3}, {2, 2}};
    for (const auto& kind : kinds) {
      const int x1_kind = kind[0], out_kind = kind[1];
      for (const int64_t batch : {int64_t(1), int64_t(23), int64_t(70)}) {
        for (const bool shared_w : {false, true}) {
          if (c.name == "mace" && batch == 70 && shared_w) continue;
          const Data d = make_data(tp, batch, x1_kind, out_kind, shared_w, rng);
          const Reference ref = reference(tp, d);
          for (const bool det : {true, false}) {
            const int nthreads = (combo % 3 == 2) ? 64 : 32;
            const int64_t slice = int64_t(1 + combo % 4 == 4 ? 8 : 1 + (combo * 7) % 9);
            const int nbuf = combo % 5 == 3 ? 1 : 2;
            ++combo;
            const std::string tag = c.name + " x1_kind " + str(x1_kind) + " out_kind " + str(out_kind) + " batch " +
                                    str(batch) + (shared_w ? " shared" : " per-sample") + (det ? " det" : " atomic") +
                                    " threads " + str(nthreads) + " slice " + str(slice) + " nbuf " + str(nbuf);
            {
              EmuConfig cf;
              cf.backward = false, cf.deterministic = det, cf.nthreads = nthreads, cf.slice = slice, cf.nbuf = nbuf;
              cf.stage_w = combo % 2 == 0;
              EmuOut o;
              Emulator em(ck, tp, d, cf, "forward " + tag, o);
              em.run();
              compare(ck, "forward " + tag, o.out, ref.out, &o.writes, em.det_rows);
            }
            for (int want = 1; want < 8; want += (c.name == "mace" ? 6 : 1)) {
              EmuConfig cf;
              cf.backward = true, cf.deterministic = det, cf.nthreads = nthreads, cf.slice = slice, cf.nbuf = nbuf;
              cf.stage_w = (combo + want) % 2 == 0;
              cf.gw_smem = want % 3 != 0;
              cf.want_x1 = want & 1, cf.want_x2 = want & 2, cf.want_w = want & 4;
              EmuOut o;
              const std::string btag = "backward(" + str(want) + ") " + tag;
              Emulator em(ck, tp, d, cf, btag, o);
              em.run();
              if (cf.want_x1) compare(ck, btag + " grad_x1", o.out, ref.gx1, &o.writes, em.det_rows);
              if (cf.want_x2) compare(ck, btag + " grad_x2", o.gx2, ref.gx2, &o.gx2_writes, true);
              if (cf.want_w && tp.wn > 0) compare(ck, btag + " grad_weight", o.gw, ref.gw, &o.gw_writes, !em.gw_add);
            }
          }
        }
      }
    }
  }
}

}  // namespace

int cuda_layout_selftest(std::string* report) {
  Checker ck{report};
  std::mt19937_64 rng(20261207);
  check_packing(ck);
  check_triples(ck);
  check_load_path_info(ck, rng);
  check_fast_offsets(ck, rng);
  check_ranks(ck, rng);
  check_launch_plan(ck);
  check_layout(ck, rng);
  run_emulations(ck, rng);
  if (report)
    *report += "so3 cuda layout selftest: " + std::to_string(ck.checks) + " checks, " + std::to_string(ck.failures) +
               " failures\n";
  return ck.failures;
}

}  // namespace so3
}  // namespace fastops
