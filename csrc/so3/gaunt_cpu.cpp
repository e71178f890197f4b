// CPU Gaunt transform programs and the CP product: validation, compilation, dispatch and the work split.
// The kernels themselves are gaunt_cpu_kernel_impl.h, instantiated per ISA next to the so3 kernels.
#include <algorithm>
#include <string>

#include "common/aligned_buffer.h"
#include "common/cpu_features.h"
#include "common/errors.h"
#include "common/parallel.h"
#include "so3/gaunt.h"
#include "so3/gaunt_cpu_kernels.h"

namespace fastops {
namespace so3 {
namespace {

using detail::GauntCpuKernels;

const GauntCpuKernels& active_gaunt_kernels() {
#ifdef FASTOPS_HAVE_AVX2_KERNELS
  const CpuFeatures& f = cpu_features();
  if (active_isa() >= Isa::avx512 && f.avx512f) return detail::gaunt_avx512_kernels();
  if (active_isa() >= Isa::avx2 && f.fma) return detail::gaunt_avx2_kernels();
#endif
  return detail::gaunt_scalar_kernels();
}

[[noreturn]] void bad(const char* op, int64_t o, const std::string& what) {
  throw_value(std::string(op) + ": program op " + std::to_string(o) + " " + what);
}

// first + (n - 1) * stride inside [0, limit) (nothing to check when n == 0).
bool range_ok(int64_t first, int64_t stride, int64_t n, int64_t limit) {
  if (n < 0 || stride < 0) return false;
  if (n == 0) return true;
  return first >= 0 && first + (n - 1) * stride < limit;
}

}  // namespace

void validate_gaunt_program(const GauntProgramView& p, const char* op) {
  if (p.num_slots <= 0 || p.num_slots > (int64_t(1) << 24)) throw_value(std::string(op) + ": bad slot count");
  if (p.num_ops < 0 || p.num_consts < 0 || p.num_index < 0) throw_value(std::string(op) + ": bad program sizes");
  for (int64_t o = 0; o < p.num_ops; ++o) {
    const int32_t* f = p.ops + o * kGauntOpFields;
    const int64_t S = p.num_slots;
    switch (f[0]) {
      case kMatvec:
        if (!range_ok(f[1], f[2], f[3], S) || !range_ok(f[4], f[5], f[6], S)) bad(op, o, "reads or writes past the slots");
        if (f[7] < 0 || int64_t(f[7]) + int64_t(f[3]) * f[6] > p.num_consts) bad(op, o, "reads past the constants");
        break;
      case kButterfly:
        if (!range_ok(f[1], f[2], f[3], S) || !range_ok(f[4], f[5], f[3], S)) bad(op, o, "reads or writes past the slots");
        break;
      case kMul:
        if (!range_ok(f[1], f[2], f[3], S) || !range_ok(f[4], f[5], f[3], S) || !range_ok(f[6], f[7], f[3], S))
          bad(op, o, "reads or writes past the slots");
        break;
      case kGatherDot:
      case kGatherDotAdd:
        if (!range_ok(f[1], 0, 1, S) || !range_ok(f[2], 0, 1, S) || f[3] < 0) bad(op, o, "reads or writes past the slots");
        if (f[4] < 0 || int64_t(f[4]) + f[3] > p.num_consts) bad(op, o, "reads past the constants");
        if (f[5] < 0 || int64_t(f[5]) + f[3] > p.num_index) bad(op, o, "reads past the gather index");
        for (int64_t t = 0; t < f[3]; ++t)
          if (!range_ok(p.index[f[5] + t], 0, 1, S)) bad(op, o, "gathers a slot past the slots");
        break;
      default:
        bad(op, o, "has an unknown code " + std::to_string(f[0]));
    }
  }
  const auto check_slots = [&](const int32_t* s, int64_t n, const char* what) {
    for (int64_t i = 0; i < n; ++i)
      if (!range_ok(s[i], 0, 1, p.num_slots)) throw_value(std::string(op) + ": " + what + " slot past the slots");
  };
  check_slots(p.in1_slots, p.dim1, "an input-1");
  check_slots(p.in2_slots, p.dim2, "an input-2");
  check_slots(p.out_slots, p.dim_out, "an output");
}

std::shared_ptr<const GauntCpuProgram> compile_gaunt_program(const GauntProgramView& v, const char* op) {
  validate_gaunt_program(v, op);
  auto p = std::make_shared<GauntCpuProgram>();
  p->num_slots = v.num_slots;
  p->dim1 = v.dim1;
  p->dim2 = v.dim2;
  p->dim_out = v.dim_out;
  p->ops.assign(v.ops, v.ops + v.num_ops * kGauntOpFields);
  p->index.assign(v.index, v.index + v.num_index);
  p->in1_slots.assign(v.in1_slots, v.in1_slots + v.dim1);
  p->in2_slots.assign(v.in2_slots, v.in2_slots + v.dim2);
  p->out_slots.assign(v.out_slots, v.out_slots + v.dim_out);
  p->consts_f64.assign(v.consts, v.consts + v.num_consts);
  p->consts_f32.assign(v.consts, v.consts + v.num_consts);
  return p;
}

void gaunt_forward_cpu(const GauntCpuProgram& program, GauntReal dtype, int64_t samples, const void* x1,
                       int64_t x1_stride, const void* x2, int64_t x2_stride, void* out, int64_t out_stride,
                       int nthreads) {
  if (samples <= 0) return;
  const GauntCpuKernels& k = active_gaunt_kernels();
  const bool f32 = dtype == GauntReal::f32;
  const int64_t lanes = f32 ? k.lanes_f32 : k.lanes_f64;
  const std::size_t slot_bytes = std::size_t(lanes) * (f32 ? sizeof(float) : sizeof(double));
  const int64_t tiles = (samples + lanes - 1) / lanes;
  // Pieces of 8 tiles: small enough to balance two threads on 1e3 samples, large enough to amortize
  // the scratch allocation.
  parallel_for(tiles, 8, nthreads, [&](int64_t begin, int64_t end) {
    AlignedBuffer scratch;
    detail::GauntWork w;
    w.program = &program;
    w.sample_begin = begin * lanes;
    w.sample_end = std::min(samples, end * lanes);
    w.x1 = x1;
    w.x1_stride = x1_stride;
    w.x2 = x2;
    w.x2_stride = x2_stride;
    w.out = out;
    w.out_stride = out_stride;
    w.slots = scratch.grow(std::size_t(program.num_slots) * slot_bytes);
    (f32 ? k.forward_f32 : k.forward_f64)(w);
  });
}

void cp_forward_cpu(const CpProblem& p, int nthreads) {
  if (p.edges <= 0 || p.channels <= 0) return;
  const GauntCpuKernels& k = active_gaunt_kernels();
  const bool f32 = p.dtype == GauntReal::f32;
  const std::size_t elem = f32 ? sizeof(float) : sizeof(double);
  const int64_t lanes = f32 ? k.lanes_f32 : k.lanes_f64;
  const int64_t rank_pad = (p.rank + lanes - 1) / lanes * lanes;
  // F3^T [rank, dim_out], shared by all threads; each piece has its own q and h (rank_pad each).
  AlignedBuffer f3t;
  f3t.resize(std::size_t(p.rank * p.dim_out) * elem);
  for (int64_t r = 0; r < p.rank; ++r)
    for (int64_t c = 0; c < p.dim_out; ++c) {
      if (f32)
        reinterpret_cast<float*>(f3t.data())[r * p.dim_out + c] = static_cast<const float*>(p.f3)[c * p.rank + r];
      else
        reinterpret_cast<double*>(f3t.data())[r * p.dim_out + c] = static_cast<const double*>(p.f3)[c * p.rank + r];
    }
  const int64_t grain = std::max<int64_t>(1, 256 / p.channels);
  parallel_for(p.edges, grain, nthreads, [&](int64_t begin, int64_t end) {
    AlignedBuffer scratch;
    void* s = scratch.grow(std::size_t(2 * rank_pad) * elem);
    (f32 ? k.cp_forward_f32 : k.cp_forward_f64)(p, begin, end, f3t.data(), s);
  });
}

const char* gaunt_cpu_kernel_name() { return active_gaunt_kernels().name; }

}  // namespace so3
}  // namespace fastops
