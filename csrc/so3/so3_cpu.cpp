// CPU tensor product: plan compilation, the work split and the scalar kernels. The per-ISA kernels are
// in so3_cpu_avx2.cpp and so3_cpu_avx512.cpp (one template, so3_cpu_kernel_impl.h).
//
// Threads take pieces of the segments (so3_cpu_kernels.h: samples sharing a reduced row), so every row
// is summed by one thread in the visiting order: results do not depend on the thread count. A shared
// weight's gradient is summed per piece (a fixed partition) and the partials in piece order.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <string>

#include "common/aligned_buffer.h"
#include "common/cpu_features.h"
#include "common/errors.h"
#include "common/parallel.h"
#include "so3/so3.h"
#include "so3/gaunt_cpu_kernel_impl.h"
#include "so3/so3_cpu_kernel_impl.h"
#include "so3/so3_cpu_kernels.h"

namespace fastops {
namespace so3 {
namespace detail {
namespace {

int64_t pad_lanes(int64_t n) { return (n + kLanePad - 1) / kLanePad * kLanePad; }

template <class Tp>
struct ScalarVec {
  using T = Tp;
  static constexpr int W = 1;
  T v;
  static ScalarVec zero() { return {T(0)}; }
  static ScalarVec set1(T x) { return {x}; }
  static ScalarVec ones_n(int64_t n) { return {n > 0 ? T(1) : T(0)}; }
  static ScalarVec load(const T* p) { return {*p}; }
  static ScalarVec load_n(const T* p, int64_t n) { return {n > 0 ? *p : T(0)}; }
  static void store(T* p, ScalarVec a) { *p = a.v; }
  static void add_n(T* p, ScalarVec a, int64_t n) {
    if (n > 0) *p += a.v;
  }
  static ScalarVec fma(ScalarVec a, ScalarVec b, ScalarVec c) { return {a.v * b.v + c.v}; }
  static ScalarVec mul(ScalarVec a, ScalarVec b) { return {a.v * b.v}; }
  static ScalarVec add(ScalarVec a, ScalarVec b) { return {a.v + b.v}; }
  static ScalarVec sub(ScalarVec a, ScalarVec b) { return {a.v - b.v}; }
  static void store_n(T* p, ScalarVec a, int64_t n) {
    if (n > 0) *p = a.v;
  }
  static T hsum(ScalarVec a) { return a.v; }
};

const CpuKernels kScalarKernels = make_kernels<ScalarVec<float>, ScalarVec<double>>("scalar");
const GauntCpuKernels kGauntScalarKernels = make_gaunt_kernels<ScalarVec<float>, ScalarVec<double>>("scalar");

// Distinct blocks of one operand in offset order, each given its place in the T layout.
std::vector<Block> layout_blocks(std::vector<Block> uses, int64_t* t_len) {
  std::sort(uses.begin(), uses.end(), [](const Block& a, const Block& b) { return a.row < b.row; });
  std::vector<Block> blocks;
  int64_t t = 0;
  for (const Block& b : uses) {
    if (!blocks.empty() && blocks.back().row == b.row) continue;  // validate_plan: same offset, same shape
    Block nb = b;
    nb.mul_pad = int32_t(pad_lanes(b.mul));
    nb.t = t;
    t += int64_t(nb.mul_pad) * nb.dim;
    blocks.push_back(nb);
  }
  *t_len = t;
  return blocks;
}

// Blocks (offset order, no overlaps: validate_plan) that leave no element of a row_len row uncovered.
bool tiles_row(const std::vector<Block>& blocks, int64_t row_len) {
  int64_t covered = 0;
  for (const Block& b : blocks) covered += int64_t(b.mul) * b.dim;
  return covered == row_len;
}

// Zeroes the rows of `base` that no segment writes (rows[s]: the row of segment s).
void zero_unwritten_rows(void* base, int64_t rows, int64_t stride, int64_t len, std::size_t elem,
                         const std::vector<int64_t>& bounds, const int64_t* key, const int64_t* order) {
  std::vector<bool> written(size_t(rows), false);
  for (size_t s = 0; s + 1 < bounds.size(); ++s) written[size_t(key[order[bounds[s]]])] = true;
  for (int64_t r = 0; r < rows; ++r)
    if (!written[size_t(r)]) std::memset(static_cast<char*>(base) + r * stride * elem, 0, len * elem);
}

int64_t t_offset_of(const std::vector<Block>& blocks, int64_t row) {
  for (const Block& b : blocks)
    if (b.row == row) return b.t;
  return 0;
}

const CpuKernels& active_kernels() {
#ifdef FASTOPS_HAVE_AVX2_KERNELS
  const CpuFeatures& f = cpu_features();
  if (active_isa() >= Isa::avx512 && f.avx512f) return avx512_kernels();
  if (active_isa() >= Isa::avx2 && f.fma) return avx2_kernels();
#endif
  return kScalarKernels;
}

template <class T>
void rows_to_t(const Compiled& c, const std::vector<Block>& blocks, int64_t t_len, const void* rows,
               int64_t stride, int64_t n, void* out, int nthreads) {
  parallel_for(n, 64, nthreads, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      Kernels<ScalarVec<T>>::to_t(blocks, static_cast<const T*>(rows) + r * stride, static_cast<T*>(out) + r * t_len);
  });
}

// Visit bounds where key[order[i]] changes (segments of equal key), for keys given in sorted order.
std::vector<int64_t> segment_bounds(const int64_t* key, const int64_t* order, int64_t batch, const char* op) {
  std::vector<int64_t> bounds{0};
  for (int64_t i = 1; i < batch; ++i) {
    const int64_t prev = key[order[i - 1]], cur = key[order[i]];
    if (cur < prev) throw_value(std::string(op) + ": order must sort the samples by their reduced row");
    if (cur != prev) bounds.push_back(i);
  }
  bounds.push_back(batch);
  return bounds;
}

void zero_rows(void* base, int64_t rows, int64_t stride, int64_t len, std::size_t elem, int nthreads) {
  if (len == 0) return;
  parallel_for(rows, 256, nthreads, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) std::memset(static_cast<char*>(base) + r * stride * elem, 0, len * elem);
  });
}

constexpr int64_t kMaxPieces = 64;  // fixed partition of the segments (deterministic shared-weight sums)

// Piece `i` of `pieces` over `n` segments.
int64_t piece_bound(int64_t i, int64_t pieces, int64_t n) { return n * i / pieces; }

}  // namespace

