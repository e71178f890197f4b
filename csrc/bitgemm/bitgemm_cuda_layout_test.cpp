// CPU checks of the CUDA bitgemm kernels' index math (bitgemm_cuda_layout.h) against definitions written
// independently: the PTX ISA fragment layouts of mma.m16n8k256 / m16n8k128 .b1 and of ldmatrix.x4, shared
// memory bank arithmetic, the packed format of bitgemm_format.h and the quantization rules of bitgemm.h.
// Whole CTAs of both GEMM kernels are emulated lane by lane (cp.async stage fill, ldmatrix, MMA from the
// PTX fragment definitions, shuffles, epilogues) with the helpers and compared with int64 references.
#include "bitgemm/bitgemm_cuda_layout_test.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "bitgemm/bitgemm_cuda_layout.h"
#include "bitgemm/bitgemm_format.h"
#include "common/selftest.h"

namespace fastops {
namespace bitgemm {
namespace {

using namespace cuda_layout;

using Checker = SelfTestChecker;

using selftest::str;
const char* fmt_name(Format f) {
  return f == Format::unsigned_int ? "unsigned" : f == Format::signed_int ? "signed" : "bipolar";
}
constexpr Format kFormats[3] = {Format::unsigned_int, Format::signed_int, Format::bipolar};

using selftest::cdiv;
using selftest::gid;
using selftest::popc;
using selftest::RC;
using selftest::tig;

// ---------------------------------------------------------------------------------------------------
// PTX ISA definitions (section "Matrix Fragments for mma.m16n8k256 / mma.m16n8k128", .b1 types):
// groupID = laneid >> 2, threadID_in_group = laneid % 4; fragment element i of a lane is bit i % 32 of
// its register i / 32.
// m16n8k256 A (16 x 256, a0..a127): (row, k).
RC ptx_a256(int lane, int i) {
  const bool plus8 = (i >= 32 && i < 64) || i >= 96;
  return {gid(lane) + (plus8 ? 8 : 0), tig(lane) * 32 + (i & 0x1f) + (i >= 64 ? 128 : 0)};
}
// m16n8k256 B (256 x 8, b0..b63): (k, col).
RC ptx_b256(int lane, int i) { return {tig(lane) * 32 + (i & 0x1f) + (i >= 32 ? 128 : 0), gid(lane)}; }
// C / D (16 x 8, c0..c3) of both shapes.
RC ptx_c(int lane, int i) { return {gid(lane) + (i >= 2 ? 8 : 0), tig(lane) * 2 + (i & 1)}; }
// m16n8k128 A (16 x 128, a0..a63) and B (128 x 8, b0..b31).
RC ptx_a128(int lane, int i) { return {gid(lane) + (i >= 32 ? 8 : 0), tig(lane) * 32 + (i & 0x1f)}; }
RC ptx_b128(int lane, int i) { return {tig(lane) * 32 + i, gid(lane)}; }

using RegsA = std::array<std::array<uint32_t, 4>, 32>;  // [lane][reg]
using RegsB = std::array<std::array<uint32_t, 2>, 32>;
using RegsC = std::array<std::array<uint32_t, 4>, 32>;
using Lanes = std::array<uint32_t, 32>;

// Warp-level mma.m16n8k256 .and.popc from the PTX definition: matrices rebuilt from the registers
// (a register is 32 consecutive k, LSB first: check_mma_fragments verifies that reading of the table).
void mma256_emul(RegsC& d, const RegsA& a, const RegsB& b, bool accumulate) {
  uint32_t am[16][8] = {}, bm[8][8] = {};
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r) {
      const RC e = ptx_a256(lane, 32 * r);
      am[e.row][e.col / 32] = a[lane][r];
    }
    for (int r = 0; r < 2; ++r) {
      const RC e = ptx_b256(lane, 32 * r);
      bm[e.col][e.row / 32] = b[lane][r];
    }
  }
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      const RC e = ptx_c(lane, i);
      uint32_t s = 0;
      for (int w = 0; w < 8; ++w) s += uint32_t(popc(am[e.row][w] & bm[e.col][w]));
      d[lane][i] = (accumulate ? d[lane][i] : 0u) + s;
    }
}
// Warp-level mma.m16n8k128 .and.popc: A registers a0, a1, B register b0 of every lane.
void mma128_emul(RegsC& d, const Lanes& a0, const Lanes& a1, const Lanes& b0, bool accumulate) {
  uint32_t am[16][4] = {}, bm[8][4] = {};
  for (int lane = 0; lane < 32; ++lane) {
    const RC e0 = ptx_a128(lane, 0), e1 = ptx_a128(lane, 32), eb = ptx_b128(lane, 0);
    am[e0.row][e0.col / 32] = a0[lane];
    am[e1.row][e1.col / 32] = a1[lane];
    bm[eb.col][eb.row / 32] = b0[lane];
  }
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      const RC e = ptx_c(lane, i);
      uint32_t s = 0;
      for (int w = 0; w < 4; ++w) s += uint32_t(popc(am[e.row][w] & bm[e.col][w]));
      d[lane][i] = (accumulate ? d[lane][i] : 0u) + s;
    }
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16 (PTX ISA): lanes 8j .. 8j+7 supply the addresses of rows 0..7
// of matrix j (16 bytes each); lane l receives in register j the two b16 elements 2(l%4), 2(l%4)+1 of row
// l/4 of matrix j, i.e. the 32-bit word l%4 of that row.
bool ldsm_x4_emul(const std::vector<uint8_t>& smem, const uint32_t addr[32], RegsA& out) {
  for (int lane = 0; lane < 32; ++lane)
    if (addr[lane] % 16 != 0 || size_t(addr[lane]) + 16 > smem.size()) return false;
  for (int lane = 0; lane < 32; ++lane)
    for (int j = 0; j < 4; ++j) std::memcpy(&out[lane][j], &smem[addr[8 * j + lane / 4] + 4 * (lane % 4)], 4);
  return true;
}

// Shared memory: 32 banks of 4 bytes; a 16-byte access covers a group of 4 banks, (byte / 16) % 8.
int bank_of(uint32_t byte) { return int((byte >> 2) & 31u); }
int bank_group(uint32_t byte) { return int((byte >> 4) & 7u); }
// A phase of eight 16-byte accesses is conflict-free iff they hit 8 distinct bank groups.
bool distinct_groups(const uint32_t* addr, int n) {
  std::set<int> g;
  for (int i = 0; i < n; ++i) g.insert(bank_group(addr[i]));
  return int(g.size()) == n;
}
bool ldsm_conflict_free(const uint32_t addr[32]) {
  bool ok = true;
  for (int j = 0; j < 4; ++j) ok &= distinct_groups(addr + 8 * j, 8);
  return ok;
}

// ---------------------------------------------------------------------------------------------------
// A packed operand written straight from bitgemm_format.h.
struct Packed {
  Format fmt = Format::unsigned_int;
  int bits = 1;
  int64_t rows = 0, k = 0, wpr = 0;
  std::vector<int32_t> value;    // X[r][c], c < k
  std::vector<uint32_t> planes;  // [bits][rows][wpr]
  std::vector<int32_t> offset, rowsum;
};
// Coefficient of plane i, from the format description (not from plane_coeff).
int32_t doc_coeff(Format fmt, int bits, int i) {
  if (fmt == Format::bipolar) return int32_t(1) << (i + 1);
  if (fmt == Format::signed_int && i == bits - 1) return -(int32_t(1) << i);
  return int32_t(1) << i;
}
Packed make_packed(Format fmt, int bits, int64_t rows, int64_t k, std::mt19937& rng) {
  Packed p;
  p.fmt = fmt;
  p.bits = bits;
  p.rows = rows;
  p.k = k;
  p.wpr = (k + 255) / 256 * 8;  // k padded to 256 bits, 32-bit words
  p.value.assign(size_t(rows * k), 0);
  p.planes.assign(size_t(bits * rows * p.wpr), 0u);
  p.offset.assign(size_t(rows), 0);
  p.rowsum.assign(size_t(rows), 0);
  const uint32_t qmax = (1u << bits) - 1;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t zero = (fmt == Format::unsigned_int && rng() % 3 != 0) ? int32_t(rng() % (qmax + 1)) : 0;
    const int32_t off = fmt == Format::unsigned_int ? -zero : fmt == Format::bipolar ? -int32_t(qmax) : 0;
    int64_t rs = 0;
    for (int64_t c = 0; c < k; ++c) {
      const uint32_t pick = rng() % 8;
      const uint32_t code = pick == 0 ? qmax : pick == 1 ? 0u : uint32_t(rng() % (qmax + 1));  // the plane bits
      int32_t x;
      if (fmt == Format::unsigned_int)
        x = int32_t(code) - zero;
      else if (fmt == Format::bipolar)
        x = 2 * int32_t(code) - int32_t(qmax);
      else
        x = code >> (bits - 1) ? int32_t(code) - (int32_t(1) << bits) : int32_t(code);  // two's complement
      p.value[size_t(r * k + c)] = x;
      rs += x - off;
      for (int i = 0; i < bits; ++i)
        if ((code >> i) & 1u) p.planes[size_t((i * rows + r) * p.wpr + c / 32)] |= 1u << (c % 32);
    }
    p.offset[size_t(r)] = off;
    p.rowsum[size_t(r)] = int32_t(rs);
  }
  return p;
}
int64_t ref_dot(const Packed& x, int64_t xr, const Packed& y, int64_t yr, int64_t c0, int64_t c1) {
  int64_t s = 0;
  for (int64_t c = c0; c < c1; ++c) s += int64_t(x.value[size_t(xr * x.k + c)]) * y.value[size_t(yr * y.k + c)];
  return s;
}

