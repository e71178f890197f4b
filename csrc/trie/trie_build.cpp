// Trie build: pack every sequence into a fixed-width big-endian key, sort the keys (stable, so the first
// of equal rows stays first; an MSD radix pass, then each bucket on its own), then two parallel passes
// over the sorted keys: count the nodes each item creates per depth, then number them and write
// indptr/tokens (layout: trie.h).
#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "common/errors.h"
#include "common/huge_pages.h"
#include "common/parallel.h"
#include "trie/trie.h"

namespace fastops {
namespace trie {
namespace {

// Where level l's field sits in a key: bits [shift, shift + bits) of word `word`. A field stores
// token - min_token + 1, so 0 means "sequence ended" and a prefix sorts before its extensions.
struct Field {
  int word = 0, shift = 0, bits = 0;
  int32_t min_token = 0;
};

struct KeyLayout {
  std::vector<Field> fields;  // one per level
  std::vector<int> used_bits;  // per word: the low `64 - used` bits are always zero
  int words = 0;
  int stride() const { return words + 1; }  // a record = key words + the original row
};

int bit_width(uint64_t v) { return v == 0 ? 0 : 64 - __builtin_clzll(v); }

// Fixed chunks (not dynamic pieces) so that passes over the same chunks can carry per-chunk state.
struct Chunks {
  int64_t n, count;
  Chunks(int64_t n_, int nthreads) : n(n_), count(std::max<int64_t>(1, std::min<int64_t>(n_ / 4096, 8 * nthreads))) {}
  int64_t begin(int64_t c) const { return n * c / count; }
  int64_t end(int64_t c) const { return n * (c + 1) / count; }
};

// ValueError for the first token (in input order) outside [0, token_limit); called once one is known to exist.
template <class T>
[[noreturn]] void throw_out_of_range(const T* seqs, const int64_t* offsets, int64_t n, int64_t token_limit) {
  int64_t j = 0;
  while (seqs[j] >= 0 && seqs[j] < token_limit) ++j;
  const int64_t row = std::upper_bound(offsets, offsets + n + 1, j) - offsets - 1;
  throw_value("sequences[" + std::to_string(row) + "][" + std::to_string(j - offsets[row]) + "] = " +
              std::to_string(int64_t(seqs[j])) + " is outside [0, " + std::to_string(token_limit) + ")");
}

// Per-level token range (which also range-checks every token) -> where each level's field goes.
template <class T>
KeyLayout make_layout(const T* seqs, const int64_t* offsets, int64_t n, int64_t max_len, int64_t token_limit,
                      int nthreads) {
  const Chunks chunks(n, nthreads);
  std::vector<T> lo(chunks.count * max_len, std::numeric_limits<T>::max()), hi(chunks.count * max_len, -1);
  parallel_for(chunks.count, 1, nthreads, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      T* l = &lo[c * max_len];
      T* h = &hi[c * max_len];
      for (int64_t i = chunks.begin(c), end = chunks.end(c); i < end; ++i)
        for (int64_t j = offsets[i]; j < offsets[i + 1]; ++j) {
          const int64_t level = j - offsets[i];
          l[level] = std::min(l[level], seqs[j]);
          h[level] = std::max(h[level], seqs[j]);
        }
    }
  });
  KeyLayout layout;
  int free_bits = 0;
  for (int64_t level = 0; level < max_len; ++level) {
    T l = std::numeric_limits<T>::max(), h = -1;
    for (int64_t c = 0; c < chunks.count; ++c) {
      l = std::min(l, lo[c * max_len + level]);
      h = std::max(h, hi[c * max_len + level]);
    }
    if (l < 0 || h >= token_limit) throw_out_of_range(seqs, offsets, n, token_limit);
    Field f;
    f.min_token = int32_t(l);
    f.bits = bit_width(uint64_t(h - l) + 1);
    if (f.bits > free_bits) {  // fields never straddle words: extraction stays one shift and mask
      layout.used_bits.push_back(0);
      free_bits = 64;
    }
    free_bits -= f.bits;
    f.word = int(layout.used_bits.size()) - 1;
    f.shift = free_bits;
    layout.used_bits.back() += f.bits;
    layout.fields.push_back(f);
  }
  layout.words = int(layout.used_bits.size());
  return layout;
}

// Uninitialized storage: every element is written before it is read (a zeroing pass would be serial).
using Words = std::unique_ptr<uint64_t[]>;
Words new_words(size_t count) {
  Words words(new uint64_t[count]);
  advise_huge_pages(words.get(), sizeof(uint64_t) * count);
  return words;
}

// records[i * stride ..]: key words, then the original row.
template <class T>
Words make_records(const KeyLayout& layout, const T* seqs, const int64_t* offsets, int64_t n,
                                   int nthreads) {
  const int stride = layout.stride();
  Words records = new_words(size_t(n) * stride);
  parallel_for(n, 16384, nthreads, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      uint64_t* rec = &records[size_t(i) * stride];
      std::fill(rec, rec + layout.words, 0);
      for (int64_t j = offsets[i]; j < offsets[i + 1]; ++j) {
        const Field& f = layout.fields[j - offsets[i]];
        rec[f.word] |= uint64_t(int64_t(seqs[j]) - f.min_token + 1) << f.shift;
      }
      rec[layout.words] = uint64_t(i);
    }
  });
  return records;
}

