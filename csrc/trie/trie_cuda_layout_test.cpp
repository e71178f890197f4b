// Exhaustive CPU checks of the CUDA trie kernels' index math (trie_cuda_layout.h) against definitions
// written independently: brute-force searches, per-element coverage of strided rows, sorted references.
#include "trie/trie_cuda_layout_test.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/selftest.h"
#include "trie/trie_cuda_layout.h"

namespace fastops {
namespace trie {
namespace {

using namespace cuda_layout;

using Checker = SelfTestChecker;

void check_child_edges(Checker& ck, std::mt19937& rng) {
  for (int rep = 0; rep < 200; ++rep) {
    const int64_t n = 1 + rng() % 40;
    std::vector<int32_t> indptr(n + 1);
    const bool corrupt = rep % 4 == 3;
    for (auto& v : indptr) v = corrupt ? int32_t(rng() % (3 * n)) - int32_t(n) : int32_t(rng() % n);
    if (!corrupt) std::sort(indptr.begin(), indptr.end());
    for (int64_t node : {int64_t(-1), int64_t(-7), n, n + 5, int64_t(1) << 40}) {
      const EdgeRange r = child_edges(indptr.data(), n, node);
      ck.expect(r.begin == r.end, "invalid node id has no children");
    }
    for (int64_t u = 0; u < n; ++u) {
      const EdgeRange r = child_edges(indptr.data(), n, u);
      const bool in_bounds = r.begin >= 0 && r.begin <= r.end && (r.begin == r.end || r.end <= n - 1);
      ck.expect(in_bounds, "child edges stay inside the edge array (n=" + std::to_string(n) + ")");
      if (!corrupt && indptr[u + 1] <= n - 1)
        ck.expect(r.begin == indptr[u] && r.end == indptr[u + 1], "valid node: edges indptr[u] .. indptr[u+1]");
    }
  }
}

void check_token_search(Checker& ck, std::mt19937& rng) {
  for (int rep = 0; rep < 300; ++rep) {
    const int len = int(rng() % 50);
    std::vector<int32_t> tok(len);
    for (auto& t : tok) t = int32_t(rng() % 200) - 20;
    std::sort(tok.begin(), tok.end());
    tok.erase(std::unique(tok.begin(), tok.end()), tok.end());
    const int64_t b = tok.empty() ? 0 : rng() % tok.size();
    const int64_t e = tok.empty() ? 0 : b + rng() % (tok.size() - b + 1);
    for (int64_t v = -30; v < 200; v += 3) {
      int64_t ref = b;
      while (ref < e && tok[ref] < v) ++ref;
      ck.expect(lower_bound_token(tok.data(), b, e, v) == ref, "lower_bound_token matches a linear scan");
      for (int64_t w : {v, v + 1, v + 17, v + 1000}) {
        const EdgeRange in = edges_with_tokens_in(tok.data(), EdgeRange{b, e}, v, w);
        int64_t count = 0;
        for (int64_t i = b; i < e; ++i) count += tok[i] >= v && tok[i] < w;
        bool ok = in.end - in.begin == count;
        for (int64_t i = in.begin; i < in.end && ok; ++i) ok = tok[i] >= v && tok[i] < w;
        ck.expect(ok, "edges_with_tokens_in selects exactly the tokens in range");
      }
    }
  }
}

void check_alive(Checker& ck) {
  const uint8_t alive[12] = {1, 0, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0};  // 3 masks of 4 nodes
  for (int64_t r = 0; r < 6; ++r) {
    const uint8_t* row = alive_row(alive, 2, 4, r);
    ck.expect(row == alive + (r / 2) * 4, "row r uses mask r / rows_per_mask");
    for (int64_t e = 0; e < 3; ++e) ck.expect(edge_alive(row, e) == (row[e + 1] != 0), "edge e leads to node e + 1");
  }
  ck.expect(alive_row(nullptr, 1, 4, 3) == nullptr && edge_alive(nullptr, 5), "no subset: everything alive");
}

// Every unit of a strided row is covered exactly once by the chunks' vectors and scalars, vectors are
// 16-byte aligned, and every bitmap position stays inside the shared bitmap.
void check_row_chunks(Checker& ck, std::mt19937& rng) {
  for (int unit_bytes : {2, 4})
    for (uint64_t addr = 4096; addr < 4096 + 16; addr += unit_bytes)
      for (int64_t n = 0; n <= 300; ++n)
        for (int64_t chunk_vecs : {1, 2, 3, 8}) {
          const int vec = kVecBytes / unit_bytes;
          const int64_t chunk = chunk_vecs * vec;
          const int64_t head = head_units(addr, unit_bytes, n);
          const std::string where = " (unit=" + std::to_string(unit_bytes) + " addr%16=" +
                                    std::to_string(addr % 16) + " n=" + std::to_string(n) +
                                    " chunk=" + std::to_string(chunk) + ")";
          ck.expect(head >= 0 && head <= n && head < vec && (head == n || (addr + head * unit_bytes) % 16 == 0),
                    "head reaches the first 16-byte boundary" + where);
          const int64_t chunks = row_chunks(n, head, chunk);
          ck.expect(chunks >= 1 && chunks <= max_row_chunks(n, chunk), "chunk count within the grid" + where);
          std::vector<int> seen(n, 0);
          bool aligned = true, in_chunk = true, bits_ok = true;
          for (int64_t c = 0; c < max_row_chunks(n, chunk) + 1; ++c) {
            const RowChunk ch = row_chunk(n, head, chunk, c);
            if (c >= chunks) {
              ck.expect(ch.begin == ch.end, "chunks past the row are empty" + where);
              continue;
            }
            const int64_t nv = chunk_vectors(ch, vec), origin = mask_bitmap_origin(ch);
            const int64_t mask_words = (ch.end - origin + 31) / 32;
            bits_ok &= mask_words <= mask_bitmap_words(chunk);
            const bool words = unit_bytes == 4;  // the bitmask kernel's units are 32-bit words
            bits_ok &= !words || bitmask_shared_word(ch, ch.end) <= kBitmaskPadWords + chunk;
            for (int64_t j = 0; j < nv; ++j) {
              const int64_t u0 = ch.aligned + j * vec;
              aligned &= (addr + u0 * unit_bytes) % 16 == 0;
              bits_ok &= (kMaskBitmapPadBits + j * vec) / 32 == (kMaskBitmapPadBits + j * vec + vec - 1) / 32;
              bits_ok &= u0 - origin == kMaskBitmapPadBits + j * vec;
              bits_ok &= !words || bitmask_shared_word(ch, u0) == kBitmaskPadWords + j * vec;
              for (int i = 0; i < vec; ++i) ++seen[u0 + i], in_chunk &= u0 + i >= ch.begin && u0 + i < ch.end;
            }
            for (int64_t i = 0; i < chunk_scalars(ch, vec); ++i) {
              const int64_t u = chunk_scalar_unit(ch, vec, i);
              if (u < 0 || u >= n) {
                in_chunk = false;
                continue;
              }
              ++seen[u];
              in_chunk &= u >= ch.begin && u < ch.end;
              bits_ok &= u - origin >= 0 && u - origin < 32 * mask_words;
              bits_ok &= !words || (bitmask_shared_word(ch, u) >= 0 &&
                                    bitmask_shared_word(ch, u) < bitmask_shared_word(ch, ch.end) &&
                                    32 * u - bitmask_bitmap_origin(ch) == 32 * bitmask_shared_word(ch, u));
            }
          }
          ck.expect(std::all_of(seen.begin(), seen.end(), [](int s) { return s == 1; }),
                    "every unit written exactly once" + where);
          ck.expect(aligned && in_chunk, "vectors aligned, units inside their chunk" + where);
          ck.expect(bits_ok, "bitmap positions inside the shared bitmap" + where);
          const RowChunk all = whole_row(n, head);
          ck.expect(chunk_vectors(all, vec) * vec + chunk_scalars(all, vec) == n, "whole row covers n units" + where);
        }
  // Vector keep bits read from a random bitmap agree with the per-bit reads.
  for (int vec : {4, 8}) {
    std::vector<uint32_t> bitmap(mask_bitmap_words(256));
    for (auto& w : bitmap) w = rng();
    bool ok = true;
    for (int64_t j = 0; j < 256 / vec; ++j)
      for (int i = 0; i < vec; ++i)
        ok &= ((mask_vector_bits(bitmap.data(), j, vec) >> i) & 1u) ==
              uint32_t(bitmap_bit(bitmap.data(), kMaskBitmapPadBits + j * vec + i));
    ck.expect(ok, "mask_vector_bits = the vector's bits, element order");
  }
}

void check_keep_masks(Checker& ck) {
  for (int elem_bytes : {2, 4}) {
    const int vec = kVecBytes / elem_bytes;
    for (uint32_t keep = 0; keep < (1u << vec); ++keep) {
      bool ok = true;
      for (int w = 0; w < 4; ++w) {
        const uint32_t m = keep_word_mask(keep, w, elem_bytes);
        for (int b = 0; b < 4; ++b) {  // byte b of word w is byte 4 w + b of the vector
          const int elem = (4 * w + b) / elem_bytes;
          ok &= (((m >> (8 * b)) & 0xffu) == 0xffu) == (((keep >> elem) & 1u) != 0);
          ok &= ((m >> (8 * b)) & 0xffu) == 0xffu || ((m >> (8 * b)) & 0xffu) == 0;
        }
      }
      ck.expect(ok, "keep_word_mask keeps exactly the allowed elements' bytes (elem=" + std::to_string(elem_bytes) + ")");
    }
  }
}

// Reference order of candidates: larger score first, NaN as -inf, ties -> smaller edge.
bool better(float s1, int64_t e1, float s2, int64_t e2) {
  const float inf = std::numeric_limits<float>::infinity();
  if (std::isnan(s1)) s1 = -inf;
  if (std::isnan(s2)) s2 = -inf;
  if (s1 != s2) return s1 > s2;
  return e1 < e2;
}

void check_keys(Checker& ck, std::mt19937& rng) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> vals = {-inf, -3e38f, -1.5f, -1e-40f, -0.f, 0.f, 1e-45f, 1e-40f, 1.f, 2.f, 3e38f, inf};
  bool mono = true;
  for (size_t i = 0; i + 1 < vals.size(); ++i)
    mono &= vals[i] == vals[i + 1] ? topk_order_bits(vals[i]) == topk_order_bits(vals[i + 1])
                                   : topk_order_bits(vals[i]) < topk_order_bits(vals[i + 1]);
  ck.expect(mono, "order bits preserve the float order, -0 == +0");
  ck.expect(topk_order_bits(std::nanf("")) == topk_order_bits(-inf) &&
                topk_order_bits(-std::nanf("")) == topk_order_bits(-inf),
            "NaN ranks like -inf");
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  for (int rep = 0; rep < 20000; ++rep) {
    const float s1 = rep % 7 == 0 ? std::nanf("") : std::round(u(rng) * 4) / 4, s2 = rep % 5 == 0 ? -inf : std::round(u(rng) * 4) / 4;
    const int64_t e1 = rng() % 1000, e2 = rep % 3 == 0 ? e1 + 1 + rng() % 5 : int64_t((uint32_t(rng()) >> 1));
    const uint64_t k1 = topk_key(s1, e1), k2 = topk_key(s2, e2);
    ck.expect(k1 != 0 && k2 != 0 && topk_key_edge(k1) == e1 && topk_key_edge(k2) == e2, "keys nonzero, edge round-trips");
    ck.expect((k1 > k2) == better(s1, e1, s2, e2), "key order = (score desc, edge asc)");
  }
}

void check_count_greater(Checker& ck, std::mt19937& rng) {
  for (int rep = 0; rep < 500; ++rep) {
    std::vector<uint64_t> a(rng() % 70);
    for (auto& v : a) v = rng() % 50;
    std::sort(a.begin(), a.end(), std::greater<uint64_t>());
    for (uint64_t v = 0; v < 52; ++v) {
      int ref = 0;
      for (uint64_t x : a) ref += x > v;
      ck.expect(count_greater(a.data(), int(a.size()), v) == ref, "count_greater = entries > v");
    }
  }
}

// Simulates the kernel's network: 32 lanes, xor partners, keep max where bitonic_keeps_max says so.
void check_bitonic(Checker& ck, std::mt19937& rng) {
  for (int rep = 0; rep < 2000; ++rep) {
    uint64_t key[32];
    for (auto& k : key) k = rep % 2 ? rng() % 8 : (uint64_t(rng()) << 32 | rng());
    std::vector<uint64_t> ref(key, key + 32);
    std::sort(ref.begin(), ref.end(), std::greater<uint64_t>());
    for (int size = 2; size <= 32; size <<= 1)
      for (int stride = size / 2; stride > 0; stride >>= 1) {
        uint64_t next[32];
        for (int l = 0; l < 32; ++l) {
          const uint64_t other = key[l ^ stride];
          next[l] = bitonic_keeps_max(l, size, stride) == (other > key[l]) ? other : key[l];
        }
        std::copy(next, next + 32, key);
      }
    ck.expect(std::equal(ref.begin(), ref.end(), key), "bitonic network sorts 32 keys descending");
  }
}

// The warp merge (WarpTopK::offer) on the CPU: rank-merging a sorted batch into the list keeps the top k.
void check_topk_merge(Checker& ck, std::mt19937& rng) {
  for (int k : {1, 2, 5, 31, 32, 33, 64, 100}) {
    for (int rep = 0; rep < 30; ++rep) {
      std::vector<uint64_t> cur(k, 0), spare(k, 0), all;
      const int batches = 1 + rng() % 12;
      for (int b = 0; b < batches; ++b) {
        std::vector<uint64_t> batch(32, 0);
        for (int l = 0; l < 32; ++l)
          if (rng() % 4) {
            batch[l] = topk_key(float(rng() % 16), int64_t(b * 32 + l));
            all.push_back(batch[l]);
          }
        for (auto& v : batch)
          if (v <= cur[k - 1]) v = 0;
        std::sort(batch.begin(), batch.end(), std::greater<uint64_t>());
        const int n = int(std::count_if(batch.begin(), batch.end(), [](uint64_t v) { return v != 0; }));
        if (n == 0) continue;
        std::vector<int> writes(k, 0);
        for (int j = 0; j < k; ++j) {
          const int rank = j + count_greater(batch.data(), n, cur[j]);
          if (rank < k) spare[rank] = cur[j], ++writes[rank];
        }
        for (int l = 0; l < n; ++l) {
          const int rank = l + count_greater(cur.data(), k, batch[l]);
          if (rank < k) spare[rank] = batch[l], ++writes[rank];
        }
        ck.expect(std::all_of(writes.begin(), writes.end(), [](int w) { return w == 1; }),
                  "merge writes every list slot exactly once (k=" + std::to_string(k) + ")");
        std::swap(cur, spare);
      }
      std::sort(all.begin(), all.end(), std::greater<uint64_t>());
      all.resize(k, 0);
      ck.expect(cur == all, "merged list = top k of all candidates (k=" + std::to_string(k) + ")");
    }
  }
}

void check_logsumexp(Checker& ck, std::mt19937& rng) {
  const float inf = std::numeric_limits<float>::infinity();
  std::normal_distribution<float> g(0.f, 8.f);
  for (int rep = 0; rep < 300; ++rep) {
    const int n = rng() % 100;
    std::vector<float> x(n);
    for (auto& v : x) v = rng() % 5 == 0 ? -inf : g(rng);
    double m = -inf, s = 0;
    for (float v : x) m = std::max<double>(m, v);
    for (float v : x) s += m == -inf ? 0 : std::exp(double(v) - m);
    const double ref = m == -inf ? -inf : m + std::log(s);
    // Several partial accumulators fed in vector-sized pieces, then merged, as the kernel does.
    LseAcc parts[3];
    for (int i = 0; i < n;) {
      const int len = std::min(n - i, 1 + int(rng() % 8));
      parts[rng() % 3].add(x.data() + i, len);
      i += len;
    }
    LseAcc total;
    for (const LseAcc& p : parts) total.merge(p.m, p.s);
    const float got = total.value();
    ck.expect(ref == -inf ? got == -inf : std::abs(got - ref) <= 1e-5 * (1 + std::abs(ref)),
              "logsumexp of partial accumulators matches float64 (n=" + std::to_string(n) + ")");
  }
  LseAcc a;
  const float with_inf[3] = {1.f, inf, 2.f};
  a.add(with_inf, 3);
  ck.expect(a.value() == inf, "+inf in the row gives +inf");
}

}  // namespace

int cuda_layout_selftest(std::string* report) {
  Checker ck{report};
  std::mt19937 rng(20261125);
  check_child_edges(ck, rng);
  check_token_search(ck, rng);
  check_alive(ck);
  check_row_chunks(ck, rng);
  check_keep_masks(ck);
  check_keys(ck, rng);
  check_count_greater(ck, rng);
  check_bitonic(ck, rng);
  check_topk_merge(ck, rng);
  check_logsumexp(ck, rng);
  if (report) *report += std::to_string(ck.checks) + " checks, " + std::to_string(ck.failures) + " failures\n";
  return ck.failures;
}

}  // namespace trie
}  // namespace fastops
