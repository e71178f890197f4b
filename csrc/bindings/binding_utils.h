// Shared helpers for the nanobind binding files: argument checks with uniform messages, dtype
// mapping, device dispatch. Bindings never include CUDA headers; CUDA entry points are plain C++.
#pragma once
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "common/dtype.h"
#include "common/errors.h"

namespace fastops {
namespace bind {

namespace nb = nanobind;
using Array = nb::ndarray<>;

inline bool has_dtype(const Array& a, uint8_t bits, nb::dlpack::dtype_code code) {
  nb::dlpack::dtype d = a.dtype();
  return d.code == uint8_t(code) && d.bits == bits && d.lanes == 1;
}

inline std::string dtype_str(const Array& a) {
  nb::dlpack::dtype d = a.dtype();
  const char* kind = "?";
  switch (nb::dlpack::dtype_code(d.code)) {
    case nb::dlpack::dtype_code::Int: kind = "int"; break;
    case nb::dlpack::dtype_code::UInt: kind = "uint"; break;
    case nb::dlpack::dtype_code::Float: kind = "float"; break;
    case nb::dlpack::dtype_code::Bfloat: kind = "bfloat"; break;
    case nb::dlpack::dtype_code::Bool: kind = "bool"; break;
    default: break;
  }
  return std::string(kind) + std::to_string(d.bits);
}

// float32 / float16 / bfloat16 -> DType; anything else is a TypeError naming the argument.
inline DType float_dtype(const Array& a, const char* op, const char* name) {
  if (has_dtype(a, 32, nb::dlpack::dtype_code::Float)) return DType::f32;
  if (has_dtype(a, 16, nb::dlpack::dtype_code::Float)) return DType::f16;
  if (has_dtype(a, 16, nb::dlpack::dtype_code::Bfloat)) return DType::bf16;
  throw_type(std::string(op) + ": " + name + " must be float32, float16 or bfloat16, got " + dtype_str(a));
}

inline void expect_dtype(const Array& a, uint8_t bits, nb::dlpack::dtype_code code, const char* op,
                         const char* name, const char* expected) {
  if (!has_dtype(a, bits, code))
    throw_type(std::string(op) + ": " + name + " must be " + expected + ", got " + dtype_str(a));
}

inline bool is_contiguous(const Array& a) {
  for (size_t i = 0; i < a.ndim(); ++i)
    if (a.shape(i) == 0) return true;  // no elements: every stride is as good as any (torch agrees)
  int64_t expect = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != expect) return false;
    expect *= int64_t(a.shape(i));
  }
  return true;
}

inline void expect_contiguous(const Array& a, const char* op, const char* name) {
  if (!is_contiguous(a)) throw_value(std::string(op) + ": " + name + " must be contiguous");
}

// A contiguous 1-D array of `size` elements (size < 0: any length).
inline void expect_vector(const Array& a, int64_t size, const char* op, const char* name) {
  if (a.ndim() != 1 || (size >= 0 && int64_t(a.shape(0)) != size))
    throw_value(std::string(op) + ": " + name + " must have shape [" + (size >= 0 ? std::to_string(size) : "*") +
                "]");
  expect_contiguous(a, op, name);
}

inline void expect_numel(const Array& a, int64_t numel, const char* op, const char* name) {
  if (int64_t(a.size()) != numel)
    throw_value(std::string(op) + ": " + name + " has " + std::to_string(a.size()) +
                " elements, expected " + std::to_string(numel));
}

inline void expect_same_device(const Array& a, const Array& b, const char* op, const char* name_a,
                               const char* name_b) {
  if (a.device_type() != b.device_type() || a.device_id() != b.device_id())
    throw_value(std::string(op) + ": " + name_a + " and " + name_b + " must be on the same device");
}

// The data of a caller-allocated CUDA workspace of at least `need` bytes on ref's device (nullptr when
// the kernel needs none).
inline void* workspace_data(const std::optional<Array>& workspace, std::size_t need, const Array& ref,
                            const char* op, const char* ref_name) {
  if (need == 0) return nullptr;
  if (!workspace || workspace->size() < need)
    throw_value(std::string(op) + ": workspace must hold at least " + std::to_string(need) + " bytes");
  expect_same_device(ref, *workspace, op, ref_name, "workspace");
  return workspace->data();
}

enum class Device { cpu, cuda };

inline Device device_of(const Array& a, const char* op, const char* name) {
  if (a.device_type() == nb::device::cpu::value) return Device::cpu;
  if (a.device_type() == nb::device::cuda::value) return Device::cuda;
  throw_value(std::string(op) + ": " + name + " must be on a CPU or CUDA device");
}

// Binds `_<family>_cuda_layout_selftest()` -> (failures, report) for a family's CPU check of its CUDA
// kernels' index math (csrc/<family>/*_cuda_layout_test.h).
template <int (*Selftest)(std::string*)>
void def_cuda_layout_selftest(nb::module_& m, const char* name) {
  m.def(name, [] {
    std::string report;
    const int failures = Selftest(&report);
    return nb::make_tuple(failures, report);
  }, "Checks the CUDA kernels' index math on the CPU; returns (failures, report)");
}

[[noreturn]] inline void throw_no_cuda_build() {
  throw std::runtime_error("fastops was built without CUDA: reinstall with FASTOPS_CUDA=ON (see README)");
}

}  // namespace bind
}  // namespace fastops