int compare_keys(const uint64_t* a, const uint64_t* b, int words) {
  for (int w = 0; w < words; ++w)
    if (a[w] != b[w]) return a[w] < b[w] ? -1 : 1;
  return 0;
}

bool is_sorted(const Words& records, int64_t n, int words, int nthreads) {
  const int stride = words + 1;
  const Chunks chunks(n, nthreads);
  std::vector<char> unsorted_piece(size_t(chunks.count), 0);
  parallel_for(chunks.count, 1, nthreads, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t i = std::max<int64_t>(1, chunks.begin(c)), end = chunks.end(c); i < end; ++i)
        if (compare_keys(&records[size_t(i - 1) * stride], &records[size_t(i) * stride], words) > 0) {
          unsorted_piece[c] = 1;
          break;
        }
  });
  return std::none_of(unsorted_piece.begin(), unsorted_piece.end(), [](char u) { return u != 0; });
}

// One radix digit: bits [shift, shift + bits) of key word `word`.
struct Digit {
  int word = 0, shift = 0, bits = 0;
  int of(const uint64_t* rec) const { return int((rec[word] >> shift) & ((uint64_t(1) << bits) - 1)); }
};

// The digits of `bits` bits (the most significant one may be narrower) covering the used key bits
// below bit `top_shift` of word `top_word`, least significant first.
std::vector<Digit> lsd_digits(const KeyLayout& layout, int bits, int top_word, int top_shift) {
  std::vector<Digit> digits;
  for (int w = layout.words - 1; w >= top_word; --w) {
    const int end = w == top_word ? top_shift : 64;
    for (int shift = 64 - layout.used_bits[w]; shift < end; shift += bits)
      digits.push_back({w, shift, std::min(bits, end - shift)});
  }
  return digits;
}

// One stable counting pass of records in[0, n) by `digit` into `out`, over fixed chunks in parallel.
// Returns false, writing nothing, when every record has the same digit. bucket_starts (if given)
// receives the 2^bits + 1 bucket boundaries. kStride > 0 (== stride) fixes the record size at compile
// time so the copy is inlined (0: a memcpy call).
template <int kStride>
bool counting_pass(const uint64_t* in, uint64_t* out, int64_t n, int stride, const Digit& digit, int nthreads,
                   std::vector<int64_t>& counts, std::vector<int64_t>* bucket_starts = nullptr) {
  const int buckets = 1 << digit.bits;
  const Chunks chunks(n, nthreads);
  counts.assign(size_t(chunks.count) * buckets, 0);
  parallel_for(chunks.count, 1, nthreads, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t* h = &counts[size_t(c) * buckets];
      for (int64_t i = chunks.begin(c), end = chunks.end(c); i < end; ++i) ++h[digit.of(&in[size_t(i) * stride])];
    }
  });
  // Exclusive offsets in (bucket, chunk) order: chunk c's records of bucket b follow earlier chunks'.
  if (bucket_starts) bucket_starts->assign(size_t(buckets) + 1, n);
  int64_t total = 0;
  for (int b = 0; b < buckets; ++b) {
    const int64_t before = total;
    if (bucket_starts) (*bucket_starts)[b] = before;
    for (int64_t c = 0; c < chunks.count; ++c) {
      const int64_t k = counts[size_t(c) * buckets + b];
      counts[size_t(c) * buckets + b] = total;
      total += k;
    }
    if (total - before == n) return false;
  }
  parallel_for(chunks.count, 1, nthreads, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t* next = &counts[size_t(c) * buckets];
      for (int64_t i = chunks.begin(c), end = chunks.end(c); i < end; ++i) {
        const uint64_t* rec = &in[size_t(i) * stride];
        // The size is a compile-time constant when kStride > 0 (read here, not through the capture).
        const size_t words = kStride > 0 ? kStride : size_t(stride);
        std::memcpy(&out[size_t(next[digit.of(rec)]++) * stride], rec, sizeof(uint64_t) * words);
      }
    }
  });
  return true;
}

