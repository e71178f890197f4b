// CPU bitgemm: the driver (method choice, blocking, threads, exact corrections, scaled epilogue), the
// portable scalar kernels, and quantize_pack. Inputs are validated by the caller.
//
// Work split. The output is cut into tasks of mb x nb (A rows x W rows) that run in parallel. A task
// walks K in slices of ks columns: per slice it unpacks its A rows once (int8 method), then walks its
// W rows in sub-blocks of ns rows (unpacked once per slice, sized for L1) and runs register tiles over
// each piece of the slice that lies inside one K group. Pieces add their exact products into an
// mb x nb uint32 cache tile; when a group ends, the epilogue turns the tile into C_g and writes int32,
// or adds scale * C_g into an fp32 tile that the last group writes once in out_dtype. Few A rows
// (decode) take ks = all of K, so each W row streams from memory once, front to back.
// Narrow int8 plans with many A rows on an ISA with panel_gemm (AVX-512 VNNI) instead unpack A and W
// once per call, W into column panels (run_panel), and the tasks only run the panel kernel.
//
// Corrections (bitgemm_format.h), per group g of logical width k_g, with rs = the group's row sums of
// X - offset (the operands' rowsum when there is one group):
//   C_g = gg * D + owz[n] * rsa[m] + oaz[m] * rsw[n] + k_g * oa[m] * ow[n]          (uint32, wrapping)
// popcount: D = sum_ij ca_i cw_j P_ij, gg = 1, owz = ow, oaz = oa.
// int8: rows unpack as v / g with v = X - offset, g = 2 for bipolar (else 1), except that a signed u8
// side of a narrow tile unpacks as v + z, z = 2^(bits-1) (offset binary: it must be unsigned). So
// D = sum U S, gg = g_a g_w, and the z term joins the other operand's row sums: oaz = oa - g_a z_a
// when A is the u8 side, owz = ow - g_w z_w when W is.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "bitgemm/bitgemm.h"
#include "bitgemm/bitgemm_cpu_kernels.h"
#include "common/cpu_features.h"
#include "common/dtype.h"
#include "common/aligned_buffer.h"
#include "common/huge_pages.h"
#include "common/parallel.h"

