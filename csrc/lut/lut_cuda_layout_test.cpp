// Exhaustive CPU checks of the CUDA kernels' index math against definitions written independently
// from lut_format.h and the PTX ISA (fragment layouts, ldmatrix semantics).
#include "lut/lut_cuda_layout_test.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/selftest.h"
#include "lut/lut_cuda_layout.h"
#include "lut/lut_format.h"

namespace fastops {
namespace lut {
namespace {

using namespace cuda_layout;

using Checker = SelfTestChecker;

// A packer written straight from lut_format.h: bit (m, k) of plane i goes to bit_position(m, k).
struct PackedBits {
  int64_t m, k;
  int bits;
  std::vector<uint8_t> codes;  // Q[m][k]
  std::vector<uint8_t> planes;
  int beta(int64_t row, int64_t col, int plane) const { return (codes[row * k + col] >> plane) & 1; }
};
PackedBits pack_random(int64_t m, int64_t k, int bits, std::mt19937& rng) {
  PackedBits p{m, k, bits, std::vector<uint8_t>(m * k), std::vector<uint8_t>(planes_bytes(m, k, bits), 0)};
  for (auto& c : p.codes) c = uint8_t(rng() % (1u << bits));
  const int64_t kb = k_blocks(k);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t c = 0; c < k; ++c)
      for (int i = 0; i < bits; ++i)
        if (p.beta(r, c, i)) {
          BitPos bp = bit_position(r, c);
          p.planes[block_offset(r / kTileRows, c / kBlockK, i, kb, bits) + bp.byte] |= uint8_t(1u << bp.bit);
        }
  return p;
}

void check_split_k(Checker& ck) {
  for (int64_t kb = 1; kb <= 300; ++kb)
    for (int64_t want : {0, 1, 2, 3, 7, 19, 64, 1000})
      for (int64_t cap : {int64_t(1), int64_t(4), int64_t(16), int64_t(1) << 40}) {
        SplitK s = make_split_k(kb, want, cap);
        int64_t next = 0;
        bool ok = s.per_split >= 1 && s.per_split <= cap && s.splits >= 1;
        for (int64_t i = 0; i < s.splits && ok; ++i) {
          ok = split_begin(s, i) == next && split_end(s, i, kb) > next;
          next = split_end(s, i, kb);
        }
        ck.expect(ok && next == kb && (s.splits <= std::max<int64_t>(want, 1) || s.per_split == cap),
                  "split-K covers k blocks exactly (kb=" + std::to_string(kb) + " want=" + std::to_string(want) +
                      " cap=" + std::to_string(cap) + ")");
      }
}

void check_tables(Checker& ck, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-3.f, 3.f);
  for (int rep = 0; rep < 200; ++rep) {
    float x[4] = {u(rng), u(rng), u(rng), u(rng)};
    for (int c = 0; c < 16; ++c) {
      double ref = 0;
      for (int j = 0; j < 4; ++j) ref += ((c >> j) & 1) ? x[j] : -x[j];
      const float t = lut_table_entry(c, x);
      ck.expect(std::abs(t - ref) <= 1e-5 * (1 + std::abs(ref)), "table entry is the signed sum");
      ck.expect(lut_table_entry(c ^ 15, x) == -t, "table is antisymmetric: T(c ^ 15) = -T(c)");
    }
  }
  // Entry layout: 8 chunks x 16 entries, distinct words within a k block's 512 bytes.
  std::set<uint32_t> seen;
  for (int c = 0; c < 8; ++c)
    for (int e = 0; e < 16; ++e) seen.insert(lut_entry_byte(c, e));
  ck.expect(seen.size() == 128 && *seen.rbegin() == kLutKbTableBytes - 4, "table entries tile a 512-byte k block");
  ck.expect(kLutKbTableBytes % 256 == 0 && kLutTokenTableBytes % 128 == 0,
            "k block bases are 256-aligned and token tables bank-aligned");
}

// Bank conflicts of one lookup instruction: all 32 lanes use the same slot and nibble half; the two
// threads of each tile are pairs 0 and 1; tiles read arbitrary entries. Conflict-free means no two
// distinct addresses share a bank, for every choice of entries: it is enough that the sets of banks
// reachable by pair 0 and pair 1 are disjoint and each chunk's entries are in distinct banks.
void check_lookup_banks(Checker& ck) {
  for (int slot = 0; slot < kLutLanesPerThread; ++slot)
    for (int hi = 0; hi < 2; ++hi)
      for (int kbl = 0; kbl < kLutMaxSliceKb; ++kbl)
        for (int token = 0; token < 2; ++token) {
          std::set<int> banks[2];
          bool distinct = true;
          for (int pair = 0; pair < 2; ++pair) {
            const int chunk = lut_chunk(lut_lane(pair, slot), hi);
            for (int e = 0; e < 16; ++e) {
              const uint32_t addr = token * kLutTokenTableBytes + lut_kb_base(kbl, 0) + lut_entry_byte(chunk, e);
              distinct &= banks[pair].insert(smem_bank(addr)).second;
            }
          }
          bool disjoint = true;
          for (int b : banks[0]) disjoint &= !banks[1].count(b);
          ck.expect(distinct && disjoint, "table lookup is bank-conflict-free (slot " + std::to_string(slot) +
                                              ", hi " + std::to_string(hi) + ")");
        }
  // Each thread's lanes: the pair of a tile reads all 4 lanes exactly once.
  std::set<int> lanes;
  for (int pair = 0; pair < 2; ++pair)
    for (int slot = 0; slot < kLutLanesPerThread; ++slot) lanes.insert(lut_lane(pair, slot));
  ck.expect(lanes.size() == 4, "the two threads of a tile cover the 4 lanes once");
  std::set<std::pair<int, int>> owners;
  for (int tid = 0; tid < kLutMaxThreads; ++tid) owners.insert({lut_thread_tile(tid), lut_thread_pair(tid)});
  ck.expect(owners.size() == kLutMaxThreads && lut_thread_tile(kLutMaxThreads - 1) == kLutMaxThreads / 2 - 1,
            "LUT threads map one-to-one to (tile, pair)");
}

// The lookup offsets decoded from packed bytes select the table entry of the right chunk whose index
// is the nibble of beta bits of the packer.
void check_lookup_decode(Checker& ck, const PackedBits& p) {
  const int64_t kb_count = k_blocks(p.k);
  for (int64_t tile = 0; tile < row_tiles(p.m); ++tile)
    for (int64_t kb = 0; kb < kb_count; ++kb)
      for (int i = 0; i < p.bits; ++i) {
        const uint8_t* block = &p.planes[block_offset(tile, kb, i, kb_count, p.bits)];
        const int kbl = int(kb % kLutMaxSliceKb);
        for (int pair = 0; pair < 2; ++pair)
          for (int slot = 0; slot < kLutLanesPerThread; ++slot) {
            const int lane = lut_lane(pair, slot);
            for (int wi = 0; wi < 4; ++wi) {
              uint32_t word;
              std::memcpy(&word, block + lane * 16 + wi * 4, 4);  // little-endian, as on the GPU
              for (int hi = 0; hi < 2; ++hi) {
                const uint32_t offs = lut_offset_bytes(word, lane, hi);
                const int chunk = lut_chunk(lane, hi);
                for (int b = 0; b < 4; ++b) {
                  const int64_t row = tile * kTileRows + 4 * wi + b;
                  int idx = 0;
                  for (int j = 0; j < 4; ++j) {
                    const int64_t col = kb * kBlockK + kChunk * chunk + j;
                    if (row < p.m && col < p.k) idx |= p.beta(row, col, i) << j;
                  }
                  const uint32_t want = lut_kb_base(kbl, 0) + lut_entry_byte(chunk, idx);
                  ck.expect(lut_table_offset(offs, lut_kb_base(kbl, hi), b) == want, "lookup offset decodes the nibble");
                }
              }
            }
          }
      }
}

void check_dequant(Checker& ck, const PackedBits& p) {
  const int64_t kb_count = k_blocks(p.k);
  std::vector<int> hits(kDequantItems, 0);
  for (int item = 0; item < kDequantItems; ++item) {
    const DequantItem d = dequant_item(item);
    const bool in_range = d.tile >= 0 && d.tile < kMmaTilesPerCta && d.lane >= 0 && d.lane < 4 && d.row >= 0 &&
                          d.row < kTileRows;
    ck.expect(in_range, "dequant item in range");
    if (in_range) ++hits[(d.tile * 4 + d.lane) * kTileRows + d.row];
  }
  bool once = true;
  for (int h : hits) once &= h == 1;
  ck.expect(once, "dequant items cover every (tile, lane, row) once");
  // Each weight of a 32-wide k block is written once.
  std::vector<int> k_hits(kBlockK, 0);
  for (int lane = 0; lane < 4; ++lane)
    for (int bit = 0; bit < 8; ++bit) ++k_hits[nibble_bit_k(lane, bit)];
  bool kcover = true;
  for (int h : k_hits) kcover &= h == 1;
  ck.expect(kcover, "nibble bits of the 4 lanes cover k 0..31 once");

  for (int64_t tile = 0; tile < row_tiles(p.m); ++tile)
    for (int64_t kb = 0; kb < kb_count; ++kb)
      for (int lane = 0; lane < 4; ++lane)
        for (int row = 0; row < kTileRows; ++row) {
          uint8_t bytes[4] = {0, 0, 0, 0};
          for (int i = 0; i < p.bits; ++i)
            bytes[i] = p.planes[block_offset(tile, kb, i, kb_count, p.bits) + lane * 16 + row];
          const uint32_t g = gather_plane_bytes(bytes, p.bits);
          for (int bit = 0; bit < 8; ++bit) {
            const int64_t m = tile * kTileRows + row, k = kb * kBlockK + nibble_bit_k(lane, bit);
            const uint32_t want = (m < p.m && k < p.k) ? p.codes[m * p.k + k] : 0;
            ck.expect(code_at(g, bit) == want, "plane bytes decode to the packed code");
            float f;
            const uint32_t fb = code_as_magic_float_bits(g, bit);
            std::memcpy(&f, &fb, 4);
            ck.expect(f - 8388608.0f == float(want), "magic float holds 2^23 + code");
          }
        }
}

// Every code at every bit position, under random neighbouring bits: code_at never carries.
void check_code_extraction(Checker& ck, std::mt19937& rng) {
  bool ok = true;
  for (int p = 0; p < 8; ++p)
    for (uint32_t code = 0; code < 16; ++code)
      for (int rep = 0; rep < 64; ++rep) {
        uint32_t gathered = uint32_t(rng()) & ~(0x01010101u << p);
        for (int i = 0; i < 4; ++i) gathered |= ((code >> i) & 1u) << (8 * i + p);
        ok &= code_at(gathered, p) == code && (code_in_top_byte(gathered, p) >> 28) == 0;
      }
  ck.expect(ok, "code extraction without carries");
}

// ldmatrix + mma fragment agreement, simulated from the PTX definitions.
void check_fragments(Checker& ck) {
  // A: x4 over a 16x16 tile. Matrix r row i is addressed by lane 8r + i.
  std::set<std::pair<int, int>> a_seen;
  bool a_ok = true;
  for (int lane = 0; lane < 32; ++lane)
    for (int r = 0; r < 4; ++r)
      for (int e = 0; e < 2; ++e) {
        const int src = 8 * r + ldsm_elem_row(lane);
        const int row = ldsm_a_row(src), k = ldsm_a_k(src) + ldsm_elem_col(lane, e);
        a_ok &= row == mma_a_row(lane, 2 * r + e) && k == mma_a_k(lane, 2 * r + e);
        a_seen.insert({mma_a_row(lane, 2 * r + e), mma_a_k(lane, 2 * r + e)});
      }
  ck.expect(a_ok, "ldmatrix.x4 A addresses give the m16n8k16 A fragment");
  ck.expect(a_seen.size() == 256, "A fragment covers the 16x16 tile once");
  // B: x4 over two n8 tiles, smem [n][k]. Register r: n tile r / 2, b element pair r % 2.
  std::set<std::pair<int, int>> b_seen;
  bool b_ok = true;
  for (int lane = 0; lane < 32; ++lane)
    for (int r = 0; r < 4; ++r)
      for (int e = 0; e < 2; ++e) {
        const int src = 8 * r + ldsm_elem_row(lane);
        const int n = ldsm_b_n(src), k = ldsm_b_k(src) + ldsm_elem_col(lane, e);
        const int be = 2 * (r % 2) + e;
        b_ok &= n == 8 * (r / 2) + mma_b_n(lane) && k == mma_b_k(lane, be);
        b_seen.insert({n, k});
      }
  ck.expect(b_ok, "ldmatrix.x4 B addresses give two m16n8k16 B fragments");
  ck.expect(b_seen.size() == 256, "B fragments cover 16 n x 16 k once");
  std::set<std::pair<int, int>> c_seen;
  for (int lane = 0; lane < 32; ++lane)
    for (int e = 0; e < 4; ++e) c_seen.insert({mma_c_row(lane, e), mma_c_col(lane, e)});
  ck.expect(c_seen.size() == 128, "C fragment covers the 16x8 tile once");
  // ldmatrix phases: the 8 row addresses of each 8x8 matrix fall in distinct 4-bank groups.
  bool ldsm_ok = true;
  for (int base_row = 0; base_row < kMmaBlockM; base_row += 8)
    for (int k0 = 0; k0 < kBlockK; k0 += 8) {
      std::set<int> groups;
      for (int i = 0; i < 8; ++i) groups.insert(smem_bank(uint32_t(wtile_offset(base_row + i, k0) * 2)) / 4);
      ldsm_ok &= groups.size() == 8 && wtile_offset(base_row, k0) * 2 % 16 == 0;
    }
  ck.expect(ldsm_ok, "ldmatrix rows are 16-byte aligned and conflict-free");
  // Dequant stores (8 bytes each, a half warp per phase) are conflict-free.
  bool sts_ok = true;
  for (int warp = 0; warp < kDequantItems / 32; ++warp)
    for (int half = 0; half < 2; ++half)
      for (int h = 0; h < 2; ++h) {
        std::set<int> banks;
        int count = 0;
        for (int l = 16 * half; l < 16 * half + 16; ++l) {
          const DequantItem d = dequant_item(32 * warp + l);
          const uint32_t byte = uint32_t(wtile_offset(d.tile * kTileRows + d.row, nibble_bit_k(d.lane, 4 * h)) * 2);
          banks.insert(smem_bank(byte));
          banks.insert(smem_bank(byte + 4));
          count += 2;
        }
        sts_ok &= int(banks.size()) == count;
      }
  ck.expect(sts_ok, "dequantized-weight stores are bank-conflict-free");
}

}  // namespace

int cuda_layout_selftest(std::string* report) {
  Checker ck{report};
  std::mt19937 rng(12345);
  check_split_k(ck);
  check_tables(ck, rng);
  check_lookup_banks(ck);
  check_code_extraction(ck, rng);
  check_fragments(ck);
  for (int bits = 1; bits <= 4; ++bits)
    for (auto mk : {std::pair<int64_t, int64_t>{16, 32}, {37, 100}, {50, 257}}) {
      const PackedBits p = pack_random(mk.first, mk.second, bits, rng);
      check_lookup_decode(ck, p);
      check_dequant(ck, p);
    }
  if (report)
    *report += std::to_string(ck.checks) + " checks, " + std::to_string(ck.failures) + " failures\n";
  return ck.failures;
}

}  // namespace lut
}  // namespace fastops