void scratch_offsets(const Compiled& c, int64_t offsets[kScratchParts + 1]) {
  int64_t sizes[kScratchParts];
  sizes[kX1T] = c.t1;
  sizes[kX2T] = c.t2;
  sizes[kAccT] = c.t_out;
  sizes[kGradT] = c.t_out;
  sizes[kGx1T] = c.t1;
  sizes[kGx2T] = c.t2;
  sizes[kM] = c.max_pairs;
  sizes[kNVectors] = c.max_pairs * kLanePad;
  sizes[kTScalars] = c.max_t_scalars;
  sizes[kGtScalars] = c.max_t_scalars;
  sizes[kColumn] = c.max_mul1_pad;
  sizes[kGradColumn] = c.max_mul1_pad;
  sizes[kGwStash] = kGwBlock * c.stash_slot;
  offsets[0] = 0;
  for (int part = 0; part < kScratchParts; ++part) offsets[part + 1] = offsets[part] + pad_lanes(sizes[part]);
}

Compiled compile_plan(const PlanView& plan, const char* op) {
  validate_plan(plan, op);
  Compiled c;
  c.dim1 = plan.dim1;
  c.dim2 = plan.dim2;
  c.dim_out = plan.dim_out;
  c.weight_numel = plan.weight_numel;
  std::vector<Block> u1, u2, uo;
  for (int64_t p = 0; p < plan.num_paths; ++p) {
    const int32_t m1 = int32_t(plan.field(p, kMul1)), m2 = int32_t(plan.field(p, kMul2)),
                  mo = int32_t(plan.field(p, kMulOut));
    u1.push_back({plan.field(p, kX1Offset), 0, m1, int32_t(2 * plan.field(p, kL1) + 1), 0});
    u2.push_back({plan.field(p, kX2Offset), 0, m2, int32_t(2 * plan.field(p, kL2) + 1), 0});
    uo.push_back({plan.field(p, kOutOffset), 0, mo, int32_t(2 * plan.field(p, kL3) + 1), 0});
  }
  c.x1_blocks = layout_blocks(u1, &c.t1);
  c.x2_blocks = layout_blocks(u2, &c.t2);
  c.out_blocks = layout_blocks(uo, &c.t_out);
  c.x1_covered = tiles_row(c.x1_blocks, c.dim1);
  c.x2_covered = tiles_row(c.x2_blocks, c.dim2);
  c.out_covered = tiles_row(c.out_blocks, c.dim_out);

  for (int64_t p = 0; p < plan.num_paths; ++p) {
    CompiledPath P;
    P.mode = Mode(plan.field(p, kMode));
    P.d1 = int32_t(2 * plan.field(p, kL1) + 1);
    P.d2 = int32_t(2 * plan.field(p, kL2) + 1);
    P.d3 = int32_t(2 * plan.field(p, kL3) + 1);
    P.mul1 = int32_t(plan.field(p, kMul1));
    P.mul2 = int32_t(plan.field(p, kMul2));
    P.mul_out = int32_t(plan.field(p, kMulOut));
    if (P.mul1 == 0 || P.mul2 == 0 || P.mul_out == 0) continue;  // no work (e3nn skips these too)
    P.mp1 = int32_t(pad_lanes(P.mul1));
    P.mp2 = int32_t(pad_lanes(P.mul2));
    P.mpo = int32_t(pad_lanes(P.mul_out));
    P.x2_row = plan.field(p, kX2Offset);
    P.x1_t = t_offset_of(c.x1_blocks, plan.field(p, kX1Offset));
    P.x2_t = t_offset_of(c.x2_blocks, plan.field(p, kX2Offset));
    P.out_t = t_offset_of(c.out_blocks, plan.field(p, kOutOffset));
    P.weight = plan.field(p, kWeightOffset) >= 0 ? plan.field(p, kWeightOffset) : -1;

    std::vector<Entry> entries;
    const int64_t begin = plan.field(p, kCgBegin), count = plan.field(p, kCgCount);
    for (int64_t e = begin; e < begin + count; ++e) {
      const double v = plan.cg_value[e];
      if (v == 0.0) continue;
      Entry en;
      en.i = plan.cg_ijk[3 * e];
      en.j = plan.cg_ijk[3 * e + 1];
      en.k = plan.cg_ijk[3 * e + 2];
      en.value_f64 = v;
      en.value_f32 = float(v);
      entries.push_back(en);
    }
    std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
      return a.k != b.k ? a.k < b.k : a.i != b.i ? a.i < b.i : a.j < b.j;
    });
    P.cg_begin = int32_t(c.cg.size());
    P.cg_count = int32_t(entries.size());
    P.pair_begin = int32_t(c.pairs.size());
    P.k_ranges = int32_t(c.k_pair_bounds.size());
    c.k_pair_bounds.resize(c.k_pair_bounds.size() + P.d3 + 1);
    c.k_cg_bounds.resize(c.k_cg_bounds.size() + P.d3 + 1);
    size_t e = 0;
    for (int32_t k = 0; k <= P.d3; ++k) {
      c.k_pair_bounds[P.k_ranges + k] = int32_t(c.pairs.size());
      c.k_cg_bounds[P.k_ranges + k] = int32_t(c.cg.size());
      for (; k < P.d3 && e < entries.size() && entries[e].k == k; ++e) {
        const bool new_pair = c.pairs.size() == size_t(c.k_pair_bounds[P.k_ranges + k]) ||
                              c.pairs.back().i != entries[e].i;
        if (new_pair) {
          c.pairs.push_back({entries[e].i, k});
          c.pair_cg_bounds.push_back(int32_t(c.cg.size()));
        }
        entries[e].pair = int32_t(c.pairs.size() - 1);
        c.cg.push_back(entries[e]);
      }
    }
    P.pair_count = int32_t(c.pairs.size()) - P.pair_begin;
    c.max_pairs = std::max<int64_t>(c.max_pairs, P.pair_count);
    if (P.mode == Mode::uvw || P.mode == Mode::uuw) {
      const int64_t per_u = P.mode == Mode::uvw ? int64_t(P.d3) * P.mp2 : P.d3;
      c.max_t_scalars = std::max<int64_t>(c.max_t_scalars, int64_t(P.mul1) * per_u);
      if (P.weight >= 0) {
        P.t_stash = c.stash_t;
        c.stash_t += pad_lanes(int64_t(P.mul1) * per_u);
      }
      if (P.weight >= 0 && P.mode == Mode::uvw) {
        P.wt = c.wt_numel;
        c.wt_numel += int64_t(P.mul1) * P.mul_out * P.mp2;
      }
    }
    if (P.mode == Mode::uvu && P.mul2 > 1) c.max_mul1_pad = std::max<int64_t>(c.max_mul1_pad, P.mp1);
    if (P.mode == Mode::uuu || P.mode == Mode::uvw) c.needs_x2_t = true;
    c.paths.push_back(P);
  }
  c.pair_cg_bounds.push_back(int32_t(c.cg.size()));
  c.stash_slot = c.stash_t > 0 ? c.stash_t + pad_lanes(c.t_out) : 0;
  return c;
}

}  // namespace detail

