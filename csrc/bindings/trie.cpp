// Bindings of fastops::trie. The Python layer (python/fastops/trie.py) validates user input with
// friendly messages; these checks are the last line of defence before raw pointers reach a kernel.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "bindings/binding_utils.h"
#include "trie/trie.h"
#include "trie/trie_cuda_layout_test.h"

namespace fastops {
namespace bind {
namespace {

// The trie arrays, the subset and the row ids shared by every per-step op.
struct StepArgs {
  trie::Index ix;
  trie::Subset subset;
  const int32_t* node_ids = nullptr;
  int64_t rows = 0;
  Device device = Device::cpu;
};

StepArgs step_args(const char* op, const Array& indptr, const Array& tokens, const std::optional<Array>& alive,
                   int64_t rows_per_mask, const Array& node_ids) {
  expect_dtype(indptr, 32, nb::dlpack::dtype_code::Int, op, "indptr", "int32");
  expect_dtype(tokens, 32, nb::dlpack::dtype_code::Int, op, "tokens", "int32");
  expect_dtype(node_ids, 32, nb::dlpack::dtype_code::Int, op, "node_ids", "int32");
  expect_vector(indptr, -1, op, "indptr");
  if (indptr.shape(0) < 2) throw_value(std::string(op) + ": indptr must have at least 2 entries");
  StepArgs a;
  a.ix.num_nodes = int64_t(indptr.shape(0)) - 1;
  expect_vector(tokens, a.ix.num_nodes - 1, op, "tokens");
  expect_vector(node_ids, -1, op, "node_ids");
  a.rows = int64_t(node_ids.shape(0));
  expect_same_device(node_ids, indptr, op, "node_ids", "indptr");
  expect_same_device(node_ids, tokens, op, "node_ids", "tokens");
  if (alive) {
    expect_dtype(*alive, 8, nb::dlpack::dtype_code::UInt, op, "alive", "uint8");
    expect_contiguous(*alive, op, "alive");
    expect_same_device(node_ids, *alive, op, "node_ids", "alive");
    const int64_t masks = int64_t(alive->size()) / a.ix.num_nodes;
    if (int64_t(alive->size()) % a.ix.num_nodes != 0 || rows_per_mask < 1 ||
        (a.rows != 0 && a.rows != masks * rows_per_mask))
      throw_value(std::string(op) + ": alive must hold [masks, " + std::to_string(a.ix.num_nodes) +
                  "] entries with masks * rows_per_mask = " + std::to_string(a.rows) + " rows");
    a.subset.alive = static_cast<const uint8_t*>(alive->data());
    a.subset.rows_per_mask = rows_per_mask;
  }
  a.ix.indptr = static_cast<const int32_t*>(indptr.data());
  a.ix.tokens = static_cast<const int32_t*>(tokens.data());
  a.node_ids = static_cast<const int32_t*>(node_ids.data());
  a.device = device_of(node_ids, op, "node_ids");
  return a;
}

// logits [rows, vocab] with unit stride along vocab; returns (dtype, vocab, row stride).
std::tuple<DType, int64_t, int64_t> logits_layout(const char* op, const Array& logits, const StepArgs& a) {
  const DType dt = float_dtype(logits, op, "logits");
  if (logits.ndim() != 2 || int64_t(logits.shape(0)) != a.rows || (logits.shape(1) > 1 && logits.stride(1) != 1) ||
      logits.stride(0) < 0)
    throw_value(std::string(op) + ": logits must have shape [" + std::to_string(a.rows) +
                ", vocab] with unit stride along vocab");
  return {dt, int64_t(logits.shape(1)), int64_t(logits.stride(0))};
}

void trie_mask(Array indptr, Array tokens, std::optional<Array> alive, int64_t rows_per_mask, Array node_ids,
               Array logits, int nthreads, std::uintptr_t stream) {
  constexpr const char* op = "trie_mask_";
  const StepArgs a = step_args(op, indptr, tokens, alive, rows_per_mask, node_ids);
  auto [dt, vocab, row_stride] = logits_layout(op, logits, a);
  if (a.rows > 1 && row_stride < vocab)  // overlapping rows: two rows' masks would race on one element
    throw_value(std::string(op) + ": logits rows overlap (row stride < vocab); the in-place mask needs distinct rows");
  expect_same_device(node_ids, logits, op, "node_ids", "logits");
  if (a.device == Device::cpu) {
    nb::gil_scoped_release nogil;
    trie::mask_cpu(a.ix, a.subset, a.node_ids, a.rows, logits.data(), dt, vocab, row_stride, nthreads);
    return;
  }
#ifdef FASTOPS_WITH_CUDA
  nb::gil_scoped_release nogil;
  trie::mask_cuda(a.ix, a.subset, a.node_ids, a.rows, logits.data(), dt, vocab, row_stride, stream);
#else
  (void)stream;
  throw_no_cuda_build();
#endif
}

void trie_bitmask(Array indptr, Array tokens, std::optional<Array> alive, int64_t rows_per_mask, Array node_ids,
                  Array out, int64_t vocab, int nthreads, std::uintptr_t stream) {
  constexpr const char* op = "trie_bitmask";
  const StepArgs a = step_args(op, indptr, tokens, alive, rows_per_mask, node_ids);
  if (vocab < 0) throw_value(std::string(op) + ": vocab must be >= 0");
  expect_dtype(out, 32, nb::dlpack::dtype_code::Int, op, "out", "int32");
  const int64_t words = (vocab + 31) / 32;
  if (out.ndim() != 2 || int64_t(out.shape(0)) != a.rows || int64_t(out.shape(1)) != words)
    throw_value(std::string(op) + ": out must have shape [" + std::to_string(a.rows) + ", " + std::to_string(words) +
                "]");
  expect_contiguous(out, op, "out");
  expect_same_device(node_ids, out, op, "node_ids", "out");
  int32_t* words_out = static_cast<int32_t*>(out.data());
  if (a.device == Device::cpu) {
    nb::gil_scoped_release nogil;
    trie::bitmask_cpu(a.ix, a.subset, a.node_ids, a.rows, vocab, words_out, nthreads);
    return;
  }
#ifdef FASTOPS_WITH_CUDA
  nb::gil_scoped_release nogil;
  trie::bitmask_cuda(a.ix, a.subset, a.node_ids, a.rows, vocab, words_out, stream);
#else
  (void)stream;
  throw_no_cuda_build();
#endif
}

void trie_candidates(Array indptr, Array tokens, std::optional<Array> alive, int64_t rows_per_mask, Array node_ids,
                     Array logits, bool log_softmax, Array scores, Array out_tokens, Array next_nodes, int nthreads,
                     std::uintptr_t stream) {
  constexpr const char* op = "trie_candidates";
  const StepArgs a = step_args(op, indptr, tokens, alive, rows_per_mask, node_ids);
  auto [dt, vocab, row_stride] = logits_layout(op, logits, a);
  expect_same_device(node_ids, logits, op, "node_ids", "logits");
  expect_dtype(scores, 32, nb::dlpack::dtype_code::Float, op, "scores", "float32");
  expect_dtype(out_tokens, 32, nb::dlpack::dtype_code::Int, op, "tokens_out", "int32");
  expect_dtype(next_nodes, 32, nb::dlpack::dtype_code::Int, op, "next_nodes", "int32");
  if (scores.ndim() != 2 || int64_t(scores.shape(0)) != a.rows)
    throw_value(std::string(op) + ": scores must have shape [" + std::to_string(a.rows) + ", k]");
  const int64_t k = int64_t(scores.shape(1));
  for (const auto& [arr, name] : {std::pair<const Array*, const char*>{&scores, "scores"},
                                  {&out_tokens, "tokens_out"}, {&next_nodes, "next_nodes"}}) {
    if (arr->ndim() != 2 || int64_t(arr->shape(0)) != a.rows || int64_t(arr->shape(1)) != k)
      throw_value(std::string(op) + ": " + name + " must have shape [" + std::to_string(a.rows) + ", " +
                  std::to_string(k) + "]");
    expect_contiguous(*arr, op, name);
    expect_same_device(node_ids, *arr, op, "node_ids", name);
  }
  float* s = static_cast<float*>(scores.data());
  int32_t* t = static_cast<int32_t*>(out_tokens.data());
  int32_t* nx = static_cast<int32_t*>(next_nodes.data());
  if (a.device == Device::cpu) {
    nb::gil_scoped_release nogil;
    trie::candidates_cpu(a.ix, a.subset, a.node_ids, a.rows, logits.data(), dt, vocab, row_stride, log_softmax, k, s,
                         t, nx, nthreads);
    return;
  }
#ifdef FASTOPS_WITH_CUDA
  nb::gil_scoped_release nogil;
  trie::candidates_cuda(a.ix, a.subset, a.node_ids, a.rows, logits.data(), dt, vocab, row_stride, log_softmax, k, s, t,
                        nx, stream);
#else
  (void)stream;
  throw_no_cuda_build();
#endif
}

void trie_advance(Array indptr, Array tokens, std::optional<Array> alive, int64_t rows_per_mask, Array node_ids,
                  Array step_tokens, Array next_nodes, int nthreads, std::uintptr_t stream) {
  constexpr const char* op = "trie_advance";
  const StepArgs a = step_args(op, indptr, tokens, alive, rows_per_mask, node_ids);
  expect_dtype(step_tokens, 32, nb::dlpack::dtype_code::Int, op, "step_tokens", "int32");
  expect_dtype(next_nodes, 32, nb::dlpack::dtype_code::Int, op, "next_nodes", "int32");
  expect_vector(step_tokens, a.rows, op, "step_tokens");
  expect_vector(next_nodes, a.rows, op, "next_nodes");
  expect_same_device(node_ids, step_tokens, op, "node_ids", "step_tokens");
  expect_same_device(node_ids, next_nodes, op, "node_ids", "next_nodes");
  const int32_t* st = static_cast<const int32_t*>(step_tokens.data());
  int32_t* nx = static_cast<int32_t*>(next_nodes.data());
  if (a.device == Device::cpu) {
    nb::gil_scoped_release nogil;
    trie::advance_cpu(a.ix, a.subset, a.node_ids, st, a.rows, nx, nthreads);
    return;
  }
#ifdef FASTOPS_WITH_CUDA
  nb::gil_scoped_release nogil;
  trie::advance_cuda(a.ix, a.subset, a.node_ids, st, a.rows, nx, stream);
#else
  (void)stream;
  throw_no_cuda_build();
#endif
}

// A numpy array that owns (moves in) a build result vector: no copy.
template <class T>
nb::object to_numpy(trie::UninitVector<T>&& v) {
  auto* owned = new trie::UninitVector<T>(std::move(v));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<trie::UninitVector<T>*>(p); });
  return nb::cast(nb::ndarray<nb::numpy, T, nb::ndim<1>>(owned->data(), {owned->size()}, owner));
}

nb::dict trie_build(Array seqs, Array offsets, bool dedupe, int nthreads, int64_t max_nodes, int64_t token_limit) {
  constexpr const char* op = "trie_build";
  if (!has_dtype(seqs, 32, nb::dlpack::dtype_code::Int) && !has_dtype(seqs, 64, nb::dlpack::dtype_code::Int))
    throw_type(std::string(op) + ": seqs must be int32 or int64, got " + dtype_str(seqs));
  expect_dtype(offsets, 64, nb::dlpack::dtype_code::Int, op, "offsets", "int64");
  expect_vector(seqs, -1, op, "seqs");
  expect_vector(offsets, -1, op, "offsets");
  if (device_of(seqs, op, "seqs") != Device::cpu || device_of(offsets, op, "offsets") != Device::cpu)
    throw_value(std::string(op) + ": seqs and offsets must be on the CPU");
  if (offsets.shape(0) < 1) throw_value(std::string(op) + ": offsets must have n + 1 entries");
  const int64_t n = int64_t(offsets.shape(0)) - 1;
  if (token_limit < 1 || token_limit > INT32_MAX)
    throw_value(std::string(op) + ": token_limit must be in [1, 2^31 - 1]");
  const int64_t* off = static_cast<const int64_t*>(offsets.data());
  // Monotonic offsets are checked (in parallel) by the build, before it reads seqs.
  if (n > 0 && (off[0] != 0 || off[n] != int64_t(seqs.shape(0))))
    throw_value(std::string(op) + ": offsets must run from 0 to the length of seqs");
  trie::BuildResult r;
  {
    nb::gil_scoped_release nogil;
    if (has_dtype(seqs, 32, nb::dlpack::dtype_code::Int))
      trie::build_cpu(static_cast<const int32_t*>(seqs.data()), off, n, token_limit, dedupe, nthreads, &r, max_nodes);
    else
      trie::build_cpu(static_cast<const int64_t*>(seqs.data()), off, n, token_limit, dedupe, nthreads, &r, max_nodes);
  }
  nb::dict d;
  d["indptr"] = to_numpy(std::move(r.indptr));
  d["tokens"] = to_numpy(std::move(r.tokens));
  d["perm"] = to_numpy(std::move(r.perm));
  d["depth_starts"] = to_numpy(std::move(r.depth_starts));
  d["num_items"] = r.num_items;
  d["max_degree"] = r.max_degree;
  return d;
}

}  // namespace

