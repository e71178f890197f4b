// CPUID feature detection and the run-time choice of SIMD level for CPU kernels.
// Each SIMD level lives in its own translation unit compiled with its own -m flags; the generic code
// asks `active_isa()` which one to call. FASTOPS_ISA=scalar|avx2|avx512 (environment, read once) or
// set_isa() (tests) can only lower the level below what the CPU supports.
#pragma once
#include <string>

namespace fastops {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false, popcnt = false, bmi2 = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512_vpopcntdq = false, avx512_vnni = false, avx512_bf16 = false, avx512_vbmi = false,
       avx512_vbmi2 = false;
};

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

const CpuFeatures& cpu_features();
const char* isa_name(Isa isa);
// Highest level this CPU (and OS register state) supports.
Isa best_isa();
// Level CPU kernels use now: best_isa() lowered by FASTOPS_ISA / set_isa().
Isa active_isa();
// Accepts "scalar", "avx2", "avx512", "auto"; raises ValueError for other names or a level the CPU lacks.
void set_isa(const std::string& name);

}  // namespace fastops
