// Bindings of fastops::so3. The Python layer (python/fastops/so3.py) builds the plan and validates user
// input with friendly messages; these checks are the last line of defence before raw pointers reach a
// kernel.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <optional>
#include <string>
#include <vector>

#include "bindings/binding_utils.h"
#include "so3/so3.h"
#include "so3/so3_cuda_layout_test.h"

namespace fastops {
namespace bind {
namespace {

constexpr const char* kOp = "so3 tensor product";
using OptArray = std::optional<Array>;

[[noreturn]] void fail(const std::string& msg) { throw_value(std::string(kOp) + ": " + msg); }

so3::PlanView plan_view(const Array& paths, const Array& cg_ijk, const Array& cg_value, int64_t dim1,
                        int64_t dim2, int64_t dim_out, int64_t weight_numel) {
  expect_dtype(paths, 64, nb::dlpack::dtype_code::Int, kOp, "paths", "int64");
  expect_dtype(cg_ijk, 32, nb::dlpack::dtype_code::Int, kOp, "cg_ijk", "int32");
  expect_dtype(cg_value, 64, nb::dlpack::dtype_code::Float, kOp, "cg_value", "float64");
  for (const Array* a : {&paths, &cg_ijk, &cg_value}) {
    if (device_of(*a, kOp, "plan") != Device::cpu) fail("the plan tensors must be on the CPU");
    expect_contiguous(*a, kOp, "plan tensors");
  }
  if (paths.ndim() != 2 || paths.shape(1) != so3::kPathFields)
    fail("paths must have shape [num_paths, " + std::to_string(int(so3::kPathFields)) + "]");
  if (cg_ijk.ndim() != 2 || cg_ijk.shape(1) != 3) fail("cg_ijk must have shape [num_cg, 3]");
  if (cg_value.ndim() != 1 || cg_value.shape(0) != cg_ijk.shape(0)) fail("cg_value must have shape [num_cg]");
  so3::PlanView v;
  v.dim1 = dim1;
  v.dim2 = dim2;
  v.dim_out = dim_out;
  v.weight_numel = weight_numel;
  v.num_paths = int64_t(paths.shape(0));
  v.num_cg = int64_t(cg_ijk.shape(0));
  v.paths = static_cast<const int64_t*>(paths.data());
  v.cg_ijk = static_cast<const int32_t*>(cg_ijk.data());
  v.cg_value = static_cast<const double*>(cg_value.data());
  so3::validate_plan(v, kOp);
  return v;
}

// A validated plan with its own copy of the tables and the CPU kernels' compiled form, built once per
// Python plan (fastops.so3.TPPlan) and passed to every call.
class PlanHandle {
 public:
  PlanHandle(const Array& paths, const Array& cg_ijk, const Array& cg_value, int64_t dim1, int64_t dim2,
             int64_t dim_out, int64_t weight_numel) {
    const so3::PlanView v = plan_view(paths, cg_ijk, cg_value, dim1, dim2, dim_out, weight_numel);
    paths_.assign(v.paths, v.paths + v.num_paths * so3::kPathFields);
    cg_ijk_.assign(v.cg_ijk, v.cg_ijk + v.num_cg * 3);
    cg_value_.assign(v.cg_value, v.cg_value + v.num_cg);
    view_ = v;
    view_.paths = paths_.data();
    view_.cg_ijk = cg_ijk_.data();
    view_.cg_value = cg_value_.data();
    cpu_ = so3::compile_cpu_plan(view_);
  }
  const so3::PlanView& view() const { return view_; }
  const so3::CpuPlan* cpu() const { return cpu_.get(); }