// Single-rounding fp32 reference operations (volatile: never contracted into an FMA).
float mul1(float a, float b) {
  volatile float r = a * b;
  return r;
}
float add1(float a, float b) {
  volatile float r = a + b;
  return r;
}
float sub1(float a, float b) {
  volatile float r = a - b;
  return r;
}
float div1(float a, float b) {
  volatile float r = a / b;
  return r;
}
// Round half to even, exact for every float.
double round_half_even(double v) {
  const double f = std::floor(v), d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return std::fmod(f, 2.0) == 0.0 ? f : f + 1;
}
// acc + (sx * sy) * float(c), each operation rounded once.
float ref_accumulate(float acc, float sx, float sy, int32_t c) {
  return add1(acc, mul1(mul1(sx, sy), static_cast<float>(c)));
}
bool same_float(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

// ---------------------------------------------------------------------------------------------------
void check_mma_fragments(Checker& ck) {
  // The table reading used by the emulators: register r of a lane is 32 consecutive k, LSB first.
  bool words = true;
  for (int lane = 0; lane < 32; ++lane)
    for (int b = 0; b < 32; ++b) {
      for (int r = 0; r < 4; ++r) {
        const RC e = ptx_a256(lane, 32 * r + b), e0 = ptx_a256(lane, 32 * r);
        words &= e.row == e0.row && e.col == e0.col + b && e0.col % 32 == 0;
      }
      for (int r = 0; r < 2; ++r) {
        const RC e = ptx_b256(lane, 32 * r + b), e0 = ptx_b256(lane, 32 * r);
        words &= e.col == e0.col && e.row == e0.row + b && e0.row % 32 == 0;
        const RC f = ptx_a128(lane, 32 * r + b), f0 = ptx_a128(lane, 32 * r);
        words &= f.row == f0.row && f.col == f0.col + b && f0.col % 32 == 0;
      }
      const RC g = ptx_b128(lane, b), g0 = ptx_b128(lane, 0);
      words &= g.col == g0.col && g.row == g0.row + b && g0.row % 32 == 0;
    }
  ck.expect(words, "PTX .b1 fragment registers hold 32 consecutive k (one packed word)");

  std::vector<int> a_hits(16 * 256, 0), b_hits(256 * 8, 0), c_hits(16 * 8, 0);
  bool a_ok = true, b_ok = true, c_ok = true;
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r)
      for (int b = 0; b < 32; ++b) {
        const RC e = ptx_a256(lane, 32 * r + b);
        a_ok &= frag_a_row(lane, r) == e.row && 32 * frag_a_word(lane, r) + b == e.col;
        ++a_hits[size_t(e.row * 256 + e.col)];
      }
    for (int r = 0; r < 2; ++r)
      for (int b = 0; b < 32; ++b) {
        const RC e = ptx_b256(lane, 32 * r + b);
        b_ok &= frag_b_col(lane) == e.col && 32 * frag_b_word(lane, r) + b == e.row;
        ++b_hits[size_t(e.row * 8 + e.col)];
      }
    for (int i = 0; i < 4; ++i) {
      const RC e = ptx_c(lane, i);
      c_ok &= frag_c_row(lane, i) == e.row && frag_c_col(lane, i) == e.col;
      ++c_hits[size_t(e.row * 8 + e.col)];
    }
  }
  auto once = [](const std::vector<int>& h) { return std::all_of(h.begin(), h.end(), [](int v) { return v == 1; }); };
  ck.expect(a_ok, "frag_a_row / frag_a_word match the PTX m16n8k256 .b1 A fragment");
  ck.expect(b_ok, "frag_b_col / frag_b_word match the PTX m16n8k256 .b1 B fragment");
  ck.expect(c_ok, "frag_c_row / frag_c_col match the PTX m16n8 s32 C fragment");
  ck.expect(once(a_hits), "A fragment: each (row, k) of 16 x 256 owned by exactly one (lane, reg, bit)");
  ck.expect(once(b_hits), "B fragment: each (k, col) of 256 x 8 owned by exactly one (lane, reg, bit)");
  ck.expect(once(c_hits), "C fragment: each (row, col) of 16 x 8 owned by exactly one (lane, elem)");

  // k-half h of a k256 step as an m16n8k128 MMA.
  bool half_ok = true;
  std::vector<int> a_regs(4, 0), b_regs(2, 0);
  for (int h = 0; h < 2; ++h) {
    for (int r = 0; r < 2; ++r) {
      const int reg = half_a_reg(h, r);
      half_ok &= reg >= 0 && reg < 4;
      if (reg < 0 || reg >= 4) continue;
      ++a_regs[size_t(reg)];
      for (int lane = 0; lane < 32; ++lane)
        for (int b = 0; b < 32; ++b) {
          const RC e128 = ptx_a128(lane, 32 * r + b), e256 = ptx_a256(lane, 32 * reg + b);
          half_ok &= e256.row == e128.row && e256.col == 128 * h + e128.col;
        }
    }
    const int reg = half_b_reg(h);
    half_ok &= reg >= 0 && reg < 2;
    if (reg < 0 || reg >= 2) continue;
    ++b_regs[size_t(reg)];
    for (int lane = 0; lane < 32; ++lane)
      for (int b = 0; b < 32; ++b) {
        const RC e128 = ptx_b128(lane, b), e256 = ptx_b256(lane, 32 * reg + b);
        half_ok &= e256.col == e128.col && e256.row == 128 * h + e128.row;
      }
  }
  ck.expect(half_ok && once(a_regs) && once(b_regs),
            "half_a_reg / half_b_reg: k-half h of the k256 fragments is the PTX m16n8k128 fragment");

  // The kernel's row-sum popcounts: A regs r and 2 + r are row groupID + 8 r, B regs 0 and 1 column
  // groupID, and a quad's registers cover the 8 words of its rows / column once.
  bool popc_ok = true;
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 2; ++r)
      popc_ok &= ptx_a256(lane, 32 * r).row == gid(lane) + 8 * r && ptx_a256(lane, 32 * (2 + r)).row == gid(lane) + 8 * r;
    popc_ok &= ptx_b256(lane, 0).col == gid(lane) && ptx_b256(lane, 32).col == gid(lane);
  }
  for (int q = 0; q < 8; ++q) {
    std::set<int> aw, bw;
    for (int l = 4 * q; l < 4 * q + 4; ++l) {
      aw.insert(ptx_a256(l, 0).col / 32), aw.insert(ptx_a256(l, 64).col / 32);
      bw.insert(ptx_b256(l, 0).row / 32), bw.insert(ptx_b256(l, 32).row / 32);
    }
    popc_ok &= aw.size() == 8 && bw.size() == 8;
  }
  ck.expect(popc_ok, "row-sum popcounts: registers {r, 2+r} are one A row, a quad covers all 8 words");
  bool src_ok = true;
  for (int col = 0; col < 8; ++col) {
    const int src = rowsum_src_lane(col);
    src_ok &= src >= 0 && src < 32 && gid(src) == col && ptx_b256(src, 0).col == col;
  }
  ck.expect(src_ok, "rowsum_src_lane(col) is a lane of the quad holding B column col");
}

// Every ldmatrix.x4 of the kernels, emulated from the PTX definition on a tagged stage: the registers
// received are the MMA fragments of k step ks.
void check_ldmatrix(Checker& ck) {
  const int rows = 256;
  std::vector<uint8_t> smem(size_t(rows) * kRowBytes, 0xEE);
  auto tag = [](int row, int word) { return 0x9E370000u ^ uint32_t(row * 16 + word); };
  for (int row = 0; row < rows; ++row)
    for (int ch = 0; ch < 4; ++ch)
      for (int w = 0; w < 4; ++w) {
        const uint32_t v = tag(row, 4 * ch + w);  // 16-byte chunk ch of a 64-byte row = words 4ch .. 4ch + 3
        std::memcpy(&smem[smem_chunk_offset(row, ch) + 4 * w], &v, 4);
      }
  bool a_ok = true, b_ok = true, a_banks = true, b_banks = true;
  for (int base = 0; base + 16 <= rows; base += 16)
    for (int ks = 0; ks < kStageSteps; ++ks) {
      uint32_t addr[32];
      RegsA out{};
      for (int lane = 0; lane < 32; ++lane) addr[lane] = smem_chunk_offset(base + ldsm_a_row(lane), ldsm_a_chunk(lane, ks));
      a_banks &= ldsm_conflict_free(addr);
      if (!ldsm_x4_emul(smem, addr, out)) {
        a_ok = false;
        continue;
      }
      for (int lane = 0; lane < 32; ++lane)
        for (int r = 0; r < 4; ++r) {
          const RC e = ptx_a256(lane, 32 * r);
          a_ok &= out[lane][r] == tag(base + e.row, kStepWords * ks + e.col / 32);
        }
      for (int lane = 0; lane < 32; ++lane) addr[lane] = smem_chunk_offset(base + ldsm_b_row(lane), ldsm_b_chunk(lane, ks));
      b_banks &= ldsm_conflict_free(addr);
      if (!ldsm_x4_emul(smem, addr, out)) {
        b_ok = false;
        continue;
      }
      // Register j: n8 tile j / 2, B register j % 2 (how the kernels unpack the x4 result).
      for (int lane = 0; lane < 32; ++lane)
        for (int j = 0; j < 4; ++j) {
          const RC e = ptx_b256(lane, 32 * (j % 2));
          b_ok &= out[lane][j] == tag(base + 8 * (j / 2) + e.col, kStepWords * ks + e.row / 32);
        }
    }
  ck.expect(a_ok, "ldmatrix.x4 with ldsm_a_row / ldsm_a_chunk yields the m16n8k256 A fragment of step ks");
  ck.expect(b_ok, "ldmatrix.x4 with ldsm_b_row / ldsm_b_chunk yields the B fragments of two n8 tiles");
  ck.expect(a_banks && b_banks, "each ldmatrix phase (8 rows of one matrix) hits 8 distinct bank groups");
}