void register_trie(nb::module_& m) {
  m.def("trie_build", &trie_build, nb::arg("seqs").noconvert(), nb::arg("offsets").noconvert(),
        nb::arg("dedupe") = true, nb::arg("nthreads") = 1, nb::arg("max_nodes") = trie::kMaxNodes,
        nb::arg("token_limit") = int64_t(INT32_MAX),
        "CSR trie of int32/int64 sequences seqs[offsets[i]:offsets[i+1]], tokens in [0, token_limit) (layout: "
        "csrc/trie/trie.h); returns a dict of "
        "numpy arrays indptr, tokens, perm, depth_starts and ints num_items, max_degree");
  m.def("trie_mask_", &trie_mask, nb::arg("indptr").noconvert(), nb::arg("tokens").noconvert(),
        nb::arg("alive").noconvert().none(), nb::arg("rows_per_mask"), nb::arg("node_ids").noconvert(),
        nb::arg("logits").noconvert(), nb::arg("nthreads") = 1, nb::arg("stream") = 0,
        "In place: logits[r, t] = -inf where token t is not allowed at node_ids[r]");
  m.def("trie_bitmask", &trie_bitmask, nb::arg("indptr").noconvert(), nb::arg("tokens").noconvert(),
        nb::arg("alive").noconvert().none(), nb::arg("rows_per_mask"), nb::arg("node_ids").noconvert(),
        nb::arg("out").noconvert(), nb::arg("vocab"), nb::arg("nthreads") = 1, nb::arg("stream") = 0,
        "out[r, w] bit b = token 32 w + b allowed at node_ids[r]");
  m.def("trie_candidates", &trie_candidates, nb::arg("indptr").noconvert(), nb::arg("tokens").noconvert(),
        nb::arg("alive").noconvert().none(), nb::arg("rows_per_mask"), nb::arg("node_ids").noconvert(),
        nb::arg("logits").noconvert(), nb::arg("log_softmax"), nb::arg("scores").noconvert(),
        nb::arg("tokens_out").noconvert(), nb::arg("next_nodes").noconvert(), nb::arg("nthreads") = 1,
        nb::arg("stream") = 0, "Top-k allowed children per row by score (k = scores.shape[1])");
  m.def("trie_advance", &trie_advance, nb::arg("indptr").noconvert(), nb::arg("tokens").noconvert(),
        nb::arg("alive").noconvert().none(), nb::arg("rows_per_mask"), nb::arg("node_ids").noconvert(),
        nb::arg("step_tokens").noconvert(), nb::arg("next_nodes").noconvert(), nb::arg("nthreads") = 1,
        nb::arg("stream") = 0, "next_nodes[r] = child of node_ids[r] along step_tokens[r], or -1");
  def_cuda_layout_selftest<trie::cuda_layout_selftest>(m, "_trie_cuda_layout_selftest");
}

}  // namespace bind
}  // namespace fastops
