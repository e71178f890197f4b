// Private to the CPU SpMM: the per-ISA kernels that sparse_cpu.cpp (driver + scalar kernels),
// sparse_cpu_avx2.cpp, sparse_cpu_avx512.cpp and sparse_cpu_avx512f.cpp implement.
//
// Work is cut into tasks of kGroupStrips strips (64 rows) x a range of tokens. A task walks the K axis
// once: units are expanded to dense (r, j) pairs in registers and multiplied by broadcast pairs of x
// (compute-as-dense: zeros cost compute, never bytes). With few tokens the expanded units feed the
// multiply directly; with more, a chunk of units is expanded once into a small dense tile (L1) that
// every block of tokens reuses. Kernels with by_column also have a sparse path for very sparse strip
// groups and several tokens: work per nonzero (kSparsePathDensity).
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/dtype.h"
#include "sparse/sparse.h"

namespace fastops {
namespace sparse {
namespace detail {

constexpr int kGroupStrips = 4;  // strips decoded side by side (independent streams)

// x as the kernels read it: n rows of Kp = padded_cols(k) elements, zero past k, in the ISA's compute
// type (bf16 pairs for the AVX-512 bf16 kernel, fp32 otherwise).
struct PackedX {
  const void* data = nullptr;
  int64_t stride = 0;  // elements between token rows (>= Kp)
  // Kernels with by_column, for weights at most kSparsePathDensity dense and several tokens: x again as
  // fp32 columns, element (token t, column c) at by_column[c * column_stride + t] (t relative to data's
  // first row; zero past the tokens and past k; column_stride >= tokens + 7, so 8 tokens load from any t).
  const float* by_column = nullptr;
  int64_t column_stride = 0;
};

// Strip groups at most this dense (nonzeros / padded elements) take the sparse path of kernels with
// by_column: work per nonzero instead of per element (sparse_cpu_avx2.cpp has the crossover).
constexpr double kSparsePathDensity = 0.2;

struct Task {
  const Weight* w = nullptr;
  PackedX x;
  int64_t strip0 = 0;           // first strip; strips >= num_strips(m) of the group are skipped
  int64_t token0 = 0, tokens = 0;  // rows of x (relative to x.data) and of y
  void* y = nullptr;            // row token0 of the output (row stride y_stride, weight dtype)
  int64_t y_stride = 0;
  const void* bias = nullptr;   // [m] or nullptr
  float* scratch = nullptr;     // scratch_floats(tokens) floats, 64-byte aligned, contents undefined
};

struct CpuKernels {
  const char* name;
  bool bf16_pairs;  // x is packed as bf16 (only for bf16 weights); otherwise fp32
  // Packs rows [0, n) of x (row stride x_stride, dtype) into out (row stride kp, zero padded).
  void (*pack_x)(const void* x, int64_t x_stride, DType dtype, int64_t n, int64_t k, int64_t kp, void* out);
  void (*run)(const Task& t);
  int64_t (*scratch_floats)(int64_t tokens);
  bool by_column = false;  // reads PackedX::by_column when the driver provides it
};

// Each including translation unit gets its own copy (anonymous namespace): an inline function shared
// across ISA-flagged translation units could be the AVX-512 copy at run time.
namespace {

// Per-strip decode state: the strip's masks and its next unread value.
template <class V>
struct Streams {
  const uint32_t* masks[kGroupStrips];
  const V* vals[kGroupStrips];
  int rows[kGroupStrips];  // rows of the strip that exist (0 for a stand-in strip)
};

template <class V>
Streams<V> open_streams(const Task& t) {
  const Weight& w = *t.w;
  const int64_t strips = num_strips(w.m), units = units_per_strip(w.k);
  const int64_t elem_bytes = w.dtype == DType::f32 ? 4 : 2;
  Streams<V> s;
  for (int g = 0; g < kGroupStrips; ++g) {
    const int64_t strip = t.strip0 + g;
    const bool real = strip < strips;
    // A strip past the end decodes the group's first strip again (in bounds, never stored: rows 0).
    const int64_t source = real ? strip : t.strip0;
    s.masks[g] = w.masks + source * units;
    const char* first = static_cast<const char*>(w.values) + w.strip_offsets[source] * elem_bytes;
    s.vals[g] = static_cast<const V*>(static_cast<const void*>(first));
    s.rows[g] = real ? int(std::min<int64_t>(kStripRows, w.m - strip * kStripRows)) : 0;
  }
  return s;
}

// Nonzeros per padded element of strips [s0, s1) (s0 < s1): the driver asks it of the whole weight,
// kernels of a task's strip group (kSparsePathDensity).
inline double strip_density(const Weight& w, int64_t s0, int64_t s1) {
  return double(w.strip_offsets[s1] - w.strip_offsets[s0]) /
         (double((s1 - s0) * kStripRows) * double(padded_cols(w.k)));
}

// Calls f(std::integral_constant<int, n>) for a run-time n in [Lo, Hi]: the register-blocked loops take
// their token count as a template argument.
template <int Lo, int Hi, class F>
void with_count(int n, F&& f) {
  if constexpr (Hi > Lo) {
    if (n < Hi) return with_count<Lo, Hi - 1>(n, f);
  }
  f(std::integral_constant<int, Hi>{});
}

}  // namespace

#ifdef FASTOPS_HAVE_AVX2_KERNELS
const CpuKernels& avx2_kernels();
// AVX-512 F/BW/VL/DQ + VBMI2 (VPEXPANDW) + BF16 (VDPBF16PS).
const CpuKernels& avx512_kernels();
// AVX-512 F/BW/VL/DQ alone.
const CpuKernels& avx512f_kernels();
#endif

}  // namespace detail
}  // namespace sparse
}  // namespace fastops