// Stage constants, the chunk split of cp.async and the XOR swizzle.
void check_stage_layout(Checker& ck) {
  ck.expect(kStepBits == 32 * kStepWords && kStepBits == kPadBits && 2 * kHalfBits == kStepBits,
            "a k step is 8 words = 256 bits = the padding unit of the format");
  ck.expect(kStageWords == kStageSteps * kStepWords && kRowBytes == 4 * kStageWords && kChunkBytes == 16 &&
                kChunksPerRow * kChunkBytes == kRowBytes,
            "stage row = kStageSteps k steps = 4 chunks of 16 bytes");
  bool steps_ok = true;
  for (int64_t k = 0; k <= 5000; ++k)
    steps_ok &= k_steps(k) == (k + 255) / 256 && words_per_row(k) == k_steps(k) * kStepWords;
  ck.expect(steps_ok, "k_steps(k) = ceil(k / 256) and rows hold whole k steps");

  bool chunk_ok = true;
  for (int ch = 0; ch < kChunksPerRow; ++ch)
    for (int w = 0; w < 4; ++w) chunk_ok &= chunk_word(ch) == 4 * ch && chunk_step(ch) == (4 * ch + w) / kStepWords;
  ck.expect(chunk_ok, "chunk_word / chunk_step: chunk ch holds stage words 4ch .. 4ch + 3, inside one k step");

  const int max_rows = 8 * 128 + 8 * 16;  // largest stage of any kernel configuration
  bool copy_ok = true;
  for (int c = 0; c < max_rows * kChunksPerRow; ++c)
    copy_ok &= copy_chunk(c) >= 0 && copy_chunk(c) < kChunksPerRow && c == kChunksPerRow * copy_row(c) + copy_chunk(c);
  ck.expect(copy_ok, "copy_row / copy_chunk number the stage chunks row-major, 4 per row");

  bool perm_ok = true, ldsm_ok = true, cp_ok = true;
  for (int row = 0; row < max_rows; ++row) {
    std::set<uint32_t> offs;
    for (int ch = 0; ch < kChunksPerRow; ++ch) offs.insert(smem_chunk_offset(row, ch));
    std::set<uint32_t> want;
    for (int q = 0; q < kChunksPerRow; ++q) want.insert(uint32_t(row * kRowBytes + q * kChunkBytes));
    perm_ok &= offs == want;
  }
  for (int r0 = 0; r0 < max_rows; r0 += 8)
    for (int ch = 0; ch < kChunksPerRow; ++ch) {
      uint32_t a[8];
      for (int i = 0; i < 8; ++i) a[i] = smem_chunk_offset(r0 + i, ch);
      ldsm_ok &= distinct_groups(a, 8);
    }
  // cp.async: thread tid copies chunks tid + i * 128 (both kernels run 128 threads), so a phase of 8 lanes
  // stores 8 consecutive chunks starting at a multiple of 8.
  const int threads = 128;
  ck.expect(stacked::kThreads == threads, "stacked kernel runs 128 threads");
  for (int warp = 0; warp < threads / 32; ++warp)
    for (int i = 0; i * threads < max_rows * kChunksPerRow; ++i)
      for (int phase = 0; phase < 4; ++phase) {
        uint32_t a[8];
        for (int l = 0; l < 8; ++l) {
          const int c = 32 * warp + 8 * phase + l + i * threads;
          a[l] = smem_chunk_offset(copy_row(c), copy_chunk(c));
        }
        cp_ok &= distinct_groups(a, 8);
      }
  ck.expect(perm_ok, "smem_chunk_offset permutes the 4 chunks within each 64-byte row (bijective, 16-byte aligned)");
  ck.expect(ldsm_ok, "swizzle: the 8 rows of any aligned 8-row group hit 8 distinct bank groups per chunk");
  ck.expect(cp_ok, "swizzle: each 8-lane phase of 16-byte cp.async stores hits 8 distinct bank groups");
  bool bank_ok = true;
  for (uint32_t b = 0; b < 1u << 16; b += 4) bank_ok &= smem_bank(b) == bank_of(b) && smem_bank(b + 3) == bank_of(b);
  ck.expect(bank_ok, "smem_bank: 32 banks of 4 bytes");

  // Stage bases keep the bank alignment: stacked stages follow the row table; planes stages are packed.
  ck.expect(stacked::kRowTableBytes % 128 == 0 && stacked::kStageBytes % 128 == 0 &&
                stacked::kStageBytes == stacked::kStageRows * kRowBytes && stacked::kRowTableBytes == stacked::kStageRows * 8,
            "stacked stage bases are 128-byte aligned");
  ck.expect(stacked::kChunksPerThread * stacked::kThreads == stacked::kStageRows * kChunksPerRow,
            "stacked cp.async: 8 chunks per thread cover the 256 x 4 chunks of a stage once");
  bool base_ok = true;
  for (int bx = 1; bx <= kMaxBits; ++bx)
    for (int by = 1; by <= kMaxBits; ++by)
      for (auto cfg : {std::pair<int, int>{64, 64}, {128, 16}})
        base_ok &= planes_stage_rows(bx, by, cfg.first, cfg.second) * kRowBytes % 128 == 0;
  ck.expect(base_ok, "planes stage sizes keep every stage slot 128-byte aligned");
}

void check_coefficients(Checker& ck) {
  bool ok = true, first = true;
  for (Format f : kFormats)
    for (int bits = 1; bits <= kMaxBits; ++bits) {
      first &= plane_ratio(f, bits, 0) == 1;
      for (int i = 0; i < bits; ++i)
        ok &= plane_coeff(f, bits, i) == doc_coeff(f, bits, i) &&
              base_coeff(f, bits) * plane_ratio(f, bits, i) == doc_coeff(f, bits, i);
    }
  ck.expect(ok, "base_coeff * plane_ratio equals the format's plane coefficient (all formats, bits 1..8)");
  ck.expect(first, "plane_ratio of plane 0 is 1 (the (0,0) pair accumulates in the MMA)");
}

// corrected_value + the kernels' recombination vs int64 references from the format formula.
void check_corrected_value(Checker& ck, std::mt19937& rng) {
  for (Format fa : kFormats)
    for (Format fw : kFormats)
      for (int ba = 1; ba <= kMaxBits; ++ba)
        for (int bw = 1; bw <= kMaxBits; ++bw) {
          const int64_t k = 1 + int64_t(rng() % 600);
          const Packed A = make_packed(fa, ba, 3, k, rng), W = make_packed(fw, bw, 3, k, rng);
          bool formula = true, ok = true;
          const uint32_t base = uint32_t(base_coeff(fa, ba) * base_coeff(fw, bw));
          for (int64_t m = 0; m < A.rows; ++m)
            for (int64_t n = 0; n < W.rows; ++n) {
              int64_t sum64 = 0;
              uint32_t ratio_sum = 0;
              for (int i = 0; i < ba; ++i)
                for (int j = 0; j < bw; ++j) {
                  int64_t p = 0;
                  for (int64_t w = 0; w < A.wpr; ++w)
                    p += popc(A.planes[size_t((i * A.rows + m) * A.wpr + w)] & W.planes[size_t((j * W.rows + n) * W.wpr + w)]);
                  sum64 += int64_t(doc_coeff(fa, ba, i)) * doc_coeff(fw, bw, j) * p;
                  ratio_sum += uint32_t(plane_ratio(fa, ba, i)) * uint32_t(plane_ratio(fw, bw, j)) * uint32_t(p);
                }
              const int64_t oa = A.offset[size_t(m)], ow = W.offset[size_t(n)];
              const int64_t ref = sum64 + ow * A.rowsum[size_t(m)] + oa * W.rowsum[size_t(n)] + k * oa * ow;
              const int64_t direct = ref_dot(A, m, W, n, 0, k);
              formula &= ref == direct;
              ok &= corrected_value(base * ratio_sum, int32_t(oa), int32_t(ow), A.rowsum[size_t(m)], W.rowsum[size_t(n)], k) ==
                    direct;
            }
          const std::string where = std::string(" (") + fmt_name(fa) + str(ba) + " x " + fmt_name(fw) + str(bw) +
                                    ", k=" + str(k) + ")";
          ck.expect(formula, "test packer: format formula equals the direct dot product" + where);
          ck.expect(ok, "corrected_value(base * sum ratio_i ratio_j P_ij) equals the int64 product" + where);
        }
  // Wrapping: any operands whose true result fits in int32 come out exact.
  bool wrap_ok = true;
  for (int rep = 0; rep < 20000; ++rep) {
    const int32_t ox = -int32_t(rng() % 256), oy = rep % 2 ? -255 : -int32_t(rng() % 256);
    const int32_t rsx = int32_t(rng()), rsy = int32_t(rng());
    const int64_t cols = int64_t(rng() % (1u << 24));
    const int32_t target = int32_t(rng());
    const int64_t rest = int64_t(oy) * rsx + int64_t(ox) * rsy + cols * ox * oy;
    const uint32_t combined = uint32_t(uint64_t(int64_t(target) - rest));
    wrap_ok &= corrected_value(combined, ox, oy, rsx, rsy, cols) == target;
  }
  ck.expect(wrap_ok, "corrected_value is exact in wrapping 32-bit arithmetic");
}

void check_fp_primitives(Checker& ck, std::mt19937& rng) {
  bool rint_ok = true;
  for (int n = -40; n <= 40; ++n) {
    const float v = float(n) * 0.5f;
    rint_ok &= rint_i32(v) == int32_t(round_half_even(v));
    rint_ok &= rint_i32(v + 0.25f) == int32_t(round_half_even(v + 0.25f));
  }
  ck.expect(rint_ok, "rint_i32 rounds half to even");
  const float nan = std::numeric_limits<float>::quiet_NaN();
  ck.expect(fmax_nan_loses(nan, 2.f) == 2.f && fmax_nan_loses(2.f, nan) == 2.f && fmin_nan_loses(nan, -1.f) == -1.f &&
                fmin_nan_loses(-1.f, nan) == -1.f && fmax_nan_loses(1.f, 3.f) == 3.f && fmin_nan_loses(1.f, 3.f) == 1.f,
            "fmax / fmin: a NaN operand loses");
  std::uniform_real_distribution<float> u(-4.f, 4.f);
  bool acc_ok = true, ops_ok = true;
  for (int rep = 0; rep < 20000; ++rep) {
    const float acc = u(rng) * 1000.f, sx = u(rng), sy = u(rng) * 1e-3f;
    const int32_t c = int32_t(rng()) >> (rng() % 31);
    acc_ok &= same_float(accumulate_scaled(acc, sx, sy, c), ref_accumulate(acc, sx, sy, c));
    const float a = u(rng), b = u(rng) + 5.f;
    ops_ok &= same_float(fmul_rn(a, b), mul1(a, b)) && same_float(fadd_rn(a, b), add1(a, b)) &&
              same_float(fsub_rn(a, b), sub1(a, b)) && same_float(fdiv_rn(a, b), div1(a, b)) &&
              same_float(i32_to_f32(c), static_cast<float>(c));
  }
  ck.expect(acc_ok, "accumulate_scaled = acc + (sx * sy) * float(C), each op rounded once");
  ck.expect(ops_ok, "fmul_rn / fadd_rn / fsub_rn / fdiv_rn / i32_to_f32 round once");
}

// The K-group schedule of the plane-loop kernel, emulated for every split: each half k step is folded
// into the group flushed after it, every group < groups is flushed exactly once with all its halves, and
// flushes of groups >= groups only drop padding.
void check_groups(Checker& ck) {
  ck.expect(group_cols(0, 128, 0) == 0, "group_cols of an empty k is 0");
  for (int64_t gs : {128, 256, 384, 512, 640, 768, 1024, 1152, 2048, 3200}) {
    const int64_t lcm = std::lcm(gs, int64_t(kStepBits));
    ck.expect(group_unit_steps(gs) * kStepBits == lcm, "group_unit_steps(" + str(gs) + ") = lcm(gs, 256) / 256");
    for (int64_t k = 1; k <= 4200; k += (k < 700 ? 1 : 37)) {
      const int64_t groups = cdiv(k, gs), nsteps = k_steps(k), unit = group_unit_steps(gs);
      bool cols_ok = true;
      for (int64_t g = 0; g < groups + 3; ++g)
        cols_ok &= group_cols(g, gs, k) == (g < groups ? std::min(gs, k - g * gs) : 0);
      bool sched_ok = true;
      for (int64_t want : {1, 2, 3, 7, 1000}) {
        const SplitK sk = make_split_k(cdiv(nsteps, unit), want, 65535);
        std::vector<int> flushed(size_t(groups), 0), half_seen(size_t(2 * nsteps), 0);
        for (int64_t sp = 0; sp < sk.splits; ++sp) {
          const int64_t s0 = split_step_begin(sk, sp, unit, nsteps), s1 = split_step_end(sk, sp, unit, nsteps);
          std::vector<int64_t> pending;  // half indices 2 step + h folded since the last flush
          auto flush = [&](int64_t g) {
            for (int64_t hh : pending) {
              const int64_t bit = 128 * hh;
              sched_ok &= bit / gs == g && (bit + 127) / gs == g;  // the half lies inside group g
              if (g >= groups) sched_ok &= bit >= k;               // dropped halves hold padding only
              ++half_seen[size_t(hh)];
            }
            if (g < groups) ++flushed[size_t(g)];
            pending.clear();
          };
          for (int64_t step = s0; step < s1; ++step) {
            const StepGroups sg = step_groups(step, s1, gs);
            sched_ok &= sg.g0 == (step * 256) / gs && sg.g1 == (step * 256 + 128) / gs;
            if (sg.split_mid) {
              pending.push_back(2 * step);
              flush(sg.g0);
              pending.push_back(2 * step + 1);
            } else {
              pending.push_back(2 * step);
              pending.push_back(2 * step + 1);
            }
            if (sg.flush_end) flush(sg.g1);
          }
          sched_ok &= pending.empty();  // everything flushed at the end of the split
        }
        for (int f : flushed) sched_ok &= f == 1;
        for (int h : half_seen) sched_ok &= h == 1;
      }
      ck.expect(cols_ok, "group_cols (gs=" + str(gs) + ", k=" + str(k) + ")");
      ck.expect(sched_ok, "step_groups schedule flushes every group once with exactly its halves (gs=" + str(gs) +
                              ", k=" + str(k) + ")");
    }
  }
}

