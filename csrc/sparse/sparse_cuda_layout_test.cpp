// CPU checks of the CUDA sparse kernels' index math (sparse_cuda_layout.h) against definitions written
// independently: the PTX ISA fragment layouts of mma.m16n8k16 and ldmatrix, shared-memory banks, and a host
// packer written from the format description of sparse_format.h. Whole blocks of the spmm kernels are
// emulated lane by lane with the helpers (pipeline stages, cp.async windows and zero fill, the mask scan,
// shuffles, fragment building, ldmatrix, MMA from the PTX definitions, SIMT FMA, split-K partials and their
// reduction) and compared with a dense double-precision product; the packing warps are emulated against the
// host packer bit for bit.
#include "sparse/sparse_cuda_layout_test.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/selftest.h"
#include "sparse/sparse_cuda_layout.h"
#include "sparse/sparse_format.h"

namespace fastops {
namespace sparse {
namespace {

using namespace cuda_layout;

using Checker = SelfTestChecker;

constexpr int kLanes = 32;
using selftest::kPoison;

using selftest::str;
using selftest::cdiv;
using selftest::gid;
using selftest::popc;
using selftest::RC;
using selftest::tig;

// ---------------------------------------------------------------------------------------------------
// PTX ISA definitions ("Matrix Fragments for mma.m16n8k16 with floating point type"): groupID = lane >> 2,
// threadID_in_group = lane % 4; fragment element i of a lane is half i % 2 of its register i / 2.
// A (16 x 16, a0..a7): (row, col).
RC ptx_a(int lane, int i) { return {gid(lane) + ((i % 4) >= 2 ? 8 : 0), tig(lane) * 2 + (i & 1) + (i >= 4 ? 8 : 0)}; }
// B (16 x 8, b0..b3): (k, col).
RC ptx_b(int lane, int i) { return {tig(lane) * 2 + (i & 1) + (i >= 2 ? 8 : 0), gid(lane)}; }
// C / D (16 x 8, c0..c3): (row, col).
RC ptx_c(int lane, int i) { return {gid(lane) + (i >= 2 ? 8 : 0), tig(lane) * 2 + (i & 1)}; }

void check_mma_fragments(Checker& ck) {
  std::set<std::pair<int, int>> a_cover, b_cover, c_cover;
  for (int lane = 0; lane < kLanes; ++lane) {
    for (int reg = 0; reg < 4; ++reg)
      for (int half = 0; half < 2; ++half) {
        const RC e = ptx_a(lane, 2 * reg + half);
        ck.expect(frag_a_row(lane, reg) == e.row && frag_a_col(lane, reg, half) == e.col,
                  "frag_a lane " + str(lane) + " reg " + str(reg) + " half " + str(half));
        a_cover.insert({e.row, e.col});
        // Element (row, 16 step + col) of a chunk is bit 2 row + col % 2 of unit (16 step + col) / 2.
        for (int step = 0; step < kStepsPerChunk; ++step) {
          const int col = 16 * step + e.col;
          ck.expect(a_unit(lane, step, reg) == col / 2 && a_bit(lane, reg, half) == 2 * e.row + col % 2,
                    "a_unit / a_bit lane " + str(lane) + " step " + str(step) + " reg " + str(reg));
        }
      }
    for (int reg = 0; reg < 2; ++reg)
      for (int half = 0; half < 2; ++half) {
        const RC e = ptx_b(lane, 2 * reg + half);
        ck.expect(frag_b_k(lane, reg, half) == e.row && frag_b_col(lane) == e.col,
                  "frag_b lane " + str(lane) + " reg " + str(reg));
        b_cover.insert({e.row, e.col});
      }
    for (int i = 0; i < 4; ++i) {
      const RC e = ptx_c(lane, i);
      ck.expect(frag_c_row(lane, i) == e.row && frag_c_col(lane, i) == e.col, "frag_c lane " + str(lane));
      c_cover.insert({e.row, e.col});
    }
  }
  ck.expect(a_cover.size() == 256 && b_cover.size() == 128 && c_cover.size() == 128, "fragments cover their tiles");
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16 (PTX ISA): lanes 8j .. 8j+7 supply the addresses of rows 0..7 of
// matrix j (16 bytes each); lane l receives in register j elements 2 (l%4), 2 (l%4) + 1 of row l/4 of
// matrix j. `addr` are element indices into `smem` (esz = 2); returns false on a misaligned address.
using LdsmOut = std::array<std::array<std::array<double, 2>, 4>, kLanes>;  // [lane][reg][half]
bool ldsm_x4_emul(const std::vector<double>& smem, const int addr[kLanes], LdsmOut& out) {
  for (int lane = 0; lane < kLanes; ++lane)
    if ((addr[lane] * 2) % 16 != 0 || addr[lane] < 0 || size_t(addr[lane]) + 8 > smem.size()) return false;
  for (int lane = 0; lane < kLanes; ++lane)
    for (int j = 0; j < 4; ++j)
      for (int h = 0; h < 2; ++h) out[lane][j][h] = smem[size_t(addr[8 * j + lane / 4] + 2 * (lane % 4) + h)];
  return true;
}
// A phase of eight 16-byte accesses is conflict-free iff they hit 8 distinct 16-byte bank groups.
bool distinct_bank_groups(const int* byte_addr, int count) {
  std::set<int> g;
  for (int i = 0; i < count; ++i) g.insert((byte_addr[i] / 16) % 8);
  return int(g.size()) == count;
}

// The B operand of every (n8 tile, k step) from ldmatrix matches the x tile, conflict-free.
void check_ldmatrix(Checker& ck) {
  constexpr int esz = 2;
  for (int ntiles : {1, 2, 4}) {
    std::vector<double> xs(size_t(x_tile_bytes(esz, ntiles) / esz));
    for (size_t i = 0; i < xs.size(); ++i) xs[i] = double(i);
    for (int nt = 0; nt < ntiles; ++nt)
      for (int kp = 0; kp < kStepsPerChunk / 2; ++kp) {
        int addr[kLanes], bytes[kLanes];
        for (int l = 0; l < kLanes; ++l) {
          addr[l] = x_smem_elem(ldsm_b_token(l, nt), ldsm_b_col(l, kp), esz);
          bytes[l] = addr[l] * esz;
        }
        LdsmOut out;
        const bool ok = ldsm_x4_emul(xs, addr, out);
        ck.expect(ok, "ldmatrix B addresses aligned and inside the tile, ntiles " + str(ntiles));
        bool conflict_free = true;
        for (int j = 0; j < 4; ++j) conflict_free &= distinct_bank_groups(bytes + 8 * j, 8);
        ck.expect(conflict_free, "ldmatrix B conflict-free, nt " + str(nt) + " kp " + str(kp));
        if (!ok) continue;
        for (int l = 0; l < kLanes; ++l)
          for (int j = 0; j < 4; ++j)
            for (int h = 0; h < 2; ++h) {
              // ldmatrix must deliver the B fragment ownership (frag_b_*, checked against the PTX ISA).
              const int step = ldsm_b_step(kp, j), reg = ldsm_b_reg(j);
              const int want =
                  x_smem_elem(kNTileTokens * nt + frag_b_col(l), kStepCols * step + frag_b_k(l, reg, h), esz);
              ck.expect(out[l][j][h] == double(want), "ldmatrix B element lane " + str(l) + " reg " + str(j));
            }
      }
  }
}

// ---------------------------------------------------------------------------------------------------
void check_stage_layout(Checker& ck) {
  for (int esz : {2, 4}) {
    for (int ntiles : {1, 2, 4}) {
      if (esz == 4 && ntiles == 4) continue;
      const int sb = stage_bytes(esz, ntiles);
      std::vector<int> owner(size_t(sb), -1);
      bool overlap = false;
      auto claim = [&](int begin, int bytes, int id) {
        for (int b = begin; b < begin + bytes; ++b) {
          if (b < 0 || b >= sb || owner[size_t(b)] != -1)
            overlap = true;
          else
            owner[size_t(b)] = id;
        }
      };
      for (int w = 0; w < kWarps; ++w) {
        ck.expect(stage_mask_offset(w) % 16 == 0 && stage_window_offset(w, esz) % 16 == 0, "stage parts aligned");
        claim(stage_mask_offset(w), kMaskBytes, w);
        claim(stage_window_offset(w, esz), window_bytes(esz), kWarps + w);
      }
      ck.expect(stage_x_offset(esz) % 16 == 0 && sb % 16 == 0, "x tile and stage aligned");
      claim(stage_x_offset(esz), x_tile_bytes(esz, ntiles), 2 * kWarps);
      ck.expect(!overlap, "stage parts disjoint, esz " + str(esz) + " ntiles " + str(ntiles));
      ck.expect((x_row_elems(esz) * esz) % 16 == 0 && x_row_elems(esz) >= kChunkCols, "x row stride");
      // A100 opt-in limit (163 KB); leaves room for more than one block per SM.
      ck.expect(smem_bytes(esz, ntiles) <= selftest::kSmemOptInSm80 / 2, "smem per block, esz " + str(esz) + " ntiles " + str(ntiles));
      // Copy work covers the x tile exactly once, inside each row.
      std::vector<int> hit(size_t(x_tile_bytes(esz, ntiles) / esz), 0);
      for (int g = 0; g < x_tile_granules(esz, ntiles); ++g) {
        const int t = x_granule_token(g, esz), c = x_granule_col(g, esz);
        ck.expect(t < tile_tokens(ntiles) && c + kGranuleBytes / esz <= kChunkCols &&
                      (x_smem_elem(t, c, esz) * esz) % 16 == 0,
                  "x granule " + str(g));
        for (int e = 0; e < kGranuleBytes / esz; ++e) ++hit[size_t(x_smem_elem(t, c + e, esz))];
      }
      int covered = 0, twice = 0;
      for (int t = 0; t < tile_tokens(ntiles); ++t)
        for (int c = 0; c < kChunkCols; ++c) {
          const int h = hit[size_t(x_smem_elem(t, c, esz))];
          covered += h >= 1;
          twice += h > 1;
        }
      ck.expect(covered == tile_tokens(ntiles) * kChunkCols && twice == 0, "x granules tile the x tile");
      // SIMT lanes own the (row, token) pairs of the tile exactly once.
      std::set<std::pair<int, int>> own;
      for (int l = 0; l < kLanes; ++l)
        for (int j = 0; j < simt_tokens_per_lane(ntiles); ++j) own.insert({simt_row(l), simt_token(l, j, ntiles)});
      ck.expect(int(own.size()) == kStripRows * tile_tokens(ntiles), "SIMT lanes cover the tile");
    }
    // A dense chunk with the worst head fits the window.
    ck.expect(window_bytes(esz) >= (kGranuleBytes - esz) + kMaxChunkValues * esz &&
                  window_bytes(esz) / kGranuleBytes == window_granules_max(esz),
              "window capacity esz " + str(esz));
  }
  // Stage heads round-trip.
  for (int stages = 1; stages <= 4; ++stages) {
    uint32_t heads = 0;
    std::vector<int> want(size_t(stages), 0);
    std::mt19937 rng(7u + unsigned(stages));
    for (int it = 0; it < 64; ++it) {
      const int s = int(rng() % unsigned(stages)), h = int(rng() % 16);
      heads = set_stage_head(heads, s, h);
      want[size_t(s)] = h;
      bool ok = true;
      for (int i = 0; i < stages; ++i) ok &= stage_head(heads, i) == want[size_t(i)];
      ck.expect(ok, "stage heads round-trip");
    }
  }
  ck.expect(pipeline_stages(2) * kHeadBits <= 32 && pipeline_stages(4) * kHeadBits <= 32, "heads fit a register");
}

void check_windows(Checker& ck, std::mt19937& rng) {
  for (int esz : {2, 4})
    for (int it = 0; it < 2000; ++it) {
      const uint64_t base = 0x10000 + uint64_t(rng() % 8) * uint64_t(esz);
      const int64_t start = int64_t(rng() % 100000);
      const int64_t count = it % 5 == 0 ? 0 : it % 5 == 1 ? kMaxChunkValues : int64_t(rng() % (kMaxChunkValues + 1));
      const ValueWindow w = value_window(base, esz, start, start + count);
      const uint64_t begin = base + uint64_t(start * esz), stop = base + uint64_t((start + count) * esz);
      bool ok = w.first_byte % 16 == 0 && w.first_byte <= begin && begin - w.first_byte < 16 &&
                uint64_t(w.head) * uint64_t(esz) == begin - w.first_byte;
      if (count > 0)
        ok &= w.first_byte + uint64_t(w.granules) * 16 >= stop && w.first_byte + uint64_t(w.granules - 1) * 16 < stop;
      else
        ok &= w.granules == 0;
      ok &= w.granules <= window_granules_max(esz) && window_slot(w.head, int(count)) <= window_bytes(esz) / esz;
      ck.expect(ok, "value_window esz " + str(esz) + " start " + str(start) + " count " + str(count));
    }
  for (int it = 0; it < 3000; ++it) {
    const uint32_t mask = it % 7 == 0 ? 0xffffffffu : it % 7 == 1 ? 0u : uint32_t(rng());
    const int bit0 = 2 * int(rng() % 16), off = int(rng() % 1000), head = int(rng() % 8);
    const PairSlots s = pair_slots(mask, off, head, bit0);
    const bool ok = s.has_lo == bool((mask >> bit0) & 1u) && s.has_hi == bool((mask >> (bit0 + 1)) & 1u) &&
                    s.lo == head + off + popc(mask & ((1u << bit0) - 1u)) &&
                    s.hi == head + off + popc(bit0 + 1 == 32 ? mask : mask & ((1u << (bit0 + 1)) - 1u)) &&
                    s.hi == head + off + value_rank(mask, bit0 + 1);
    ck.expect(ok, "pair_slots mask " + str(mask) + " bit " + str(bit0));
  }
  for (int esz : {2, 4})
    for (int64_t k : {1, 7, 8, 9, 63, 64, 65, 100})
      for (int64_t col = 0; col < 128; col += kGranuleBytes / esz) {
        const int b = x_copy_bytes(col, k, esz);
        const int64_t valid = col < k ? (k - col < kGranuleBytes / esz ? k - col : kGranuleBytes / esz) : 0;
        ck.expect(b == valid * esz, "x_copy_bytes col " + str(col) + " k " + str(k));
      }
  ck.expect(x_vec_ok(0x1000, 64, 5, 2) && !x_vec_ok(0x1002, 64, 5, 2) && !x_vec_ok(0x1000, 65, 5, 2) &&
                x_vec_ok(0x1000, 65, 1, 2) && x_vec_ok(0x1000, 4, 3, 4) && !x_vec_ok(0x1000, 6, 3, 4),
            "x_vec_ok");
}

// ---------------------------------------------------------------------------------------------------
// Split-K plan and rasterization.
void check_plan(Checker& ck) {
  const int64_t ms[] = {1, 2, 15, 16, 17, 63, 64, 65, 1000, 4096, 12288, int64_t(1) << 20};
  const int64_t ks[] = {0, 1, 2, 63, 64, 65, 127, 4096, 11008, int64_t(1) << 20, kMaxCols};
  const int64_t ns[] = {1, 2, 7, 8, 9, 16, 17, 24, 32, 33, 100, 4096, int64_t(1) << 20, int64_t(1) << 33};
  for (int esz : {2, 4})
    for (int64_t sms : {1, 108, 132})
      for (int64_t m : ms)
        for (int64_t k : ks)
          for (int64_t n : ns) {
            const SpmmPlan p = make_spmm_plan(m, k, n, sms, esz);
            const std::string what =
                "plan m " + str(m) + " k " + str(k) + " n " + str(n) + " sms " + str(sms) + " esz " + str(esz);
            const int want_nt = n <= 8 ? 1 : (n <= 16 || esz == 4) ? 2 : 4;
            ck.expect(p.ntiles == want_nt, what + ": ntiles");
            const int64_t tt = tile_tokens(p.ntiles);
            ck.expect(p.token_tiles * tt >= n && (p.token_tiles - 1) * tt < n, what + ": token tiles cover n");
            ck.expect(p.strips == cdiv(m, 16) && p.chunks == cdiv(k, 64) && p.strip_groups * kWarps >= p.strips &&
                          (p.strip_groups - 1) * kWarps < p.strips,
                      what + ": strips / chunks / groups");
            // Split ranges tile [0, C) in order, none empty, at most kMaxSplits.
            bool tiled = p.splits >= 1 && p.splits <= kMaxSplits && split_chunk_begin(p, 0) == 0 &&
                         split_chunk_end(p, p.splits - 1) == p.chunks;
            for (int64_t s = 0; s + 1 < p.splits; ++s) tiled &= split_chunk_end(p, s) == split_chunk_begin(p, s + 1);
            for (int64_t s = 0; s < p.splits && p.chunks > 0; ++s)
              tiled &= split_chunk_end(p, s) > split_chunk_begin(p, s);
            ck.expect(tiled, what + ": split ranges tile the chunks");
            const int64_t base = p.strip_groups * p.token_tiles;
            ck.expect(p.splits == 1 || (p.chunks_per_split >= kMinChunksPerSplit && base < kTargetBlocksPerSm * sms),
                      what + ": split only when the grid is short, >= kMinChunksPerSplit chunks each");
            // Enough splits for the target, or at least half of what the chunk limit allows.
            const int64_t room = std::min<int64_t>(kMaxSplits, std::max<int64_t>(1, p.chunks / kMinChunksPerSplit));
            const int64_t target = kTargetBlocksPerSm * sms;
            ck.expect(base * p.splits >= target || 2 * p.splits >= std::min(cdiv(target, base), room),
                      what + ": split-K reaches the target or the chunk limit");
            ck.expect(p.tiles == base * p.splits, what + ": tiles");
            const bool launchable = plan_launchable(p);
            ck.expect(launchable == (p.tiles >= 1 && p.tiles <= kMaxGridX), what + ": launchable");
            // Every launchable plan with split-K keeps a small workspace.
            ck.expect(!launchable || workspace_bytes(p, n, m) <= (int64_t(64) << 20),
                      what + ": workspace " + str(workspace_bytes(p, n, m)));
            ck.expect((p.splits > 1) == (workspace_bytes(p, n, m) > 0), what + ": workspace iff split");
            if (launchable && p.splits > 1) {
              // Last partial's index is the last workspace element.
              ck.expect(workspace_index(p.splits - 1, n - 1, m - 1, n, m) * 4 + 4 == workspace_bytes(p, n, m),
                        what + ": workspace index range");
            }
            if (launchable) {
              const TileCoords last = tile_coords(p, uint32_t(p.tiles - 1));
              ck.expect(last.split < p.splits && last.strip_group < p.strip_groups && last.token_tile < p.token_tiles,
                        what + ": last tile in range");
            }
          }
  // Exact bijection of tile ids onto (split, strip group, token tile).
  for (int64_t groups : {1, 2, 3, 5})
    for (int64_t token_tiles : {1, 2, 15, 16, 17, 40})
      for (int64_t splits : {1, 3}) {
        SpmmPlan p{};
        p.ntiles = 4;
        p.strip_groups = groups;
        p.token_tiles = token_tiles;
        p.splits = splits;
        p.tiles = groups * token_tiles * splits;
        std::set<std::array<int64_t, 3>> seen;
        bool in_range = true;
        for (int64_t id = 0; id < p.tiles; ++id) {
          const TileCoords t = tile_coords(p, uint32_t(id));
          in_range &= t.split >= 0 && t.split < splits && t.strip_group >= 0 && t.strip_group < groups &&
                      t.token_tile >= 0 && t.token_tile < token_tiles;
          seen.insert({t.split, t.strip_group, t.token_tile});
        }
        ck.expect(in_range && int64_t(seen.size()) == p.tiles,
                  "tile_coords bijection groups " + str(groups) + " token tiles " + str(token_tiles));
      }
  // Workspace index is a bijection.
  {
    const int64_t splits = 3, n = 5, m = 7;
    std::set<int64_t> idx;
    for (int64_t s = 0; s < splits; ++s)
      for (int64_t t = 0; t < n; ++t)
        for (int64_t r = 0; r < m; ++r) idx.insert(workspace_index(s, t, r, n, m));
    ck.expect(int64_t(idx.size()) == splits * n * m && *idx.rbegin() == splits * n * m - 1, "workspace_index");
  }
}

// ---------------------------------------------------------------------------------------------------
// The format, written from sparse_format.h's description (no layout helpers).
struct Packed {
  int64_t m = 0, k = 0, strips = 0, units = 0, chunks = 0;
  std::vector<uint32_t> masks;
  std::vector<double> values;  // nnz + 32 trailing zeros
  std::vector<int64_t> strip_offsets;
  std::vector<int32_t> chunk_offsets;
};
Packed pack_reference(int64_t m, int64_t k, const std::vector<double>& dense) {
  Packed p;
  p.m = m;
  p.k = k;
  p.strips = (m + 15) / 16;
  const int64_t kp = (k + 63) / 64 * 64;
  p.units = kp / 2;
  p.chunks = kp / 64;
  p.masks.assign(size_t(p.strips * p.units), 0u);
  p.strip_offsets.assign(size_t(p.strips + 1), 0);
  p.chunk_offsets.assign(size_t(p.strips * p.chunks), 0);
  for (int64_t s = 0; s < p.strips; ++s) {
    p.strip_offsets[size_t(s)] = int64_t(p.values.size());
    for (int64_t u = 0; u < p.units; ++u) {
      if (u % 32 == 0)
        p.chunk_offsets[size_t(s * p.chunks + u / 32)] = int32_t(int64_t(p.values.size()) - p.strip_offsets[size_t(s)]);
      uint32_t mask = 0;
      for (int r = 0; r < 16; ++r)
        for (int j = 0; j < 2; ++j) {
          const int64_t row = 16 * s + r, col = 2 * u + j;
          if (row < m && col < k && dense[size_t(row * k + col)] != 0.0) {
            mask |= 1u << (2 * r + j);
            p.values.push_back(dense[size_t(row * k + col)]);
          }
        }
      p.masks[size_t(s * p.units + u)] = mask;
    }
  }
  p.strip_offsets[size_t(p.strips)] = int64_t(p.values.size());
  p.values.resize(p.values.size() + 32, 0.0);
  return p;
}

// Random W with per-(strip, chunk) patterns: empty, dense, 50 / 10 / 90 %, alternating empty / full units;
// some zeros are -0.0 (zero for the format).
std::vector<double> make_dense(int64_t m, int64_t k, std::mt19937& rng) {
  std::vector<double> w(size_t(m * k), 0.0);
  std::uniform_real_distribution<double> val(0.05, 1.0);
  const int64_t blocks_r = (m + 15) / 16, blocks_c = (k + 63) / 64;
  for (int64_t br = 0; br < blocks_r; ++br)
    for (int64_t bc = 0; bc < blocks_c; ++bc) {
      const int pattern = int(rng() % 6);
      for (int64_t r = 16 * br; r < std::min(m, 16 * br + 16); ++r)
        for (int64_t c = 64 * bc; c < std::min(k, 64 * bc + 64); ++c) {
          bool nz;
          switch (pattern) {
            case 0:
              nz = false;
              break;
            case 1:
              nz = true;
              break;
            case 2:
              nz = rng() % 2 == 0;
              break;
            case 3:
              nz = rng() % 10 == 0;
              break;
            case 4:
              nz = rng() % 10 != 0;
              break;
            default:
              nz = (c / 2) % 2 == 0;
              break;
          }
          const double v = nz ? (rng() % 2 ? val(rng) : -val(rng)) : (rng() % 4 == 0 ? -0.0 : 0.0);
          w[size_t(r * k + c)] = v;
        }
    }
  return w;
}

// Simulated device buffer: doubles at a byte address, esz bytes each.
struct DeviceArray {
  uint64_t base = 0;
  int esz = 2;
  std::vector<double> data;
  bool holds(uint64_t addr) const {
    return addr >= base && (addr - base) % uint64_t(esz) == 0 && (addr - base) / uint64_t(esz) < data.size();
  }
  double at(uint64_t addr) const { return data[size_t((addr - base) / uint64_t(esz))]; }
};

struct SpmmCase {
  int64_t m, k, n;
  int esz;
  int64_t sms;
  bool aligned;  // values and x 16-byte aligned with 16-byte rows (cp.async paths), else the fallbacks
  bool bias;
};

// Lane-by-lane emulation of spmm_kernel (+ spmm_splitk_reduce_kernel) on one case.
class SpmmEmulator {
 public:
  SpmmEmulator(Checker& ck, const SpmmCase& cs, std::mt19937& rng) : ck_(ck), cs_(cs) {
    name_ = "spmm m " + str(cs.m) + " k " + str(cs.k) + " n " + str(cs.n) + " esz " + str(cs.esz) + " sms " +
            str(cs.sms) + (cs.aligned ? " aligned" : " unaligned");
    dense_ = make_dense(cs.m, cs.k, rng);
    pk_ = pack_reference(cs.m, cs.k, dense_);
    const int per_granule = kGranuleBytes / cs.esz;
    values_.esz = x_.esz = cs.esz;
    values_.base = 0x100000 + (cs.aligned ? 0 : uint64_t(cs.esz));
    values_.data = pk_.values;
    x_stride_ = cs.aligned ? cdiv(cs.k, per_granule) * per_granule + per_granule : cs.k + 1;
    y_stride_ = cs.m + (cs.aligned ? 0 : 3);
    x_.base = 0x4000000 + (cs.aligned ? 0 : uint64_t(cs.esz));
    // Past k, rows hold NaN: the kernels must zero-fill, never multiply it by a padded zero.
    x_.data.assign(size_t(cs.n * x_stride_), kPoison);
    std::uniform_real_distribution<double> val(-1.0, 1.0);
    for (int64_t t = 0; t < cs.n; ++t)
      for (int64_t c = 0; c < cs.k; ++c) x_.data[size_t(t * x_stride_ + c)] = val(rng);
    bias_.assign(size_t(cs.m), 0.0);
    if (cs.bias)
      for (auto& b : bias_) b = val(rng);
    plan_ = make_spmm_plan(cs.m, cs.k, cs.n, cs.sms, cs.esz);
    x_vec_ = x_vec_ok(x_.base, x_stride_, cs.n, cs.esz);
    values_vec_ = values_.base % kGranuleBytes == 0;
    ck.expect(x_vec_ == cs.aligned, name_ + ": x path");
    ck.expect(values_vec_ == cs.aligned, name_ + ": values path");
  }

  void run() {
    ck_.expect(plan_launchable(plan_), name_ + ": launchable");
    if (!plan_launchable(plan_)) return;
    const bool split = plan_.splits > 1;
    out_.assign(size_t(split ? plan_.splits * cs_.n * cs_.m : cs_.n * y_stride_), kPoison);
    writes_.assign(out_.size(), 0);
    for (int64_t id = 0; id < plan_.tiles; ++id) run_block(uint32_t(id));
    // Every output (partial) written exactly once, nothing else.
    bool once = true;
    for (int64_t t = 0; t < cs_.n; ++t)
      for (int64_t r = 0; r < cs_.m; ++r)
        for (int64_t s = 0; s < (split ? plan_.splits : 1); ++s)
          once &= writes_[size_t(split ? workspace_index(s, t, r, cs_.n, cs_.m) : t * y_stride_ + r)] == 1;
    int64_t total = 0;
    for (int w : writes_) total += w;
    ck_.expect(once && total == (split ? plan_.splits : 1) * cs_.n * cs_.m, name_ + ": outputs written once");
    // Reduction (split order) and comparison with the dense product.
    int64_t bad = 0;
    double worst = 0;
    for (int64_t t = 0; t < cs_.n; ++t)
      for (int64_t r = 0; r < cs_.m; ++r) {
        double y;
        if (split) {
          y = 0;
          for (int64_t s = 0; s < plan_.splits; ++s) y += out_[size_t(workspace_index(s, t, r, cs_.n, cs_.m))];
          y += bias_[size_t(r)];
        } else {
          y = out_[size_t(t * y_stride_ + r)];
        }
        double ref = bias_[size_t(r)], mag = std::fabs(ref);
        for (int64_t c = 0; c < cs_.k; ++c) {
          ref += x_.data[size_t(t * x_stride_ + c)] * dense_[size_t(r * cs_.k + c)];
          mag += std::fabs(x_.data[size_t(t * x_stride_ + c)] * dense_[size_t(r * cs_.k + c)]);
        }
        const double err = std::fabs(y - ref);
        if (!(err <= 1e-12 * (1.0 + mag))) ++bad;
        if (err > worst || std::isnan(err)) worst = err;
      }
    ck_.expect(bad == 0, name_ + ": " + str(bad) + " outputs differ from the dense product (worst " +
                             std::to_string(worst) + ")");
  }

 private:
  struct Stage {
    std::array<std::array<uint32_t, kLanes>, kWarps> masks{};
    std::array<std::vector<double>, kWarps> win;
    std::vector<double> xs;
  };
  struct WarpState {
    bool active = false;
    int64_t strip = 0, value_begin = 0;
    int strip_values = 0;
    std::array<int, kLanes> cur{}, next{};
    uint32_t heads = 0;
  };
  static constexpr int kMaxNTilesEmu = 4;
  using Acc = std::array<std::array<std::array<double, 4>, kMaxNTilesEmu>, kLanes>;  // [lane][nt][elem]

  int load_bound(const WarpState& w, int64_t chunk0, int nchunks, int batch, int lane) const {
    const int64_t c = bound_chunk(chunk0, batch, lane);
    if (c - chunk0 > nchunks) return 0;
    return c < plan_.chunks ? pk_.chunk_offsets[size_t(chunk_index(w.strip, c, plan_.chunks))] : w.strip_values;
  }

  void stage_x(std::vector<double>& xs, int64_t col0, int64_t token0) {
    const int esz = cs_.esz, per = kGranuleBytes / esz;
    xs.assign(size_t(x_tile_bytes(esz, plan_.ntiles) / esz), kPoison);
    bool ok = true;
    for (int g = 0; g < x_tile_granules(esz, plan_.ntiles); ++g) {
      const int token = x_granule_token(g, esz), col = x_granule_col(g, esz);
      const int64_t t = token0 + token, c = col0 + col;
      const int dst = x_smem_elem(token, col, esz);
      if (x_vec_) {
        const int bytes = t < cs_.n ? x_copy_bytes(c, cs_.k, esz) : 0;
        const uint64_t src = x_.base + uint64_t((t * x_stride_ + c) * esz);
        if (bytes > 0) ok &= src % 16 == 0;
        for (int e = 0; e < per; ++e) {
          if (e * esz < bytes) {
            ok &= x_.holds(src + uint64_t(e * esz)) && c + e < cs_.k;
            xs[size_t(dst + e)] = x_.holds(src + uint64_t(e * esz)) ? x_.at(src + uint64_t(e * esz)) : kPoison;
          } else {
            xs[size_t(dst + e)] = 0.0;
          }
        }
      } else {
        for (int e = 0; e < per; ++e)
          xs[size_t(dst + e)] = t < cs_.n && c + e < cs_.k ? x_.data[size_t(t * x_stride_ + c + e)] : 0.0;
      }
    }
    ck_.expect(ok, name_ + ": x copies aligned and inside the rows");
  }

  void issue(std::vector<Stage>& stages, std::array<WarpState, kWarps>& ws, int64_t chunk0, int nchunks, int j,
             int64_t token0) {
    const int esz = cs_.esz;
    const int stage = j % pipeline_stages(esz);
    Stage& sg = stages[size_t(stage)];
    const int64_t chunk = chunk0 + j;
    stage_x(sg.xs, chunk * kChunkCols, token0);
    for (int warp = 0; warp < kWarps; ++warp) {
      WarpState& w = ws[size_t(warp)];
      if (!w.active) continue;
      if (j > 0 && bound_lane(j) == 0) {
        w.cur = w.next;
        for (int l = 0; l < kLanes; ++l) w.next[size_t(l)] = load_bound(w, chunk0, nchunks, bound_batch(j) + 1, l);
      }
      const int start = w.cur[size_t(bound_lane(j))];
      const int end = (bound_batch(j + 1) == bound_batch(j) ? w.cur : w.next)[size_t(bound_lane(j + 1))];
      // The bounds must be the format's own chunk bounds.
      const int64_t s = w.strip;
      const int64_t want_start = pk_.chunk_offsets[size_t(s * pk_.chunks + chunk)];
      const int64_t want_end = chunk + 1 < pk_.chunks ? pk_.chunk_offsets[size_t(s * pk_.chunks + chunk + 1)]
                                                      : pk_.strip_offsets[size_t(s + 1)] - pk_.strip_offsets[size_t(s)];
      ck_.expect(start == want_start && end == want_end,
                 name_ + ": chunk bounds strip " + str(s) + " chunk " + str(chunk));
      for (int l = 0; l < kLanes; ++l) {
        const int64_t u = chunk_unit(chunk, l);
        sg.masks[size_t(warp)][size_t(l)] =
            u < pk_.units ? pk_.masks[size_t(mask_index(s, u, pk_.units))] : 0xdeadbeefu;
      }
      const ValueWindow win = value_window(values_.base, esz, w.value_begin + start, w.value_begin + end);
      w.heads = set_stage_head(w.heads, stage, win.head);
      std::vector<double>& dst = sg.win[size_t(warp)];
      dst.assign(size_t(window_bytes(esz) / esz), kPoison);
      bool inside = true;
      if (values_vec_) {
        for (int g = 0; g < win.granules; ++g)
          for (int e = 0; e < kGranuleBytes / esz; ++e) {
            const uint64_t addr = win.first_byte + uint64_t(g * kGranuleBytes + e * esz);
            inside &= values_.holds(addr);
            dst[size_t(g * (kGranuleBytes / esz) + e)] = values_.holds(addr) ? values_.at(addr) : kPoison;
          }
      } else {
        const int room = window_bytes(esz) / esz - win.head;
        const int count = end - start < room ? end - start : room;
        for (int e = 0; e < count; ++e)
          dst[size_t(window_slot(win.head, e))] = values_.data[size_t(w.value_begin + start + e)];
      }
      ck_.expect(inside, name_ + ": value copies inside the values array");
    }
  }

  // Exclusive popc scan over the lanes (the kernel's shfl_up scan).
  static std::array<int, kLanes> unit_offsets(const std::array<uint32_t, kLanes>& mask) {
    std::array<int, kLanes> off{};
    int run = 0;
    for (int l = 0; l < kLanes; ++l) {
      off[size_t(l)] = run;
      run += popc(mask[size_t(l)]);
    }
    return off;
  }
  double read_slot(const std::vector<double>& win, int slot, bool& ok) const {
    if (slot < 0 || size_t(slot) >= win.size() || std::isnan(win[size_t(slot)])) {
      ok = false;
      return kPoison;
    }
    return win[size_t(slot)];
  }
  double w_at(int64_t row, int64_t col) const {
    return row < cs_.m && col < cs_.k ? dense_[size_t(row * cs_.k + col)] + 0.0 : 0.0;  // -0.0 -> +0.0
  }
  double x_at(int64_t token, int64_t col) const {
    return token < cs_.n && col < cs_.k ? x_.data[size_t(token * x_stride_ + col)] : 0.0;
  }

  void compute_mma(const Stage& sg, const WarpState& w, int warp, int stage, int64_t chunk, int64_t token0, Acc& acc) {
    const int esz = 2, nt_count = plan_.ntiles;
    const int head = stage_head(w.heads, stage);
    const auto& mask = sg.masks[size_t(warp)];
    const auto off = unit_offsets(mask);
    const std::vector<double>& win = sg.win[size_t(warp)];
    // B fragments by ldmatrix: b[lane][nt][step][reg][half].
    std::vector<std::array<std::array<std::array<std::array<double, 2>, 2>, kStepsPerChunk>, kMaxNTilesEmu>> b(kLanes);
    bool ldsm_ok = true;
    for (int nt = 0; nt < nt_count; ++nt)
      for (int kp = 0; kp < kStepsPerChunk / 2; ++kp) {
        int addr[kLanes];
        for (int l = 0; l < kLanes; ++l) addr[l] = x_smem_elem(ldsm_b_token(l, nt), ldsm_b_col(l, kp), esz);
        LdsmOut out;
        ldsm_ok &= ldsm_x4_emul(sg.xs, addr, out);
        for (int l = 0; l < kLanes; ++l)
          for (int j = 0; j < 4; ++j)
            for (int h = 0; h < 2; ++h)
              b[size_t(l)][size_t(nt)][size_t(ldsm_b_step(kp, j))][size_t(ldsm_b_reg(j))][size_t(h)] =
                  out[size_t(l)][size_t(j)][size_t(h)];
      }
    ck_.expect(ldsm_ok, name_ + ": ldmatrix addresses");
    for (int step = 0; step < kStepsPerChunk; ++step) {
      double a[kLanes][4][2];
      bool reads_ok = true;
      for (int l = 0; l < kLanes; ++l)
        for (int pair = 0; pair < 2; ++pair) {
          const int unit = a_unit(l, step, 2 * pair);
          const uint32_t um = mask[size_t(unit)];  // __shfl_sync(mask, unit)
          const int uo = off[size_t(unit)];
          for (int r = 2 * pair; r < 2 * pair + 2; ++r) {
            const PairSlots s = pair_slots(um, uo, head, a_bit(l, r, 0));
            a[l][r][0] = s.has_lo ? read_slot(win, s.lo, reads_ok) : 0.0;
            a[l][r][1] = s.has_hi ? read_slot(win, s.hi, reads_ok) : 0.0;
          }
        }
      ck_.expect(reads_ok, name_ + ": fragment reads hit staged values");
      // The matrices the MMA sees (PTX definitions) against W and x.
      double am[16][16], bm[kMaxNTilesEmu][16][8];
      for (int l = 0; l < kLanes; ++l) {
        for (int i = 0; i < 8; ++i) {
          const RC e = ptx_a(l, i);
          am[e.row][e.col] = a[l][i / 2][i % 2];
        }
        for (int nt = 0; nt < nt_count; ++nt)
          for (int i = 0; i < 4; ++i) {
            const RC e = ptx_b(l, i);
            bm[nt][e.row][e.col] = b[size_t(l)][size_t(nt)][size_t(step)][size_t(i / 2)][size_t(i % 2)];
          }
      }
      bool a_ok = true, b_ok = true;
      const int64_t col0 = chunk * kChunkCols + kStepCols * step;
      for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c) a_ok &= am[r][c] == w_at(w.strip * kStripRows + r, col0 + c);
      for (int nt = 0; nt < nt_count; ++nt)
        for (int kk = 0; kk < 16; ++kk)
          for (int c = 0; c < 8; ++c) b_ok &= bm[nt][kk][c] == x_at(token0 + nt * kNTileTokens + c, col0 + kk);
      ck_.expect(a_ok,
                 name_ + ": A fragments = W, strip " + str(w.strip) + " chunk " + str(chunk) + " step " + str(step));
      ck_.expect(b_ok, name_ + ": B fragments = x, chunk " + str(chunk) + " step " + str(step));
      for (int l = 0; l < kLanes; ++l)
        for (int nt = 0; nt < nt_count; ++nt)
          for (int i = 0; i < 4; ++i) {
            const RC e = ptx_c(l, i);
            double s = 0;
            for (int kk = 0; kk < 16; ++kk) s += am[e.row][kk] * bm[nt][kk][e.col];
            acc[size_t(l)][size_t(nt)][size_t(i)] += s;
          }
    }
  }

  void compute_simt(const Stage& sg, const WarpState& w, int warp, int stage, int64_t chunk, Acc& acc) {
    const int esz = 4, nt_count = plan_.ntiles;
    const int head = stage_head(w.heads, stage);
    const auto& mask = sg.masks[size_t(warp)];
    const auto off = unit_offsets(mask);
    const std::vector<double>& win = sg.win[size_t(warp)];
    bool reads_ok = true, w_ok = true;
    for (int l = 0; l < kLanes; ++l) {
      const int row = simt_row(l), bit0 = unit_bit(row, 0);
      for (int u = 0; u < kUnitsPerChunk; ++u) {
        const PairSlots s = pair_slots(mask[size_t(u)], off[size_t(u)], head, bit0);
        const double v0 = s.has_lo ? read_slot(win, s.lo, reads_ok) : 0.0;
        const double v1 = s.has_hi ? read_slot(win, s.hi, reads_ok) : 0.0;
        const int64_t col = chunk * kChunkCols + kUnitCols * u;
        w_ok &= v0 == w_at(w.strip * kStripRows + row, col) && v1 == w_at(w.strip * kStripRows + row, col + 1);
        for (int j = 0; j < simt_tokens_per_lane(nt_count); ++j) {
          const int token = simt_token(l, j, nt_count);
          const double x0 = sg.xs[size_t(x_smem_elem(token, kUnitCols * u, esz))];
          const double x1 = sg.xs[size_t(x_smem_elem(token, kUnitCols * u + 1, esz))];
          acc[size_t(l)][size_t(j / 4)][size_t(j % 4)] += v0 * x0 + v1 * x1;
        }
      }
    }
    ck_.expect(reads_ok, name_ + ": SIMT reads hit staged values");
    ck_.expect(w_ok, name_ + ": SIMT values = W, strip " + str(w.strip) + " chunk " + str(chunk));
  }

  void write(int64_t split, int64_t token, int64_t row, double v) {
    size_t idx;
    if (plan_.splits > 1) {
      idx = size_t(workspace_index(split, token, row, cs_.n, cs_.m));
    } else {
      idx = size_t(token * y_stride_ + row);
      v += bias_[size_t(row)];
    }
    if (idx >= out_.size()) {
      ck_.expect(false, name_ + ": output index out of range");
      return;
    }
    out_[idx] = v;
    ++writes_[idx];
  }

  void run_block(uint32_t id) {
    const TileCoords tc = tile_coords(plan_, id);
    const int64_t chunk0 = split_chunk_begin(plan_, tc.split);
    const int nchunks = int(split_chunk_end(plan_, tc.split) - chunk0);
    const int64_t token0 = tile_token0(tc, plan_.ntiles);
    const int stages_n = pipeline_stages(cs_.esz);
    std::vector<Stage> stages(static_cast<size_t>(stages_n));
    std::array<WarpState, kWarps> ws;
    std::vector<Acc> acc(kWarps);
    for (auto& a : acc)
      for (auto& l : a)
        for (auto& nt : l) nt.fill(0.0);
    for (int warp = 0; warp < kWarps; ++warp) {
      WarpState& w = ws[size_t(warp)];
      w.strip = tile_strip(tc, warp);
      w.active = w.strip < plan_.strips;
      if (!w.active) continue;
      w.value_begin = pk_.strip_offsets[size_t(w.strip)];
      w.strip_values = int(pk_.strip_offsets[size_t(w.strip + 1)] - w.value_begin);
      for (int l = 0; l < kLanes; ++l) {
        w.cur[size_t(l)] = load_bound(w, chunk0, nchunks, 0, l);
        w.next[size_t(l)] = load_bound(w, chunk0, nchunks, 1, l);
      }
    }
    for (int j = 0; j < stages_n - 1; ++j)
      if (j < nchunks) issue(stages, ws, chunk0, nchunks, j, token0);
    for (int j = 0; j < nchunks; ++j) {
      const int ahead = j + stages_n - 1;
      if (ahead < nchunks) issue(stages, ws, chunk0, nchunks, ahead, token0);
      const int stage = j % stages_n;
      for (int warp = 0; warp < kWarps; ++warp) {
        if (!ws[size_t(warp)].active) continue;
        if (cs_.esz == 4)
          compute_simt(stages[size_t(stage)], ws[size_t(warp)], warp, stage, chunk0 + j, acc[size_t(warp)]);
        else
          compute_mma(stages[size_t(stage)], ws[size_t(warp)], warp, stage, chunk0 + j, token0, acc[size_t(warp)]);
      }
    }
    for (int warp = 0; warp < kWarps; ++warp) {
      const WarpState& w = ws[size_t(warp)];
      if (!w.active) continue;
      for (int l = 0; l < kLanes; ++l) {
        if (cs_.esz == 4) {
          const int64_t row = w.strip * kStripRows + simt_row(l);
          for (int j = 0; j < simt_tokens_per_lane(plan_.ntiles); ++j) {
            const int64_t token = token0 + simt_token(l, j, plan_.ntiles);
            if (row < cs_.m && token < cs_.n)
              write(tc.split, token, row, acc[size_t(warp)][size_t(l)][size_t(j / 4)][size_t(j % 4)]);
          }
        } else {
          for (int nt = 0; nt < plan_.ntiles; ++nt)
            for (int e = 0; e < 4; ++e) {
              const int64_t row = w.strip * kStripRows + frag_c_row(l, e);
              const int64_t token = token0 + nt * kNTileTokens + frag_c_col(l, e);
              if (row < cs_.m && token < cs_.n)
                write(tc.split, token, row, acc[size_t(warp)][size_t(l)][size_t(nt)][size_t(e)]);
            }
        }
      }
    }
  }

  Checker& ck_;
  SpmmCase cs_;
  std::string name_;
  std::vector<double> dense_, bias_;
  Packed pk_;
  DeviceArray values_, x_;
  int64_t x_stride_ = 0, y_stride_ = 0;
  SpmmPlan plan_{};
  bool x_vec_ = false, values_vec_ = false;
  std::vector<double> out_;
  std::vector<int> writes_;
};

void check_spmm(Checker& ck, std::mt19937& rng) {
  struct Shape {
    int64_t m, k, n, sms;
  };
  const Shape shapes[] = {
      {1, 1, 1, 132},     {5, 70, 3, 132},          {16, 64, 8, 1},    {17, 130, 9, 132},
      {33, 200, 17, 8},   {50, 513, 33, 1},         {64, 1000, 40, 4}, {3, 64 * 70 + 5, 2, 1},  // 4 splits of 18
      {7, 3000, 1, 132},  {9, 64 * 200 - 10, 3, 1},  // 4 splits of 50 chunks (batch rotation in a split)
      {256, 64 * 70 + 5, 1, 1},                      // no split, 71 chunks: 3 bound batches
      {256, 64 * 140 + 5, 3, 1},                     // no split, 141 chunks: 5 batches, 4 rotations
      {200, 64, 1100, 1},                            // more token tiles than a raster band
      {31, 96, 24, 132},  {100, 65, 16, 2},
  };
  bool unsplit_rotations = false;  // a split reloading its chunk bounds more than once, as the shapes intend
  for (const Shape& s : shapes)
    for (int esz : {2, 4}) {
      const SpmmPlan plan = make_spmm_plan(s.m, s.k, s.n, s.sms, esz);
      unsplit_rotations |= plan.splits == 1 && plan.chunks > 2 * kBoundBatch;
      for (bool aligned : {true, false}) {
        const SpmmCase cs{s.m, s.k, s.n, esz, s.sms, aligned, aligned};
        SpmmEmulator emu(ck, cs, rng);
        emu.run();
      }
    }
  ck.expect(unsplit_rotations, "spmm shapes: one unsplit plan rotates its chunk-bound batches twice or more");
}

// ---------------------------------------------------------------------------------------------------
// Packing warps against a bit-exact host packer (raw bits: -0 is zero, NaN is nonzero).
void check_pack(Checker& ck, std::mt19937& rng) {
  struct Shape {
    int64_t m, k;
  };
  const Shape shapes[] = {{1, 1}, {15, 63}, {16, 64}, {17, 65}, {40, 200}, {33, 130}, {5, 300}};
  for (const Shape& sh : shapes)
    for (int esz : {2, 4})
      for (int layout = 0; layout < 3; ++layout) {
        const int64_t m = sh.m, k = sh.k;
        const std::string what = "pack m " + str(m) + " k " + str(k) + " esz " + str(esz) + " layout " + str(layout);
        const uint32_t sign = esz == 4 ? 0x80000000u : 0x8000u, nan = esz == 4 ? 0x7fc00000u : 0x7e00u;
        // Element (r, c) at r * sr + c * sc: row-major, row-major with padding, column-major.
        const int64_t sr = layout == 0 ? k : layout == 1 ? k + 3 : 1, sc = layout == 2 ? m : 1;
        std::vector<uint32_t> mem(size_t((m - 1) * sr + (k - 1) * sc + 1), 0x1234u);
        std::vector<uint32_t> raw(size_t(m * k));
        for (int64_t r = 0; r < m; ++r)
          for (int64_t c = 0; c < k; ++c) {
            const int pick = int(rng() % 8);
            uint32_t v = pick <= 2   ? 0u
                         : pick == 3 ? sign
                         : pick == 4 ? nan
                         : pick == 5 ? 1u
                                     : (uint32_t(rng()) & (esz == 4 ? 0xffffffffu : 0xffffu)) | 1u;
            raw[size_t(r * k + c)] = v;
            mem[size_t(r * sr + c * sc)] = v;
          }
        // Host packer over raw bits, from the format description.
        const int64_t S = (m + 15) / 16, kp = (k + 63) / 64 * 64, U = kp / 2, C = kp / 64;
        std::vector<uint32_t> ref_masks(size_t(S * U), 0u), ref_values;
        std::vector<int32_t> ref_counts(size_t(S * C), 0);
        for (int64_t s = 0; s < S; ++s)
          for (int64_t u = 0; u < U; ++u)
            for (int r = 0; r < 16; ++r)
              for (int j = 0; j < 2; ++j) {
                const int64_t row = 16 * s + r, col = 2 * u + j;
                if (row >= m || col >= k) continue;
                const uint32_t v = raw[size_t(row * k + col)];
                if (v == 0u || v == sign) continue;
                ref_masks[size_t(s * U + u)] |= 1u << (2 * r + j);
                ref_values.push_back(v);
                ++ref_counts[size_t(s * C + u / 32)];
              }
        ref_values.resize(ref_values.size() + 32, 0u);

        // pack_count warps.
        auto unit_mask = [&](int64_t s, int64_t unit, std::array<uint32_t, kUnitElems>& vals) {
          uint32_t mask = 0;
          for (int bit = 0; bit < kUnitElems; ++bit) {
            const int64_t row = elem_row(s, bit), col = elem_col(unit, bit);
            vals[size_t(bit)] = row < m && col < k ? mem[size_t(elem_offset(row, col, sr, sc))] : 0u;
            if (nonzero_bits(vals[size_t(bit)], esz)) mask |= 1u << bit;
          }
          return mask;
        };
        std::vector<int32_t> counts(size_t(S * C), -1);
        for (int64_t id = 0; id < S * C; ++id) {
          const int64_t s = pack_warp_strip(id, C), c = pack_warp_chunk(id, C);
          int32_t total = 0;
          for (int lane = 0; lane < kLanes; ++lane) {
            std::array<uint32_t, kUnitElems> vals{};
            total += popc(unit_mask(s, chunk_unit(c, lane), vals));
          }
          counts[size_t(chunk_index(s, c, C))] = total;
        }
        ck.expect(counts == ref_counts, what + ": chunk counts");

        // The caller's offsets, then pack_fill warps.
        std::vector<int64_t> strip_offsets(size_t(S + 1), 0);
        std::vector<int32_t> chunk_offsets(size_t(S * C), 0);
        for (int64_t s = 0; s < S; ++s) {
          int64_t run = 0;
          for (int64_t c = 0; c < C; ++c) {
            chunk_offsets[size_t(s * C + c)] = int32_t(run);
            run += counts[size_t(s * C + c)];
          }
          strip_offsets[size_t(s + 1)] = strip_offsets[size_t(s)] + run;
        }
        const int64_t nnz = strip_offsets[size_t(S)];
        std::vector<uint32_t> masks(size_t(S * U), 0xdeadbeefu), values(size_t(nnz + kValuePad), 0xdeadbeefu);
        std::vector<int> value_writes(values.size(), 0);
        for (int64_t id = 0; id < S * C; ++id) {
          const int64_t s = pack_warp_strip(id, C), c = pack_warp_chunk(id, C);
          std::array<uint32_t, kLanes> lane_mask{};
          std::array<std::array<uint32_t, kUnitElems>, kLanes> lane_vals{};
          for (int lane = 0; lane < kLanes; ++lane)
            lane_mask[size_t(lane)] = unit_mask(s, chunk_unit(c, lane), lane_vals[size_t(lane)]);
          int excl = 0;
          for (int lane = 0; lane < kLanes; ++lane) {
            const int64_t unit = chunk_unit(c, lane);
            masks[size_t(mask_index(s, unit, U))] = lane_mask[size_t(lane)];
            const int64_t dst = strip_offsets[size_t(s)] + chunk_offsets[size_t(chunk_index(s, c, C))] + excl;
            int rank = 0;
            for (int bit = 0; bit < kUnitElems; ++bit)
              if ((lane_mask[size_t(lane)] >> bit) & 1u) {
                const size_t i = size_t(dst + rank++);
                if (i < values.size()) {
                  values[i] = lane_vals[size_t(lane)][size_t(bit)];
                  ++value_writes[i];
                }
              }
            excl += popc(lane_mask[size_t(lane)]);
          }
        }
        for (int i = 0; i < kValuePad; ++i) {
          values[size_t(nnz + i)] = 0u;
          ++value_writes[size_t(nnz + i)];
        }
        bool once = true;
        for (int w : value_writes) once &= w == 1;
        ck.expect(once, what + ": every value written once");
        ck.expect(masks == ref_masks, what + ": masks");
        ck.expect(values == ref_values, what + ": values");
      }
}

}  // namespace

int cuda_layout_selftest(std::string* report) {
  Checker ck{report};
  std::mt19937 rng(20250611);
  check_mma_fragments(ck);
  check_ldmatrix(ck);
  check_stage_layout(ck);
  check_windows(ck, rng);
  check_plan(ck);
  check_pack(ck, rng);
  check_spmm(ck, rng);
  if (report) *report += std::to_string(ck.checks) + " checks, " + std::to_string(ck.failures) + " failures\n";
  return ck.failures;
}

}  // namespace sparse
}  // namespace fastops