namespace {

using detail::Compiled;

std::size_t elem_bytes(Real r) { return r == Real::f64 ? 8 : 4; }

// Scratch for one piece, reused by the thread across pieces and calls.
void* piece_scratch(const Compiled& c, Real dtype) {
  thread_local AlignedBuffer buffer;
  int64_t offsets[detail::kScratchParts + 1];
  detail::scratch_offsets(c, offsets);
  return buffer.grow(std::size_t(offsets[detail::kScratchParts]) * elem_bytes(dtype));
}

// The shared weight's uvw blocks in the [u][w][v] layout of CompiledPath::wt (padding lanes zero), so the
// backward's gT[u][k][v] = sum_w W[u][v][w] g[k][w] runs in vectors over v.
template <class T>
void transpose_uvw_weights(const Compiled& c, const T* weight, T* out) {
  for (const detail::CompiledPath& P : c.paths) {
    if (P.wt < 0) continue;
    for (int64_t u = 0; u < P.mul1; ++u)
      for (int64_t v = 0; v < P.mul2; ++v)
        for (int64_t w = 0; w < P.mul_out; ++w)
          out[P.wt + (u * P.mul_out + w) * P.mp2 + v] = weight[P.weight + (u * P.mul2 + v) * P.mul_out + w];
  }
}

void pre_transpose(const Compiled& c, const std::vector<detail::Block>& blocks, int64_t t_len, const void* rows,
                   int64_t stride, int64_t n, Real dtype, AlignedBuffer* out, int nthreads) {
  out->resize(std::size_t(n * t_len) * elem_bytes(dtype));
  if (dtype == Real::f64) detail::rows_to_t<double>(c, blocks, t_len, rows, stride, n, out->data(), nthreads);
  else detail::rows_to_t<float>(c, blocks, t_len, rows, stride, n, out->data(), nthreads);
}

}  // namespace

