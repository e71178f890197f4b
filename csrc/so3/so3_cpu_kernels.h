// Private to the CPU tensor product: the plan compiled for the CPU kernels (so3_cpu.cpp) and the table
// of per-ISA kernels (so3_cpu_kernel_impl.h, instantiated by so3_cpu.cpp, so3_cpu_avx2.cpp and
// so3_cpu_avx512.cpp).
//
// The kernels vectorize over a multiplicity index: over u for uvu / uuu, over w for uvw / uuw. They read
// operands in a transposed ("T") layout: each block [mul, 2l+1] of a row becomes [2l+1, mul_pad] with
// mul_pad = mul rounded up to kLanePad and zeros past mul, so a vector of consecutive channels of one m
// component is one aligned load. Outputs and gradients are accumulated in the same layout and turned
// back into e3nn's mul_ir rows once per row.
#pragma once
#include <cstdint>
#include <vector>

#include "so3/so3.h"

namespace fastops {
namespace so3 {
namespace detail {

constexpr int kLanePad = 16;  // one AVX-512 register of fp32

struct Block {
  int64_t row = 0;  // offset in a mul_ir row
  int64_t t = 0;    // offset in the T-layout row
  int32_t mul = 0, dim = 0, mul_pad = 0;
};

struct CompiledPath {
  Mode mode = Mode::uvw;
  int32_t d1 = 0, d2 = 0, d3 = 0, mul1 = 0, mul2 = 0, mul_out = 0;
  int32_t mp1 = 0, mp2 = 0, mpo = 0;  // padded multiplicities (T-layout row strides of the blocks)
  int64_t x2_row = 0;                 // x2 block offset in the mul_ir row (uvu / uvw / uuw read it as scalars)
  int64_t x1_t = 0, x2_t = 0, out_t = 0;
  int64_t weight = -1;                // weight block offset, -1: no weight
  int32_t cg_begin = 0, cg_count = 0; // entries sorted by (k, i, j)
  int32_t pair_begin = 0, pair_count = 0;  // distinct (i, k) of the entries, sorted by k
  int32_t k_ranges = 0;  // index of d3 + 1 bounds in Compiled::k_pair_bounds and k_cg_bounds
  int64_t t_stash = -1;  // weighted uvw / uuw: offset of its T_p[k] in a sample's gradient stash
  int64_t wt = -1;       // weighted uvw: offset of its transposed weight [u][w][v (mp2)] (Work::weight_t)
};

// A CG nonzero; `pair` indexes Compiled::pairs (its (i, k)).
struct Entry {
  int32_t i = 0, j = 0, k = 0, pair = 0;
  float value_f32 = 0;
  double value_f64 = 0;
};

struct Pair {
  int32_t i = 0, k = 0;
};

struct Compiled {
  int64_t dim1 = 0, dim2 = 0, dim_out = 0, weight_numel = 0;
  int64_t t1 = 0, t2 = 0, t_out = 0;  // T-layout row lengths
  std::vector<CompiledPath> paths;
  std::vector<Entry> cg;
  std::vector<Pair> pairs;
  std::vector<int32_t> k_pair_bounds, k_cg_bounds;  // per path: d3 + 1 global bounds, by output component k
  std::vector<int32_t> pair_cg_bounds;  // pairs.size() + 1: pair q's entries are [bounds[q], bounds[q + 1])
  std::vector<Block> x1_blocks, x2_blocks, out_blocks;
  bool x1_covered = false, x2_covered = false, out_covered = false;  // the blocks tile the whole row
  int64_t max_pairs = 0;     // most (i, k) pairs of one path
  int64_t max_t_scalars = 0; // most T_p[k] of one uvw / uuw path (mul1 x d3 x mp2, or mul1 x d3)
  int64_t max_mul1_pad = 0;  // longest weight column a uvu path with mul2 > 1 transposes
  int64_t stash_t = 0;       // T_p[k] of all weighted uvw / uuw paths of one sample (lane-padded per path)
  int64_t stash_slot = 0;    // one sample's stash: stash_t, then its grad_out row (t_out, lane-padded); 0: none
  int64_t wt_numel = 0;      // a shared weight's weighted uvw blocks transposed to [u][w][v], v padded to mp2
  bool needs_x2_t = false;   // x2 is needed in the T layout (uuu, uvw)
};

// Validates (validate_plan) and compiles; throws ValueError naming op.
Compiled compile_plan(const PlanView& plan, const char* op);

// One contiguous piece of the work: samples are visited in `order` (identity when null) and grouped in
// segments that share the reduced row (forward: the output row; backward: the x1 row of grad_x1). With
// `segment_bounds`, segment s is visits [segment_bounds[s], segment_bounds[s + 1]); without, every visit
// is its own segment. The kernels process segments [seg_begin, seg_end).
struct Work {
  const Compiled* c = nullptr;
  const Problem* p = nullptr;
  const int64_t* order = nullptr;
  const int64_t* segment_bounds = nullptr;
  int64_t seg_begin = 0, seg_end = 0;
  const void* x1_t_rows = nullptr;   // x1 rows already in the T layout ([x1_rows, t1]) or null
  const void* grad_t_rows = nullptr; // grad_out rows already in the T layout ([out_rows, t_out]) or null
  void* scratch = nullptr;           // scratch_elements(c) elements of the dtype, 64-byte aligned
};

struct ForwardWork : Work {
  void* out = nullptr;
  int64_t out_stride = 0;
};

struct BackwardWork : Work {
  const void* grad_out = nullptr;
  int64_t grad_out_stride = 0;
  Grads grads;
  void* shared_grad_weight = nullptr;  // weight_stride == 0: this piece's partial sum [weight_numel] (zeroed)
  const void* weight_t = nullptr;      // shared weight, grad x1 or x2 wanted: [wt_numel] (CompiledPath::wt)
};

// Scratch of one piece of work, in elements of the problem's dtype: part p starts at offsets[p] (a
// multiple of kLanePad); offsets[kScratchParts] is the total.
enum ScratchPart {
  kX1T, kX2T,          // this sample's x1 / x2 row in the T layout
  kAccT, kGradT,       // the output accumulator / this sample's grad_out row (T layout)
  kGx1T, kGx2T,        // gradient accumulators (T layout)
  kM, kNVectors,       // uvu: M per (i, k) pair; backward: one vector per pair
  kTScalars, kGtScalars,  // uvw / uuw: T_p[k] and its gradient
  kColumn, kGradColumn,   // uvu with mul2 > 1: a weight column over u and its gradient
  kGwStash,               // shared weight: T_p[k] (stash_t) and the grad_out row (t_out) of kGwBlock samples
  kScratchParts
};
void scratch_offsets(const Compiled& c, int64_t offsets[kScratchParts + 1]);
// A shared weight's uvw / uuw gradient sums kGwBlock samples' T_p[k] g[k][w] before touching the
// [weight_numel] partial once: per sample the partial (megabytes for wide fully connected products) was
// read and written whole.
constexpr int kGwBlock = 8;

struct CpuKernels {
  const char* name;
  void (*forward_f32)(const ForwardWork&);
  void (*forward_f64)(const ForwardWork&);
  void (*backward_f32)(const BackwardWork&);
  void (*backward_f64)(const BackwardWork&);
};

#if defined(FASTOPS_HAVE_AVX2_KERNELS)
const CpuKernels& avx2_kernels();
const CpuKernels& avx512_kernels();
#endif

}  // namespace detail

struct CpuPlan {
  detail::Compiled compiled;
};

}  // namespace so3
}  // namespace fastops
