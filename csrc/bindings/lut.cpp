// Bindings of fastops::lut. The Python layer (python/fastops/lut.py) validates user input with
// friendly messages; these checks are the last line of defence before raw pointers reach a kernel.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <optional>
#include <string>

#include "bindings/binding_utils.h"
#include "lut/lut.h"
#include "lut/lut_cuda_layout_test.h"

namespace fastops {
namespace bind {
namespace {

constexpr const char* kOp = "lut_gemm";

// The packed weight after checking its metadata, dtypes and sizes (lut_format.h), for every entry point.
lut::PackedWeight packed_weight(const Array& planes, const Array& scales, const Array& zeros, int64_t m, int64_t k,
                                int bits, int64_t group_size, int scheme, const char* op) {
  if (bits < 1 || bits > 4) throw_value(std::string(op) + ": bits must be in 1..4, got " + std::to_string(bits));
  if (group_size <= 0 || group_size % lut::kGroupMultiple != 0)
    throw_value(std::string(op) + ": group_size must be a positive multiple of 32, got " +
                std::to_string(group_size));
  if (scheme != int(lut::Scheme::uniform) && scheme != int(lut::Scheme::bcq))
    throw_value(std::string(op) + ": scheme must be 0 (uniform) or 1 (bcq)");
  if (m < 0 || k < 0) throw_value(std::string(op) + ": m and k must be >= 0");
  expect_dtype(planes, 8, nb::dlpack::dtype_code::UInt, op, "planes", "uint8");
  expect_dtype(scales, 16, nb::dlpack::dtype_code::Float, op, "scales", "float16");
  expect_dtype(zeros, 16, nb::dlpack::dtype_code::Float, op, "zeros", "float16");
  for (const Array* a : {&planes, &scales, &zeros}) expect_contiguous(*a, op, "packed weight tensors");
  const int64_t mp = lut::row_tiles(m) * lut::kTileRows, groups = lut::num_groups(k, group_size);
  const int64_t alphas = scheme == int(lut::Scheme::bcq) ? bits : 1;
  expect_numel(planes, lut::planes_bytes(m, k, bits), op, "planes");
  expect_numel(scales, groups * alphas * mp, op, "scales");
  expect_numel(zeros, groups * mp, op, "zeros");
  expect_same_device(planes, scales, op, "planes", "scales");
  expect_same_device(planes, zeros, op, "planes", "zeros");
  lut::PackedWeight w;
  w.planes = static_cast<const uint8_t*>(planes.data());
  w.scales = static_cast<const uint16_t*>(scales.data());
  w.zeros = static_cast<const uint16_t*>(zeros.data());
  w.m = m;
  w.k = k;
  w.bits = bits;
  w.group_size = group_size;
  w.scheme = lut::Scheme(scheme);
  return w;
}

lut::GemmProblem make_problem(const Array& x, const Array& planes, const Array& scales, const Array& zeros,
                              const std::optional<Array>& bias, const Array& y, int64_t m, int64_t k,
                              int bits, int64_t group_size, int scheme) {
  lut::GemmProblem p;
  static_cast<lut::PackedWeight&>(p) = packed_weight(planes, scales, zeros, m, k, bits, group_size, scheme, kOp);
  if (x.ndim() != 2 || int64_t(x.shape(1)) != k)
    throw_value(std::string(kOp) + ": x must have shape [n, " + std::to_string(k) + "]");
  const int64_t n = int64_t(x.shape(0));
  if (y.ndim() != 2 || int64_t(y.shape(0)) != n || int64_t(y.shape(1)) != m || (m > 1 && y.stride(1) != 1))
    throw_value(std::string(kOp) + ": y must have shape [" + std::to_string(n) + ", " + std::to_string(m) +
                "] with unit stride along m");
  if (x.stride(0) < 0 || x.stride(1) < 0 || y.stride(0) < 0)
    throw_value(std::string(kOp) + ": negative strides are not supported");

  const DType dt = float_dtype(x, kOp, "x");
  if (float_dtype(y, kOp, "y") != dt) throw_type(std::string(kOp) + ": y must have the dtype of x");
  expect_same_device(x, planes, kOp, "x", "planes");  // scales and zeros: packed_weight
  expect_same_device(x, y, kOp, "x", "y");

  if (bias) {
    if (bias->ndim() != 1 || int64_t(bias->shape(0)) != m)
      throw_value(std::string(kOp) + ": bias must have shape [" + std::to_string(m) + "]");
    if (float_dtype(*bias, kOp, "bias") != dt) throw_type(std::string(kOp) + ": bias must have the dtype of x");
    expect_contiguous(*bias, kOp, "bias");
    expect_same_device(x, *bias, kOp, "x", "bias");
    p.bias = bias->data();
  }
  p.x = x.data();
  p.dtype = dt;
  p.n = n;
  p.x_stride_n = x.stride(0);
  p.x_stride_k = x.stride(1);
  p.y = y.data();
  p.y_stride_n = y.stride(0);
  return p;
}

void lut_gemm(Array x, Array planes, Array scales, Array zeros, std::optional<Array> bias, Array y, int64_t m,
              int64_t k, int bits, int64_t group_size, int scheme, bool precise, int nthreads,
              std::uintptr_t stream, std::optional<Array> workspace) {
  lut::GemmProblem p = make_problem(x, planes, scales, zeros, bias, y, m, k, bits, group_size, scheme);
  if (device_of(x, kOp, "x") == Device::cpu) {
    nb::gil_scoped_release nogil;
    lut::gemm_cpu(p, precise, nthreads);
    return;
  }
#ifdef FASTOPS_WITH_CUDA
  void* ws = workspace_data(workspace, lut::gemm_cuda_workspace_bytes(p), x, kOp, "x");
  nb::gil_scoped_release nogil;
  lut::gemm_cuda(p, ws, stream);
#else
  (void)workspace;
  (void)stream;
  throw_no_cuda_build();
#endif
}

// out[k, r] = W[row_begin + r, k] for whole 16-row tiles (fp32 or bf16, CPU): the dense path's
// dequantization. out is [k, cols] with cols a multiple of 16 and row_begin + cols <= the padded m.
void lut_dequantize(Array planes, Array scales, Array zeros, Array out, int64_t m, int64_t k, int bits,
                    int64_t group_size, int scheme, int64_t row_begin, int nthreads) {
  constexpr const char* op = "lut_dequantize";
  if (out.ndim() != 2 || int64_t(out.shape(0)) != k || out.stride(1) != 1 || out.stride(0) < int64_t(out.shape(1)))
    throw_value(std::string(op) + ": out must have shape [" + std::to_string(k) + ", cols] with unit stride along cols");
  const int64_t cols = int64_t(out.shape(1));
  if (row_begin < 0 || row_begin % lut::kTileRows != 0 || cols % lut::kTileRows != 0 ||
      row_begin + cols > lut::row_tiles(m) * lut::kTileRows)
    throw_value(std::string(op) + ": row_begin and cols must be multiples of 16 within the padded rows of m");
  const DType dt = float_dtype(out, op, "out");
  if (dt != DType::f32 && dt != DType::bf16) throw_type(std::string(op) + ": out must be float32 or bfloat16");
  if (device_of(out, op, "out") != Device::cpu) throw_value(std::string(op) + ": out must be on the CPU");
  lut::DequantProblem p;
  static_cast<lut::PackedWeight&>(p) = packed_weight(planes, scales, zeros, m, k, bits, group_size, scheme, op);
  expect_same_device(out, planes, op, "out", "planes");
  p.row_begin = row_begin;
  p.rows = cols;
  p.out = out.data();
  p.out_dtype = dt;
  p.out_stride = out.stride(0);
  nb::gil_scoped_release nogil;
  lut::dequantize_cpu(p, nthreads);
}

std::size_t lut_cuda_workspace_bytes(int64_t n, int64_t m, int64_t k, int bits, int64_t group_size, int scheme,
                                     int dtype) {
#ifdef FASTOPS_WITH_CUDA
  lut::GemmProblem p;
  p.scheme = lut::Scheme(scheme);
  p.dtype = DType(dtype);
  p.n = n;
  p.m = m;
  p.k = k;
  p.bits = bits;
  p.group_size = group_size;
  return lut::gemm_cuda_workspace_bytes(p);
#else
  (void)n, (void)m, (void)k, (void)bits, (void)group_size, (void)scheme, (void)dtype;
  throw_no_cuda_build();
#endif
}

}  // namespace

void register_lut(nb::module_& m) {
  m.def("lut_gemm", &lut_gemm, nb::arg("x").noconvert(), nb::arg("planes").noconvert(),
        nb::arg("scales").noconvert(), nb::arg("zeros").noconvert(), nb::arg("bias").noconvert().none(),
        nb::arg("y").noconvert(), nb::arg("m"), nb::arg("k"), nb::arg("bits"), nb::arg("group_size"),
        nb::arg("scheme"), nb::arg("precise") = false, nb::arg("nthreads") = 1, nb::arg("stream") = 0,
        nb::arg("workspace").noconvert().none() = nb::none(),
        "y[n, m] = x[n, k] @ W^T (+ bias) for a packed LUT weight (layout: csrc/lut/lut_format.h)");
  m.def("lut_dequantize", &lut_dequantize, nb::arg("planes").noconvert(), nb::arg("scales").noconvert(),
        nb::arg("zeros").noconvert(), nb::arg("out").noconvert(), nb::arg("m"), nb::arg("k"), nb::arg("bits"),
        nb::arg("group_size"), nb::arg("scheme"), nb::arg("row_begin") = 0, nb::arg("nthreads") = 1,
        "out[k, r] = W[row_begin + r, k] of a packed LUT weight for whole 16-row tiles, float32 or bfloat16, CPU");
  m.def("lut_cuda_workspace_bytes", &lut_cuda_workspace_bytes, nb::arg("n"), nb::arg("m"), nb::arg("k"),
        nb::arg("bits"), nb::arg("group_size"), nb::arg("scheme"), nb::arg("dtype"),
        "Bytes of device workspace gemm_cuda needs (dtype: 0 float32, 1 float16, 2 bfloat16)");
  m.def("lut_cpu_kernel_name", [](bool precise) { return std::string(lut::cpu_kernel_name(precise)); },
        nb::arg("precise") = false);
  def_cuda_layout_selftest<lut::cuda_layout_selftest>(m, "_lut_cuda_layout_selftest");
}

}  // namespace bind
}  // namespace fastops