namespace fastops {
namespace bitgemm {
namespace {

using detail::CpuKernels;
using detail::EpilogueRow;
using detail::kChunkBytes;
using detail::kMaxDotRows;
using detail::kMaxPopRows;
using detail::kSpanBits;
using detail::QuantParams;
using detail::UnpackSpec;

// ---------------------------------------------------------------------------------------------
// Portable scalar kernels (bitgemm_cpu_kernels.h has their contracts).

uint64_t load_u64(const uint32_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

constexpr int kPopRowsA = 2, kPopRowsW = 4;  // the scalar tiles
constexpr int kDotRowsU = 2, kDotRowsS = 4;

void popcount_tile_scalar(const uint32_t* const* a, const uint32_t* const* w, int64_t nbytes, uint32_t* out) {
  uint32_t acc[kPopRowsA * kPopRowsW] = {};
  for (int64_t q = 0; q < nbytes / 8; ++q) {
    uint64_t av[kPopRowsA];
    for (int i = 0; i < kPopRowsA; ++i) av[i] = load_u64(a[i] + 2 * q);
    for (int j = 0; j < kPopRowsW; ++j) {
      const uint64_t wv = load_u64(w[j] + 2 * q);
      for (int i = 0; i < kPopRowsA; ++i) acc[i * kPopRowsW + j] += uint32_t(__builtin_popcountll(av[i] & wv));
    }
  }
  std::memcpy(out, acc, sizeof acc);
}

// Wide only (int16, natural element order).
void unpack_scalar(const uint32_t* const* plane_rows, const UnpackSpec& s, int64_t nwords, void* out) {
  int16_t* v = static_cast<int16_t*>(out);
  const int64_t n = nwords * 32;
  for (int64_t c = 0; c < n; ++c) v[c] = int16_t(-s.bias);
  for (int j = s.plane_begin; j < s.plane_end; ++j) {
    const int weight = 1 << (j - s.plane_begin);
    const uint32_t flip = j == s.flip_plane ? ~0u : 0u;
    for (int64_t w = 0; w < nwords; ++w) {
      const uint32_t bits = plane_rows[j][w] ^ flip;
      for (int t = 0; t < 32; ++t) v[32 * w + t] = int16_t(v[32 * w + t] + int((bits >> t) & 1u) * weight);
    }
  }
}

// |sum| <= k (2^bits_a - 1) (2^bits_w - 1), which the caller keeps within int32.
void dot_wide_scalar(const void* const* u, const void* const* s, const int16_t*, int64_t nchunks, int,
                     uint32_t* out) {
  const int64_t n = nchunks * kChunkBytes / int64_t(sizeof(int16_t));
  for (int i = 0; i < kDotRowsU; ++i) {
    const int16_t* a = static_cast<const int16_t*>(u[i]);
    for (int j = 0; j < kDotRowsS; ++j) {
      const int16_t* b = static_cast<const int16_t*>(s[j]);
      int32_t acc = 0;
      for (int64_t c = 0; c < n; ++c) acc += int32_t(a[c]) * b[c];
      out[i * kDotRowsS + j] = uint32_t(acc);
    }
  }
}

void group_popcount_scalar(const uint32_t* row, int64_t nwords, int64_t group_words, int64_t ngroups, int32_t coeff,
                           int32_t* sums, int64_t sums_stride) {
  for (int64_t g = 0; g < ngroups; ++g) {
    const int64_t w1 = std::min(nwords, (g + 1) * group_words);
    uint32_t count = 0;
    for (int64_t w = g * group_words; w < w1; w += 2) count += uint32_t(__builtin_popcountll(load_u64(row + w)));
    int32_t& sum = sums[g * sums_stride];
    sum = int32_t(uint32_t(sum) + uint32_t(coeff) * count);
  }
}

void store_row_scalar(const float* vals, const void* bias, void* out, DType dtype, int64_t n) {
  with_dtype(dtype, [&](auto d) {
    for (int64_t i = 0; i < n; ++i) store_elem<d.value>(out, i, bias ? vals[i] + load_elem<d.value>(bias, i) : vals[i]);
  });
}

void minmax_scalar(const void* x, DType dtype, int64_t k, float* lo, float* hi) {
  with_dtype(dtype, [&](auto d) {
    float mn = 0.0f, mx = 0.0f;
    for (int64_t i = 0; i < k; ++i) {
      const float v = load_elem<d.value>(x, i);
      mn = std::min(mn, v);
      mx = std::max(mx, v);
    }
    *lo = mn;
    *hi = mx;
  });
}

// Keeps a value in a register as it is, so the compiler cannot fuse the multiply that produced it
// into a following add (quantize_pack must round every product, bitgemm.h).
float unfused(float v) {
#if defined(__GNUC__) && defined(__x86_64__)
  asm("" : "+x"(v));
#elif defined(__GNUC__) && defined(__aarch64__)
  asm("" : "+w"(v));
#endif
  return v;
}

// rint (round half to even) without a libm call: exact for |v| < 2^23, larger floats are integers.
float round_even(float v) {
  v = unfused(v);
  if (!(std::fabs(v) < 8388608.0f)) return v;
  const float big = v < 0.0f ? -8388608.0f : 8388608.0f;
  return (v + big) - big;
}

// bitgemm.h's three rules as one: rint((x * inv + add) * mul) + zero clamped to [qmin, qmax], where
// add = qmax, mul = 1/2 for bipolar and add = 0, mul = 1 (exact no-ops) otherwise.
float quantize_value(float x, const QuantParams& q) {
  const float r = round_even((unfused(x * q.inv) + q.add) * q.mul) + q.zero;
  return std::min(std::max(r, q.qmin), q.qmax);
}

uint32_t quantize_row_scalar(const void* x, DType dtype, int64_t k, const QuantParams& q, uint32_t* const* plane_rows,
                             int64_t nwords) {
  return with_dtype(dtype, [&](auto d) {
    const uint32_t mask = (1u << q.bits) - 1;
    uint32_t sum = 0;
    for (int64_t w = 0; w < nwords; ++w) {
      uint32_t word[kMaxBits] = {};
      for (int64_t t = 0; t < 32 && 32 * w + t < k; ++t) {
        const int32_t v = int32_t(quantize_value(load_elem<d.value>(x, 32 * w + t), q));
        sum += uint32_t(v);
        for (int j = 0; j < q.bits; ++j) word[j] |= ((uint32_t(v) & mask) >> j & 1u) << t;
      }
      for (int j = 0; j < q.bits; ++j) plane_rows[j][w] = word[j];
    }
    return sum;
  });
}

void epilogue_row_scalar(const EpilogueRow& e) { detail::epilogue_row<store_row_scalar>(e); }

const CpuKernels kScalarKernels = {
    "scalar",        2, 0, 3,     false, kPopRowsA, kPopRowsW, kDotRowsU, kDotRowsS, popcount_tile_scalar, unpack_scalar, nullptr, dot_wide_scalar,
    group_popcount_scalar, epilogue_row_scalar, minmax_scalar, quantize_row_scalar, 0, 0, nullptr, {},
};

const CpuKernels& active_kernels() {
#ifdef FASTOPS_HAVE_AVX2_KERNELS
  const CpuFeatures& f = cpu_features();
  if (active_isa() >= Isa::avx512 && f.avx512_vpopcntdq && f.avx512_vnni) return detail::avx512_kernels();
  if (active_isa() >= Isa::avx2) return detail::avx2_kernels();
#endif
  return kScalarKernels;
}

// ---------------------------------------------------------------------------------------------
// Method choice.

// "auto" takes AND + popcount when it beats the unpacked dot products for this shape and bit pair on
// this ISA (CpuKernels::popcount_cost, unpack_cost, dot_cost); both are exact, so this only
// decides speed.
bool use_popcount(const char* method, int64_t m, int bits_a, int bits_w, const CpuKernels& kern) {
  if (method && std::strcmp(method, "popcount") == 0) return true;
  if (method && std::strcmp(method, "int8") == 0) return false;
  const int planes = bits_a * bits_w;
  return m * planes * kern.popcount_cost < int64_t(bits_w) * kern.unpack_cost + m * kern.dot_cost;
}

// How the int8 method unpacks both operands (bitgemm_cpu_kernels.h: UnpackSpec, DotTileFn).
struct Int8Plan {
  bool narrow = false;
  bool u_is_a = true;  // narrow: A is the u8 side
  UnpackSpec a_spec[2], w_spec[2];
  int a_parts = 1, w_parts = 1;
  int flush_every = 1;
  int32_t za = 0, zw = 0;
};

// v / g of every element (int16 for wide tiles, int8 for the s8 side of narrow ones).
UnpackSpec value_spec(const Operand& op, bool wide) {
  UnpackSpec s;
  s.plane_end = op.bits;
  if (op.fmt == Format::signed_int) {
    s.flip_plane = op.bits - 1;
    s.bias = 1 << (op.bits - 1);
  }
  s.wide = wide;
  return s;
}

// Narrow tiles cost about parts * (2 + 3 / flush_every) vector ops per 32 products (vpmaddubsw +
// vpaddw per chunk, a three-op widening per flush); wide tiles 4 (vpmaddwd + vpaddd per 16). The s8
// side is split into 4-bit parts when its values or the int16 pair sums 2 * max|U| * max|S| would
// not fit; the cheapest exact layout wins. Exact narrow tiles (vpdpbusd) have no pair bound and
// cost parts, against 2 for wide ones (vpdpwssd).
Int8Plan plan_int8(const Operand& a, const Operand& w, const CpuKernels& kern) {
  Int8Plan plan;
  plan.a_spec[0] = value_spec(a, true);
  plan.w_spec[0] = value_spec(w, true);
  if (!kern.dot_narrow) return plan;
  const bool exact = kern.narrow_exact;
  double best = exact ? 2.0 : 4.0;
  for (const bool u_is_a : {false, true}) {  // on ties the offset z lands on W: then A's sums fix it
    const Operand& u = u_is_a ? a : w;
    const Operand& s = u_is_a ? w : a;
    const bool s_signed = s.fmt == Format::signed_int;
    const int64_t max_u = (int64_t(1) << u.bits) - 1;
    for (int parts = 1; parts <= 2; ++parts) {
      if (parts == 2 && s.bits <= 4) break;
      if (parts == 1 && !s_signed && s.bits == 8) continue;  // 255 is no int8
      const int64_t max_s = parts == 2 ? 15 : s_signed ? int64_t(1) << (s.bits - 1) : (int64_t(1) << s.bits) - 1;
      const int64_t pair = 2 * max_u * max_s;
      if (!exact && pair > 32767) continue;
      const int flush_every = exact ? 1 : int(32767 / pair);
      const double cost = exact ? parts : parts * (2.0 + 3.0 / flush_every);
      if (cost >= best) continue;
      best = cost;
      plan.narrow = true;
      plan.u_is_a = u_is_a;
      plan.flush_every = flush_every;
      UnpackSpec us;
      us.plane_end = u.bits;
      us.flip_plane = u.fmt == Format::signed_int ? u.bits - 1 : -1;
      const int32_t z = u.fmt == Format::signed_int ? 1 << (u.bits - 1) : 0;
      UnpackSpec ss[2] = {value_spec(s, false), {}};
      if (parts == 2) {
        ss[0] = UnpackSpec{0, 4, -1, 0, false};
        ss[1] = UnpackSpec{4, s.bits, s_signed ? s.bits - 1 : -1, s_signed ? 1 << (s.bits - 5) : 0, false};
      }
      if (u_is_a) {
        plan.a_spec[0] = us, plan.za = z, plan.zw = 0, plan.a_parts = 1;
        plan.w_spec[0] = ss[0], plan.w_spec[1] = ss[1], plan.w_parts = parts;
      } else {
        plan.w_spec[0] = us, plan.zw = z, plan.za = 0, plan.w_parts = 1;
        plan.a_spec[0] = ss[0], plan.a_spec[1] = ss[1], plan.a_parts = parts;
      }
    }
  }
  return plan;
}

// ---------------------------------------------------------------------------------------------
// The GEMM driver.

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

constexpr int64_t kDecodeRows = 32;           // up to this many A rows: one A block over all of K
constexpr int64_t kABlockBytes = 192 << 10;   // A block of a slice: most of L2
constexpr int64_t kWBlockBytes = 16 << 10;    // W sub-block of a slice: half of L1
constexpr int64_t kTaskRows = 128;            // A and W rows of a big-GEMM task
constexpr int64_t kPanelMinRows = 96;         // fewer A rows: dot tiles are faster (no W panel to pack)
constexpr int64_t kPanelTaskRows = 256;       // the same for panel_gemm
constexpr int64_t kPanelAChunkBytes = 16 << 20;  // panel path: unpacked A rows per chunk (usually all of A)
constexpr int64_t kPanelWChunkBytes = 4 << 20;   // and W panels per chunk (one buffer, reused: L3-sized)
constexpr int64_t kPanelPackBytes = 256;        // k per step of unpack_panel (a multiple of kSpanBits)
constexpr int64_t kPanelPackRows = 16;          // rows per step of unpack_panel: 64 bytes of a k quad

class GemmRun {
 public:
  GemmRun(const GemmProblem& p, const char* method, int nthreads)
      : p_(p), kern_(active_kernels()), nthreads_(std::max(1, nthreads)) {
    popcount_ = use_popcount(method, p.a.rows, p.a.bits, p.w.bits, kern_);
    m_ = p.a.rows, n_ = p.w.rows;
    words_ = words_per_row(p.k);
    kend_ = round_up(p.k, kSpanBits);
    ngroups_ = p.scaled ? num_groups(p.k, p.group_size) : 1;
    glen_ = p.scaled && p.group_size > 0 ? p.group_size : kend_;
    if (!popcount_) {
      plan_ = plan_int8(p.a, p.w, kern_);
      esize_ = plan_.narrow ? 1 : 2;
      dot_ = plan_.narrow ? kern_.dot_narrow : kern_.dot_wide;
      panel_ = plan_.narrow && kern_.panel_gemm && m_ >= kPanelMinRows;
    }
    setup_corrections();
    choose_blocking();
  }

  void run() {
    if (panel_)
      run_panel();
    else
      run_tasks(0, m_, 0, n_);
  }

 private:
  struct PlaneRows {
    std::vector<const uint32_t*> ptr;
    std::vector<uint32_t> coeff;
    std::vector<int64_t> row;
  };
  struct TaskScratch {
    AlignedBuffer ctile, facc, sw, ablock, wblock, zero;
    PlaneRows pa, pw;  // popcount
  };

  // Group sums (when a coefficient needs them) and the per-row coefficients.
  void setup_corrections() {
    const int32_t ga = !popcount_ && p_.a.fmt == Format::bipolar ? 2 : 1;
    const int32_t gw = !popcount_ && p_.w.fmt == Format::bipolar ? 2 : 1;
    gg_ = uint32_t(ga * gw);
    oaz_.assign(p_.a.offset, p_.a.offset + m_);
    owz_.assign(p_.w.offset, p_.w.offset + n_);
    if (!popcount_) {
      for (auto& o : oaz_) o -= ga * plan_.za;
      for (auto& o : owz_) o -= gw * plan_.zw;
    }
    if (ngroups_ == 1) {
      rsa_ = p_.a.rowsum, rsw_ = p_.w.rowsum;
      return;
    }
    const bool need_rsa = std::any_of(owz_.begin(), owz_.end(), [](int32_t v) { return v != 0; });
    const bool need_rsw = std::any_of(oaz_.begin(), oaz_.end(), [](int32_t v) { return v != 0; });
    zeros_.assign(size_t(std::max(m_, n_)), 0);
    rsa_ = need_rsa ? group_sums(p_.a, rs_a_) : zeros_.data();
    rsw_ = need_rsw ? group_sums(p_.w, rs_w_) : zeros_.data();
    rsa_group_stride_ = need_rsa ? m_ : 0;
    rsw_group_stride_ = need_rsw ? n_ : 0;
  }

  // sums[g * rows + r] = sum over group g's columns of X - offset, from plane popcounts.
  const int32_t* group_sums(const Operand& op, std::vector<int32_t>& sums) {
    sums.assign(size_t(ngroups_ * op.rows), 0);
    parallel_for(op.rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, words_)), nthreads_,
                 [&](int64_t b, int64_t e) {
                   for (int64_t r = b; r < e; ++r)
                     for (int i = 0; i < op.bits; ++i)
                       kern_.group_popcount(op.planes + (i * op.rows + r) * words_, words_, glen_ / 32, ngroups_,
                                            plane_coeff(op.fmt, op.bits, i), sums.data() + r, op.rows);
                 });
    return sums.data();
  }

