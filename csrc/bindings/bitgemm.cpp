// Bindings of fastops::bitgemm. The Python layer (python/fastops/bitgemm.py) validates user input with
// friendly messages; these checks are the last line of defence before raw pointers reach a kernel.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <optional>
#include <string>

#include "bindings/binding_utils.h"
#include "bitgemm/bitgemm.h"
#include "bitgemm/bitgemm_cuda_layout_test.h"

namespace fastops {
namespace bind {
namespace {

constexpr const char* kGemm = "bitgemm.gemm";
constexpr const char* kQuant = "bitgemm.quantize_pack";

[[noreturn]] void fail(const char* op, const std::string& what) { throw_value(std::string(op) + ": " + what); }

void check_bits_fmt(const char* op, const char* name, int bits, int fmt) {
  if (bits < 1 || bits > bitgemm::kMaxBits) fail(op, std::string(name) + " bits must be in 1..8, got " + std::to_string(bits));
  if (fmt < 0 || fmt > int(bitgemm::Format::bipolar))
    fail(op, std::string(name) + " fmt must be 0 (unsigned), 1 (signed) or 2 (bipolar), got " + std::to_string(fmt));
}

bitgemm::Operand make_operand(const char* name, const Array& planes, const Array& offset, const Array& rowsum,
                              int bits, int fmt, int64_t k) {
  check_bits_fmt(kGemm, name, bits, fmt);
  expect_dtype(planes, 32, nb::dlpack::dtype_code::Int, kGemm, "planes", "int32");
  expect_contiguous(planes, kGemm, "planes");
  if (planes.ndim() != 3 || int64_t(planes.shape(0)) != bits || int64_t(planes.shape(2)) != bitgemm::words_per_row(k))
    fail(kGemm, std::string(name) + " planes must have shape [" + std::to_string(bits) + ", rows, " +
                    std::to_string(bitgemm::words_per_row(k)) + "]");
  const int64_t rows = int64_t(planes.shape(1));
  for (const Array* a : {&offset, &rowsum}) {
    expect_dtype(*a, 32, nb::dlpack::dtype_code::Int, kGemm, "offset/rowsum", "int32");
    expect_vector(*a, rows, kGemm, "offset/rowsum");
    expect_same_device(planes, *a, kGemm, "planes", "offset/rowsum");
  }
  bitgemm::Operand op;
  op.planes = static_cast<const uint32_t*>(planes.data());
  op.offset = static_cast<const int32_t*>(offset.data());
  op.rowsum = static_cast<const int32_t*>(rowsum.data());
  op.rows = rows;
  op.bits = bits;
  op.fmt = bitgemm::Format(fmt);
  return op;
}

// A 2-D fp32 scale array [rows or 1, groups or 1]; size-1 dimensions broadcast (stride 0).
void set_scale(const char* name, const Array& s, int64_t rows, int64_t groups, const Array& ref, const float** ptr,
               int64_t* stride_row, int64_t* stride_group) {
  expect_dtype(s, 32, nb::dlpack::dtype_code::Float, kGemm, name, "float32");
  if (s.ndim() != 2 || (int64_t(s.shape(0)) != rows && s.shape(0) != 1) ||
      (int64_t(s.shape(1)) != groups && s.shape(1) != 1))
    fail(kGemm, std::string(name) + " must have shape [" + std::to_string(rows) + " or 1, " + std::to_string(groups) +
                    " or 1]");
  expect_same_device(ref, s, kGemm, "planes", name);
  *ptr = static_cast<const float*>(s.data());
  *stride_row = s.shape(0) == 1 ? 0 : s.stride(0);
  *stride_group = s.shape(1) == 1 ? 0 : s.stride(1);
}

void bitgemm_gemm(Array a_planes, Array a_offset, Array a_rowsum, int a_bits, int a_fmt, Array w_planes,
                  Array w_offset, Array w_rowsum, int w_bits, int w_fmt, int64_t k, Array out,
                  std::optional<Array> a_scale, std::optional<Array> w_scale, std::optional<Array> bias,
                  int64_t group_size, const std::string& method, int nthreads, std::uintptr_t stream,
                  std::optional<Array> workspace) {
  if (k < 0) fail(kGemm, "k must be >= 0");
  bitgemm::GemmProblem p;
  p.a = make_operand("a", a_planes, a_offset, a_rowsum, a_bits, a_fmt, k);
  p.w = make_operand("w", w_planes, w_offset, w_rowsum, w_bits, w_fmt, k);
  p.k = k;
  if (!bitgemm::fits_int32(k, a_bits, w_bits))
    fail(kGemm, "k * (2^bits_a - 1) * (2^bits_w - 1) does not fit in int32");
  expect_same_device(a_planes, w_planes, kGemm, "a", "w");
  expect_same_device(a_planes, out, kGemm, "a", "out");
  if (method != "auto" && method != "popcount" && method != "int8")
    fail(kGemm, "method must be 'auto', 'popcount' or 'int8', got '" + method + "'");
  const int64_t m = p.a.rows, n = p.w.rows;
  if (out.ndim() != 2 || int64_t(out.shape(0)) != m || int64_t(out.shape(1)) != n || (n > 1 && out.stride(1) != 1) ||
      out.stride(0) < 0)
    fail(kGemm, "out must have shape [" + std::to_string(m) + ", " + std::to_string(n) + "] with unit stride along n");
  p.out = out.data();
  p.out_stride = out.stride(0);
  if (a_scale.has_value() != w_scale.has_value()) fail(kGemm, "a_scale and w_scale go together");
  p.scaled = a_scale.has_value();
  if (!p.scaled) {
    expect_dtype(out, 32, nb::dlpack::dtype_code::Int, kGemm, "out", "int32");
    if (bias) fail(kGemm, "bias needs the scaled mode");
  } else {
    if (group_size < 0 || (group_size > 0 && group_size % bitgemm::kGroupMultiple != 0))
      fail(kGemm, "group_size must be 0 or a positive multiple of 128, got " + std::to_string(group_size));
    p.group_size = group_size;
    p.out_dtype = float_dtype(out, kGemm, "out");
    const int64_t groups = bitgemm::num_groups(k, group_size);
    set_scale("a_scale", *a_scale, m, groups, a_planes, &p.a_scale, &p.a_scale_stride_row, &p.a_scale_stride_group);
    set_scale("w_scale", *w_scale, n, groups, a_planes, &p.w_scale, &p.w_scale_stride_row, &p.w_scale_stride_group);
    if (bias) {
      if (float_dtype(*bias, kGemm, "bias") != p.out_dtype) throw_type(std::string(kGemm) + ": bias must have the dtype of out");
      expect_vector(*bias, n, kGemm, "bias");
      expect_same_device(a_planes, *bias, kGemm, "a", "bias");
      p.bias = bias->data();
    }
  }
  if (device_of(a_planes, kGemm, "a") == Device::cpu) {
    nb::gil_scoped_release nogil;
    bitgemm::gemm_cpu(p, method.c_str(), nthreads);
    return;
  }
#ifdef FASTOPS_WITH_CUDA
  void* ws = workspace_data(workspace, bitgemm::gemm_cuda_workspace_bytes(p), a_planes, kGemm, "a");
  nb::gil_scoped_release nogil;
  bitgemm::gemm_cuda(p, ws, stream);
#else
  (void)workspace, (void)stream;
  throw_no_cuda_build();
#endif
}

// Workspace of gemm_cuda depends only on sizes, bits and the group layout (no pointers are read).
std::size_t bitgemm_cuda_workspace_bytes(int64_t m, int64_t n, int64_t k, int a_bits, int w_bits, bool scaled,
                                         int64_t group_size) {
#ifdef FASTOPS_WITH_CUDA
  constexpr const char* op = "bitgemm_cuda_workspace_bytes";
  if (m < 0 || n < 0 || k < 0) fail(op, "m, n and k must be >= 0");
  check_bits_fmt(op, "a", a_bits, 0);  // the workspace does not depend on the formats
  check_bits_fmt(op, "w", w_bits, 0);
  if (group_size < 0 || (group_size > 0 && group_size % bitgemm::kGroupMultiple != 0))
    fail(op, "group_size must be 0 or a positive multiple of 128, got " + std::to_string(group_size));
  bitgemm::GemmProblem p;
  p.a.rows = m, p.a.bits = a_bits;
  p.w.rows = n, p.w.bits = w_bits;
  p.k = k;
  p.scaled = scaled;
  p.group_size = group_size;
  return bitgemm::gemm_cuda_workspace_bytes(p);
#else
  (void)m, (void)n, (void)k, (void)a_bits, (void)w_bits, (void)scaled, (void)group_size;
  throw_no_cuda_build();
#endif
}

bitgemm::QuantizePackProblem make_quant(const Array& x, int bits, int fmt, bool per_tensor, const Array& planes,
                                        const Array& offset, const Array& rowsum, const Array& scales) {
  check_bits_fmt(kQuant, "x", bits, fmt);
  if (x.ndim() != 2 || (x.shape(0) > 1 && x.stride(0) < int64_t(x.shape(1))) || (x.shape(1) > 1 && x.stride(1) != 1))
    fail(kQuant, "x must be 2-D with unit stride along k");
  bitgemm::QuantizePackProblem q;
  q.dtype = float_dtype(x, kQuant, "x");
  q.rows = int64_t(x.shape(0));
  q.k = int64_t(x.shape(1));
  q.x_stride = x.stride(0);
  expect_dtype(planes, 32, nb::dlpack::dtype_code::Int, kQuant, "planes", "int32");
  expect_contiguous(planes, kQuant, "planes");
  expect_numel(planes, bits * q.rows * bitgemm::words_per_row(q.k), kQuant, "planes");
  expect_dtype(offset, 32, nb::dlpack::dtype_code::Int, kQuant, "offset", "int32");
  expect_vector(offset, q.rows, kQuant, "offset");
  expect_dtype(rowsum, 32, nb::dlpack::dtype_code::Int, kQuant, "rowsum", "int32");
  expect_vector(rowsum, q.rows, kQuant, "rowsum");
  expect_dtype(scales, 32, nb::dlpack::dtype_code::Float, kQuant, "scales", "float32");
  expect_vector(scales, per_tensor ? 1 : q.rows, kQuant, "scales");
  for (const Array* a : {&planes, &offset, &rowsum, &scales}) expect_same_device(x, *a, kQuant, "x", "outputs");
  q.x = x.data();
  q.bits = bits;
  q.fmt = bitgemm::Format(fmt);
  q.per_tensor = per_tensor;
  q.planes = static_cast<uint32_t*>(planes.data());
  q.offset = static_cast<int32_t*>(offset.data());
  q.rowsum = static_cast<int32_t*>(rowsum.data());
  q.scales = static_cast<float*>(scales.data());
  return q;
}

void bitgemm_quantize_pack(Array x, int bits, int fmt, bool per_tensor, Array planes, Array offset, Array rowsum,
                           Array scales, int nthreads, std::uintptr_t stream, std::optional<Array> workspace) {
  bitgemm::QuantizePackProblem q = make_quant(x, bits, fmt, per_tensor, planes, offset, rowsum, scales);
  if (device_of(x, kQuant, "x") == Device::cpu) {
    nb::gil_scoped_release nogil;
    bitgemm::quantize_pack_cpu(q, nthreads);
    return;
  }
#ifdef FASTOPS_WITH_CUDA
  void* ws = workspace_data(workspace, bitgemm::quantize_pack_cuda_workspace_bytes(q), x, kQuant, "x");
  nb::gil_scoped_release nogil;
  bitgemm::quantize_pack_cuda(q, ws, stream);
#else
  (void)workspace, (void)stream;
  throw_no_cuda_build();
#endif
}

std::size_t bitgemm_quantize_pack_cuda_workspace_bytes(int64_t rows, int64_t k, int bits, int fmt, bool per_tensor) {
#ifdef FASTOPS_WITH_CUDA
  bitgemm::QuantizePackProblem q;
  q.rows = rows, q.k = k, q.bits = bits, q.fmt = bitgemm::Format(fmt), q.per_tensor = per_tensor;
  return bitgemm::quantize_pack_cuda_workspace_bytes(q);
#else
  (void)rows, (void)k, (void)bits, (void)fmt, (void)per_tensor;
  throw_no_cuda_build();
#endif
}

}  // namespace

void register_bitgemm(nb::module_& m) {
  m.def("bitgemm_gemm", &bitgemm_gemm, nb::arg("a_planes").noconvert(), nb::arg("a_offset").noconvert(),
        nb::arg("a_rowsum").noconvert(), nb::arg("a_bits"), nb::arg("a_fmt"), nb::arg("w_planes").noconvert(),
        nb::arg("w_offset").noconvert(), nb::arg("w_rowsum").noconvert(), nb::arg("w_bits"), nb::arg("w_fmt"),
        nb::arg("k"), nb::arg("out").noconvert(), nb::arg("a_scale").noconvert().none() = nb::none(),
        nb::arg("w_scale").noconvert().none() = nb::none(), nb::arg("bias").noconvert().none() = nb::none(),
        nb::arg("group_size") = 0, nb::arg("method") = "auto", nb::arg("nthreads") = 1, nb::arg("stream") = 0,
        nb::arg("workspace").noconvert().none() = nb::none(),
        "out[m, n] = A[m, :] . W[n, :] for packed operands (csrc/bitgemm/bitgemm_format.h): exact int32, or "
        "scaled (a_scale, w_scale [rows or 1, groups or 1] fp32, bias) into fp32/fp16/bf16");
  m.def("bitgemm_cuda_workspace_bytes", &bitgemm_cuda_workspace_bytes, nb::arg("m"), nb::arg("n"), nb::arg("k"),
        nb::arg("a_bits"), nb::arg("w_bits"), nb::arg("scaled"), nb::arg("group_size"));
  m.def("bitgemm_quantize_pack", &bitgemm_quantize_pack, nb::arg("x").noconvert(), nb::arg("bits"), nb::arg("fmt"),
        nb::arg("per_tensor"), nb::arg("planes").noconvert(), nb::arg("offset").noconvert(),
        nb::arg("rowsum").noconvert(), nb::arg("scales").noconvert(), nb::arg("nthreads") = 1, nb::arg("stream") = 0,
        nb::arg("workspace").noconvert().none() = nb::none(),
        "Quantizes float x[rows, k] and packs it (rules: csrc/bitgemm/bitgemm.h) into the given outputs");
  m.def("bitgemm_quantize_pack_cuda_workspace_bytes", &bitgemm_quantize_pack_cuda_workspace_bytes, nb::arg("rows"),
        nb::arg("k"), nb::arg("bits"), nb::arg("fmt"), nb::arg("per_tensor"));
  m.def("bitgemm_cpu_kernel_name",
        [](int64_t m, int bits_a, int bits_w, const std::string& method) {
          return bitgemm::cpu_kernel_name(m, bits_a, bits_w, method.c_str());
        },
        nb::arg("m"), nb::arg("bits_a"), nb::arg("bits_w"), nb::arg("method") = "auto",
        "The CPU kernel gemm would run for an [m, K] activation of bits_a bits and bits_w-bit weights");
  def_cuda_layout_selftest<bitgemm::cuda_layout_selftest>(m, "_bitgemm_cuda_layout_selftest");
}

}  // namespace bind
}  // namespace fastops