const char* cpu_kernel_name() { return detail::active_kernels().name; }

std::shared_ptr<const CpuPlan> compile_cpu_plan(const PlanView& plan) {
  auto compiled = std::make_shared<CpuPlan>();
  compiled->compiled = detail::compile_plan(plan, "so3 plan");
  return compiled;
}

namespace {

// The compiled plan of a call: the caller's, or compiled now into `local`.
const Compiled& compiled_of(const Problem& p, Compiled* local, const char* op) {
  if (p.cpu_plan) return p.cpu_plan->compiled;
  *local = detail::compile_plan(p.plan, op);
  return *local;
}

}  // namespace

void forward_cpu(const Problem& p, const int64_t* order, void* out, int64_t out_stride, int nthreads) {
  Compiled local;
  const Compiled& c = compiled_of(p, &local, "so3 forward");
  const detail::CpuKernels& k = detail::active_kernels();
  const std::size_t elem = elem_bytes(p.dtype);
  std::vector<int64_t> bounds;
  int64_t segments = p.batch;
  if (p.out_index) {
    if (!order && p.batch > 0) throw_value("so3 forward: order is required with out_index");
    if (p.batch == 0) {
      detail::zero_rows(out, p.out_rows, out_stride, c.dim_out, elem, nthreads);
      return;
    }
    bounds = detail::segment_bounds(p.out_index, order, p.batch, "so3 forward");
    segments = int64_t(bounds.size()) - 1;
    detail::zero_unwritten_rows(out, p.out_rows, out_stride, c.dim_out, elem, bounds, p.out_index, order);
  }
  AlignedBuffer x1_t;
  if (p.x1_index && p.batch > 0)
    pre_transpose(c, c.x1_blocks, c.t1, p.x1, p.x1_stride, p.x1_rows, p.dtype, &x1_t, nthreads);
  const int64_t pieces = std::min(segments, detail::kMaxPieces);
  parallel_for(pieces, 1, nthreads, [&](int64_t begin, int64_t end) {
    for (int64_t piece = begin; piece < end; ++piece) {
      detail::ForwardWork w;
      w.c = &c;
      w.p = &p;
      w.order = p.out_index ? order : nullptr;
      w.segment_bounds = p.out_index ? bounds.data() : nullptr;
      w.seg_begin = detail::piece_bound(piece, pieces, segments);
      w.seg_end = detail::piece_bound(piece + 1, pieces, segments);
      w.x1_t_rows = p.x1_index ? x1_t.data() : nullptr;
      w.scratch = piece_scratch(c, p.dtype);
      w.out = out;
      w.out_stride = out_stride;
      (p.dtype == Real::f64 ? k.forward_f64 : k.forward_f32)(w);
    }
  });
}