  // Bytes per column of one row in the A block and the W sub-block.
  int64_t a_col_bytes_x8() const { return popcount_ ? p_.a.bits : 8 * esize_ * plan_.a_parts; }
  int64_t w_col_bytes_x8() const { return popcount_ ? p_.w.bits : 8 * esize_ * plan_.w_parts; }

  void choose_blocking() {
    const int64_t a8 = a_col_bytes_x8(), w8 = w_col_bytes_x8();
    mb_ = m_ <= kDecodeRows ? m_ : std::min(m_, kTaskRows);
    if (panel_) {  // one panel of W columns per sub-block, as long as it fits kWBlockBytes
      mb_ = std::min(m_, kPanelTaskRows);
      ns_ = kern_.panel_cols;
      ks_ = std::clamp(8 * kWBlockBytes / (ns_ * w8) / kSpanBits * kSpanBits, kSpanBits, std::max(kSpanBits, kend_));
      nb_ = round_up(kPanelTaskRows, ns_);
      return;
    }
    ks_ = std::clamp(8 * kABlockBytes / (mb_ * a8) / kSpanBits * kSpanBits, kSpanBits, std::max(kSpanBits, kend_));
    // Whole register tiles of W rows (for popcount: of W plane-rows).
    const int64_t unit = popcount_ ? kern_.pop_rows_w / std::gcd(p_.w.bits, kern_.pop_rows_w)
                         : !plan_.narrow || plan_.u_is_a ? kern_.dot_rows_s / plan_.w_parts : kern_.dot_rows_u;
    ns_ = std::clamp(8 * kWBlockBytes / (ks_ * w8) / unit * unit, unit, round_up(n_, unit));
    if (m_ <= kDecodeRows) {  // enough tasks for dynamic balance, each a run of whole sub-blocks
      nb_ = std::clamp(round_up((n_ + 8 * nthreads_ - 1) / (8 * nthreads_), ns_), ns_, round_up(256, ns_));
    } else {
      nb_ = round_up(kTaskRows, ns_);
    }
  }