// Stable LSD radix sort of data[0, n) on `digits` (least significant first), tmp as the other buffer;
// the result ends in data. Digits equal in every record cost one histogram pass and no scatter.
template <int kStride>
void lsd_sort(uint64_t* data, uint64_t* tmp, int64_t n, int stride, const std::vector<Digit>& digits, int nthreads,
              std::vector<int64_t>& counts) {
  uint64_t *src = data, *dst = tmp;
  for (const Digit& digit : digits)
    if (counting_pass<kStride>(src, dst, n, stride, digit, nthreads, counts)) std::swap(src, dst);
  if (src != data) std::memcpy(data, src, sizeof(uint64_t) * size_t(n) * stride);
}

// A record of kStride words (key words, then the row) as a value: ordering whole records orders by key,
// then by input row, a total order that keeps the first of equal keys first.
template <int kStride>
struct Record {
  uint64_t words[kStride];
  bool operator<(const Record& other) const {
    for (int w = 0; w < kStride; ++w)
      if (words[w] != other.words[w]) return words[w] < other.words[w];
    return false;
  }
};

// Stable sort of whole records on their key words. One parallel MSD radix pass on the most significant
// non-constant 11-bit digit splits the records into up to 2048 buckets (~n / 2048 records each for
// random keys, sorted in cache one per thread by comparison on the lower bits: few comparisons get
// past the first word, so this beats the ~7 more radix passes it replaces). A bucket too large to
// balance across threads gets parallel LSD passes instead, so skewed keys still use every thread.
template <int kStride>
void radix_sort_records(Words& records, int64_t n, const KeyLayout& layout, int nthreads) {
  constexpr int kDigitBits = 11;
  Words scratch = new_words(size_t(n) * kStride);
  std::vector<int64_t> counts, starts;
  std::vector<Digit> digits = lsd_digits(layout, kDigitBits, 0, 64);
  while (!digits.empty() &&
         !counting_pass<kStride>(records.get(), scratch.get(), n, kStride, digits.back(), nthreads, counts, &starts))
    digits.pop_back();
  if (digits.empty()) return;  // all keys equal: already sorted (stable)
  records.swap(scratch);       // sorted by the MSD digit; scratch is free
  const std::vector<Digit> lower = lsd_digits(layout, kDigitBits, digits.back().word, digits.back().shift);
  const int64_t large = std::max<int64_t>(4096, n / (4 * int64_t(nthreads)));
  const int64_t buckets = int64_t(starts.size()) - 1;
  for (int64_t b = 0; b < buckets; ++b)
    if (starts[b + 1] - starts[b] > large)
      lsd_sort<kStride>(&records[size_t(starts[b]) * kStride], &scratch[size_t(starts[b]) * kStride],
                        starts[b + 1] - starts[b], kStride, lower, nthreads, counts);
  parallel_for(buckets, 16, nthreads, [&](int64_t b0, int64_t b1) {
    Record<kStride>* all = reinterpret_cast<Record<kStride>*>(records.get());
    for (int64_t b = b0; b < b1; ++b)
      if (starts[b + 1] - starts[b] <= large) std::sort(all + starts[b], all + starts[b + 1]);
  });
}

void radix_sort(Words& records, int64_t n, const KeyLayout& layout, int nthreads) {
  switch (layout.stride()) {  // 1 to 3 key words: up to 192 key bits, 17 levels of 11 bits
    case 2: return radix_sort_records<2>(records, n, layout, nthreads);
    case 3: return radix_sort_records<3>(records, n, layout, nthreads);
    case 4: return radix_sort_records<4>(records, n, layout, nthreads);
    default: {  // longer keys: parallel LSD passes over the whole key
      Words scratch = new_words(size_t(n) * layout.stride());
      std::vector<int64_t> counts;
      lsd_sort<0>(records.get(), scratch.get(), n, layout.stride(), lsd_digits(layout, 11, 0, 64), nthreads, counts);
    }
  }
}

// Reads a sorted record's tokens back from its key.
struct SortedItems {
  const KeyLayout& layout;
  const uint64_t* records;
  int64_t max_len;

