// CPU SpMM driver, the scalar kernels, and host packing (sparse.h). The SIMD kernels live in
// sparse_cpu_avx2.cpp, sparse_cpu_avx512.cpp and sparse_cpu_avx512f.cpp behind the CpuKernels table
// (sparse_cpu_kernels.h).
#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "common/aligned_buffer.h"
#include "common/cpu_features.h"
#include "common/dtype.h"
#include "common/parallel.h"
#include "sparse/sparse.h"
#include "sparse/sparse_cpu_kernels.h"

namespace fastops {
namespace sparse {
namespace {

using detail::CpuKernels;
using detail::kGroupStrips;
using detail::Task;

constexpr int G = kGroupStrips;

// ---- scalar kernels --------------------------------------------------------------------------------
template <DType D>
void expand_unit_scalar(uint32_t mask, const void*& pv, float* out) {
  using V = std::conditional_t<D == DType::f32, float, uint16_t>;
  const V* p = static_cast<const V*>(pv);
  for (int bit = 0; bit < kUnitElems; ++bit) out[bit] = (mask >> bit) & 1u ? load_elem<D>(p++, 0) : 0.0f;
  pv = p;
}

template <DType D>
void run_scalar_dtype(const Task& t) {
  detail::Streams<void> s = detail::open_streams<void>(t);
  const int64_t units = units_per_strip(t.w->k);
  float* acc = t.scratch;  // [token][strip][32] (r, j) pair sums
  std::fill(acc, acc + t.tokens * G * kUnitElems, 0.0f);
  float unit[kUnitElems];
  for (int64_t u = 0; u < units; ++u)
    for (int g = 0; g < G; ++g) {
      expand_unit_scalar<D>(s.masks[g][u], s.vals[g], unit);
      for (int64_t tok = 0; tok < t.tokens; ++tok) {
        const float* x = static_cast<const float*>(t.x.data) + (t.token0 + tok) * t.x.stride + 2 * u;
        float* a = acc + (tok * G + g) * kUnitElems;
        for (int bit = 0; bit < kUnitElems; ++bit) a[bit] += unit[bit] * x[bit_col(bit)];
      }
    }
  for (int64_t tok = 0; tok < t.tokens; ++tok)
    for (int g = 0; g < G; ++g) {
      const float* a = acc + (tok * G + g) * kUnitElems;
      const int64_t r0 = (t.strip0 + g) * kStripRows;
      for (int r = 0; r < s.rows[g]; ++r) {
        float v = a[unit_bit(r, 0)] + a[unit_bit(r, 1)];
        if (t.bias) v += load_elem<D>(t.bias, r0 + r);
        store_elem<D>(t.y, tok * t.y_stride + r0 + r, v);
      }
    }
}

void run_scalar(const Task& t) {
  with_dtype(t.w->dtype, [&](auto d) { run_scalar_dtype<decltype(d)::value>(t); });
}

int64_t scratch_floats_scalar(int64_t tokens) { return tokens * G * kUnitElems; }

void pack_x_scalar(const void* x, int64_t x_stride, DType dtype, int64_t n, int64_t k, int64_t kp, void* out) {
  with_dtype(dtype, [&](auto d) {
    constexpr DType D = decltype(d)::value;
    for (int64_t t = 0; t < n; ++t) {
      float* dst = static_cast<float*>(out) + t * kp;
      for (int64_t c = 0; c < k; ++c) dst[c] = load_elem<D>(x, t * x_stride + c);
      std::fill(dst + k, dst + kp, 0.0f);
    }
  });
}

const CpuKernels kScalarKernels = {"scalar", false, pack_x_scalar, run_scalar, scratch_floats_scalar};

// The kernels this CPU can run at the active ISA level, best first; returns how many (<= 4).
int usable_kernels(const CpuKernels* (&out)[4]) {
  int n = 0;
#ifdef FASTOPS_HAVE_AVX2_KERNELS
  const CpuFeatures& f = cpu_features();
  if (active_isa() >= Isa::avx512 && f.avx512_vbmi2 && f.avx512_bf16) out[n++] = &detail::avx512_kernels();
  if (active_isa() >= Isa::avx512) out[n++] = &detail::avx512f_kernels();
  if (active_isa() >= Isa::avx2) out[n++] = &detail::avx2_kernels();
#endif
  out[n++] = &kScalarKernels;
  return n;
}

std::atomic<const CpuKernels*> forced_kernels{nullptr};  // set_cpu_kernels

const CpuKernels& active_kernels() {
  if (const CpuKernels* k = forced_kernels.load()) return *k;
  const CpuKernels* usable[4];
  usable_kernels(usable);
  return *usable[0];
}

// ---- driver ------------------------------------------------------------------------------------
constexpr int64_t kSlabTokens = 256;    // tokens whose packed x is live at once (x is re-packed per slab)
constexpr int64_t kMinPartTokens = 8;   // a task's token range is at least this (unless the slab is smaller)
constexpr int kTasksPerThread = 4;      // load balance

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// pack_x for x with a column stride: element by element, into bf16 pairs or fp32 like the kernels'.
void pack_x_strided(const void* x, int64_t x_stride, int64_t x_col_stride, DType dtype, bool bf16_out, int64_t n,
                    int64_t k, int64_t kp, void* out) {
  for (int64_t t = 0; t < n; ++t) {
    if (bf16_out) {
      uint16_t* dst = static_cast<uint16_t*>(out) + t * kp;
      const uint16_t* src = static_cast<const uint16_t*>(x) + t * x_stride;
      for (int64_t c = 0; c < k; ++c) dst[c] = src[c * x_col_stride];
      std::fill(dst + k, dst + kp, uint16_t(0));
    } else {
      float* dst = static_cast<float*>(out) + t * kp;
      with_dtype(dtype, [&](auto d) {
        for (int64_t c = 0; c < k; ++c) dst[c] = load_elem<decltype(d)::value>(x, t * x_stride + c * x_col_stride);
      });
      std::fill(dst + k, dst + kp, 0.0f);
    }
  }
}

// PackedX::by_column from the fp32 token rows xp [n][kp], in blocks of 64 columns (the rows stay in
// cache while their block is written). Returns whether every value is finite: the sparse path skips the
// stored zeros, so an inf or NaN in x would not meet them as 0 * inf = NaN the way F.linear (and the
// dense paths) do; such calls keep the dense paths.
bool transpose_packed_x(const float* xp, int64_t n, int64_t kp, int64_t column_stride, float* out) {
  bool finite = true;
  for (int64_t c0 = 0; c0 < kp; c0 += kChunkCols) {
    for (int64_t c = c0; c < c0 + kChunkCols; ++c)
      std::fill(out + c * column_stride + n, out + (c + 1) * column_stride, 0.0f);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t c = c0; c < c0 + kChunkCols; ++c) {
        const float v = xp[t * kp + c];
        finite &= v - v == 0.0f;  // false for inf and NaN
        out[c * column_stride + t] = v;
      }
  }
  return finite;
}

}  // namespace

std::string cpu_kernel_name() { return active_kernels().name; }

void set_cpu_kernels(const std::string& name) {
  if (name == "auto") {
    forced_kernels = nullptr;
    return;
  }
  std::string names;
  const CpuKernels* usable[4];
  const int count = usable_kernels(usable);
  for (int i = 0; i < count; ++i) {
    const CpuKernels* k = usable[i];
    if (name == k->name) {
      forced_kernels = k;
      return;
    }
    names += std::string(names.empty() ? "" : ", ") + k->name;
  }
  throw std::invalid_argument("sparse.set_cpu_kernels: '" + name + "' is not one of auto, " + names +
                              " (the kernels this CPU and ISA level can run)");
}

void spmm_cpu(const SpmmProblem& p, int nthreads) {
  const Weight& w = p.w;
  if (p.n == 0 || w.m == 0) return;
  const CpuKernels& kern = active_kernels();
  const int64_t kp = padded_cols(w.k);
  const int64_t groups = ceil_div(num_strips(w.m), G);
  const int64_t x_bytes = kern.bf16_pairs && w.dtype == DType::bf16 ? 2 : 4;
  const int64_t elem = w.dtype == DType::f32 ? 4 : 2;
  thread_local AlignedBuffer packed_x;  // the caller's: reused across calls
  for (int64_t slab0 = 0; slab0 < p.n; slab0 += kSlabTokens) {
    const int64_t ns = std::min(kSlabTokens, p.n - slab0);
    void* xp = packed_x.grow(size_t(ns * kp * x_bytes));
    const void* x = static_cast<const char*>(p.x) + slab0 * p.x_stride * elem;
    if (p.x_col_stride == 1) kern.pack_x(x, p.x_stride, w.dtype, ns, w.k, kp, xp);
    else pack_x_strided(x, p.x_stride, p.x_col_stride, w.dtype, x_bytes == 2, ns, w.k, kp, xp);
    thread_local AlignedBuffer packed_columns;
    const int64_t column_stride = (ns + 7 + 7) / 8 * 8;
    float* columns = nullptr;  // the caller's thread_local: workers get the pointer
    const bool sparse_enough = detail::strip_density(w, 0, num_strips(w.m)) <= detail::kSparsePathDensity;
    if (kern.by_column && ns >= 2 && x_bytes == 4 && sparse_enough) {
      columns = static_cast<float*>(packed_columns.grow(size_t(kp * column_stride) * sizeof(float)));
      if (!transpose_packed_x(static_cast<const float*>(xp), ns, kp, column_stride, columns)) columns = nullptr;
    }
    // Few strip groups (small M): split the tokens too, so every thread has work.
    const int64_t parts = std::clamp(ceil_div(int64_t(kTasksPerThread) * nthreads, groups), int64_t(1),
                                     ceil_div(ns, kMinPartTokens));
    const int64_t part_tokens = ceil_div(ns, parts);
    parallel_for(groups * parts, 1, nthreads, [&](int64_t begin, int64_t end) {
      thread_local AlignedBuffer scratch;
      for (int64_t i = begin; i < end; ++i) {
        Task t;
        t.w = &w;
        t.x = {xp, kp};
        t.x.by_column = columns;
        t.x.column_stride = column_stride;
        t.strip0 = (i / parts) * G;
        t.token0 = (i % parts) * part_tokens;
        t.tokens = std::min(part_tokens, ns - t.token0);
        if (t.tokens <= 0) continue;
        t.y = static_cast<char*>(p.y) + (slab0 + t.token0) * p.y_stride * elem;
        t.y_stride = p.y_stride;
        t.bias = p.bias;
        t.scratch = static_cast<float*>(scratch.grow(size_t(kern.scratch_floats(t.tokens)) * sizeof(float)));
        kern.run(t);
      }
    });
  }
}

// ---- packing --------------------------------------------------------------------------------
namespace {

// Nonzero test on raw bits, so -0.0 is zero and NaN is a value.
template <class Bits>
bool nonzero(Bits v) {
  return (v & Bits(~(Bits(1) << (8 * sizeof(Bits) - 1)))) != 0;
}

template <class Bits>
Bits element(const PackProblem& p, int64_t r, int64_t c) {
  return static_cast<const Bits*>(p.w)[r * p.stride_r + c * p.stride_c];
}

template <class Bits>
void count_strip(const PackProblem& p, int64_t s, int32_t* counts) {
  const int64_t chunks = chunks_per_strip(p.k), r1 = std::min(p.m, (s + 1) * kStripRows);
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t c0 = c * kChunkCols, c1 = std::min(p.k, c0 + kChunkCols);
    int32_t n = 0;
    for (int64_t r = s * kStripRows; r < r1; ++r)
      for (int64_t col = c0; col < c1; ++col) n += nonzero(element<Bits>(p, r, col));
    counts[c] = n;
  }
}

template <class Bits>
void fill_strip(const PackProblem& p, const Weight& out, int64_t s, uint32_t* masks, Bits* values) {
  const int64_t units = units_per_strip(p.k), rows = std::min<int64_t>(kStripRows, p.m - s * kStripRows);
  Bits* v = values + out.strip_offsets[s];
  for (int64_t u = 0; u < units; ++u) {
    uint32_t mask = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int j = 0; j < kUnitCols; ++j) {
        const int64_t col = u * kUnitCols + j;
        if (col >= p.k) continue;
        const Bits e = element<Bits>(p, s * kStripRows + r, col);
        if (nonzero(e)) {
          mask |= 1u << unit_bit(int(r), j);
          *v++ = e;
        }
      }
    masks[s * units + u] = mask;
  }
}