  // Output rows [ma, mz) x columns [na, nz) in tasks of mb_ x nb_.
  void run_tasks(int64_t ma, int64_t mz, int64_t na, int64_t nz) const {
    const int64_t mblocks = (mz - ma + mb_ - 1) / mb_, nblocks = (nz - na + nb_ - 1) / nb_;
    const int64_t tasks = mblocks * nblocks;
    // Contiguous runs of tasks per piece keep each thread's W stream sequential; four pieces per
    // thread balance the load.
    const int64_t pieces = 4 * int64_t(nthreads_);
    parallel_for(tasks, (tasks + pieces - 1) / pieces, nthreads_, [&](int64_t b, int64_t e) {
      TaskScratch s = make_scratch();
      for (int64_t t = b; t < e; ++t) {
        const int64_t m0 = ma + t % mblocks * mb_, n0 = na + t / mblocks * nb_;
        run_task(s, m0, std::min(mz, m0 + mb_), n0, std::min(nz, n0 + nb_));
      }
    });
  }

  // The panel path unpacks each operand once per call, not once per task: A as rows of kend_ bytes,
  // W as panels of panel_cols rows (unpack_panel), in chunks of at most kPanelAChunkBytes and
  // kPanelWChunkBytes, then runs the tasks of each pair of chunks on them.
  void run_panel() {
    const int64_t cols = kern_.panel_cols;
    auto chunk = [&](int64_t bytes) { return std::max(kPanelTaskRows, bytes / kend_ / kPanelTaskRows * kPanelTaskRows); };
    const int64_t a_chunk = chunk(kPanelAChunkBytes), w_chunk = chunk(kPanelWChunkBytes);
    const int64_t a_rows = std::min(m_, a_chunk), w_rows = round_up(std::min(n_, w_chunk), cols);
    // Not zeroed: unpack_rows and unpack_panel write every byte the kernels read.
    std::unique_ptr<uint8_t[]> a_buf(new uint8_t[size_t(a_rows * kend_)]);
    std::unique_ptr<uint8_t[]> w_buf(new uint8_t[size_t(w_rows * kend_)]);
    advise_huge_pages(a_buf.get(), size_t(a_rows * kend_));
    advise_huge_pages(w_buf.get(), size_t(w_rows * kend_));
    const int64_t nwords = kend_ / 32;
    for (int64_t nc = 0; nc < n_; nc += w_chunk) {
      const int64_t nz = std::min(n_, nc + w_chunk);
      parallel_for((nz - nc + cols - 1) / cols, 1, nthreads_, [&](int64_t b, int64_t e) {
        std::vector<uint8_t> row_tmp(static_cast<size_t>(kPanelPackRows * kPanelPackBytes));
        for (int64_t q = b; q < e; ++q)
          unpack_panel(p_.w, plan_.w_spec[0], nc + q * cols, std::min(nz, nc + (q + 1) * cols), nwords, row_tmp.data(),
                       w_buf.get() + q * cols * kend_);
      });
      for (int64_t mc = 0; mc < m_; mc += a_chunk) {
        const int64_t mz = std::min(m_, mc + a_chunk);
        if (nc == 0 || m_ > a_chunk)
          parallel_for(mz - mc, std::max<int64_t>(1, 16384 / kend_), nthreads_, [&](int64_t b, int64_t e) {
            unpack_rows(p_.a, plan_.a_spec, 1, mc + b, mc + e, 0, nwords, kend_, a_buf.get() + b * kend_);
          });
        a_pre_ = a_buf.get(), a_pre_row0_ = mc, w_pre_ = w_buf.get(), w_pre_row0_ = nc;
        run_tasks(mc, mz, nc, nz);
      }
    }
  }

