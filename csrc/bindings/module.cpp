// The fastops._C extension: error mapping, build/CPU/CUDA information, and one register_* call per
// operator family.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include "common/cpu_features.h"
#include "common/errors.h"
#include "common/parallel.h"
#ifdef FASTOPS_WITH_CUDA
#include "common/cuda_runtime.h"
#endif

namespace nb = nanobind;

namespace fastops {
namespace bind {
void register_lut(nb::module_& m);
void register_sparse(nb::module_& m);
void register_so3(nb::module_& m);
void register_gaunt(nb::module_& m);
void register_bitgemm(nb::module_& m);
void register_trie(nb::module_& m);
}
}  // namespace fastops

namespace {

nb::dict cpu_features_dict() {
  const fastops::CpuFeatures& f = fastops::cpu_features();
  nb::dict d;
  d["avx2"] = f.avx2;
  d["fma"] = f.fma;
  d["f16c"] = f.f16c;
  d["popcnt"] = f.popcnt;
  d["avx512f"] = f.avx512f;
  d["avx512bw"] = f.avx512bw;
  d["avx512vl"] = f.avx512vl;
  d["avx512dq"] = f.avx512dq;
  d["avx512_vpopcntdq"] = f.avx512_vpopcntdq;
  d["avx512_vnni"] = f.avx512_vnni;
  d["avx512_bf16"] = f.avx512_bf16;
  d["avx512_vbmi"] = f.avx512_vbmi;
  d["avx512_vbmi2"] = f.avx512_vbmi2;
  return d;
}

}  // namespace

NB_MODULE(_C, m) {
  // ValueError comes from std::invalid_argument (nanobind's default); TypeError needs a translator.
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const fastops::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    }
  });

  m.attr("__version__") = FASTOPS_VERSION;
#ifdef FASTOPS_WITH_CUDA
  m.attr("built_with_cuda") = true;
#else
  m.attr("built_with_cuda") = false;
#endif
  m.attr("cuda_archs") = FASTOPS_CUDA_ARCHS;
  m.attr("cutlass_headers_found") = bool(FASTOPS_WITH_CUTLASS_HEADERS);

  m.def("cpu_features", &cpu_features_dict, "CPUID features seen by fastops");
  m.def("best_isa", [] { return std::string(fastops::isa_name(fastops::best_isa())); });
  m.def("active_isa", [] { return std::string(fastops::isa_name(fastops::active_isa())); },
        "SIMD level the CPU kernels use now");
  m.def("set_isa", &fastops::set_isa, nb::arg("name"),
        "Lower the SIMD level of CPU kernels ('scalar', 'avx2', 'avx512') or restore 'auto'");
  m.def("hardware_threads", &fastops::hardware_threads);

  m.def("cuda_device_count", [] {
#ifdef FASTOPS_WITH_CUDA
    return fastops::cuda_device_count();
#else
    throw std::runtime_error("fastops was built without CUDA: reinstall with FASTOPS_CUDA=ON (see README)");
    return 0;
#endif
  });
  m.def("cuda_device_capability", [](int device) {
#ifdef FASTOPS_WITH_CUDA
    int major = 0, minor = 0;
    fastops::cuda_device_capability(device, &major, &minor);
    return nb::make_tuple(major, minor);
#else
    (void)device;
    throw std::runtime_error("fastops was built without CUDA: reinstall with FASTOPS_CUDA=ON (see README)");
    return nb::make_tuple(0, 0);
#endif
  }, nb::arg("device"));

  fastops::bind::register_lut(m);
  fastops::bind::register_sparse(m);
  fastops::bind::register_so3(m);
  fastops::bind::register_gaunt(m);
  fastops::bind::register_bitgemm(m);
  fastops::bind::register_trie(m);
}
