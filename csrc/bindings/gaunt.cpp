// Bindings of the Gaunt transform programs and the CP product (csrc/so3/gaunt.h). The Python layer
// (python/fastops/so3.py, _gaunt_programs.py) builds the programs and validates user input; these checks
// are the last line of defence before raw pointers reach a kernel.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <memory>
#include <string>

#include "bindings/binding_utils.h"
#include "so3/gaunt.h"
#include "so3/gaunt_cuda_layout_test.h"

namespace fastops {
namespace bind {
namespace {

constexpr const char* kOp = "gaunt tensor product";

[[noreturn]] void fail(const std::string& msg) { throw_value(std::string(kOp) + ": " + msg); }

const int32_t* int32_table(const Array& a, int64_t* n, const char* name) {
  expect_dtype(a, 32, nb::dlpack::dtype_code::Int, kOp, name, "int32");
  if (device_of(a, kOp, name) != Device::cpu) fail(std::string(name) + " must be on the CPU");
  expect_contiguous(a, kOp, name);
  *n = int64_t(a.size());
  return static_cast<const int32_t*>(a.data());
}

// A validated program with the CPU kernels' compiled form, built once per Python program.
class ProgramHandle {
 public:
  ProgramHandle(const Array& ops, const Array& consts, const Array& index, const Array& in1_slots,
                const Array& in2_slots, const Array& out_slots, int64_t num_slots) {
    so3::GauntProgramView v;
    int64_t n_ops = 0;
    v.ops = int32_table(ops, &n_ops, "ops");
    if (ops.ndim() != 2 || ops.shape(1) != so3::kGauntOpFields)
      fail("ops must have shape [num_ops, " + std::to_string(so3::kGauntOpFields) + "]");
    v.num_ops = int64_t(ops.shape(0));
    expect_dtype(consts, 64, nb::dlpack::dtype_code::Float, kOp, "consts", "float64");
    if (device_of(consts, kOp, "consts") != Device::cpu) fail("consts must be on the CPU");
    expect_contiguous(consts, kOp, "consts");
    v.consts = static_cast<const double*>(consts.data());
    v.num_consts = int64_t(consts.size());
    v.index = int32_table(index, &v.num_index, "index");
    v.in1_slots = int32_table(in1_slots, &v.dim1, "in1_slots");
    v.in2_slots = int32_table(in2_slots, &v.dim2, "in2_slots");
    v.out_slots = int32_table(out_slots, &v.dim_out, "out_slots");
    v.num_slots = num_slots;
    program_ = so3::compile_gaunt_program(v, kOp);
    dim1_ = v.dim1;
    dim2_ = v.dim2;
    dim_out_ = v.dim_out;
  }
  const so3::GauntCpuProgram& program() const { return *program_; }
  int64_t dim1() const { return dim1_; }
  int64_t dim2() const { return dim2_; }
  int64_t dim_out() const { return dim_out_; }