  TaskScratch make_scratch() const {
    TaskScratch s;
    s.ctile.resize(size_t(mb_ * nb_) * sizeof(uint32_t));
    if (p_.scaled) {
      s.facc.resize(size_t(mb_ * nb_) * sizeof(float));
      s.sw.resize(size_t(nb_) * sizeof(float));
    }
    const int64_t a8 = a_col_bytes_x8(), w8 = w_col_bytes_x8();
    if (!popcount_ && !panel_) {
      s.ablock.resize(size_t(mb_ * ks_ * a8 / 8));
      s.wblock.resize(size_t(ns_ * ks_ * w8 / 8));
    }
    // popcount tiles offset every row pointer, the zero row's too, by up to all of K.
    s.zero.resize(size_t(popcount_ ? words_ * 4 : ks_ * esize_));
    return s;
  }

  const uint32_t* plane_row(const Operand& op, int plane, int64_t row) const {
    return op.planes + (plane * op.rows + row) * words_;
  }

  // Unpacks rows [r0, r1) of op over words [w0, w0 + nw) into block rows of `parts` part-rows, each
  // part_bytes apart.
  void unpack_rows(const Operand& op, const UnpackSpec* spec, int parts, int64_t r0, int64_t r1, int64_t w0,
                   int64_t nw, int64_t part_bytes, uint8_t* block) const {
    const uint32_t* rows[kMaxBits];
    for (int64_t r = r0; r < r1; ++r) {
      for (int i = 0; i < op.bits; ++i) rows[i] = plane_row(op, i, r) + w0;
      for (int q = 0; q < parts; ++q) kern_.unpack(rows, spec[q], nw, block + ((r - r0) * parts + q) * part_bytes);
    }
  }

  // Unpacks rows [r0, r1) (at most panel_cols) of op over words [0, nw) into the panel layout of
  // panel_gemm (the four bytes of each k quad of a row side by side, rows next; missing rows zero).
  // kPanelPackRows rows by kPanelPackBytes k at a time go through row_tmp, so the scattered four-byte
  // writes fill whole 64-byte lines in cache.
  void unpack_panel(const Operand& op, const UnpackSpec& spec, int64_t r0, int64_t r1, int64_t nw, uint8_t* row_tmp,
                    uint8_t* panel) const {
    constexpr int64_t kRows = kPanelPackRows;
    const uint32_t* rows[kMaxBits];
    const int64_t cols = kern_.panel_cols;
    for (int64_t g0 = r0; g0 < r0 + cols; g0 += kRows) {
      const int64_t live = std::clamp<int64_t>(r1 - g0, 0, kRows);
      for (int64_t w0 = 0; w0 < nw; w0 += kPanelPackBytes / 32) {
        const int64_t words = std::min(kPanelPackBytes / 32, nw - w0);
        for (int64_t j = 0; j < kRows; ++j) {
          uint8_t* dst = row_tmp + j * kPanelPackBytes;
          if (j >= live) {
            std::memset(dst, 0, size_t(words * 32));
            continue;
          }
          for (int i = 0; i < op.bits; ++i) rows[i] = plane_row(op, i, g0 + j) + w0;
          kern_.unpack(rows, spec, words, dst);
        }
        for (int64_t q = 0; q < words * 8; ++q) {
          uint8_t* line = panel + ((w0 * 8 + q) * cols + (g0 - r0)) * 4;
          for (int64_t j = 0; j < kRows; ++j) std::memcpy(line + j * 4, row_tmp + j * kPanelPackBytes + 4 * q, 4);
        }
      }
    }
  }

  void run_task(TaskScratch& s, int64_t m0, int64_t m1, int64_t n0, int64_t n1) const {
    uint32_t* ctile = reinterpret_cast<uint32_t*>(s.ctile.data());
    const uint32_t* zero = reinterpret_cast<const uint32_t*>(s.zero.data());
    if (popcount_) list_plane_rows(p_.a, m0, m1, pop_pad_a(m1 - m0), zero, s.pa);
    for (int64_t s0 = 0; s0 < kend_; s0 += ks_) {
      const int64_t s1 = std::min(kend_, s0 + ks_);
      if (!popcount_ && !panel_)
        unpack_rows(p_.a, plan_.a_spec, plan_.a_parts, m0, m1, s0 / 32, (s1 - s0) / 32, ks_ * esize_, s.ablock.data());
      for (int64_t ns0 = n0; ns0 < n1; ns0 += ns_) {
        const int64_t ns1 = std::min(n1, ns0 + ns_);
        if (popcount_)
          list_plane_rows(p_.w, ns0, ns1, kern_.pop_rows_w, zero, s.pw);
        else if (!panel_)
          unpack_rows(p_.w, plan_.w_spec, plan_.w_parts, ns0, ns1, s0 / 32, (s1 - s0) / 32, ks_ * esize_,
                      s.wblock.data());
        for (int64_t c0 = s0; c0 < s1;) {
          const int64_t g = c0 / glen_, gend = std::min(kend_, (g + 1) * glen_), c1 = std::min(s1, gend);
          if (c0 == g * glen_)
            for (int64_t m = m0; m < m1; ++m) std::fill_n(ctile + (m - m0) * nb_ + (ns0 - n0), ns1 - ns0, 0u);
          if (popcount_)
            popcount_tiles(s, ns0, n0, c0, c1);
          else if (panel_)
            panel_tiles(s, m0, m1, ns0, ns1, n0, c0, c1);
          else
            dot_tiles(s, m0, m1, ns0, ns1, n0, s0, c0, c1);
          if (c1 == gend && c1 < s1) epilogue(s, g, m0, m1, ns0, ns1, n0);  // a group ends inside the slice
          c0 = c1;
        }
      }
      // A group ending with the slice: one epilogue over all the task's columns (long rows vectorize).
      const int64_t g = (s1 - 1) / glen_;
      if (s1 == std::min(kend_, (g + 1) * glen_)) epilogue(s, g, m0, m1, n0, n1, n0);
    }
  }

