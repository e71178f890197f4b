// fastops::so3 — Clebsch-Gordan tensor products with e3nn 0.6 semantics, as a plan plus kernels.
//
// A tensor product is a list of paths (e3nn instructions). Operand rows are e3nn "mul_ir": block b holds
// mul x (2l+1) values, m fastest. For one sample and one path with CG nonzeros (i, j, k, c) (c already
// holds e3nn's path normalization, sqrt(alpha * path_weight / fan_in)) and T_uv[k] = sum c x1[u,i] x2[v,j]:
//   uvw: out[w,k] += sum_{u,v} W[u,v,w] T_uv[k]     weight block (mul1, mul2, mul_out) row-major
//   uvu: out[u,k] += sum_v     W[u,v]   T_uv[k]     weight block (mul1, mul2); mul_out == mul1
//   uuw: out[w,k] += sum_u     W[u,w]   T_uu[k]     weight block (mul1, mul_out); mul2 == mul1
//   uuu: out[u,k] +=           W[u]     T_uu[k]     weight block (mul1,); mul2 == mul_out == mul1
// A path without weight (weight_offset < 0) uses W = 1 (uuw without weight needs mul_out == 1). Outputs of
// paths that share an output block add up. Every derivative is a contraction of the same tensor, so the
// forward and backward kernels run the same plan.
//
// The plan's wire format (built by python/fastops/so3.py, validated by validate_plan):
//   paths    int64 [num_paths, kPathFields], the fields of PathField in order
//   cg_ijk   int32 [num_cg, 3]   (i, j, k) of each nonzero; a path's nonzeros are [cg_begin, cg_begin + cg_count)
//   cg_value float64 [num_cg]
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace fastops {
namespace so3 {

enum class Mode : int64_t { uvw = 0, uvu = 1, uuw = 2, uuu = 3 };
enum class Real : int { f32 = 0, f64 = 1 };

enum PathField : int {
  kMode = 0, kL1, kL2, kL3, kMul1, kMul2, kMulOut,
  kX1Offset, kX2Offset, kOutOffset,  // element offset of the path's block in its operand row
  kWeightOffset,                     // offset of the path's weight block in a weight row; -1: no weight
  kCgBegin, kCgCount,
  kPathFields
};

// Host view of a plan (pointers into the wire tensors; CUDA kernels get device copies of the same arrays).
struct PlanView {
  int64_t dim1 = 0, dim2 = 0, dim_out = 0, weight_numel = 0;
  int64_t num_paths = 0, num_cg = 0;
  const int64_t* paths = nullptr;
  const int32_t* cg_ijk = nullptr;
  const double* cg_value = nullptr;

  int64_t field(int64_t path, PathField f) const { return paths[path * kPathFields + f]; }
};

// Throws ValueError (naming `op`) unless every path is consistent: mode known, l >= 0 and the triangle rule,
// multiplicity rules of the mode, blocks inside the operand rows, weight blocks inside weight_numel, and
// CG indices inside (2l1+1, 2l2+1, 2l3+1).
void validate_plan(const PlanView& plan, const char* op);

// Largest 2l+1 of any operand block, and other sizes kernels size their scratch from.
int64_t max_degree_dim(const PlanView& plan);

// A plan compiled for the CPU kernels (opaque; so3_cpu_kernels.h). Compile once per plan and pass it in
// Problem::cpu_plan: compiling costs tens of microseconds, which small batches would pay on every call.
struct CpuPlan;
std::shared_ptr<const CpuPlan> compile_cpu_plan(const PlanView& plan);

// A batch of samples t in [0, batch). Sample t reads x1 row x1_index ? x1_index[t] : t (of x1_rows rows),
// x2 row t and weight row t (weight_stride 0: one weight row shared by all samples; weight may be null
// when plan.weight_numel == 0). Its result belongs to output row out_index ? out_index[t] : t (of out_rows).
// Strides are in elements; the last dimension of every operand is contiguous. Without x1_index, x1 has
// one row per sample (x1_rows == batch); without out_index, likewise for the output. Indices are validated
// by the caller (0 <= index < rows): the kernels do not check them.
struct Problem {
  PlanView plan;
  Real dtype = Real::f32;
  int64_t batch = 0;
  const void* x1 = nullptr;
  int64_t x1_stride = 0;
  const int64_t* x1_index = nullptr;
  int64_t x1_rows = 0;
  const void* x2 = nullptr;
  int64_t x2_stride = 0;
  const void* weight = nullptr;
  int64_t weight_stride = 0;
  const int64_t* out_index = nullptr;
  int64_t out_rows = 0;
  const CpuPlan* cpu_plan = nullptr;  // optional: `plan` compiled by compile_cpu_plan
};

// out[r] = sum over samples t with output row r of TP(x1 row, x2 row, weight row), for every r in
// [0, out_rows): rows no sample reaches become zero. With out_index, `order` (may be null only when
// out_index is null) lists the samples sorted by out_index (a stable sort makes the sums deterministic).
void forward_cpu(const Problem& p, const int64_t* order, void* out, int64_t out_stride, int nthreads);

// Gradients of sum(grad_out * forward) where grad_out has out_rows rows (sample t reads grad_out row
// out_index[t] or t). Any of the three outputs may be null (not wanted); all are overwritten, not added to:
//   grad_x1     [x1_rows, dim1]: row r = sum over samples reading x1 row r; with x1_index, `order` lists
//               the samples sorted by x1_index (null only when x1_index is null)
//   grad_x2     [batch, dim2]
//   grad_weight [batch, weight_numel], or [weight_numel] summed over samples when weight_stride == 0
struct Grads {
  void* x1 = nullptr;
  int64_t x1_stride = 0;
  void* x2 = nullptr;
  int64_t x2_stride = 0;
  void* weight = nullptr;
  int64_t weight_stride = 0;
};
void backward_cpu(const Problem& p, const int64_t* order, const void* grad_out, int64_t grad_out_stride,
                  const Grads& grads, int nthreads);

// Name of the CPU kernel set in use ("avx512", "avx2" or "scalar"; follows fastops::active_isa()).
const char* cpu_kernel_name();

// CUDA entry points (so3_cuda.cu), on `stream` (a cudaStream_t as an integer), nothing synchronizes.
// `plan` holds host pointers (launch configuration); `device_paths`, `device_cg_ijk`, `device_cg_value`
// are the same arrays on the device. Every pointer of `p` is a device pointer. deterministic: the
// reductions follow `order` as on the CPU; otherwise they use atomics and `order` is ignored.
struct DevicePlan {
  const int64_t* paths = nullptr;
  const int32_t* cg_ijk = nullptr;
  const double* cg_value = nullptr;
};
void forward_cuda(const Problem& p, const DevicePlan& device_plan, const int64_t* order, bool deterministic,
                  void* out, int64_t out_stride, std::uintptr_t stream);
// Bytes of device workspace backward_cuda needs (per-block partial sums of a shared weight's gradient). It
// depends only on batch, plan.weight_numel, weight_stride == 0, dtype and the current device's SM count
// (the bindings fill only those); the caller allocates it (torch's allocator) and passes it as `workspace`.
std::size_t backward_cuda_workspace_bytes(const Problem& p, bool deterministic);
void backward_cuda(const Problem& p, const DevicePlan& device_plan, const int64_t* order, bool deterministic,
                   const void* grad_out, int64_t grad_out_stride, const Grads& grads, void* workspace,
                   std::uintptr_t stream);

}  // namespace so3
}  // namespace fastops