 private:
  std::shared_ptr<const so3::GauntCpuProgram> program_;
  int64_t dim1_ = 0, dim2_ = 0, dim_out_ = 0;
};

so3::GauntReal real_dtype(const Array& a, const char* name) {
  if (has_dtype(a, 32, nb::dlpack::dtype_code::Float)) return so3::GauntReal::f32;
  if (has_dtype(a, 64, nb::dlpack::dtype_code::Float)) return so3::GauntReal::f64;
  throw_type(std::string(kOp) + ": " + name + " must be float32 or float64, got " + dtype_str(a));
}

// An ndim-d array of `dtype` on ref's device with the given sizes (-1: any) and a contiguous last
// dimension; returns its strides (a size-1 dimension reports the stride a contiguous array would have).
void expect_array(const Array& a, std::initializer_list<int64_t> shape, so3::GauntReal dtype, const Array& ref,
                  const char* name, int64_t* strides) {
  if (a.ndim() != shape.size()) fail(std::string(name) + " must be " + std::to_string(shape.size()) + "-d");
  size_t d = 0;
  for (int64_t s : shape) {
    if (s >= 0 && int64_t(a.shape(d)) != s)
      fail(std::string(name) + " has size " + std::to_string(a.shape(d)) + " in dimension " + std::to_string(d) +
           ", expected " + std::to_string(s));
    if (a.stride(d) < 0) fail(std::string(name) + ": negative strides are not supported");
    ++d;
  }
  if (real_dtype(a, name) != dtype) throw_type(std::string(kOp) + ": " + name + " must have the dtype of x1");
  expect_same_device(ref, a, kOp, "x1", name);
  int64_t contiguous = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    strides[i] = a.shape(i) == 1 ? contiguous : int64_t(a.stride(i));
    contiguous *= int64_t(a.shape(i));
  }
  if (a.shape(a.ndim() - 1) > 1 && strides[a.ndim() - 1] != 1)
    fail(std::string(name) + " must be contiguous along its last dimension");
}

void gaunt_forward(const ProgramHandle& h, Array x1, Array x2, Array out, int nthreads) {
  const so3::GauntReal dtype = real_dtype(x1, "x1");
  if (device_of(x1, kOp, "x1") != Device::cpu) fail("transform programs run on the CPU (use gaunt_dense on CUDA)");
  int64_t s1[2], s2[2], so[2];
  expect_array(x1, {-1, h.dim1()}, dtype, x1, "x1", s1);
  const int64_t samples = int64_t(x1.shape(0));
  expect_array(x2, {samples, h.dim2()}, dtype, x1, "x2", s2);
  expect_array(out, {samples, h.dim_out()}, dtype, x1, "out", so);
  nb::gil_scoped_release nogil;
  so3::gaunt_forward_cpu(h.program(), dtype, samples, x1.data(), s1[0], x2.data(), s2[0], out.data(), so[0],
                         nthreads);
}

void gaunt_dense(Array x1, Array x2, Array y1, Array y2, Array z, Array out, std::uintptr_t stream) {
  so3::GauntDenseProblem p;
  p.dtype = real_dtype(x1, "x1");
  int64_t s[2];
  expect_array(x1, {-1, -1}, p.dtype, x1, "x1", s);
  p.samples = int64_t(x1.shape(0));
  p.dim1 = int64_t(x1.shape(1));
  p.x1_stride = s[0];
  expect_array(y1, {p.dim1, -1}, p.dtype, x1, "y1", s);
  p.points = int64_t(y1.shape(1));
  if (s[0] != p.points) fail("y1 must be contiguous");
  expect_array(x2, {p.samples, -1}, p.dtype, x1, "x2", s);
  p.dim2 = int64_t(x2.shape(1));
  p.x2_stride = s[0];
  expect_array(y2, {p.dim2, p.points}, p.dtype, x1, "y2", s);
  if (s[0] != p.points) fail("y2 must be contiguous");
  expect_array(z, {p.points, -1}, p.dtype, x1, "z", s);
  p.dim_out = int64_t(z.shape(1));
  if (s[0] != p.dim_out) fail("z must be contiguous");
  expect_array(out, {p.samples, p.dim_out}, p.dtype, x1, "out", s);
  p.out_stride = s[0];
  p.x1 = x1.data();
  p.x2 = x2.data();
  p.y1 = y1.data();
  p.y2 = y2.data();
  p.z = z.data();
  p.out = out.data();
  if (device_of(x1, kOp, "x1") != Device::cuda) fail("gaunt_dense runs on CUDA (CPU calls use a program)");
#ifdef FASTOPS_WITH_CUDA
  nb::gil_scoped_release nogil;
  so3::gaunt_dense_cuda(p, stream);
#else
  (void)stream;
  throw_no_cuda_build();
#endif
}

void cp_forward(Array x, Array y, Array w, Array f1, Array f2, Array f3, Array out, int nthreads,
                std::uintptr_t stream) {
  so3::CpProblem p;
  p.dtype = real_dtype(x, "x");
  int64_t s[3];
  expect_array(x, {-1, -1, -1}, p.dtype, x, "x", s);
  p.edges = int64_t(x.shape(0));
  p.channels = int64_t(x.shape(1));
  p.dim1 = int64_t(x.shape(2));
  p.x_stride = s[0];
  p.x_channel_stride = s[1];
  expect_array(f1, {p.dim1, -1}, p.dtype, x, "f1", s);
  p.rank = int64_t(f1.shape(1));
  if (s[0] != p.rank) fail("f1 must be contiguous");
  expect_array(y, {p.edges, -1}, p.dtype, x, "y", s);
  p.dim2 = int64_t(y.shape(1));
  p.y_stride = s[0];
  expect_array(f2, {p.dim2, p.rank}, p.dtype, x, "f2", s);
  if (s[0] != p.rank) fail("f2 must be contiguous");
  expect_array(f3, {-1, p.rank}, p.dtype, x, "f3", s);
  p.dim_out = int64_t(f3.shape(0));
  if (s[0] != p.rank) fail("f3 must be contiguous");
  expect_array(w, {p.edges, p.channels}, p.dtype, x, "w", s);
  p.w_stride = s[0];
  expect_array(out, {p.edges, p.channels, p.dim_out}, p.dtype, x, "out", s);
  if (s[0] != p.channels * p.dim_out || s[1] != p.dim_out) fail("out must be contiguous");
  p.x = x.data();
  p.y = y.data();
  p.w = w.data();
  p.f1 = f1.data();
  p.f2 = f2.data();
  p.f3 = f3.data();
  p.out = out.data();
  if (device_of(x, kOp, "x") == Device::cpu) {
    nb::gil_scoped_release nogil;
    so3::cp_forward_cpu(p, nthreads);
    return;
  }
#ifdef FASTOPS_WITH_CUDA
  nb::gil_scoped_release nogil;
  so3::cp_forward_cuda(p, stream);
#else
  (void)stream;
  throw_no_cuda_build();
#endif
}

}  // namespace

void register_gaunt(nb::module_& m) {
  nb::class_<ProgramHandle>(m, "GauntProgram", "A validated Gaunt transform program, compiled for the CPU kernels")
      .def(nb::init<const Array&, const Array&, const Array&, const Array&, const Array&, const Array&, int64_t>(),
           nb::arg("ops").noconvert(), nb::arg("consts").noconvert(), nb::arg("index").noconvert(),
           nb::arg("in1_slots").noconvert(), nb::arg("in2_slots").noconvert(), nb::arg("out_slots").noconvert(),
           nb::arg("num_slots"));
  m.def("gaunt_forward", &gaunt_forward, nb::arg("program"), nb::arg("x1").noconvert(), nb::arg("x2").noconvert(),
        nb::arg("out").noconvert(), nb::arg("nthreads") = 1,
        "out[s] = program(x1[s], x2[s]) on the CPU (csrc/so3/gaunt.h); a zero row stride broadcasts a row");
  m.def("gaunt_dense", &gaunt_dense, nb::arg("x1").noconvert(), nb::arg("x2").noconvert(), nb::arg("y1").noconvert(),
        nb::arg("y2").noconvert(), nb::arg("z").noconvert(), nb::arg("out").noconvert(), nb::arg("stream") = 0,
        "out = ((x1 @ y1) * (x2 @ y2)) @ z on CUDA, fused (csrc/so3/gaunt.h)");
  m.def("cp_forward", &cp_forward, nb::arg("x").noconvert(), nb::arg("y").noconvert(), nb::arg("w").noconvert(),
        nb::arg("f1").noconvert(), nb::arg("f2").noconvert(), nb::arg("f3").noconvert(), nb::arg("out").noconvert(),
        nb::arg("nthreads") = 1, nb::arg("stream") = 0,
        "out[e, c] = w[e, c] * f3 @ ((f1^T x[e, c]) * (f2^T y[e])) (csrc/so3/gaunt.h)");
  m.def("gaunt_cpu_kernel_name", [] { return std::string(so3::gaunt_cpu_kernel_name()); });
  def_cuda_layout_selftest<so3::gaunt_cuda_layout_selftest>(m, "_gaunt_cuda_layout_selftest");
}

}  // namespace bind
}  // namespace fastops