  // Padding of a task's A plane-rows: none when the ISA has a short tile for the last, partial tile
  // (decode: one row of 1 or 3 bits on AVX2), else up to full tiles.
  int pop_pad_a(int64_t rows) const {
    const int rest = int(rows * p_.a.bits % kern_.pop_rows_a);
    return rest == 0 || kern_.popcount_short[rest - 1] ? 1 : kern_.pop_rows_a;
  }

  // Plane-rows (row, plane) of rows [r0, r1) of op in tile order, padded to a multiple of `pad`
  // with zero rows of coefficient 0 (landing harmlessly on cache-tile row 0).
  void list_plane_rows(const Operand& op, int64_t r0, int64_t r1, int pad, const uint32_t* zero,
                       PlaneRows& out) const {
    const int64_t n = round_up((r1 - r0) * op.bits, pad);
    out.ptr.resize(size_t(n));
    out.coeff.resize(size_t(n));
    out.row.resize(size_t(n));
    size_t e = 0;
    for (int64_t r = r0; r < r1; ++r)
      for (int plane = 0; plane < op.bits; ++plane, ++e) {
        out.ptr[e] = plane_row(op, plane, r);
        out.coeff[e] = uint32_t(plane_coeff(op.fmt, op.bits, plane));
        out.row[e] = r - r0;
      }
    for (; e < size_t(n); ++e) out.ptr[e] = zero, out.coeff[e] = 0, out.row[e] = 0;
  }

  // ctile[m][n] += sum_ij ca_i cw_j popcount(a_i[m] AND w_j[n]) over columns [c0, c1), in register
  // tiles of the ISA's plane-row shape, over the plane-rows listed in s.pa (the task's A rows) and
  // s.pw (W rows [ns0, ns1)); a last, partial A tile takes the ISA's short tile.
  void popcount_tiles(const TaskScratch& s, int64_t ns0, int64_t n0, int64_t c0, int64_t c1) const {
    const int tw = kern_.pop_rows_w;
    uint32_t* ctile = reinterpret_cast<uint32_t*>(s.ctile.data()) + (ns0 - n0);
    const int64_t word0 = c0 / 32, nbytes = (c1 - c0) / 8;
    const uint32_t* pa[kMaxPopRows];
    const uint32_t* pw[kMaxPopRows];
    uint32_t counts[kMaxPopRows * kMaxPopRows];
    uint32_t* dst[kMaxPopRows];
    const bool dense_w = p_.w.bits == 1;
    for (size_t ea = 0; ea < s.pa.ptr.size(); ea += size_t(kern_.pop_rows_a)) {
      const int ta = int(std::min(s.pa.ptr.size() - ea, size_t(kern_.pop_rows_a)));
      const detail::PopcountTileFn tile = ta < kern_.pop_rows_a ? kern_.popcount_short[ta - 1] : kern_.popcount_tile;
      for (int i = 0; i < ta; ++i) {
        pa[i] = s.pa.ptr[ea + size_t(i)] + word0;
        dst[i] = ctile + s.pa.row[ea + size_t(i)] * nb_;
      }
      const uint32_t* ca = s.pa.coeff.data() + ea;
      for (size_t ew = 0; ew < s.pw.ptr.size(); ew += size_t(tw)) {
        for (int j = 0; j < tw; ++j) pw[j] = s.pw.ptr[ew + size_t(j)] + word0;
        tile(pa, pw, nbytes, counts);
        const uint32_t* cw = s.pw.coeff.data() + ew;
        const int64_t* col = s.pw.row.data() + ew;
        if (dense_w) {  // one plane: the tile's W rows are consecutive columns (padding rows count 0)
          for (int i = 0; i < ta; ++i) {
            const uint32_t c = ca[i] * cw[0];
            uint32_t* d = dst[i] + col[0];
            for (int j = 0; j < tw; ++j) d[j] += c * counts[i * tw + j];
          }
          continue;
        }
        // One add per run of a W row's planes: adding each plane straight into the cache tile chains
        // the adds through memory (a fifth of a decode call at K = 4096).
        for (int i = 0; i < ta; ++i) {
          uint32_t run = 0;
          for (int j = 0; j < tw; ++j) {
            run += cw[j] * counts[i * tw + j];
            if (j + 1 == tw || col[j + 1] != col[j]) {
              dst[i][col[j]] += ca[i] * run;
              run = 0;
            }
          }
        }
      }
    }
  }