  const uint64_t* key(int64_t i) const { return records + size_t(i) * layout.stride(); }
  int64_t row(int64_t i) const { return int64_t(key(i)[layout.words]); }
  uint64_t field(int64_t i, int64_t level) const {
    const Field& f = layout.fields[level];
    return (key(i)[f.word] >> f.shift) & ((uint64_t(1) << f.bits) - 1);
  }
  int32_t token(int64_t i, int64_t level) const {
    return int32_t(int64_t(field(i, level)) - 1 + layout.fields[level].min_token);
  }
  int64_t length(int64_t i) const {
    int64_t len = max_len;
    while (len > 0 && field(i, len - 1) == 0) --len;
    return len;
  }
  // Common prefix length of items i - 1 and i (their length when equal).
  int64_t lcp(int64_t i) const {
    const uint64_t *a = key(i - 1), *b = key(i);
    for (int w = 0; w < layout.words; ++w) {
      if (a[w] == b[w]) continue;
      const int top = 63 - __builtin_clzll(a[w] ^ b[w]);
      int64_t level = 0;
      while (layout.fields[level].word != w || layout.fields[level].shift > top) ++level;
      return level;
    }
    return length(i);
  }
};

// Duplicates (when not deduplicating) and prefix conflicts, reported for the first offending pair in
// sorted order so the message does not depend on thread timing.
void check_conflicts(const SortedItems& items, const UninitVector<int32_t>& lcp, const UninitVector<int32_t>& len,
                     int64_t n, bool dedupe, int nthreads) {
  const Chunks chunks(n, nthreads);
  std::vector<int64_t> first_bad(size_t(chunks.count), n);
  parallel_for(chunks.count, 1, nthreads, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t i = std::max<int64_t>(1, chunks.begin(c)), end = chunks.end(c); i < end; ++i) {
        const bool duplicate = lcp[i] == len[i] && len[i] == len[i - 1];
        const bool prefix = lcp[i] == len[i - 1] && len[i] > len[i - 1];
        if (prefix || (duplicate && !dedupe)) {
          first_bad[c] = i;
          break;
        }
      }
  });
  const int64_t i = *std::min_element(first_bad.begin(), first_bad.end());
  if (i == n) return;
  const std::string a = std::to_string(items.row(i - 1)), b = std::to_string(items.row(i));
  if (len[i] > len[i - 1])
    throw_value("sequences: row " + a + " is a proper prefix of row " + b +
                " (pass eos_token_id to allow sequences that are prefixes of others)");
  throw_value("sequences: rows " + a + " and " + b + " are duplicates (pass dedupe=True to drop repeats)");
}

}  // namespace