void check_split_k(Checker& ck) {
  SplitK empty = make_split_k(0, 5, 10);
  ck.expect(empty.splits == 1 && empty.per_split >= 1, "split-K of zero units is one split");
  for (int64_t units = 1; units <= 200; ++units)
    for (int64_t unit : {1, 2, 3, 5})
      for (int64_t nsteps : {(units - 1) * unit + 1, units * unit})
        for (int64_t want : {0, 1, 2, 3, 7, 19, 64, 1000})
          for (int64_t cap : {int64_t(1), int64_t(4), int64_t(16), int64_t(65535)}) {
            const SplitK s = make_split_k(units, want, cap);
            bool ok = s.splits >= 1 && s.splits <= std::max<int64_t>(1, std::min(want, cap)) && s.per_split >= 1;
            int64_t next = 0;
            for (int64_t i = 0; i < s.splits && ok; ++i) {
              const int64_t b = split_step_begin(s, i, unit, nsteps), e = split_step_end(s, i, unit, nsteps);
              ok = b == next && e > b && b % unit == 0 && (e == nsteps || e % unit == 0);
              next = e;
            }
            ck.expect(ok && next == nsteps, "split-K covers k steps [0, " + str(nsteps) + ") in order, once (units=" +
                                                str(units) + " unit=" + str(unit) + " want=" + str(want) +
                                                " cap=" + str(cap) + ")");
          }
}

void check_tiles(Checker& ck) {
  std::vector<std::pair<int64_t, int64_t>> grids;
  for (int64_t x = 1; x <= 20; ++x)
    for (int64_t y = 1; y <= 20; ++y) grids.push_back({x, y});
  for (auto g : {std::pair<int64_t, int64_t>{100, 3}, {3, 100}, {65, 70}, {8, 1}, {9, 1}, {1, 300}, {257, 2}})
    grids.push_back(g);
  for (auto g : grids) {
    const int64_t tx = g.first, ty = g.second;
    std::vector<int> hits(size_t(tx * ty), 0);
    bool ok = true;
    for (int64_t id = 0; id < tx * ty; ++id) {
      const TileXY t = tile_coords(id, tx, ty);
      const bool in = t.x >= 0 && t.x < tx && t.y >= 0 && t.y < ty;
      ok &= in && t.x / kRasterBand == id / (kRasterBand * ty);  // ids of band b stay in x tiles [8b, 8b + 8)
      if (in) ++hits[size_t(t.x * ty + t.y)];
    }
    for (int h : hits) ok &= h == 1;
    ck.expect(ok, "tile_coords is a bijection onto the " + str(tx) + " x " + str(ty) + " grid, banded by 8 x tiles");
  }
}

void check_stacked_layout(Checker& ck) {
  using namespace stacked;
  ck.expect(kWarpsX * kWarpRows == kStack && kWarpsY * kWarpRows == kStack && kMT * 16 == kWarpRows &&
                kNT * 8 == kWarpRows && kStageRows == 2 * kStack && kEpiBytes == kStack * kEpiStride * 4 &&
                kEpiStride >= kStack && kEpiStride % 4 == 0,
            "stacked kernel constants: 2 x 2 warps of 64 x 64 stacked, epilogue rows 16-byte aligned");
  bool rows_ok = true, stack_ok = true;
  for (int bits = 1; bits <= kMaxBits; ++bits) {
    const int rx = stacked_rows_x(bits), ry = stacked_rows_y(bits);
    rows_ok &= rx >= 1 && rx * bits <= kStack && (rx + 1) * bits > kStack;
    rows_ok &= ry >= 4 && ry % 4 == 0 && ry * bits <= kStack && (ry + 4) * bits > kStack;
    for (int rpp : {rx, ry})
      for (int local = 0; local < kStack; ++local) {
        const StackedRow s = unstack(local, rpp);
        // Plane-major stacking: local = plane * rows_per_plane + row.
        stack_ok &= s.row >= 0 && s.row < rpp && s.plane * rpp + s.row == local && stack_row(s.plane, s.row, rpp) == local;
        stack_ok &= (s.plane < bits) == (local < bits * rpp);
      }
  }
  ck.expect(rows_ok, "stacked_rows_x / _y: the most real rows per plane that fit 128 (Y a multiple of 4)");
  ck.expect(stack_ok, "unstack / stack_row: plane-major stacked rows, unused rows have plane >= bits");

  std::vector<int> hits(kStack * kStack, 0);
  bool acc_ok = true, pair_ok = true, epi_ok = true, sts_ok = true;
  for (int warp = 0; warp < kThreads / 32; ++warp)
    for (int mt = 0; mt < kMT; ++mt)
      for (int nt = 0; nt < kNT; ++nt) {
        for (int lane = 0; lane < 32; ++lane)
          for (int e = 0; e < 4; ++e) {
            const RC c = ptx_c(lane, e);
            const int r = stacked_acc_row(warp, mt, lane, e), col = stacked_acc_col(warp, nt, lane, e);
            // The accumulator's rows are the A rows loaded for tile mt, its columns the B rows of tile nt.
            acc_ok &= r == stacked_x_tile_row(warp, mt) + c.row &&
                      col == stacked_y_tile_row(warp, nt / 2) - kStack + 8 * (nt % 2) + c.col;
            acc_ok &= r >= 0 && r < kStack && col >= 0 && col < kStack;
            if (r >= 0 && r < kStack && col >= 0 && col < kStack) {
              ++hits[size_t(r * kStack + col)];
              epi_ok &= epi_word(r, col) == r * kEpiStride + col;
            }
          }
        // uint2 stores of (acc[2h], acc[2h+1]): same row, adjacent columns, 8-byte aligned; each half warp
        // (one store phase, 128 bytes) hits 32 distinct banks.
        for (int h = 0; h < 2; ++h)
          for (int half = 0; half < 2; ++half) {
            std::set<int> banks;
            for (int lane = 16 * half; lane < 16 * half + 16; ++lane) {
              const int r = stacked_acc_row(warp, mt, lane, 2 * h), c = stacked_acc_col(warp, nt, lane, 2 * h);
              pair_ok &= stacked_acc_row(warp, mt, lane, 2 * h + 1) == r && stacked_acc_col(warp, nt, lane, 2 * h + 1) == c + 1;
              const int w = epi_word(r, c);
              pair_ok &= w % 2 == 0;
              banks.insert(bank_of(uint32_t(4 * w)));
              banks.insert(bank_of(uint32_t(4 * (w + 1))));
            }
            sts_ok &= banks.size() == 32;
          }
      }
  for (int h : hits) acc_ok &= h == 1;
  ck.expect(acc_ok, "stacked accumulators: each of 128 x 128 stacked outputs owned once, at the loaded rows");
  ck.expect(pair_ok && epi_ok, "epilogue uint2 stores: adjacent columns of one row, 8-byte aligned");
  ck.expect(sts_ok, "epilogue uint2 stores are bank-conflict-free (kEpiStride)");
  ck.expect(epi_word(kStack - 1, kStack - 1) < kEpiBytes / 4, "epilogue buffer holds every stacked output");

  // Recovery: items -> (row, 4-column group) once; the uint4 reads are aligned and stay in one plane.
  bool rec_ok = true;
  for (int bx = 1; bx <= kMaxBits; ++bx)
    for (int by = 1; by <= kMaxBits; ++by) {
      const int rpx = stacked_rows_x(bx), rpy = stacked_rows_y(by);
      for (int vx : {1, rpx / 2 + 1, rpx})
        for (int vy : {1, 3, 4, 5, rpy - 1, rpy}) {
          if (vy < 1) continue;
          const int g4 = (vy + 3) / 4;
          std::vector<int> seen(size_t(vx * g4), 0);
          for (int u = 0; u < vx * g4; ++u) {
            const int m = recover_row(u, g4), n4 = recover_col4(u, g4);
            if (m < 0 || m >= vx || n4 < 0 || n4 >= g4) {
              rec_ok = false;
              continue;
            }
            ++seen[size_t(m * g4 + n4)];
            rec_ok &= 4 * n4 + 3 < rpy;
            for (int i = 0; i < bx; ++i)
              for (int j = 0; j < by; ++j) {
                const int w = epi_word(stack_row(i, m, rpx), 0) + stack_row(j, 4 * n4, rpy);
                rec_ok &= w % 4 == 0 && w + 3 < kEpiBytes / 4 && w == epi_word(i * rpx + m, j * rpy + 4 * n4);
              }
          }
          for (int s : seen) rec_ok &= s == 1;
        }
    }
  ck.expect(rec_ok, "recover_row / recover_col4 cover a tile's (row, 4 columns) once with aligned in-plane reads");
}

struct PlanesCfg {
  int BX, BY, WX, WY;
  int mt() const { return BX / WX / 16; }
  int nt() const { return BY / WY / 8; }
};
constexpr PlanesCfg kMainCfg{64, 64, 2, 2}, kDecodeCfg{128, 16, 4, 1};