void backward_cpu(const Problem& p, const int64_t* order, const void* grad_out, int64_t grad_out_stride,
                  const Grads& grads, int nthreads) {
  Compiled local;
  const Compiled& c = compiled_of(p, &local, "so3 backward");
  const detail::CpuKernels& k = detail::active_kernels();
  const std::size_t elem = elem_bytes(p.dtype);
  const bool shared_w = p.weight_stride == 0 && grads.weight;
  // grad_x1 with x1_index is the one reduction over rows: samples go in segments of equal x1 row.
  const bool reduce_x1 = grads.x1 && p.x1_index;
  std::vector<int64_t> bounds;
  int64_t segments = p.batch;
  if (reduce_x1) {
    if (!order && p.batch > 0) throw_value("so3 backward: order is required with x1_index");
    if (p.batch == 0) {
      detail::zero_rows(grads.x1, p.x1_rows, grads.x1_stride, c.dim1, elem, nthreads);
    } else {
      bounds = detail::segment_bounds(p.x1_index, order, p.batch, "so3 backward");
      segments = int64_t(bounds.size()) - 1;
      detail::zero_unwritten_rows(grads.x1, p.x1_rows, grads.x1_stride, c.dim1, elem, bounds, p.x1_index, order);
    }
  }
  if (shared_w) detail::zero_rows(grads.weight, 1, 0, c.weight_numel, elem, 1);
  if (p.batch == 0) return;
  AlignedBuffer x1_t, grad_t;
  if (p.x1_index) pre_transpose(c, c.x1_blocks, c.t1, p.x1, p.x1_stride, p.x1_rows, p.dtype, &x1_t, nthreads);
  if (p.out_index)
    pre_transpose(c, c.out_blocks, c.t_out, grad_out, grad_out_stride, p.out_rows, p.dtype, &grad_t, nthreads);

  int64_t pieces = std::min(segments, detail::kMaxPieces);
  AlignedBuffer weight_t;  // zero-filled: the padding lanes stay 0
  if (p.weight && p.weight_stride == 0 && c.wt_numel > 0 && (grads.x1 || grads.x2)) {
    weight_t.resize(std::size_t(c.wt_numel) * elem);
    if (p.dtype == Real::f64)
      transpose_uvw_weights(c, static_cast<const double*>(p.weight), reinterpret_cast<double*>(weight_t.data()));
    else
      transpose_uvw_weights(c, static_cast<const float*>(p.weight), reinterpret_cast<float*>(weight_t.data()));
  }
  AlignedBuffer partials;
  if (shared_w) {
    // Each piece sums its own copy of the weight gradient; at most 64 MiB of them.
    const int64_t row_bytes = std::max<int64_t>(1, c.weight_numel * int64_t(elem));
    pieces = std::max<int64_t>(1, std::min<int64_t>(pieces, (int64_t(64) << 20) / row_bytes));
    partials.resize(std::size_t(pieces * c.weight_numel) * elem);
  }
  parallel_for(pieces, 1, nthreads, [&](int64_t begin, int64_t end) {
    for (int64_t piece = begin; piece < end; ++piece) {
      detail::BackwardWork w;
      w.c = &c;
      w.p = &p;
      w.order = reduce_x1 ? order : nullptr;
      w.segment_bounds = reduce_x1 ? bounds.data() : nullptr;
      w.seg_begin = detail::piece_bound(piece, pieces, segments);
      w.seg_end = detail::piece_bound(piece + 1, pieces, segments);
      w.x1_t_rows = p.x1_index ? x1_t.data() : nullptr;
      w.grad_t_rows = p.out_index ? grad_t.data() : nullptr;
      w.scratch = piece_scratch(c, p.dtype);
      w.grad_out = grad_out;
      w.grad_out_stride = grad_out_stride;
      w.grads = grads;
      w.shared_grad_weight = shared_w ? partials.data() + std::size_t(piece * c.weight_numel) * elem : nullptr;
      w.weight_t = weight_t.size() ? weight_t.data() : nullptr;
      (p.dtype == Real::f64 ? k.backward_f64 : k.backward_f32)(w);
    }
  });
  if (shared_w) {
    auto reduce = [&](auto zero) {
      using T = decltype(zero);
      T* dst = static_cast<T*>(grads.weight);
      const T* src = reinterpret_cast<const T*>(partials.data());
      for (int64_t piece = 0; piece < pieces; ++piece)
        for (int64_t i = 0; i < c.weight_numel; ++i) dst[i] += src[piece * c.weight_numel + i];
    };
    if (p.dtype == Real::f64) reduce(double(0));
    else reduce(float(0));
  }
}

}  // namespace so3
}  // namespace fastops

namespace fastops {
namespace so3 {
namespace detail {
const GauntCpuKernels& gaunt_scalar_kernels() { return kGauntScalarKernels; }
}  // namespace detail
}  // namespace so3
}  // namespace fastops
