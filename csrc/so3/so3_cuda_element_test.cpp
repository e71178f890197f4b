// CPU checks of the CUDA tensor-product kernels' index math (so3_cuda_element.h): on random plans of every
// mode (random CG tables: the index math does not care which numbers they hold), the kernels' work split
// is emulated — every element of every output row summed over that row's samples in the deterministic
// visiting order found by lower_bound_visit, and per (sample, element) as the atomic kernels add — and
// compared with the CPU kernels (forward_cpu / backward_cpu) in float64.
#include "so3/so3_cuda_element_test.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/selftest.h"
#include "so3/so3.h"
#include "so3/so3_cuda_element.h"

namespace fastops {
namespace so3 {
namespace {

using cuda_detail::element_value;
using cuda_detail::lower_bound_visit;
using cuda_detail::Rows;
using cuda_detail::Target;

struct RandomPlan {
  std::vector<int64_t> paths;
  std::vector<int32_t> cg_ijk;
  std::vector<double> cg_value;
  PlanView view;
};

// Blocks: x1 = [m1a x l=1, m1b x l=2], x2 = [m2 x l=1, 1 x l=0, m1a x l=1, m1b x l=1] (the last two pair
// with x1's blocks in the uu modes), out: one block per path.
RandomPlan make_plan(std::mt19937& rng, bool weights) {
  RandomPlan rp;
  std::uniform_int_distribution<int> mul(1, 19);
  const int64_t m1a = mul(rng), m1b = mul(rng), m2 = 1 + mul(rng) % 3;
  const int64_t x1_offsets[2] = {0, m1a * 3}, x1_muls[2] = {m1a, m1b}, x1_ls[2] = {1, 2};
  const int64_t dim1 = m1a * 3 + m1b * 5, dim2 = m2 * 3 + 1 + m1a * 3 + m1b * 3;
  const int64_t x2_uu_offsets[2] = {m2 * 3 + 1, m2 * 3 + 1 + m1a * 3};
  int64_t out_off = 0, w_off = 0;
  std::normal_distribution<double> val;
  for (int mode = 0; mode < 4; ++mode)
    for (int b1 = 0; b1 < 2; ++b1) {
      const int64_t l1 = x1_ls[b1], m1 = x1_muls[b1];
      const bool uu = mode == int(Mode::uuw) || mode == int(Mode::uuu);
      const int64_t l2 = 1;
      const int64_t l3 = b1 == 0 ? 2 : 1;
      const int64_t mo = (mode == int(Mode::uvu) || mode == int(Mode::uuu)) ? m1 : 1 + mul(rng) % 5;
      const bool has_w = weights || mode == int(Mode::uvw) || (mode == int(Mode::uuw) && mo != 1);
      const int64_t wsize = mode == int(Mode::uvw) ? m1 * m2 * mo : mode == int(Mode::uvu) ? m1 * m2
                            : mode == int(Mode::uuw) ? m1 * mo : m1;
      const int64_t begin = int64_t(rp.cg_value.size());
      for (int i = 0; i < 2 * l1 + 1; ++i)
        for (int j = 0; j < 2 * l2 + 1; ++j)
          for (int k = 0; k < 2 * l3 + 1; ++k)
            if (rng() % 3 == 0) {
              rp.cg_ijk.insert(rp.cg_ijk.end(), {i, j, k});
              rp.cg_value.push_back(val(rng));
            }
      const int64_t count = int64_t(rp.cg_value.size()) - begin;
      rp.paths.insert(rp.paths.end(), {int64_t(mode), l1, l2, l3, m1, uu ? m1 : m2, mo, x1_offsets[b1],
                                       uu ? x2_uu_offsets[b1] : 0, out_off,
                                       has_w ? w_off : -1, begin, count});
      out_off += mo * (2 * l3 + 1);
      if (has_w) w_off += wsize;
    }
  // one path from the l=0 x2 block, sharing the first path's output block (outputs add up)
  rp.paths.insert(rp.paths.end(), {int64_t(Mode::uvw), 1, 0, 1, m1a, 1, 1, 0, m2 * 3, out_off, w_off, 0, 0});
  const int64_t begin = int64_t(rp.cg_value.size());
  for (int i = 0; i < 3; ++i) {
    rp.cg_ijk.insert(rp.cg_ijk.end(), {i, 0, i});
    rp.cg_value.push_back(val(rng));
  }
  rp.paths[rp.paths.size() - 2] = begin;
  rp.paths[rp.paths.size() - 1] = 3;
  out_off += 3;
  w_off += m1a;
  rp.view.dim1 = dim1;
  rp.view.dim2 = dim2;
  rp.view.dim_out = out_off;
  rp.view.weight_numel = w_off;
  rp.view.num_paths = int64_t(rp.paths.size()) / kPathFields;
  rp.view.num_cg = int64_t(rp.cg_value.size());
  rp.view.paths = rp.paths.data();
  rp.view.cg_ijk = rp.cg_ijk.data();
  rp.view.cg_value = rp.cg_value.data();
  return rp;
}

double rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(a[i] - b[i]));
    den = std::max(den, std::abs(b[i]));
  }
  return num / std::max(den, 1e-300);
}

std::vector<int64_t> sorted_order(const std::vector<int64_t>& key) {
  std::vector<int64_t> order(key.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return key[a] < key[b]; });
  return order;
}

}  // namespace