template <class T>
void build_cpu(const T* seqs, const int64_t* offsets, int64_t n, int64_t token_limit, bool dedupe, int nthreads,
               BuildResult* out, int64_t max_nodes) {
  if (n <= 0) throw_value("sequences must not be empty");
  if (n > INT32_MAX) throw_value("sequences: more than 2^31 - 1 rows do not fit int32 node ids");
  // The longest row, and the first row (by index, whatever the threads do) that is empty or runs backwards.
  const Chunks rows(n, nthreads);
  std::vector<int64_t> longest(size_t(rows.count), 0), first_bad(size_t(rows.count), n);
  parallel_for(rows.count, 1, nthreads, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t i = rows.begin(c), end = rows.end(c); i < end; ++i) {
        const int64_t len = offsets[i + 1] - offsets[i];
        if (len <= 0) {
          first_bad[c] = i;
          break;
        }
        longest[c] = std::max(longest[c], len);
      }
  });
  const int64_t bad_row = *std::min_element(first_bad.begin(), first_bad.end());
  if (bad_row < n)
    throw_value("sequences: row " + std::to_string(bad_row) +
                (offsets[bad_row + 1] < offsets[bad_row] ? " has decreasing offsets" : " is empty"));
  const int64_t max_len = *std::max_element(longest.begin(), longest.end());

  const KeyLayout layout = make_layout(seqs, offsets, n, max_len, token_limit, nthreads);
  Words records = make_records(layout, seqs, offsets, n, nthreads);
  if (!is_sorted(records, n, layout.words, nthreads)) radix_sort(records, n, layout, nthreads);
  const SortedItems items{layout, records.get(), max_len};

  // Per sorted item: length and common prefix with the previous item. An item creates the nodes of
  // depths lcp + 1 .. len (none for a duplicate, whose lcp is its length).
  UninitVector<int32_t> lcp(static_cast<size_t>(n)), len(static_cast<size_t>(n));
  parallel_for(n, 16384, nthreads, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      len[i] = int32_t(items.length(i));
      lcp[i] = i == 0 ? 0 : int32_t(items.lcp(i));
    }
  });
  check_conflicts(items, lcp, len, n, dedupe, nthreads);

  // Pass 1: nodes created per (chunk, depth) and items per chunk.
  const Chunks chunks(n, nthreads);
  const int64_t depths = max_len + 2;  // depth max_len + 1 is empty: the "children" of the deepest nodes
  std::vector<int64_t> next_id(size_t(chunks.count) * depths, 0), first_item(size_t(chunks.count) + 1, 0);
  parallel_for(chunks.count, 1, nthreads, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t* created = &next_id[size_t(c) * depths];
      for (int64_t i = chunks.begin(c), end = chunks.end(c); i < end; ++i) {
        for (int64_t d = lcp[i] + 1; d <= len[i]; ++d) ++created[d];
        first_item[c + 1] += lcp[i] < len[i] || i == 0;
      }
    }
  });
  // Scan in (depth, chunk) order: BFS ids, lexicographic within a depth.
  out->depth_starts.assign(size_t(depths), 0);
  int64_t id = 1;
  for (int64_t d = 1; d < depths; ++d) {
    out->depth_starts[d] = id;
    for (int64_t c = 0; c < chunks.count; ++c) {
      const int64_t k = next_id[size_t(c) * depths + d];
      next_id[size_t(c) * depths + d] = id;
      id += k;
    }
  }
  const int64_t num_nodes = id;
  if (num_nodes > max_nodes)
    throw_value("sequences: the trie would have " + std::to_string(num_nodes) + " nodes, more than the " +
                std::to_string(max_nodes) + " that int32 node ids allow");
  for (int64_t c = 0; c < chunks.count; ++c) first_item[c + 1] += first_item[c];

  // Pass 2: number the nodes. A node's first child is the next node its depth + 1 will get, so
  // indptr[v] = next id at depth + 1, minus 1 (edge e leads to node e + 1); leaves get the same value.
  // Every element of the (unzeroed) arrays is written here: each node once, each input row once.
  // Node v's degree is indptr[v + 1] - indptr[v]: known here once the chunk writes the next node of v's
  // depth; the last one per (chunk, depth) is read back afterwards.
  out->indptr.resize(size_t(num_nodes) + 1);
  out->tokens.resize(size_t(num_nodes) - 1);
  out->perm.resize(size_t(n));
  advise_huge_pages(out->indptr.data(), sizeof(int32_t) * out->indptr.size());
  advise_huge_pages(out->tokens.data(), sizeof(int32_t) * out->tokens.size());
  advise_huge_pages(out->perm.data(), sizeof(int64_t) * out->perm.size());
  out->indptr[0] = 0;  // the root's first child is node 1 (edge 0)
  out->indptr[num_nodes] = int32_t(num_nodes - 1);
  int32_t* const indptr = out->indptr.data();
  int32_t* const tokens = out->tokens.data();
  int64_t* const perm = out->perm.data();
  std::vector<int64_t> max_degree(size_t(chunks.count), 0);
  parallel_for(chunks.count, 1, nthreads, [&](int64_t c0, int64_t c1) {
    // Per depth: the indptr value of this chunk's previous node, or -1.
    std::vector<int64_t> last_ptr(static_cast<size_t>(depths));
    for (int64_t c = c0; c < c1; ++c) {
      int64_t* next = &next_id[size_t(c) * depths];
      int64_t position = first_item[c], degree = 0;
      std::fill(last_ptr.begin(), last_ptr.end(), -1);
      for (int64_t i = chunks.begin(c), end = chunks.end(c); i < end; ++i) {
        perm[items.row(i)] = lcp[i] < len[i] || i == 0 ? position++ : -1;
        for (int64_t d = lcp[i] + 1; d <= len[i]; ++d) {
          const int64_t v = next[d]++, ptr = next[d + 1] - 1;
          tokens[v - 1] = items.token(i, d - 1);
          indptr[v] = int32_t(ptr);
          if (last_ptr[d] >= 0) degree = std::max(degree, ptr - last_ptr[d]);
          last_ptr[d] = ptr;
        }
      }
      max_degree[c] = degree;
    }
  });
  out->num_items = first_item[chunks.count];
  // The root, and each (chunk, depth)'s last node (or, where the chunk made none, some other node: harmless).
  int64_t degree = *std::max_element(max_degree.begin(), max_degree.end());
  for (const int64_t next : next_id) {
    const int64_t v = std::max<int64_t>(0, std::min(next, num_nodes) - 1);
    degree = std::max<int64_t>(degree, indptr[v + 1] - indptr[v]);
  }
  out->max_degree = degree;
}

template void build_cpu(const int32_t*, const int64_t*, int64_t, int64_t, bool, int, BuildResult*, int64_t);
template void build_cpu(const int64_t*, const int64_t*, int64_t, int64_t, bool, int, BuildResult*, int64_t);

}  // namespace trie
}  // namespace fastops