template <class Bits>
void unpack_strip(const Weight& w, int64_t s, Bits* dense, int64_t stride) {
  const int64_t units = units_per_strip(w.k), rows = std::min<int64_t>(kStripRows, w.m - s * kStripRows);
  for (int64_t r = 0; r < rows; ++r) {
    Bits* row = dense + (s * kStripRows + r) * stride;
    std::fill(row, row + w.k, Bits(0));
  }
  // Bits of elements inside [m, k]: a corrupt mask must not write past dense (SparseWeight.validate
  // rejects such masks; this keeps the private binding safe too).
  const uint32_t row_bits = rows == kStripRows ? 0xffffffffu : (1u << (kUnitCols * rows)) - 1;
  const Bits* v = static_cast<const Bits*>(w.values) + w.strip_offsets[s];
  for (int64_t u = 0; u < units; ++u) {
    const int64_t cols = std::min<int64_t>(kUnitCols, std::max<int64_t>(0, w.k - u * kUnitCols));
    const uint32_t legal = row_bits & (cols == 2 ? 0xffffffffu : cols == 1 ? 0x55555555u : 0u);
    for (uint32_t mask = w.masks[s * units + u]; mask; mask &= mask - 1) {
      const int bit = __builtin_ctz(mask);  // bits in value order
      const Bits value = *v++;
      if ((legal >> bit) & 1u) dense[(s * kStripRows + bit_row(bit)) * stride + u * kUnitCols + bit_col(bit)] = value;
    }
  }
}