  // ctile[m][n] += sum U S over columns [c0, c1) of the unpacked blocks (slice start s0). Tiles are
  // dot_rows_u u8/int16 rows by dot_rows_s part-rows of the other side (all parts of each of its rows).
  void dot_tiles(const TaskScratch& s, int64_t m0, int64_t m1, int64_t ns0, int64_t ns1, int64_t n0, int64_t s0,
                 int64_t c0, int64_t c1) const {
    const bool u_is_a = !plan_.narrow || plan_.u_is_a;
    const int s_parts = u_is_a ? plan_.w_parts : plan_.a_parts;
    const int du = kern_.dot_rows_u, ds = kern_.dot_rows_s;
    const int s_rows = ds / s_parts;
    const int64_t part_bytes = ks_ * esize_, offset = (c0 - s0) * esize_;
    const int64_t nchunks = (c1 - c0) * esize_ / kChunkBytes;
    int16_t coef[kMaxDotRows];  // a split row's high part weighs 16
    for (int j = 0; j < ds; ++j) coef[j] = int16_t(s_parts == 2 && j % 2 == 1 ? 16 : 1);
    uint32_t* ctile = reinterpret_cast<uint32_t*>(s.ctile.data());
    auto row_ptr = [&](const AlignedBuffer& block, int parts, int64_t r, int64_t rows, int q) -> const void* {
      return r < rows ? block.data() + (r * parts + q) * part_bytes + offset : s.zero.data();
    };
    uint32_t out[kMaxDotRows * kMaxDotRows];
    // tile(a0, w0): A rows from a0 and W rows from w0 (relative to m0, ns0).
    auto tile = [&](int64_t a0, int64_t w0) {
      const int64_t u0 = u_is_a ? a0 : w0, v0 = u_is_a ? w0 : a0;
      const AlignedBuffer& ublock = u_is_a ? s.ablock : s.wblock;
      const AlignedBuffer& sblock = u_is_a ? s.wblock : s.ablock;
      const int64_t urows = u_is_a ? m1 - m0 : ns1 - ns0, srows = u_is_a ? ns1 - ns0 : m1 - m0;
      const void* up[kMaxDotRows];
      const void* sp[kMaxDotRows];
      for (int i = 0; i < du; ++i) up[i] = row_ptr(ublock, 1, u0 + i, urows, 0);
      for (int j = 0; j < ds; ++j) sp[j] = row_ptr(sblock, s_parts, v0 + j / s_parts, srows, j % s_parts);
      dot_(up, sp, coef, nchunks, plan_.flush_every, out);
      for (int i = 0; i < du && u0 + i < urows; ++i) {
        for (int j = 0; j < ds && v0 + j / s_parts < srows; ++j) {
          const int64_t mm = u_is_a ? u0 + i : v0 + j / s_parts, nn = u_is_a ? v0 + j / s_parts : u0 + i;
          ctile[mm * nb_ + (ns0 - n0) + nn] += out[i * ds + j];
        }
      }
    };
    const int a_step = u_is_a ? du : s_rows, w_step = u_is_a ? s_rows : du;
    for (int64_t a0 = 0; a0 < m1 - m0; a0 += a_step)
      for (int64_t w0 = 0; w0 < ns1 - ns0; w0 += w_step) tile(a0, w0);
  }

  // ctile[m][n] += sum U S over columns [c0, c1) of the unpacked A rows and W's panel holding W rows
  // [ns0, ns1), panel_rows A rows at a time.
  void panel_tiles(const TaskScratch& s, int64_t m0, int64_t m1, int64_t ns0, int64_t ns1, int64_t n0, int64_t c0,
                   int64_t c1) const {
    const int pr = kern_.panel_rows;
    const int64_t cols = kern_.panel_cols;
    const uint8_t* panel = w_pre_ + (ns0 - w_pre_row0_) * kend_ + c0 / 4 * cols * 4;
    uint32_t* ctile = reinterpret_cast<uint32_t*>(s.ctile.data()) + (ns0 - n0);
    const uint8_t* a[detail::kMaxPanelRows];
    for (int64_t a0 = 0; a0 < m1 - m0; a0 += pr) {
      const int rows = int(std::min<int64_t>(pr, m1 - m0 - a0));
      for (int i = 0; i < pr; ++i)
        a[i] = i < rows ? a_pre_ + (m0 + a0 + i - a_pre_row0_) * kend_ + c0 : s.zero.data();
      kern_.panel_gemm(a, panel, (c1 - c0) / 4, plan_.u_is_a, ctile + a0 * nb_, nb_, rows, int(ns1 - ns0));
    }
  }

  void epilogue(TaskScratch& s, int64_t g, int64_t m0, int64_t m1, int64_t ns0, int64_t ns1, int64_t n0) const {
    const int64_t k_g = std::min(p_.k, (g + 1) * glen_) - g * glen_;
    const int64_t cols = ns1 - ns0;
    float* sw = reinterpret_cast<float*>(s.sw.data());
    if (p_.scaled)
      for (int64_t n = ns0; n < ns1; ++n)
        sw[n - ns0] = p_.w_scale[n * p_.w_scale_stride_row + g * p_.w_scale_stride_group];
    const size_t out_elem = p_.scaled && p_.out_dtype != DType::f32 ? 2 : 4;
    EpilogueRow e;
    e.n = cols;
    e.gg = gg_;
    e.owz = owz_.data() + ns0;
    e.rsw = rsw_ + g * rsw_group_stride_ + ns0;
    e.ow = p_.w.offset + ns0;
    e.scaled = p_.scaled;
    e.first = g == 0;
    e.last = g == ngroups_ - 1;
    e.sw = sw;
    e.out_dtype = p_.out_dtype;
    e.bias = p_.bias ? static_cast<const uint8_t*>(p_.bias) + ns0 * out_elem : nullptr;
    for (int64_t m = m0; m < m1; ++m) {
      e.dot = reinterpret_cast<const uint32_t*>(s.ctile.data()) + (m - m0) * nb_ + (ns0 - n0);
      e.rsa = uint32_t(rsa_[g * rsa_group_stride_ + m]);
      e.oaz = uint32_t(oaz_[m]);
      e.koa = uint32_t(k_g) * uint32_t(p_.a.offset[m]);
      if (p_.scaled) {
        e.facc = reinterpret_cast<float*>(s.facc.data()) + (m - m0) * nb_ + (ns0 - n0);
        e.sa = p_.a_scale[m * p_.a_scale_stride_row + g * p_.a_scale_stride_group];
      }
      e.out = static_cast<uint8_t*>(p_.out) + (m * p_.out_stride + ns0) * out_elem;
      kern_.epilogue_row(e);
    }
  }

