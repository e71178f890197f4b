// Element types that cross the binding boundary, and exact scalar conversions for host code.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace fastops {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
  }
  return "?";
}

inline float bits_to_float(uint32_t b) { float f; std::memcpy(&f, &b, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t b; std::memcpy(&b, &f, 4); return b; }

// IEEE binary16 -> binary32, exact (handles subnormals, inf, nan).
inline float half_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    float f = float(man) * (1.0f / 16777216.0f);  // man * 2^-24
    return sign ? -f : f;
  }
  return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
}

// binary32 -> binary16, round to nearest even.
inline uint16_t float_to_half(float f) {
  uint32_t x = float_to_bits(f), sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0));
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to inf
  if (ax < 0x38800000u) {                                   // subnormal or zero in fp16
    float a = bits_to_float(ax) * 16777216.0f;              // scale by 2^24, round to int
    uint32_t m = uint32_t(a);
    float rem = a - float(m);
    if (rem > 0.5f || (rem == 0.5f && (m & 1))) ++m;
    return uint16_t(sign | m);
  }
  uint32_t e = (ax >> 23) - 112, m = ax & 0x7fffffu;
  uint32_t h = (e << 10) | (m >> 13), rest = m & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1))) ++h;
  return uint16_t(sign | h);
}

inline float bf16_to_float(uint16_t b) { return bits_to_float(uint32_t(b) << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t x = float_to_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet nan
  x += 0x7fffu + ((x >> 16) & 1u);
  return uint16_t(x >> 16);
}

// Host element access by compile-time dtype, and the switch that turns a runtime dtype into one. For
// the portable (no ISA flags) translation units only: an ISA-flagged copy of these inline templates
// could be the one the linker keeps.
template <DType D>
float load_elem(const void* base, int64_t i) {
  if constexpr (D == DType::f32) return static_cast<const float*>(base)[i];
  if constexpr (D == DType::f16) return half_to_float(static_cast<const uint16_t*>(base)[i]);
  if constexpr (D == DType::bf16) return bf16_to_float(static_cast<const uint16_t*>(base)[i]);
}

template <DType D>
void store_elem(void* base, int64_t i, float v) {
  if constexpr (D == DType::f32) static_cast<float*>(base)[i] = v;
  if constexpr (D == DType::f16) static_cast<uint16_t*>(base)[i] = float_to_half(v);
  if constexpr (D == DType::bf16) static_cast<uint16_t*>(base)[i] = float_to_bf16(v);
}

// Calls f with d as a compile-time constant (std::integral_constant) and returns what it returns.
template <class F>
auto with_dtype(DType d, F&& f) {
  switch (d) {
    case DType::f16: return f(std::integral_constant<DType, DType::f16>{});
    case DType::bf16: return f(std::integral_constant<DType, DType::bf16>{});
    default: return f(std::integral_constant<DType, DType::f32>{});
  }
}

}  // namespace fastops