 private:
  std::vector<int64_t> paths_;
  std::vector<int32_t> cg_ijk_;
  std::vector<double> cg_value_;
  so3::PlanView view_;
  std::shared_ptr<const so3::CpuPlan> cpu_;
};

bool has_weighted_path(const so3::PlanView& v) {
  for (int64_t p = 0; p < v.num_paths; ++p)
    if (v.field(p, so3::kWeightOffset) >= 0) return true;
  return false;
}

so3::Real real_dtype(const Array& a, const char* name) {
  if (has_dtype(a, 32, nb::dlpack::dtype_code::Float)) return so3::Real::f32;
  if (has_dtype(a, 64, nb::dlpack::dtype_code::Float)) return so3::Real::f64;
  throw_type(std::string(kOp) + ": " + name + " must be float32 or float64, got " + dtype_str(a));
}

// A [rows, cols] matrix of `dtype` with a contiguous last dimension; returns its row stride.
int64_t expect_matrix(const Array& a, int64_t rows, int64_t cols, so3::Real dtype, const Array& ref,
                      const char* name) {
  if (a.ndim() != 2 || (rows >= 0 && int64_t(a.shape(0)) != rows) || int64_t(a.shape(1)) != cols)
    fail(std::string(name) + " must have shape [" + (rows >= 0 ? std::to_string(rows) : "*") + ", " +
         std::to_string(cols) + "], got a " + std::to_string(a.ndim()) + "-d array");
  if (real_dtype(a, name) != dtype) throw_type(std::string(kOp) + ": " + name + " must have the dtype of x1");
  if (cols > 1 && a.shape(0) > 0 && a.stride(1) != 1) fail(std::string(name) + " must be contiguous along its last dimension");
  if (a.stride(0) < 0) fail(std::string(name) + ": negative strides are not supported");
  expect_same_device(ref, a, kOp, "x1", name);
  return a.shape(0) > 1 ? int64_t(a.stride(0)) : cols;
}

// int64 [n] with values in [0, rows); checked on the CPU only (the Python layer checks CUDA inputs).
const int64_t* index_vector(const OptArray& a, int64_t n, int64_t rows, const Array& ref, const char* name) {
  if (!a) return nullptr;
  expect_dtype(*a, 64, nb::dlpack::dtype_code::Int, kOp, name, "int64");
  expect_vector(*a, n, kOp, name);
  expect_same_device(ref, *a, kOp, "x1", name);
  // An empty index still means "indexed" (the kernels test the pointer): never hand out null for it.
  static const int64_t kNoSamples = 0;
  const int64_t* d = n == 0 ? &kNoSamples : static_cast<const int64_t*>(a->data());
  if (a->device_type() == nb::device::cpu::value)
    for (int64_t i = 0; i < n; ++i)
      if (d[i] < 0 || d[i] >= rows)
        fail(std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(d[i]) + " is outside [0, " +
             std::to_string(rows) + ")");
  return d;
}

// order must be a permutation of [0, n) (each sample visited once); checked on the CPU.
const int64_t* order_vector(const OptArray& a, int64_t n, const Array& ref) {
  const int64_t* d = index_vector(a, n, n, ref, "order");
  if (d && a->device_type() == nb::device::cpu::value) {
    std::vector<bool> seen(size_t(n), false);
    for (int64_t i = 0; i < n; ++i) {
      if (seen[size_t(d[i])]) fail("order must be a permutation (sample " + std::to_string(d[i]) + " repeats)");
      seen[size_t(d[i])] = true;
    }
  }
  return d;
}

struct Call {
  so3::Problem p;
  const int64_t* order = nullptr;
  Device device = Device::cpu;
};

Call make_call(const PlanHandle& plan, const Array& x1, const Array& x2, const OptArray& weight,
               const OptArray& x1_index, const OptArray& out_index, const OptArray& order, int64_t out_rows) {
  if (x1.ndim() != 2) fail("x1 must be 2-d [rows, dim1]");
  Call c;
  so3::Problem& p = c.p;
  p.plan = plan.view();
  p.cpu_plan = plan.cpu();
  const int64_t dim2 = p.plan.dim2, weight_numel = p.plan.weight_numel;
  p.dtype = real_dtype(x1, "x1");
  c.device = device_of(x1, kOp, "x1");
  if (x2.ndim() != 2) fail("x2 must be 2-d [batch, dim2]");
  p.batch = int64_t(x2.shape(0));
  p.x1_rows = int64_t(x1.shape(0));
  p.x1 = x1.data();
  p.x1_stride = expect_matrix(x1, -1, p.plan.dim1, p.dtype, x1, "x1");
  p.x2 = x2.data();
  p.x2_stride = expect_matrix(x2, p.batch, dim2, p.dtype, x1, "x2");
  if (weight) {
    if (weight->ndim() == 1) {
      if (int64_t(weight->shape(0)) != weight_numel) fail("a shared weight must have shape [weight_numel]");
      if (real_dtype(*weight, "weight") != p.dtype) throw_type(std::string(kOp) + ": weight must have the dtype of x1");
      expect_contiguous(*weight, kOp, "weight");
      expect_same_device(x1, *weight, kOp, "x1", "weight");
      p.weight_stride = 0;
    } else {
      p.weight_stride = expect_matrix(*weight, p.batch, weight_numel, p.dtype, x1, "weight");
    }
    p.weight = weight->data();
  } else if (has_weighted_path(p.plan)) {
    fail("weight is required: the plan has weighted paths");
  }
  p.x1_index = index_vector(x1_index, p.batch, p.x1_rows, x1, "x1_index");
  if (!p.x1_index && p.x1_rows != p.batch) fail("without x1_index, x1 must have one row per sample");
  p.out_rows = out_rows;
  p.out_index = index_vector(out_index, p.batch, out_rows, x1, "out_index");
  if (!p.out_index && out_rows != p.batch) fail("without out_index, the output has one row per sample");
  c.order = order_vector(order, p.batch, x1);
  return c;
}

so3::DevicePlan device_plan(const OptArray& paths, const OptArray& cg_ijk, const OptArray& cg_value,
                            const so3::PlanView& host, const Array& x1) {
  if (!paths || !cg_ijk || !cg_value) fail("CUDA calls need the plan tensors on the device");
  expect_numel(*paths, host.num_paths * so3::kPathFields, kOp, "device paths");
  expect_numel(*cg_ijk, host.num_cg * 3, kOp, "device cg_ijk");
  expect_numel(*cg_value, host.num_cg, kOp, "device cg_value");
  expect_dtype(*paths, 64, nb::dlpack::dtype_code::Int, kOp, "device paths", "int64");
  expect_dtype(*cg_ijk, 32, nb::dlpack::dtype_code::Int, kOp, "device cg_ijk", "int32");
  expect_dtype(*cg_value, 64, nb::dlpack::dtype_code::Float, kOp, "device cg_value", "float64");
  for (const Array* a : {&*paths, &*cg_ijk, &*cg_value}) {
    expect_same_device(x1, *a, kOp, "x1", "device plan");
    expect_contiguous(*a, kOp, "device plan");
  }
  so3::DevicePlan d;
  d.paths = static_cast<const int64_t*>(paths->data());
  d.cg_ijk = static_cast<const int32_t*>(cg_ijk->data());
  d.cg_value = static_cast<const double*>(cg_value->data());
  return d;
}

void so3_forward(const PlanHandle& plan, Array x1, Array x2, OptArray weight, OptArray x1_index, OptArray out_index,
                 OptArray order, Array out,
                 OptArray device_paths, OptArray device_cg_ijk, OptArray device_cg_value, bool deterministic,
                 int nthreads, std::uintptr_t stream) {
  const int64_t out_rows = out.ndim() == 2 ? int64_t(out.shape(0)) : -1;
  Call c = make_call(plan, x1, x2, weight, x1_index, out_index, order, out_rows);
  const int64_t out_stride = expect_matrix(out, out_rows, c.p.plan.dim_out, c.p.dtype, x1, "out");
  if (c.p.out_index && !c.order && deterministic) fail("order is required with out_index");
  if (c.device == Device::cpu) {
    nb::gil_scoped_release nogil;
    so3::forward_cpu(c.p, c.order, out.data(), out_stride, nthreads);
    return;
  }
#ifdef FASTOPS_WITH_CUDA
  const so3::DevicePlan d = device_plan(device_paths, device_cg_ijk, device_cg_value, c.p.plan, x1);
  nb::gil_scoped_release nogil;
  so3::forward_cuda(c.p, d, c.order, deterministic, out.data(), out_stride, stream);
#else
  (void)device_paths, (void)device_cg_ijk, (void)device_cg_value, (void)stream;
  throw_no_cuda_build();
#endif
}

// Row stride of an optional gradient output shaped like its operand.
int64_t grad_stride(const OptArray& g, int64_t rows, int64_t cols, so3::Real dtype, const Array& x1,
                    const char* name) {
  return g ? expect_matrix(*g, rows, cols, dtype, x1, name) : 0;
}

void so3_backward(const PlanHandle& plan, Array x1, Array x2, OptArray weight, OptArray x1_index, OptArray out_index,
                  OptArray order,
                  Array grad_out, OptArray grad_x1, OptArray grad_x2, OptArray grad_weight, OptArray device_paths,
                  OptArray device_cg_ijk, OptArray device_cg_value, bool deterministic, int nthreads,
                  std::uintptr_t stream, OptArray workspace) {
  const int64_t out_rows = grad_out.ndim() == 2 ? int64_t(grad_out.shape(0)) : -1;
  Call c = make_call(plan, x1, x2, weight, x1_index, out_index, order, out_rows);
  const so3::Problem& p = c.p;
  const int64_t dim2 = p.plan.dim2, weight_numel = p.plan.weight_numel;
  const int64_t grad_out_stride = expect_matrix(grad_out, out_rows, p.plan.dim_out, p.dtype, x1, "grad_out");
  so3::Grads g;
  g.x1 = grad_x1 ? grad_x1->data() : nullptr;
  g.x1_stride = grad_stride(grad_x1, p.x1_rows, p.plan.dim1, p.dtype, x1, "grad_x1");
  g.x2 = grad_x2 ? grad_x2->data() : nullptr;
  g.x2_stride = grad_stride(grad_x2, p.batch, dim2, p.dtype, x1, "grad_x2");
  if (grad_weight) {
    if (!weight) fail("grad_weight needs a weight");
    if (p.weight_stride == 0) {
      if (grad_weight->ndim() != 1 || int64_t(grad_weight->shape(0)) != weight_numel)
        fail("grad_weight of a shared weight must have shape [weight_numel]");
      if (real_dtype(*grad_weight, "grad_weight") != p.dtype)
        throw_type(std::string(kOp) + ": grad_weight must have the dtype of x1");
      expect_contiguous(*grad_weight, kOp, "grad_weight");
      expect_same_device(x1, *grad_weight, kOp, "x1", "grad_weight");
    } else {
      g.weight_stride = expect_matrix(*grad_weight, p.batch, weight_numel, p.dtype, x1, "grad_weight");
    }
    g.weight = grad_weight->data();
  }
  if (g.x1 && p.x1_index && !c.order && deterministic) fail("order is required for grad_x1 with x1_index");
  if (c.device == Device::cpu) {
    nb::gil_scoped_release nogil;
    so3::backward_cpu(p, c.order, grad_out.data(), grad_out_stride, g, nthreads);
    return;
  }
#ifdef FASTOPS_WITH_CUDA
  const so3::DevicePlan d = device_plan(device_paths, device_cg_ijk, device_cg_value, p.plan, x1);
  void* ws = workspace_data(workspace, so3::backward_cuda_workspace_bytes(p, deterministic), x1, kOp, "x1");
  nb::gil_scoped_release nogil;
  so3::backward_cuda(p, d, c.order, deterministic, grad_out.data(), grad_out_stride, g, ws, stream);
#else
  (void)device_paths, (void)device_cg_ijk, (void)device_cg_value, (void)stream, (void)workspace;
  throw_no_cuda_build();
#endif
}

}  // namespace

void register_so3(nb::module_& m) {
  nb::class_<PlanHandle>(m, "So3Plan", "A validated tensor-product plan, compiled for the CPU kernels")
      .def(nb::init<const Array&, const Array&, const Array&, int64_t, int64_t, int64_t, int64_t>(),
           nb::arg("paths").noconvert(), nb::arg("cg_ijk").noconvert(), nb::arg("cg_value").noconvert(),
           nb::arg("dim1"), nb::arg("dim2"), nb::arg("dim_out"), nb::arg("weight_numel"));
  m.def("so3_forward", &so3_forward, nb::arg("plan"), nb::arg("x1").noconvert(), nb::arg("x2").noconvert(), nb::arg("weight").noconvert().none(),
        nb::arg("x1_index").noconvert().none(), nb::arg("out_index").noconvert().none(),
        nb::arg("order").noconvert().none(), nb::arg("out").noconvert(),
        nb::arg("device_paths").noconvert().none() = nb::none(),
        nb::arg("device_cg_ijk").noconvert().none() = nb::none(),
        nb::arg("device_cg_value").noconvert().none() = nb::none(), nb::arg("deterministic") = true,
        nb::arg("nthreads") = 1, nb::arg("stream") = 0,
        "out[r] = sum of the tensor products of the samples whose output row is r (csrc/so3/so3.h)");
  m.def("so3_backward", &so3_backward, nb::arg("plan"), nb::arg("x1").noconvert(), nb::arg("x2").noconvert(), nb::arg("weight").noconvert().none(),
        nb::arg("x1_index").noconvert().none(), nb::arg("out_index").noconvert().none(),
        nb::arg("order").noconvert().none(), nb::arg("grad_out").noconvert(),
        nb::arg("grad_x1").noconvert().none(), nb::arg("grad_x2").noconvert().none(),
        nb::arg("grad_weight").noconvert().none(), nb::arg("device_paths").noconvert().none() = nb::none(),
        nb::arg("device_cg_ijk").noconvert().none() = nb::none(),
        nb::arg("device_cg_value").noconvert().none() = nb::none(), nb::arg("deterministic") = true,
        nb::arg("nthreads") = 1, nb::arg("stream") = 0, nb::arg("workspace").noconvert().none() = nb::none(),
        "Gradients of sum(grad_out * forward) with respect to x1, x2 and the weight (csrc/so3/so3.h)");
  m.def("so3_backward_cuda_workspace_bytes",
        [](int64_t batch, int64_t weight_numel, bool shared_weight, bool deterministic, int dtype) {
#ifdef FASTOPS_WITH_CUDA
          so3::Problem p;
          p.batch = batch;
          p.plan.weight_numel = weight_numel;
          p.weight_stride = shared_weight ? 0 : weight_numel;
          p.dtype = so3::Real(dtype);
          return so3::backward_cuda_workspace_bytes(p, deterministic);
#else
          (void)batch, (void)weight_numel, (void)shared_weight, (void)deterministic, (void)dtype;
          throw_no_cuda_build();
#endif
        },
        nb::arg("batch"), nb::arg("weight_numel"), nb::arg("shared_weight"), nb::arg("deterministic"),
        nb::arg("dtype"), "Bytes of device workspace so3_backward needs on CUDA (dtype: 0 float32, 1 float64)");
  m.def("so3_cpu_kernel_name", [] { return std::string(so3::cpu_kernel_name()); });
  def_cuda_layout_selftest<so3::cuda_layout_selftest>(m, "_so3_cuda_layout_selftest");
}

}  // namespace bind
}  // namespace fastops