void check_planes_layout(Checker& ck) {
  for (const PlanesCfg& cfg : {kMainCfg, kDecodeCfg}) {
    const std::string where = " (" + str(cfg.BX) + " x " + str(cfg.BY) + ")";
    const int MT = cfg.mt(), NT = cfg.nt();
    bool rows_ok = true;
    for (int bx = 1; bx <= kMaxBits; ++bx)
      for (int by = 1; by <= kMaxBits; ++by) {
        const int n = planes_stage_rows(bx, by, cfg.BX, cfg.BY);
        rows_ok &= n == bx * cfg.BX + by * cfg.BY;
        std::vector<int> hits(size_t(std::max(n, 0)), 0);
        for (int side = 0; side < 2; ++side)
          for (int plane = 0; plane < (side ? by : bx); ++plane)
            for (int r = 0; r < (side ? cfg.BY : cfg.BX); ++r) {
              // Stage rows: X planes [bits_x][BX], then Y planes [bits_y][BY].
              const int want = side ? bx * cfg.BX + plane * cfg.BY + r : plane * cfg.BX + r;
              const int got = side ? planes_y_row(plane, r, bx, cfg.BX, cfg.BY) : planes_x_row(plane, r, cfg.BX);
              rows_ok &= got == want && got >= 0 && got < n;
              if (got >= 0 && got < n) ++hits[size_t(got)];
              const PlaneRow p = planes_unstack(want, bx, cfg.BX, cfg.BY);
              rows_ok &= p.side == side && p.plane == plane && p.row == r;
            }
        for (int h : hits) rows_ok &= h == 1;
      }
    ck.expect(rows_ok, "planes_x_row / planes_y_row / planes_unstack: stage rows are a bijection" + where);
    std::vector<int> hits(size_t(cfg.BX * cfg.BY), 0);
    bool acc_ok = true;
    for (int wx = 0; wx < cfg.WX; ++wx)
      for (int wy = 0; wy < cfg.WY; ++wy)
        for (int mt = 0; mt < MT; ++mt)
          for (int nt = 0; nt < NT; ++nt)
            for (int lane = 0; lane < 32; ++lane)
              for (int e = 0; e < 4; ++e) {
                const RC c = ptx_c(lane, e);
                const int r = planes_acc_row(wx, MT, mt, lane, e), col = planes_acc_col(wy, NT, nt, lane, e);
                acc_ok &= r == (wx * MT + mt) * 16 + c.row && col == (wy * NT + nt) * 8 + c.col;
                acc_ok &= r >= 0 && r < cfg.BX && col >= 0 && col < cfg.BY;
                if (r >= 0 && r < cfg.BX && col >= 0 && col < cfg.BY) ++hits[size_t(r * cfg.BY + col)];
              }
    for (int h : hits) acc_ok &= h == 1;
    ck.expect(acc_ok, "planes_acc_row / _col: each output of the CTA tile owned once" + where);
    ck.expect(cfg.WX * MT * 16 == cfg.BX && cfg.WY * NT * 8 == cfg.BY && NT % 2 == 0, "warp tiling" + where);
  }
}