  const GemmProblem& p_;
  const CpuKernels& kern_;
  int nthreads_;
  bool popcount_ = true;
  Int8Plan plan_;
  int64_t esize_ = 1;
  detail::DotTileFn dot_ = nullptr;
  int64_t m_ = 0, n_ = 0, words_ = 0, kend_ = 0, ngroups_ = 1, glen_ = 0;
  int64_t mb_ = 0, nb_ = 0, ks_ = 0, ns_ = 0;
  bool panel_ = false;  // narrow int8 plan through kern_.panel_gemm
  // The panel path's unpacked chunks (run_panel): A rows from a_pre_row0_, W panels from w_pre_row0_.
  const uint8_t* a_pre_ = nullptr;
  const uint8_t* w_pre_ = nullptr;
  int64_t a_pre_row0_ = 0, w_pre_row0_ = 0;
  uint32_t gg_ = 1;
  std::vector<int32_t> oaz_, owz_, rs_a_, rs_w_, zeros_;
  const int32_t *rsa_ = nullptr, *rsw_ = nullptr;
  int64_t rsa_group_stride_ = 0, rsw_group_stride_ = 0;
};

// k == 0: every product is empty.
void write_empty(const GemmProblem& p) {
  const int64_t n = p.w.rows;
  std::vector<float> zeros(size_t(n), 0.0f);
  for (int64_t m = 0; m < p.a.rows; ++m) {
    if (!p.scaled) {
      std::fill_n(static_cast<int32_t*>(p.out) + m * p.out_stride, n, 0);
    } else {
      const size_t elem = p.out_dtype == DType::f32 ? 4 : 2;
      store_row_scalar(zeros.data(), p.bias, static_cast<uint8_t*>(p.out) + m * p.out_stride * elem, p.out_dtype, n);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// quantize_pack.

QuantParams quant_params(Format fmt, int bits, float lo, float hi, float* scale_out) {
  QuantParams q;
  q.bits = bits;
  const float levels = float((1 << bits) - 1);
  float scale;
  if (fmt == Format::signed_int) {
    const float absmax = std::max(hi, -lo);
    scale = bits == 1 ? absmax : absmax / float((1 << (bits - 1)) - 1);
    q.qmin = bits == 1 ? -1.0f : -float(1 << (bits - 1));
    q.qmax = bits == 1 ? 0.0f : float((1 << (bits - 1)) - 1);
  } else if (fmt == Format::bipolar) {
    scale = std::max(hi, -lo) / levels;
    q.qmax = levels;
    q.add = levels;
    q.mul = 0.5f;
  } else {
    scale = (hi - lo) / levels;
    q.qmax = levels;
  }
  if (scale == 0.0f) scale = 1.0f;
  q.inv = 1.0f / scale;
  if (fmt == Format::unsigned_int) q.zero = std::min(std::max(round_even(-lo * q.inv), 0.0f), levels);
  *scale_out = scale;
  return q;
}

}  // namespace

void gemm_cpu(const GemmProblem& p, const char* method, int nthreads) {
  if (p.a.rows <= 0 || p.w.rows <= 0) return;
  if (p.k <= 0) return write_empty(p);
  // The output is usually fresh from torch's allocator: its page faults cost as much as a large part
  // of the products otherwise (measured: ~30% of a W1A1 4096^3 call).
  const size_t elem = p.scaled && p.out_dtype != DType::f32 ? 2 : 4;
  advise_huge_pages(p.out, size_t((p.a.rows - 1) * p.out_stride + p.w.rows) * elem);
  GemmRun(p, method, nthreads).run();
}

std::string cpu_kernel_name(int64_t m, int bits_a, int bits_w, const char* method) {
  const CpuKernels& kern = active_kernels();
  return std::string(kern.isa) + (use_popcount(method, m, bits_a, bits_w, kern) ? "-popcount" : "-int8");
}

void quantize_pack_cpu(const QuantizePackProblem& p, int nthreads) {
  const CpuKernels& kern = active_kernels();
  const int64_t words = words_per_row(p.k);
  const int64_t elem = p.dtype == DType::f32 ? 4 : 2;
  auto row = [&](int64_t r) { return static_cast<const uint8_t*>(p.x) + r * p.x_stride * elem; };
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, p.k));

  // Per tensor: one min/max over all rows first (partial results per piece of rows).
  float lo = 0.0f, hi = 0.0f;
  if (p.per_tensor && p.rows > 0) {
    const int64_t blocks = (p.rows + grain - 1) / grain;
    std::vector<float> blo(static_cast<size_t>(blocks)), bhi(static_cast<size_t>(blocks));
    parallel_for(blocks, 1, nthreads, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        float l = 0.0f, h = 0.0f;
        for (int64_t r = i * grain; r < std::min(p.rows, (i + 1) * grain); ++r) {
          float rl, rh;
          kern.minmax(row(r), p.dtype, p.k, &rl, &rh);
          l = std::min(l, rl), h = std::max(h, rh);
        }
        blo[size_t(i)] = l, bhi[size_t(i)] = h;
      }
    });
    lo = *std::min_element(blo.begin(), blo.end());
    hi = *std::max_element(bhi.begin(), bhi.end());
  }
  float tensor_scale = 1.0f;
  const QuantParams tensor_q = quant_params(p.fmt, p.bits, lo, hi, &tensor_scale);
  if (p.per_tensor) p.scales[0] = tensor_scale;

  parallel_for(p.rows, grain, nthreads, [&](int64_t b, int64_t e) {
    uint32_t* plane_rows[kMaxBits];
    for (int64_t r = b; r < e; ++r) {
      QuantParams q = tensor_q;
      if (!p.per_tensor) {
        float rl, rh;
        kern.minmax(row(r), p.dtype, p.k, &rl, &rh);
        q = quant_params(p.fmt, p.bits, rl, rh, &p.scales[r]);
      }
      for (int j = 0; j < p.bits; ++j) plane_rows[j] = p.planes + (j * p.rows + r) * words;
      const uint32_t sum = kern.quantize_row(row(r), p.dtype, p.k, q, plane_rows, words);
      p.rowsum[r] = int32_t(p.fmt == Format::bipolar ? 2 * sum : sum);
      p.offset[r] = p.fmt == Format::unsigned_int ? -int32_t(q.zero) : format_offset(p.fmt, p.bits);
    }
  });
}

}  // namespace bitgemm
}  // namespace fastops