template <class F>
void for_strips(const PackProblem& p, int nthreads, F&& f) {
  parallel_for(num_strips(p.m), 1, nthreads, [&](int64_t b, int64_t e) {
    for (int64_t s = b; s < e; ++s) f(s);
  });
}

}  // namespace

void pack_count_cpu(const PackProblem& p, int32_t* chunk_counts, int nthreads) {
  const int64_t chunks = chunks_per_strip(p.k);
  for_strips(p, nthreads, [&](int64_t s) {
    if (p.dtype == DType::f32) count_strip<uint32_t>(p, s, chunk_counts + s * chunks);
    else count_strip<uint16_t>(p, s, chunk_counts + s * chunks);
  });
}

void pack_fill_cpu(const PackProblem& p, const Weight& out, uint32_t* masks, void* values, int nthreads) {
  const int64_t nnz = out.strip_offsets[num_strips(p.m)];
  for_strips(p, nthreads, [&](int64_t s) {
    if (p.dtype == DType::f32) fill_strip<uint32_t>(p, out, s, masks, static_cast<uint32_t*>(values));
    else fill_strip<uint16_t>(p, out, s, masks, static_cast<uint16_t*>(values));
  });
  const int64_t elem = p.dtype == DType::f32 ? 4 : 2;
  std::memset(static_cast<char*>(values) + nnz * elem, 0, size_t(kValuePad * elem));
}

void unpack_cpu(const Weight& w, void* dense, int64_t dense_stride, int nthreads) {
  PackProblem shape;
  shape.m = w.m;
  shape.k = w.k;
  for_strips(shape, nthreads, [&](int64_t s) {
    if (w.dtype == DType::f32) unpack_strip(w, s, static_cast<uint32_t*>(dense), dense_stride);
    else unpack_strip(w, s, static_cast<uint16_t*>(dense), dense_stride);
  });
}

}  // namespace sparse
}  // namespace fastops