// ---------------------------------------------------------------------------------------------------
// Quantization (bitgemm.h rules, written out here).
struct RefQ {
  float scale, inv;
  int32_t zero, offset;
};
RefQ ref_quant_params(Format fmt, int bits, const std::vector<float>& x) {
  float absmax = 0.f, lo = 0.f, hi = 0.f;  // lo = min(x, 0), hi = max(x, 0)
  for (float v : x) {
    absmax = std::max(absmax, std::fabs(v));
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  const int32_t levels = (int32_t(1) << bits) - 1;
  float scale;
  if (fmt == Format::signed_int)
    scale = bits == 1 ? absmax : div1(absmax, float((int32_t(1) << (bits - 1)) - 1));
  else if (fmt == Format::bipolar)
    scale = div1(absmax, float(levels));
  else
    scale = div1(sub1(hi, lo), float(levels));
  if (scale == 0.f) scale = 1.f;
  RefQ q;
  q.scale = scale;
  q.inv = div1(1.f, scale);
  q.zero = fmt == Format::unsigned_int
               ? int32_t(std::min<double>(std::max<double>(round_half_even(mul1(-lo, q.inv)), 0.0), levels))
               : 0;
  q.offset = fmt == Format::unsigned_int ? -q.zero : fmt == Format::bipolar ? -levels : 0;
  return q;
}
// The integer X of x.
int32_t ref_quant_value(Format fmt, int bits, float x, const RefQ& q) {
  const float v = mul1(x, q.inv);
  const int32_t levels = (int32_t(1) << bits) - 1;
  if (fmt == Format::signed_int) {
    const double lo = bits == 1 ? -1 : -double(int32_t(1) << (bits - 1)), hi = bits == 1 ? 0 : (1 << (bits - 1)) - 1;
    return int32_t(std::min(std::max(round_half_even(v), lo), hi));
  }
  if (fmt == Format::bipolar) {
    const double t = double(add1(v, float(levels))) / 2;  // (x * inv + qmax) / 2
    const int32_t u = int32_t(std::min<double>(std::max<double>(round_half_even(t), 0.0), levels));
    return 2 * u - levels;
  }
  const double u = std::min<double>(std::max<double>(round_half_even(v) + q.zero, 0.0), levels);
  return int32_t(u) - q.zero;
}

void check_quantization(Checker& ck, std::mt19937& rng) {
  std::uniform_real_distribution<float> u01(0.f, 1.f);
  bool qmax_ok = true;
  for (int bits = 1; bits <= kMaxBits; ++bits) {
    qmax_ok &= quant_qmax(Format::unsigned_int, bits) == (1 << bits) - 1 && quant_qmax(Format::bipolar, bits) == (1 << bits) - 1;
    qmax_ok &= quant_qmax(Format::signed_int, bits) == (bits == 1 ? 1 : (1 << (bits - 1)) - 1);
  }
  ck.expect(qmax_ok, "quant_qmax: the scale divisors of bitgemm.h");
  const float inf = std::numeric_limits<float>::infinity();
  for (Format fmt : kFormats)
    for (int bits = 1; bits <= kMaxBits; ++bits) {
      bool params_ok = true, code_ok = true, bits_ok = true;
      // Empty row: the statistics kernel's identity values.
      {
        const QuantParams q = quant_params(fmt, bits, 0.f, inf, -inf);
        const RefQ r = ref_quant_params(fmt, bits, {});
        params_ok &= q.scale == 1.f && same_float(q.scale, r.scale) && same_float(q.inv, r.inv) && q.offset == r.offset;
      }
      const int32_t levels = (int32_t(1) << bits) - 1;
      for (int kind = 0; kind < 12; ++kind)
        for (int rep = 0; rep < 4; ++rep) {
          std::vector<float> x(48);
          const float e = std::ldexp(1.f, int(rng() % 7) - 3);
          switch (kind) {
            case 0: for (auto& v : x) v = (2 * u01(rng) - 1) * e; break;
            case 1: for (auto& v : x) v = u01(rng) * 3 * e; break;
            case 2: for (auto& v : x) v = -(0.1f + u01(rng)) * 5 * e; break;
            case 3: std::fill(x.begin(), x.end(), 0.f); break;
            case 4: std::fill(x.begin(), x.end(), 0.7f * e); break;
            case 5: std::fill(x.begin(), x.end(), -2.f * e); break;
            case 6: for (auto& v : x) v = std::exp(8 * u01(rng) - 4) * (rng() % 2 ? 1.f : -1.f); break;
            case 7:
            case 8: {
              // Exact scales (powers of two) and half-integer multiples of them: every rounding tie.
              const int32_t qm = fmt == Format::signed_int ? std::max(1, (1 << (bits - 1)) - 1) : levels;
              if (fmt == Format::unsigned_int) {
                const int32_t a = int32_t(rng() % uint32_t(levels + 1));  // lo = -a e, hi = (levels - a) e
                for (size_t i = 0; i < x.size(); ++i) x[i] = float(int32_t(rng() % uint32_t(2 * levels + 1)) - 2 * a) * 0.5f * e;
                x[0] = -float(a) * e;
                x[1] = float(levels - a) * e;
              } else {
                for (size_t i = 0; i < x.size(); ++i) x[i] = float(int32_t(rng() % uint32_t(4 * qm + 1)) - 2 * qm) * 0.5f * e;
                x[0] = (kind == 7 ? 1.f : -1.f) * float(qm) * e;
              }
              if (fmt == Format::signed_int && bits == 1)
                for (auto& v : x) v = float(int32_t(rng() % 5) - 2) * 0.25f * e;  // ties of x / absmax at +-0.5
              break;
            }
            case 9: for (auto& v : x) v = (2 * u01(rng) - 1) * 1e4f; break;
            case 10: for (auto& v : x) v = (u01(rng) - 0.8f) * e; break;
            default: for (auto& v : x) v = float(int32_t(rng() % 41) - 20) * 0.0625f; break;
          }
          float absmax = 0.f, mn = inf, mx = -inf;
          for (float v : x) absmax = std::fmax(absmax, std::fabs(v)), mn = std::fmin(mn, v), mx = std::fmax(mx, v);
          const QuantParams q = quant_params(fmt, bits, absmax, mn, mx);
          const RefQ r = ref_quant_params(fmt, bits, x);
          params_ok &= same_float(q.scale, r.scale) && same_float(q.inv, r.inv) && q.zero == r.zero && q.offset == r.offset;
          for (float v : x) {
            const int32_t code = quant_code(fmt, bits, v, q);
            const int32_t want = ref_quant_value(fmt, bits, v, r);
            // The stored code: unsigned / bipolar u in [0, qmax]; signed q itself.
            const bool in_range = fmt == Format::signed_int
                                      ? code >= (bits == 1 ? -1 : -(1 << (bits - 1))) && code <= (bits == 1 ? 0 : (1 << (bits - 1)) - 1)
                                      : code >= 0 && code <= levels;
            int32_t value = q.offset;
            for (int i = 0; i < bits; ++i) value += doc_coeff(fmt, bits, i) * int32_t(code_bit(code, i));
            code_ok &= in_range && value == want;
            bits_ok &= code_rowsum_term(fmt, code) == value - q.offset;
            for (int i = bits; i < 32; ++i) bits_ok &= fmt == Format::signed_int || code_bit(code, i) == 0;
          }
        }
      const std::string where = std::string(" (") + fmt_name(fmt) + " " + str(bits) + " bits)";
      ck.expect(params_ok, "quant_params: scale, inv, zero point and offset follow bitgemm.h" + where);
      ck.expect(code_ok, "quant_code + code_bit: plane bits decode to the value the rules give" + where);
      ck.expect(bits_ok, "code_rowsum_term is X - offset of the code" + where);
    }
  // Ballot packing: lane l of column group e of block b is column 128 b + 32 e + l = bit l of word 4 b + e.
  bool pack_ok = true;
  for (int64_t k : {1, 255, 256, 300, 1000, 2048}) {
    const int64_t blocks = words_per_row(k) / 4;
    pack_ok &= blocks * 128 == padded_k(k);
    std::vector<int> seen(size_t(blocks * 128), 0);
    for (int64_t b = 0; b < blocks; ++b)
      for (int e = 0; e < 4; ++e)
        for (int lane = 0; lane < 32; ++lane) {
          const int64_t c = pack_col(b, e, lane);
          pack_ok &= c >= 0 && c < blocks * 128 && c / 32 == 4 * b + e && c % 32 == lane;
          if (c >= 0 && c < blocks * 128) ++seen[size_t(c)];
        }
    for (int s : seen) pack_ok &= s == 1;
  }
  ck.expect(pack_ok, "pack_col: ballots of 128-column blocks write the format's words (every column once)");
  bool stat_ok = true;
  for (int64_t rows : {0, 1, 2, 7, 1023, 1024, 1025, 1 << 20})
    stat_ok &= quant_stat_blocks(rows) == std::min<int64_t>(std::max<int64_t>(rows, 1), 1024);
  ck.expect(stat_ok, "quant_stat_blocks: one block per row, at most 1024, at least 1");
}

// ---------------------------------------------------------------------------------------------------
// Whole-CTA emulation of bitgemm_stacked_kernel (X = A, Y = W): row table, cp.async stage fill with
// zero-fill, ldmatrix, MMAs, accumulators -> epilogue buffer, recombination. Adds the CTA's combined
// plane sums to combined[x * Y.rows + y] and counts the writes.
bool emulate_stacked_cta(const Packed& X, const Packed& Y, int64_t tile_id, int64_t tiles_x, int64_t tiles_y,
                         const SplitK& sk, int64_t split, std::vector<uint32_t>& combined, std::vector<int>& writes) {
  using namespace stacked;
  bool ok = true;
  const int64_t nsteps = k_steps(X.k), wpr = X.wpr;
  const TileXY tile = tile_coords(tile_id, tiles_x, tiles_y);
  const int64_t s0 = split_step_begin(sk, split, kStageSteps, nsteps), s1 = split_step_end(sk, split, kStageSteps, nsteps);
  const int rpx = stacked_rows_x(X.bits), rpy = stacked_rows_y(Y.bits);
  const int64_t x0 = tile.x * rpx, y0 = tile.y * rpy;

  int64_t row_table[kStageRows];
  for (int sr = 0; sr < kStageRows; ++sr) {
    const bool is_x = sr < kStack;
    const StackedRow st = unstack(is_x ? sr : sr - kStack, is_x ? rpx : rpy);
    const Packed& P = is_x ? X : Y;
    const int64_t row = (is_x ? x0 : y0) + st.row;
    row_table[sr] = (st.plane < P.bits && row < P.rows) ? (int64_t(st.plane) * P.rows + row) * wpr : -1;
  }

  std::vector<RegsC> acc(static_cast<size_t>(4 * kMT * kNT));
  std::vector<uint8_t> stage(static_cast<size_t>(kStageBytes));
  std::vector<int> slot_hits(static_cast<size_t>(kStageBytes / 16));
  const int64_t nst = (s1 - s0 + kStageSteps - 1) / kStageSteps;
  for (int64_t t = 0; t < nst; ++t) {
    std::fill(stage.begin(), stage.end(), uint8_t(0xA5));  // stale data of an earlier stage
    std::fill(slot_hits.begin(), slot_hits.end(), 0);
    const int64_t step0 = s0 + t * kStageSteps;
    for (int tid = 0; tid < kThreads; ++tid)
      for (int i = 0; i < kChunksPerThread; ++i) {
        const int c = tid + i * kThreads;
        const int sr = copy_row(c), ch = copy_chunk(c);
        const int64_t off = row_table[sr];
        const Packed& P = sr < kStack ? X : Y;
        const bool valid = off >= 0 && step0 + chunk_step(ch) < s1;
        const uint32_t dst = smem_chunk_offset(sr, ch);
        if (dst % 16 != 0 || dst + 16 > uint32_t(kStageBytes)) {
          ok = false;
          continue;
        }
        ++slot_hits[dst / 16];
        for (int w = 0; w < 4; ++w) {
          uint32_t v = 0;
          if (valid) {
            const int64_t idx = off + step0 * kStepWords + chunk_word(ch) + w;
            if (idx < 0 || idx >= int64_t(P.planes.size())) {
              ok = false;
              continue;
            }
            v = P.planes[size_t(idx)];
          }
          std::memcpy(&stage[dst + 4 * w], &v, 4);
        }
      }
    for (int h : slot_hits) ok &= h == 1;
    for (int ks = 0; ks < kStageSteps; ++ks) {
      if (step0 + ks >= s1) break;
      for (int warp = 0; warp < kThreads / 32; ++warp) {
        RegsA af[kMT];
        RegsB bf[kNT];
        uint32_t addr[32];
        for (int mt = 0; mt < kMT; ++mt) {
          for (int lane = 0; lane < 32; ++lane)
            addr[lane] = smem_chunk_offset(stacked_x_tile_row(warp, mt) + ldsm_a_row(lane), ldsm_a_chunk(lane, ks));
          ok &= ldsm_x4_emul(stage, addr, af[mt]);
        }
        for (int np = 0; np < kNT / 2; ++np) {
          RegsA r{};
          for (int lane = 0; lane < 32; ++lane)
            addr[lane] = smem_chunk_offset(stacked_y_tile_row(warp, np) + ldsm_b_row(lane), ldsm_b_chunk(lane, ks));
          ok &= ldsm_x4_emul(stage, addr, r);
          for (int lane = 0; lane < 32; ++lane) {
            bf[2 * np][lane] = {r[lane][0], r[lane][1]};
            bf[2 * np + 1][lane] = {r[lane][2], r[lane][3]};
          }
        }
        for (int mt = 0; mt < kMT; ++mt)
          for (int nt = 0; nt < kNT; ++nt) mma256_emul(acc[size_t((warp * kMT + mt) * kNT + nt)], af[mt], bf[nt], true);
      }
    }
  }

  // Accumulators -> epilogue buffer (uint2 stores), then recombination.
  std::vector<uint32_t> epi(size_t(kEpiBytes / 4), 0xDEADBEEFu);
  for (int warp = 0; warp < kThreads / 32; ++warp)
    for (int mt = 0; mt < kMT; ++mt)
      for (int nt = 0; nt < kNT; ++nt)
        for (int h = 0; h < 2; ++h)
          for (int lane = 0; lane < 32; ++lane) {
            const int r = stacked_acc_row(warp, mt, lane, 2 * h), c = stacked_acc_col(warp, nt, lane, 2 * h);
            const int w = epi_word(r, c);
            if (w < 0 || w % 2 != 0 || size_t(w) + 2 > epi.size()) {
              ok = false;
              continue;
            }
            epi[size_t(w)] = acc[size_t((warp * kMT + mt) * kNT + nt)][lane][2 * h];
            epi[size_t(w) + 1] = acc[size_t((warp * kMT + mt) * kNT + nt)][lane][2 * h + 1];
          }
  const int bx = X.bits, by = Y.bits;
  const int vx = int(std::min<int64_t>(rpx, X.rows - x0)), vy = int(std::min<int64_t>(rpy, Y.rows - y0));
  const int g4 = (vy + 3) / 4;
  const uint32_t base = uint32_t(base_coeff(X.fmt, bx) * base_coeff(Y.fmt, by));
  for (int u = 0; u < vx * g4; ++u) {
    const int m = recover_row(u, g4), n4 = recover_col4(u, g4);
    uint32_t s[4] = {0u, 0u, 0u, 0u};
    for (int i = 0; i < bx; ++i) {
      const uint32_t ra = uint32_t(plane_ratio(X.fmt, bx, i));
      const int row = epi_word(stack_row(i, m, rpx), 0);
      for (int j = 0; j < by; ++j) {
        const uint32_t r = ra * uint32_t(plane_ratio(Y.fmt, by, j));
        const int w = row + stack_row(j, 4 * n4, rpy);
        if (w < 0 || w % 4 != 0 || size_t(w) + 4 > epi.size()) {
          ok = false;
          continue;
        }
        for (int e = 0; e < 4; ++e) s[e] += r * epi[size_t(w + e)];
      }
    }
    const int64_t x = x0 + m, yb = y0 + 4 * n4;
    const int count = int(std::min<int64_t>(4, Y.rows - yb));
    for (int e = 0; e < count; ++e) {
      if (x < 0 || x >= X.rows || yb + e < 0) {
        ok = false;
        continue;
      }
      combined[size_t(x * Y.rows + yb + e)] += s[e] * base;
      ++writes[size_t(x * Y.rows + yb + e)];
    }
  }
  return ok;
}

void check_stacked_cta(Checker& ck, std::mt19937& rng) {
  int case_id = 0;
  for (int bx = 1; bx <= kMaxBits; ++bx)
    for (int by = 1; by <= kMaxBits; ++by, ++case_id) {
      const Format fx = kFormats[case_id % 3], fy = kFormats[(case_id / 3 + bx) % 3];
      const int rpx = stacked_rows_x(bx), rpy = stacked_rows_y(by);
      // Mostly one partial or full tile; every 8th case a 2 x 2 grid with split-K.
      const bool big = case_id % 8 == 3;
      const int64_t m = big ? rpx + 1 + int64_t(rng() % uint32_t(rpx)) : 1 + int64_t(rng() % uint32_t(rpx));
      const int64_t n = big ? rpy + 1 + int64_t(rng() % uint32_t(rpy)) : 1 + int64_t(rng() % uint32_t(rpy));
      const int64_t k = 1 + int64_t(rng() % (big ? 1600u : 800u));
      const Packed X = make_packed(fx, bx, m, k, rng), Y = make_packed(fy, by, n, k, rng);
      const int64_t tiles_x = cdiv(m, rpx), tiles_y = cdiv(n, rpy);
      const SplitK sk = make_split_k(cdiv(k_steps(k), kStageSteps), big ? 3 : 1, 65535);
      std::vector<uint32_t> combined(size_t(m * n), 0u);
      std::vector<int> writes(size_t(m * n), 0);
      bool ok = true;
      for (int64_t sp = 0; sp < sk.splits; ++sp)
        for (int64_t id = 0; id < tiles_x * tiles_y; ++id)
          ok &= emulate_stacked_cta(X, Y, id, tiles_x, tiles_y, sk, sp, combined, writes);
      bool exact = true;
      for (int64_t x = 0; x < m; ++x)
        for (int64_t y = 0; y < n; ++y) {
          ok &= writes[size_t(x * n + y)] == sk.splits;
          exact &= corrected_value(combined[size_t(x * n + y)], X.offset[size_t(x)], Y.offset[size_t(y)],
                                   X.rowsum[size_t(x)], Y.rowsum[size_t(y)], k) == ref_dot(X, x, Y, y, 0, k);
        }
      const std::string where = std::string(" (") + fmt_name(fx) + str(bx) + " x " + fmt_name(fy) + str(by) +
                                ", m=" + str(m) + " n=" + str(n) + " k=" + str(k) + " splits=" + str(sk.splits) + ")";
      ck.expect(ok, "stacked kernel emulation: in-bounds addresses, every stage slot filled once, every output written once per split" + where);
      ck.expect(exact, "stacked kernel emulation equals the int64 product" + where);
    }
}

// Whole-CTA emulation of bitgemm_planes_kernel<BX, BY, WX, WY>: stage fill, per-plane-pair ldmatrix +
// MMA with integer ratios, k128 halves at group boundaries, popcount row sums with quad shuffles,
// group flushes (corrected_value, accumulate_scaled) and the final partial / combined outputs.
struct PlanesProblem {
  const Packed* X;
  const Packed* Y;
  PlanesCfg cfg;
  bool grouped;
  int64_t gs, groups;
  std::vector<float> sx, sy;  // [rows][groups]
  SplitK sk;
  int64_t unit_steps, tiles_x, tiles_y;
};
struct PlanesOut {
  std::vector<uint32_t> combined;  // [x][y], this split (ungrouped)
  std::vector<float> facc;         // [x][y], this split (grouped)
  std::vector<int> writes;         // [x][y], this split
  std::vector<int> cg_hits;        // [x][y][g], all splits
  bool cg_exact = true;
};

bool emulate_planes_cta(const PlanesProblem& P, int64_t tile_id, int64_t split, PlanesOut& out) {
  const Packed& X = *P.X;
  const Packed& Y = *P.Y;
  const PlanesCfg& cfg = P.cfg;
  const int MT = cfg.mt(), NT = cfg.nt(), BX = cfg.BX, BY = cfg.BY, threads = 32 * cfg.WX * cfg.WY;
  bool ok = true;
  const int64_t k = X.k, nsteps = k_steps(k), wpr = X.wpr;
  const TileXY tile = tile_coords(tile_id, P.tiles_x, P.tiles_y);
  const int64_t s0 = split_step_begin(P.sk, split, P.unit_steps, nsteps), s1 = split_step_end(P.sk, split, P.unit_steps, nsteps);
  const int bx = X.bits, by = Y.bits;
  const int stage_rows = planes_stage_rows(bx, by, BX, BY);
  const int stage_bytes = stage_rows * kRowBytes;
  const int64_t x0 = tile.x * BX, y0 = tile.y * BY;
  const int64_t nst = (s1 - s0 + kStageSteps - 1) / kStageSteps;
  const int warps = cfg.WX * cfg.WY;

  // Per-warp, per-lane state.
  const size_t tiles = size_t(MT * NT);
  std::vector<RegsC> tot(size_t(warps) * tiles);
  std::vector<std::array<std::array<float, 4>, 32>> facc(size_t(warps) * tiles);
  std::vector<Lanes> px(static_cast<size_t>(warps * MT * 2)), py(static_cast<size_t>(warps * NT)), ox(static_cast<size_t>(warps * MT * 2)), oy(static_cast<size_t>(warps * NT * 2));
  for (auto& f : facc)
    for (auto& l : f) l.fill(0.f);
  for (int warp = 0; warp < warps; ++warp) {
    const int wx = warp % cfg.WX, wy = warp / cfg.WX;
    for (int lane = 0; lane < 32; ++lane) {
      for (int mt = 0; mt < MT; ++mt)
        for (int h = 0; h < 2; ++h) {
          const int64_t x = x0 + planes_acc_row(wx, MT, mt, lane, 2 * h);
          ox[size_t((warp * MT + mt) * 2 + h)][lane] = uint32_t((P.grouped && x < X.rows) ? X.offset[size_t(x)] : 0);
          px[size_t((warp * MT + mt) * 2 + h)][lane] = 0;
        }
      for (int nt = 0; nt < NT; ++nt) {
        py[size_t(warp * NT + nt)][lane] = 0;
        for (int e = 0; e < 2; ++e) {
          const int64_t y = y0 + planes_acc_col(wy, NT, nt, lane, e);
          oy[size_t((warp * NT + nt) * 2 + e)][lane] = uint32_t((P.grouped && y < Y.rows) ? Y.offset[size_t(y)] : 0);
        }
      }
    }
  }
  const uint32_t c00 = uint32_t(base_coeff(X.fmt, bx) * base_coeff(Y.fmt, by));
  std::vector<uint8_t> stage(static_cast<size_t>(stage_bytes));
  std::vector<int> slot_hits(static_cast<size_t>(stage_bytes / 16));

  auto mt_ok = [&](int wx, int mt) { return x0 + (wx * MT + mt) * 16 < X.rows; };
  auto nt_ok = [&](int wy, int nt) { return y0 + (wy * NT + nt) * 8 < Y.rows; };
  // mode 0: the whole k step; 1 + h: k-half h (m16n8k128).
  auto popc_a = [](int mode, const std::array<uint32_t, 4>& a, int r) {
    return mode == 0 ? popc(a[r]) + popc(a[2 + r]) : popc(a[half_a_reg(mode - 1, r)]);
  };
  auto popc_b = [](int mode, const std::array<uint32_t, 2>& b) {
    return mode == 0 ? popc(b[0]) + popc(b[1]) : popc(b[half_b_reg(mode - 1)]);
  };
  auto mma = [](int mode, RegsC& d, const RegsA& a, const RegsB& b, bool accumulate) {
    if (mode == 0) return mma256_emul(d, a, b, accumulate);
    const int h = mode - 1;
    Lanes a0, a1, b0;
    for (int lane = 0; lane < 32; ++lane) {
      a0[lane] = a[lane][half_a_reg(h, 0)];
      a1[lane] = a[lane][half_a_reg(h, 1)];
      b0[lane] = b[lane][half_b_reg(h)];
    }
    mma128_emul(d, a0, a1, b0, accumulate);
  };

  auto process = [&](int warp, int ks, int mode) {
    const int wx = warp % cfg.WX, wy = warp / cfg.WX;
    std::vector<RegsA> xf(static_cast<size_t>(MT));
    std::vector<RegsB> yf(static_cast<size_t>(NT));
    uint32_t addr[32];
    for (int xi = 0; xi < bx; ++xi) {
      for (int mt = 0; mt < MT; ++mt) {
        for (int lane = 0; lane < 32; ++lane)
          addr[lane] = smem_chunk_offset(planes_x_row(xi, (wx * MT + mt) * 16 + ldsm_a_row(lane), BX), ldsm_a_chunk(lane, ks));
        ok &= ldsm_x4_emul(stage, addr, xf[size_t(mt)]);
        ok &= ldsm_conflict_free(addr);
      }
      if (P.grouped) {
        const int32_t cx = plane_coeff(X.fmt, bx, xi);
        for (int mt = 0; mt < MT; ++mt)
          for (int lane = 0; lane < 32; ++lane)
            for (int h = 0; h < 2; ++h)
              px[size_t((warp * MT + mt) * 2 + h)][lane] += uint32_t(cx * popc_a(mode, xf[size_t(mt)][lane], h));
      }
      const int32_t rx = plane_ratio(X.fmt, bx, xi);
      for (int yj = 0; yj < by; ++yj) {
        for (int np = 0; np < NT / 2; ++np) {
          RegsA r{};
          for (int lane = 0; lane < 32; ++lane)
            addr[lane] = smem_chunk_offset(planes_y_row(yj, (wy * NT + 2 * np) * 8 + ldsm_b_row(lane), bx, BX, BY),
                                           ldsm_b_chunk(lane, ks));
          ok &= ldsm_x4_emul(stage, addr, r);
          ok &= ldsm_conflict_free(addr);
          for (int lane = 0; lane < 32; ++lane) {
            yf[size_t(2 * np)][lane] = {r[lane][0], r[lane][1]};
            yf[size_t(2 * np + 1)][lane] = {r[lane][2], r[lane][3]};
          }
        }
        if (P.grouped && xi == 0) {
          const int32_t cy = plane_coeff(Y.fmt, by, yj);
          for (int nt = 0; nt < NT; ++nt)
            for (int lane = 0; lane < 32; ++lane) py[size_t(warp * NT + nt)][lane] += uint32_t(cy * popc_b(mode, yf[size_t(nt)][lane]));
        }
        const int32_t r = rx * plane_ratio(Y.fmt, by, yj);
        for (int mt = 0; mt < MT; ++mt)
          for (int nt = 0; nt < NT; ++nt) {
            if (!mt_ok(wx, mt) || !nt_ok(wy, nt)) continue;
            RegsC& t = tot[size_t(warp) * tiles + size_t(mt * NT + nt)];
            if (r == 1) {
              mma(mode, t, xf[size_t(mt)], yf[size_t(nt)], true);
            } else {
              RegsC p{};
              mma(mode, p, xf[size_t(mt)], yf[size_t(nt)], false);
              for (int lane = 0; lane < 32; ++lane)
                for (int e = 0; e < 4; ++e) t[lane][e] += uint32_t(r) * p[lane][e];
            }
          }
      }
    }
  };

  auto quad_sum = [](const Lanes& v) {
    Lanes a, b;
    for (int l = 0; l < 32; ++l) a[l] = v[l] + v[l ^ 1];
    for (int l = 0; l < 32; ++l) b[l] = a[l] + a[l ^ 2];
    return b;
  };
  auto flush = [&](int warp, int64_t g) {
    const int wx = warp % cfg.WX, wy = warp / cfg.WX;
    for (int mt = 0; mt < MT; ++mt)
      for (int h = 0; h < 2; ++h) px[size_t((warp * MT + mt) * 2 + h)] = quad_sum(px[size_t((warp * MT + mt) * 2 + h)]);
    std::vector<std::array<Lanes, 2>> rsy(static_cast<size_t>(NT));
    for (int nt = 0; nt < NT; ++nt) {
      const Lanes v = quad_sum(py[size_t(warp * NT + nt)]);
      for (int e = 0; e < 2; ++e)
        for (int lane = 0; lane < 32; ++lane) rsy[size_t(nt)][e][lane] = v[rowsum_src_lane(frag_c_col(lane, e))];
    }
    if (g < P.groups) {
      const int64_t kg = group_cols(g, P.gs, k);
      for (int mt = 0; mt < MT; ++mt)
        for (int nt = 0; nt < NT; ++nt)
          for (int lane = 0; lane < 32; ++lane)
            for (int e = 0; e < 4; ++e) {
              const int64_t x = x0 + planes_acc_row(wx, MT, mt, lane, e), y = y0 + planes_acc_col(wy, NT, nt, lane, e);
              const float sxv = x < X.rows ? P.sx[size_t(x * P.groups + g)] : 0.f;
              const float syv = y < Y.rows ? P.sy[size_t(y * P.groups + g)] : 0.f;
              RegsC& t = tot[size_t(warp) * tiles + size_t(mt * NT + nt)];
              const int32_t c = corrected_value(c00 * t[lane][e], int32_t(ox[size_t((warp * MT + mt) * 2 + e / 2)][lane]),
                                                int32_t(oy[size_t((warp * NT + nt) * 2 + e % 2)][lane]),
                                                int32_t(px[size_t((warp * MT + mt) * 2 + e / 2)][lane]),
                                                int32_t(rsy[size_t(nt)][e % 2][lane]), kg);
              float& f = facc[size_t(warp) * tiles + size_t(mt * NT + nt)][lane][e];
              f = accumulate_scaled(f, sxv, syv, c);
              if (x < X.rows && y < Y.rows) {
                ++out.cg_hits[size_t((x * Y.rows + y) * P.groups + g)];
                out.cg_exact &= c == ref_dot(X, x, Y, y, g * P.gs, std::min(k, (g + 1) * P.gs));
              }
            }
    }
    for (int mt = 0; mt < MT; ++mt) {
      px[size_t((warp * MT + mt) * 2)].fill(0);
      px[size_t((warp * MT + mt) * 2 + 1)].fill(0);
      for (int nt = 0; nt < NT; ++nt)
        for (auto& l : tot[size_t(warp) * tiles + size_t(mt * NT + nt)]) l.fill(0);
    }
    for (int nt = 0; nt < NT; ++nt) py[size_t(warp * NT + nt)].fill(0);
  };

  for (int64_t t = 0; t < nst; ++t) {
    std::fill(stage.begin(), stage.end(), uint8_t(0x5A));
    std::fill(slot_hits.begin(), slot_hits.end(), 0);
    const int64_t step0 = s0 + t * kStageSteps;
    const int chunks = stage_rows * kChunksPerRow;
    for (int tid = 0; tid < threads; ++tid)
      for (int c = tid; c < chunks; c += threads) {
        const int sr = copy_row(c), ch = copy_chunk(c);
        const PlaneRow pr = planes_unstack(sr, bx, BX, BY);
        const Packed& S = pr.side == 0 ? X : Y;
        const int64_t row = (pr.side == 0 ? x0 : y0) + pr.row;
        const bool valid = row < S.rows && step0 + chunk_step(ch) < s1;
        const uint32_t dst = smem_chunk_offset(sr, ch);
        if (dst % 16 != 0 || dst + 16 > uint32_t(stage_bytes) || pr.plane < 0 || pr.plane >= S.bits) {
          ok = false;
          continue;
        }
        ++slot_hits[dst / 16];
        for (int w = 0; w < 4; ++w) {
          uint32_t v = 0;
          if (valid) {
            const int64_t idx = (int64_t(pr.plane) * S.rows + row) * wpr + step0 * kStepWords + chunk_word(ch) + w;
            if (idx < 0 || idx >= int64_t(S.planes.size())) {
              ok = false;
              continue;
            }
            v = S.planes[size_t(idx)];
          }
          std::memcpy(&stage[dst + 4 * w], &v, 4);
        }
      }
    for (int h : slot_hits) ok &= h == 1;
    for (int ks = 0; ks < kStageSteps; ++ks) {
      const int64_t step = step0 + ks;
      if (step >= s1) break;
      for (int warp = 0; warp < warps; ++warp) {
        if (!P.grouped) {
          process(warp, ks, 0);
        } else {
          const StepGroups sg = step_groups(step, s1, P.gs);
          if (sg.split_mid) {
            process(warp, ks, 1);
            flush(warp, sg.g0);
            process(warp, ks, 2);
          } else {
            process(warp, ks, 0);
          }
          if (sg.flush_end) flush(warp, sg.g1);
        }
      }
    }
  }

  for (int warp = 0; warp < warps; ++warp) {
    const int wx = warp % cfg.WX, wy = warp / cfg.WX;
    for (int mt = 0; mt < MT; ++mt)
      for (int nt = 0; nt < NT; ++nt)
        for (int lane = 0; lane < 32; ++lane)
          for (int e = 0; e < 4; ++e) {
            const int64_t x = x0 + planes_acc_row(wx, MT, mt, lane, e), y = y0 + planes_acc_col(wy, NT, nt, lane, e);
            if (x >= X.rows || y >= Y.rows) continue;
            const size_t o = size_t(x * Y.rows + y);
            ++out.writes[o];
            if (P.grouped)
              out.facc[o] = facc[size_t(warp) * tiles + size_t(mt * NT + nt)][lane][e];
            else
              out.combined[o] = c00 * tot[size_t(warp) * tiles + size_t(mt * NT + nt)][lane][e];
          }
  }
  return ok;
}

struct PlanesCase {
  PlanesCfg cfg;
  int bx, by;
  Format fx, fy;
  bool grouped;
  int64_t gs, k, xrows, yrows, want;
};

void check_planes_cta(Checker& ck, std::mt19937& rng) {
  const Format U = Format::unsigned_int, S = Format::signed_int, B = Format::bipolar;
  const PlanesCase cases[] = {
      {kMainCfg, 1, 1, S, S, true, 128, 700, 70, 73, 1},
      {kMainCfg, 2, 3, U, B, true, 384, 1000, 64, 64, 2},
      {kMainCfg, 4, 4, B, S, true, 256, 1024, 30, 100, 3},
      {kMainCfg, 8, 8, U, U, true, 640, 1300, 64, 50, 2},
      {kMainCfg, 3, 7, S, U, true, 128, 300, 65, 20, 2},
      {kMainCfg, 5, 2, B, U, true, 1152, 2500, 17, 64, 2},
      {kMainCfg, 1, 8, S, S, true, 768, 1600, 64, 64, 3},
      {kMainCfg, 6, 1, U, S, false, 0, 520, 40, 70, 2},
      {kDecodeCfg, 4, 2, S, U, false, 0, 900, 130, 5, 3},
      {kDecodeCfg, 2, 8, U, S, true, 128, 500, 100, 16, 2},
      {kDecodeCfg, 8, 1, B, S, false, 0, 300, 128, 1, 1},
      {kDecodeCfg, 1, 1, U, B, true, 384, 1200, 256, 9, 4},
      {kDecodeCfg, 6, 3, S, B, true, 256, 777, 60, 13, 1},
      {kDecodeCfg, 7, 5, B, B, true, 640, 1100, 129, 16, 3},
  };
  std::uniform_real_distribution<float> scale_dist(0.25f, 2.f);
  for (const PlanesCase& pc : cases) {
    const Packed X = make_packed(pc.fx, pc.bx, pc.xrows, pc.k, rng), Y = make_packed(pc.fy, pc.by, pc.yrows, pc.k, rng);
    PlanesProblem P;
    P.X = &X;
    P.Y = &Y;
    P.cfg = pc.cfg;
    P.grouped = pc.grouped;
    P.gs = pc.gs;
    P.groups = pc.grouped ? cdiv(pc.k, pc.gs) : 1;
    P.sx.resize(static_cast<size_t>(X.rows * P.groups));
    P.sy.resize(static_cast<size_t>(Y.rows * P.groups));
    for (auto& v : P.sx) v = scale_dist(rng);
    for (auto& v : P.sy) v = scale_dist(rng) * (rng() % 2 ? 1.f : -1.f);
    P.unit_steps = pc.grouped ? group_unit_steps(pc.gs) : kStageSteps;
    const int64_t nsteps = k_steps(pc.k);
    P.sk = make_split_k(cdiv(nsteps, P.unit_steps), pc.want, 65535);
    P.tiles_x = cdiv(X.rows, pc.cfg.BX);
    P.tiles_y = cdiv(Y.rows, pc.cfg.BY);
    const size_t outs = size_t(X.rows * Y.rows);
    PlanesOut out;
    out.cg_hits.assign(outs * size_t(P.groups), 0);
    std::vector<uint32_t> combined(outs, 0u);
    bool ok = true, partial_ok = true;
    for (int64_t sp = 0; sp < P.sk.splits; ++sp) {
      out.combined.assign(outs, 0u);
      out.facc.assign(outs, std::numeric_limits<float>::quiet_NaN());  // poisoned: unwritten outputs fail
      out.writes.assign(outs, 0);
      for (int64_t id = 0; id < P.tiles_x * P.tiles_y; ++id) ok &= emulate_planes_cta(P, id, sp, out);
      for (int w : out.writes) ok &= w == 1;
      for (size_t o = 0; o < outs; ++o) combined[o] += out.combined[o];
      if (P.grouped) {
        // The split's fp32 partial: its groups in order, acc + (sx sy) C_g each.
        const int64_t b0 = split_step_begin(P.sk, sp, P.unit_steps, nsteps) * kStepBits;
        const int64_t b1 = split_step_end(P.sk, sp, P.unit_steps, nsteps) * kStepBits;
        for (int64_t x = 0; x < X.rows; ++x)
          for (int64_t y = 0; y < Y.rows; ++y) {
            float ref = 0.f;
            for (int64_t g = 0; g < P.groups; ++g)
              if (g * P.gs >= b0 && g * P.gs < b1)
                ref = ref_accumulate(ref, P.sx[size_t(x * P.groups + g)], P.sy[size_t(y * P.groups + g)],
                                     int32_t(ref_dot(X, x, Y, y, g * P.gs, std::min(pc.k, (g + 1) * P.gs))));
            partial_ok &= same_float(out.facc[size_t(x * Y.rows + y)], ref);
          }
      }
    }
    bool exact = true;
    if (P.grouped) {
      for (int h : out.cg_hits) exact &= h == 1;
      exact &= out.cg_exact;
    } else {
      for (int64_t x = 0; x < X.rows; ++x)
        for (int64_t y = 0; y < Y.rows; ++y)
          exact &= corrected_value(combined[size_t(x * Y.rows + y)], X.offset[size_t(x)], Y.offset[size_t(y)],
                                   X.rowsum[size_t(x)], Y.rowsum[size_t(y)], pc.k) == ref_dot(X, x, Y, y, 0, pc.k);
    }
    const std::string where = " (" + str(pc.cfg.BX) + "x" + str(pc.cfg.BY) + ", " + fmt_name(pc.fx) + str(pc.bx) +
                              " x " + fmt_name(pc.fy) + str(pc.by) + ", rows " + str(pc.xrows) + " x " + str(pc.yrows) +
                              ", k=" + str(pc.k) + ", gs=" + str(pc.gs) + ", splits=" + str(P.sk.splits) + ")";
    ck.expect(ok, "planes kernel emulation: in-bounds, conflict-free ldmatrix, stage slots filled once, outputs written once" + where);
    ck.expect(exact, pc.grouped ? "planes kernel emulation: every group product C_g exact and flushed once" + where
                                : "planes kernel emulation equals the int64 product" + where);
    if (P.grouped) ck.expect(partial_ok, "planes kernel emulation: fp32 split partials = sum_g (sx sy) C_g in group order" + where);
  }
}

}  // namespace

int cuda_layout_selftest(std::string* report) {
  Checker ck{report};
  std::mt19937 rng(20240611);
  check_mma_fragments(ck);
  check_ldmatrix(ck);
  check_stage_layout(ck);
  check_coefficients(ck);
  check_fp_primitives(ck, rng);
  check_corrected_value(ck, rng);
  check_groups(ck);
  check_split_k(ck);
  check_tiles(ck);
  check_stacked_layout(ck);
  check_planes_layout(ck);
  check_quantization(ck, rng);
  check_stacked_cta(ck, rng);
  check_planes_cta(ck, rng);
  if (report)
    *report += std::to_string(ck.checks) + " checks, " + std::to_string(ck.failures) + " failures\n";
  return ck.failures;
}

}  // namespace bitgemm
}  // namespace fastops