int cuda_layout_selftest(std::string* report) {
  SelfTestChecker check{report};
  std::mt19937 rng(7);
  std::normal_distribution<double> val;
  for (int trial = 0; trial < 12; ++trial) {
    const bool shared = trial % 2 == 1, indexed = trial % 3 != 0;
    RandomPlan rp = make_plan(rng, trial % 4 != 3);
    const PlanView& v = rp.view;
    const int64_t batch = 1 + rng() % 23, rows1 = indexed ? 1 + rng() % 7 : batch, rows_out = indexed ? 1 + rng() % 6 : batch;
    std::vector<double> x1(rows1 * v.dim1), x2(batch * v.dim2), w((shared ? 1 : batch) * v.weight_numel),
        g(rows_out * v.dim_out);
    for (auto* a : {&x1, &x2, &w, &g})
      for (double& x : *a) x = val(rng);
    std::vector<int64_t> i1(batch), io(batch);
    for (int64_t t = 0; t < batch; ++t) i1[t] = rng() % rows1, io[t] = rng() % rows_out;
    Problem p;
    p.plan = v;
    p.dtype = Real::f64;
    p.batch = batch;
    p.x1 = x1.data();
    p.x1_stride = v.dim1;
    p.x1_index = indexed ? i1.data() : nullptr;
    p.x1_rows = rows1;
    p.x2 = x2.data();
    p.x2_stride = v.dim2;
    p.weight = w.data();
    p.weight_stride = shared ? 0 : v.weight_numel;
    p.out_index = indexed ? io.data() : nullptr;
    p.out_rows = rows_out;
    const std::vector<int64_t> out_order = sorted_order(io), x1_order = sorted_order(i1);

    auto rows_of = [&](int64_t t) {
      Rows<double> r;
      r.x1 = x1.data() + (indexed ? i1[t] : t) * v.dim1;
      r.x2 = x2.data() + t * v.dim2;
      r.w = w.data() + (shared ? 0 : t) * v.weight_numel;
      r.g = g.data() + (indexed ? io[t] : t) * v.dim_out;
      return r;
    };
    // The deterministic kernel: row r sums visits [lower_bound(r), lower_bound(r + 1)) of order.
    auto emulate = [&](Target target, const int64_t* key, const std::vector<int64_t>& order, int64_t rows,
                       int64_t len, bool all) {
      std::vector<double> out(rows * len, 0.0);
      for (int64_t r = 0; r < rows; ++r) {
        int64_t first = r, last = r + 1;
        if (all) first = 0, last = batch;
        else if (key) first = lower_bound_visit(key, order.data(), batch, r), last = lower_bound_visit(key, order.data(), batch, r + 1);
        for (int64_t e = 0; e < len; ++e)
          for (int64_t i = first; i < last; ++i) {
            const int64_t t = (key && !all) ? order[i] : i;
            out[r * len + e] += element_value<double>(v.paths, v.num_paths, v.cg_ijk, v.cg_value, target, e, rows_of(t));
          }
      }
      return out;
    };
    // The atomic kernel: every (sample, element) adds into its row.
    auto emulate_atomic = [&](Target target, const int64_t* index, int64_t rows, int64_t len) {
      std::vector<double> out(rows * len, 0.0);
      for (int64_t t = 0; t < batch; ++t)
        for (int64_t e = 0; e < len; ++e)
          out[(index ? index[t] : 0) * len + e] +=
              element_value<double>(v.paths, v.num_paths, v.cg_ijk, v.cg_value, target, e, rows_of(t));
      return out;
    };
    const std::string tag = " (trial " + std::to_string(trial) + ")";

    std::vector<double> out(rows_out * v.dim_out, -7.0);
    forward_cpu(p, indexed ? out_order.data() : nullptr, out.data(), v.dim_out, 1);
    check.expect(rel_diff(emulate(Target::out, p.out_index, out_order, rows_out, v.dim_out, false), out) < 1e-12,
                 "forward" + tag);
    if (indexed)
      check.expect(rel_diff(emulate_atomic(Target::out, p.out_index, rows_out, v.dim_out), out) < 1e-12,
                   "forward, atomic" + tag);

    std::vector<double> gx1(rows1 * v.dim1, -7.0), gx2(batch * v.dim2, -7.0), gw(w.size(), -7.0);
    Grads gr;
    gr.x1 = gx1.data();
    gr.x1_stride = v.dim1;
    gr.x2 = gx2.data();
    gr.x2_stride = v.dim2;
    gr.weight = gw.data();
    gr.weight_stride = shared ? 0 : v.weight_numel;
    backward_cpu(p, indexed ? x1_order.data() : nullptr, g.data(), v.dim_out, gr, 1);
    check.expect(rel_diff(emulate(Target::x1, p.x1_index, x1_order, rows1, v.dim1, false), gx1) < 1e-12,
                 "grad_x1" + tag);
    if (indexed)
      check.expect(rel_diff(emulate_atomic(Target::x1, p.x1_index, rows1, v.dim1), gx1) < 1e-12, "grad_x1, atomic" + tag);
    check.expect(rel_diff(emulate(Target::x2, nullptr, {}, batch, v.dim2, false), gx2) < 1e-12, "grad_x2" + tag);
    const std::vector<double> gw_emulated = shared ? emulate(Target::weight, nullptr, {}, 1, v.weight_numel, true)
                                                   : emulate(Target::weight, nullptr, {}, batch, v.weight_numel, false);
    check.expect(rel_diff(gw_emulated, gw) < 1e-12, "grad_weight" + tag);
    if (shared)
      check.expect(rel_diff(emulate_atomic(Target::weight, nullptr, 1, v.weight_numel), gw) < 1e-12,
                   "grad_weight, atomic" + tag);
  }
  if (report) *report += std::to_string(check.checks) + " checks, " + std::to_string(check.failures) + " failed\n";
  return check.failures;
}

}  // namespace so3
}  // namespace fastops
