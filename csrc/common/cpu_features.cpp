#include "common/cpu_features.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>

#include "common/errors.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define FASTOPS_X86 1
#endif

namespace fastops {
namespace {

#ifdef FASTOPS_X86
uint64_t xgetbv0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#ifdef FASTOPS_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27);
  const bool avx = c & (1u << 28);
  f.fma = c & (1u << 12);
  f.f16c = c & (1u << 29);
  f.popcnt = c & (1u << 23);
  if (!osxsave || !avx) return f;
  const uint64_t xcr0 = xgetbv0();
  const bool ymm_state = (xcr0 & 0x6) == 0x6;
  const bool zmm_state = (xcr0 & 0xe6) == 0xe6;
  if (!ymm_state) return f;
  unsigned max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = b & (1u << 5);
  f.bmi2 = b & (1u << 8);
  if (zmm_state) {
    f.avx512f = b & (1u << 16);
    f.avx512dq = b & (1u << 17);
    f.avx512bw = b & (1u << 30);
    f.avx512vl = b & (1u << 31);
    f.avx512_vbmi = c & (1u << 1);
    f.avx512_vbmi2 = c & (1u << 6);
    f.avx512_vnni = c & (1u << 11);
    f.avx512_vpopcntdq = c & (1u << 14);
    unsigned a1, b1, c1, d1;
    __cpuid_count(7, 1, a1, b1, c1, d1);
    f.avx512_bf16 = a1 & (1u << 5);
  }
  if (!f.fma || !f.f16c || !f.popcnt) f.avx2 = false;  // our AVX2 kernels also use FMA, F16C and POPCNT
#endif
  return f;
}

std::atomic<int> g_isa_override{-1};

Isa parse_isa(const std::string& name, bool* ok) {
  *ok = true;
  if (name == "scalar") return Isa::scalar;
  if (name == "avx2") return Isa::avx2;
  if (name == "avx512") return Isa::avx512;
  *ok = false;
  return Isa::scalar;
}

Isa env_isa() {
  static const Isa from_env = [] {
    const char* s = std::getenv("FASTOPS_ISA");
    Isa best = best_isa();
    if (!s || !*s || std::string(s) == "auto") return best;
    bool ok;
    Isa want = parse_isa(s, &ok);
    if (!ok) return best;  // an unknown name must not break import; fastops.info() shows the choice
    return int(want) < int(best) ? want : best;
  }();
  return from_env;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "?";
}

Isa best_isa() {
  const CpuFeatures& f = cpu_features();
  if (f.avx2 && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq) return Isa::avx512;
  if (f.avx2) return Isa::avx2;
  return Isa::scalar;
}

Isa active_isa() {
  int o = g_isa_override.load(std::memory_order_relaxed);
  return o >= 0 ? Isa(o) : env_isa();
}

void set_isa(const std::string& name) {
  if (name == "auto") {
    g_isa_override.store(-1);
    return;
  }
  bool ok;
  Isa want = parse_isa(name, &ok);
  if (!ok) throw_value("isa must be one of 'auto', 'scalar', 'avx2', 'avx512'; got '" + name + "'");
  if (int(want) > int(best_isa()))
    throw_value(std::string("isa '") + name + "' is not supported by this CPU (best: " +
                isa_name(best_isa()) + ")");
  g_isa_override.store(int(want));
}

}  // namespace fastops
