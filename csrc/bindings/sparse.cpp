// Bindings of fastops::sparse. The Python layer (python/fastops/sparse.py) validates user input with
// friendly messages; these checks are the last line of defence before raw pointers reach a kernel.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <optional>
#include <string>

#include "bindings/binding_utils.h"
#include "sparse/sparse.h"
#include "sparse/sparse_cuda_layout_test.h"

namespace fastops {
namespace bind {
namespace {

constexpr const char* kSpmm = "sparse.spmm";
constexpr const char* kPack = "sparse.pack";

[[noreturn]] void fail(const char* op, const std::string& what) { throw_value(std::string(op) + ": " + what); }

void check_shape_k(const char* op, int64_t m, int64_t k) {
  if (m < 1 || k < 1) fail(op, "m and k must be >= 1");
  if (k > sparse::kMaxCols) fail(op, "k must be <= " + std::to_string(sparse::kMaxCols));
}

// The packed weight's arrays, checked against (m, k, dtype) and against one device. On the CPU the strip
// offsets are checked too (O(strips)): they start at 0, never decrease, stay within a strip's capacity
// and, with the padding, within values. That the masks' bit counts match them is SparseWeight.validate's
// job (python/fastops/sparse.py runs it on every weight it did not pack itself).
sparse::Weight make_weight(const char* op, const Array& masks, const Array& values, const Array& strip_offsets,
                           const Array& chunk_offsets, int64_t m, int64_t k) {
  check_shape_k(op, m, k);
  const int64_t strips = sparse::num_strips(m);
  expect_dtype(masks, 32, nb::dlpack::dtype_code::Int, op, "masks", "int32");
  expect_contiguous(masks, op, "masks");
  expect_numel(masks, strips * sparse::units_per_strip(k), op, "masks");
  expect_dtype(strip_offsets, 64, nb::dlpack::dtype_code::Int, op, "strip_offsets", "int64");
  expect_vector(strip_offsets, strips + 1, op, "strip_offsets");
  expect_dtype(chunk_offsets, 32, nb::dlpack::dtype_code::Int, op, "chunk_offsets", "int32");
  expect_contiguous(chunk_offsets, op, "chunk_offsets");
  expect_numel(chunk_offsets, strips * sparse::chunks_per_strip(k), op, "chunk_offsets");
  expect_vector(values, -1, op, "values");
  if (values.size() < size_t(sparse::kValuePad))
    fail(op, "values must hold the nonzeros plus " + std::to_string(sparse::kValuePad) + " padding elements");
  for (const Array* a : {&values, &strip_offsets, &chunk_offsets})
    expect_same_device(masks, *a, op, "masks", "values/offsets");
  if (device_of(masks, op, "masks") == Device::cpu) {
    const int64_t* off = static_cast<const int64_t*>(strip_offsets.data());
    const int64_t strip_capacity = sparse::kStripRows * sparse::padded_cols(k);
    bool ok = off[0] == 0;
    for (int64_t s = 0; ok && s < strips; ++s) ok = off[s + 1] >= off[s] && off[s + 1] - off[s] <= strip_capacity;
    if (!ok || off[strips] + sparse::kValuePad > int64_t(values.size()))
      fail(op, "strip_offsets must start at 0, never decrease, grow by at most 16 * padded k per strip and end at "
               "values' length minus " + std::to_string(sparse::kValuePad));
  }
  sparse::Weight w;
  w.masks = static_cast<const uint32_t*>(masks.data());
  w.values = values.data();
  w.strip_offsets = static_cast<const int64_t*>(strip_offsets.data());
  w.chunk_offsets = static_cast<const int32_t*>(chunk_offsets.data());
  w.m = m;
  w.k = k;
  w.dtype = float_dtype(values, op, "values");
  return w;
}

void sparse_spmm(Array x, Array masks, Array values, Array strip_offsets, Array chunk_offsets, int64_t m, int64_t k,
                 std::optional<Array> bias, Array y, int nthreads, std::uintptr_t stream,
                 std::optional<Array> workspace) {
  sparse::SpmmProblem p;
  p.w = make_weight(kSpmm, masks, values, strip_offsets, chunk_offsets, m, k);
  if (float_dtype(x, kSpmm, "x") != p.w.dtype || float_dtype(y, kSpmm, "y") != p.w.dtype)
    throw_type(std::string(kSpmm) + ": x, y and the weight values must share one dtype");
  if (x.ndim() != 2 || int64_t(x.shape(1)) != k || x.stride(0) < 0 || x.stride(1) < 0)
    fail(kSpmm, "x must have shape [n, " + std::to_string(k) + "] with non-negative strides");
  p.n = int64_t(x.shape(0));
  if (y.ndim() != 2 || int64_t(y.shape(0)) != p.n || int64_t(y.shape(1)) != m || (m > 1 && y.stride(1) != 1) ||
      y.stride(0) < 0)
    fail(kSpmm, "y must have shape [" + std::to_string(p.n) + ", " + std::to_string(m) + "] with unit stride along m");
  expect_same_device(masks, x, kSpmm, "w", "x");
  expect_same_device(masks, y, kSpmm, "w", "y");
  p.x = x.data();
  p.x_stride = x.stride(0);
  p.x_col_stride = k > 1 ? x.stride(1) : 1;
  p.y = y.data();
  p.y_stride = y.stride(0);
  if (bias) {
    if (float_dtype(*bias, kSpmm, "bias") != p.w.dtype) throw_type(std::string(kSpmm) + ": bias must have the dtype of x");
    expect_vector(*bias, m, kSpmm, "bias");
    expect_same_device(masks, *bias, kSpmm, "w", "bias");
    p.bias = bias->data();
  }
  if (device_of(masks, kSpmm, "w") == Device::cpu) {
    nb::gil_scoped_release nogil;
    sparse::spmm_cpu(p, nthreads);
    return;
  }
#ifdef FASTOPS_WITH_CUDA
  if (p.x_col_stride != 1) fail(kSpmm, "x must have unit stride along k on CUDA");
  void* ws = workspace_data(workspace, sparse::spmm_cuda_workspace_bytes(p), masks, kSpmm, "w");
  nb::gil_scoped_release nogil;
  sparse::spmm_cuda(p, ws, stream);
#else
  (void)workspace, (void)stream;
  throw_no_cuda_build();
#endif
}

std::size_t sparse_cuda_workspace_bytes(int64_t n, int64_t m, int64_t k, int dtype) {
  check_shape_k(kSpmm, m, k);
  if (n < 0) fail(kSpmm, "n must be >= 0");
  if (dtype < 0 || dtype > int(DType::bf16)) fail(kSpmm, "dtype must be 0 (float32), 1 (float16) or 2 (bfloat16)");
  sparse::SpmmProblem p;
  p.w.m = m;
  p.w.k = k;
  p.w.dtype = DType(dtype);
  p.n = n;
  p.x_stride = k;
  p.y_stride = m;
#ifdef FASTOPS_WITH_CUDA
  return sparse::spmm_cuda_workspace_bytes(p);
#else
  return 0;
#endif
}

sparse::PackProblem make_pack(const Array& w) {
  if (w.ndim() != 2) fail(kPack, "w must be 2-D");
  sparse::PackProblem p;
  p.w = w.data();
  p.m = int64_t(w.shape(0));
  p.k = int64_t(w.shape(1));
  check_shape_k(kPack, p.m, p.k);
  p.stride_r = w.stride(0);
  p.stride_c = w.stride(1);
  p.dtype = float_dtype(w, kPack, "w");
  return p;
}

void sparse_pack_count(Array w, Array counts, int nthreads, std::uintptr_t stream) {
  const sparse::PackProblem p = make_pack(w);
  expect_dtype(counts, 32, nb::dlpack::dtype_code::Int, kPack, "counts", "int32");
  expect_contiguous(counts, kPack, "counts");
  expect_numel(counts, sparse::num_strips(p.m) * sparse::chunks_per_strip(p.k), kPack, "counts");
  expect_same_device(w, counts, kPack, "w", "counts");
  int32_t* out = static_cast<int32_t*>(counts.data());
  if (device_of(w, kPack, "w") == Device::cpu) {
    nb::gil_scoped_release nogil;
    sparse::pack_count_cpu(p, out, nthreads);
    return;
  }
#ifdef FASTOPS_WITH_CUDA
  nb::gil_scoped_release nogil;
  sparse::pack_count_cuda(p, out, stream);
#else
  (void)stream;
  throw_no_cuda_build();
#endif
}

// values must hold strip_offsets[-1] + kValuePad elements: the caller sized it from the counts.
void sparse_pack_fill(Array w, Array masks, Array values, Array strip_offsets, Array chunk_offsets, int nthreads,
                      std::uintptr_t stream) {
  const sparse::PackProblem p = make_pack(w);
  const sparse::Weight out = make_weight(kPack, masks, values, strip_offsets, chunk_offsets, p.m, p.k);
  if (out.dtype != p.dtype) throw_type(std::string(kPack) + ": values must have the dtype of w");
  expect_same_device(w, masks, kPack, "w", "masks");
  uint32_t* mask_out = static_cast<uint32_t*>(masks.data());
  if (device_of(w, kPack, "w") == Device::cpu) {
    const int64_t nnz = out.strip_offsets[sparse::num_strips(p.m)];
    if (nnz < 0 || int64_t(values.size()) != nnz + sparse::kValuePad)
      fail(kPack, "values must hold strip_offsets[-1] + " + std::to_string(sparse::kValuePad) + " elements");
    nb::gil_scoped_release nogil;
    sparse::pack_fill_cpu(p, out, mask_out, values.data(), nthreads);
    return;
  }
#ifdef FASTOPS_WITH_CUDA
  nb::gil_scoped_release nogil;
  sparse::pack_fill_cuda(p, out, mask_out, values.data(), stream);
#else
  (void)stream;
  throw_no_cuda_build();
#endif
}

// The CPU inverse of pack (CUDA unpacks with torch ops in python/fastops/sparse.py).
void sparse_unpack(Array masks, Array values, Array strip_offsets, Array chunk_offsets, int64_t m, int64_t k,
                   Array dense, int nthreads) {
  constexpr const char* kUnpack = "sparse.to_dense";
  const sparse::Weight w = make_weight(kUnpack, masks, values, strip_offsets, chunk_offsets, m, k);
  if (device_of(masks, kUnpack, "w") != Device::cpu) fail(kUnpack, "the binding unpacks CPU weights only");
  if (float_dtype(dense, kUnpack, "dense") != w.dtype) throw_type(std::string(kUnpack) + ": dense must have the dtype of values");
  if (dense.ndim() != 2 || int64_t(dense.shape(0)) != m || int64_t(dense.shape(1)) != k || (k > 1 && dense.stride(1) != 1) ||
      dense.stride(0) < k)
    fail(kUnpack, "dense must have shape [" + std::to_string(m) + ", " + std::to_string(k) + "] with unit stride along k");
  expect_same_device(masks, dense, kUnpack, "w", "dense");
  nb::gil_scoped_release nogil;
  sparse::unpack_cpu(w, dense.data(), dense.stride(0), nthreads);
}

}  // namespace

void register_sparse(nb::module_& m) {
  m.def("sparse_unpack", &sparse_unpack, nb::arg("masks").noconvert(), nb::arg("values").noconvert(),
        nb::arg("strip_offsets").noconvert(), nb::arg("chunk_offsets").noconvert(), nb::arg("m"), nb::arg("k"),
        nb::arg("dense").noconvert(), nb::arg("nthreads") = 1, "dense[m, k] = the weight (CPU)");
  m.def("sparse_spmm", &sparse_spmm, nb::arg("x").noconvert(), nb::arg("masks").noconvert(),
        nb::arg("values").noconvert(), nb::arg("strip_offsets").noconvert(), nb::arg("chunk_offsets").noconvert(),
        nb::arg("m"), nb::arg("k"), nb::arg("bias").noconvert().none(), nb::arg("y").noconvert(),
        nb::arg("nthreads") = 1, nb::arg("stream") = 0, nb::arg("workspace").noconvert().none() = nb::none(),
        "y[n, m] = x[n, k] @ W^T (+ bias) for a strip-bitmap weight (csrc/sparse/sparse_format.h)");
  m.def("sparse_cuda_workspace_bytes", &sparse_cuda_workspace_bytes, nb::arg("n"), nb::arg("m"), nb::arg("k"),
        nb::arg("dtype"), "Bytes of device workspace spmm needs (dtype: 0 float32, 1 float16, 2 bfloat16)");
  m.def("sparse_pack_count", &sparse_pack_count, nb::arg("w").noconvert(), nb::arg("counts").noconvert(),
        nb::arg("nthreads") = 1, nb::arg("stream") = 0,
        "counts[s, c] = nonzeros of W[16 s : 16 s + 16, 64 c : 64 c + 64]");
  m.def("sparse_pack_fill", &sparse_pack_fill, nb::arg("w").noconvert(), nb::arg("masks").noconvert(),
        nb::arg("values").noconvert(), nb::arg("strip_offsets").noconvert(), nb::arg("chunk_offsets").noconvert(),
        nb::arg("nthreads") = 1, nb::arg("stream") = 0,
        "Writes the masks and values of W given the offsets computed from sparse_pack_count");
  m.def("sparse_cpu_kernel_name", [] { return sparse::cpu_kernel_name(); },
        "The CPU SpMM kernels in use: avx512 (VBMI2 + BF16), avx512f, avx2 or scalar");
  m.def("sparse_set_cpu_kernels", &sparse::set_cpu_kernels, nb::arg("name"),
        "For tests: force the CPU SpMM kernels ('auto' or a name this CPU can run)");
  def_cuda_layout_selftest<sparse::cuda_layout_selftest>(m, "_sparse_cuda_layout_selftest");
}

}  // namespace bind
}  // namespace fastops
