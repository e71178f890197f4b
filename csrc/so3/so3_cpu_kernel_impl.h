// The CPU tensor-product kernels, written once over a vector type V and instantiated by each ISA's
// translation unit (so3_cpu.cpp: scalar, so3_cpu_avx2.cpp, so3_cpu_avx512.cpp). Everything is in an
// anonymous namespace so each translation unit compiles its own copy with its own flags.
//
// V provides: type T, lane count W, zero(), set1(T), ones_n(n), load(const T*) (W lanes, aligned scratch),
// load_n(const T*, n) (min(n, W) lanes, the rest zero; for user memory), store(T*, V), store_n(T*, V, n),
// add_n(T*, V, n) (p[0..n) += lanes), fma(a, b, c) = a * b + c, mul(a, b), hsum(V).
//
// Per sample and path (so3.h gives the math), with x1, outputs and gradients in the T layout
// (so3_cpu_kernels.h):
//   uvu: M[i,k] = sum_j c x2[v,j] (scalars), then per vector of u: t[k] = sum_i M[i,k] x1[i][u],
//        out[k][u] += W[u,v] t[k]                                        (lanes over u)
//   uuu: t[k][u] = sum c x1[i][u] x2[j][u], out[k][u] += W[u] t[k][u]    (lanes over u)
//   uvw / uuw: T_p[k] = sum c x1[u,i] x2[v,j] for each pair p = (u, v) (scalars), then per vector of w:
//        out[k][w] += sum_p T_p[k] W[p][w]                               (lanes over w)
#pragma once
#include <cstdint>
#include <type_traits>

#include "so3/so3_cpu_kernels.h"

namespace fastops {
namespace so3 {
namespace detail {
namespace {

// Own loops instead of std::fill: a std:: template instantiated in an AVX-512 translation unit could be
// the copy the linker keeps for every caller.
template <class T>
void zero_fill(T* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = T(0);
}

template <class T>
T cg_value(const Entry& e) {
  if constexpr (sizeof(T) == 4) return e.value_f32;
  else return e.value_f64;
}

template <class V>
struct Kernels {
  using T = typename V::T;
  static constexpr int W = V::W;

  // Scratch of one piece of work, carved from Work::scratch (parts as in so3_cpu_kernels.h).
  struct Scratch {
    T *x1_t, *x2_t, *acc_t, *grad_t, *gx1_t, *gx2_t, *m, *n_vectors, *t_scalars, *gt_scalars, *column,
        *grad_column, *gw_stash;
  };

  static Scratch carve(const Compiled& c, void* base) {
    int64_t offsets[kScratchParts + 1];
    scratch_offsets(c, offsets);
    T* p = static_cast<T*>(base);
    return Scratch{p + offsets[kX1T], p + offsets[kX2T], p + offsets[kAccT], p + offsets[kGradT],
                   p + offsets[kGx1T], p + offsets[kGx2T], p + offsets[kM], p + offsets[kNVectors],
                   p + offsets[kTScalars], p + offsets[kGtScalars], p + offsets[kColumn], p + offsets[kGradColumn],
                   p + offsets[kGwStash]};
  }

  // mul_ir row -> T layout (zeros in the padding), and back (parts of the row no block covers become 0).
  static void to_t(const std::vector<Block>& blocks, const T* row, T* t) {
    for (const Block& b : blocks) {
      T* dst = t + b.t;
      for (int32_t i = 0; i < b.dim; ++i) {
        T* d = dst + int64_t(i) * b.mul_pad;
        const T* s = row + b.row + i;
        for (int32_t u = 0; u < b.mul; ++u) d[u] = s[int64_t(u) * b.dim];
        for (int32_t u = b.mul; u < b.mul_pad; ++u) d[u] = T(0);
      }
    }
  }
  // covered: the blocks tile the whole row (nothing to zero first).
  static void from_t(const std::vector<Block>& blocks, int64_t row_len, bool covered, const T* t, T* row) {
    if (!covered) zero_fill(row, row_len);
    for (const Block& b : blocks) {
      const T* src = t + b.t;
      for (int32_t u = 0; u < b.mul; ++u)
        for (int32_t i = 0; i < b.dim; ++i) row[b.row + int64_t(u) * b.dim + i] = src[int64_t(i) * b.mul_pad + u];
    }
  }

  // M[q] (pairs of path P) = sum_j c x2[v, j]; a pair's entries are contiguous (sorted by (k, i, j)).
  static void contract_x2(const Compiled& c, const CompiledPath& P, const T* x2_row, int32_t v, T* m) {
    const T* x2 = x2_row + P.x2_row + int64_t(v) * P.d2;
    const int32_t* bounds = c.pair_cg_bounds.data();
    for (int32_t q = 0; q < P.pair_count; ++q) {
      T acc = T(0);
      for (int32_t e = bounds[P.pair_begin + q]; e < bounds[P.pair_begin + q + 1]; ++e)
        acc += cg_value<T>(c.cg[e]) * x2[c.cg[e].j];
      m[q] = acc;
    }
  }

  // T_p[k] for every pair p of a uvw / uuw path, at ts[t_index(P, u, v, k)]: for uvw, [u][k][v] with v
  // padded to mp2 (computed with vectors over v from x2 in the T layout); for uuw, [u][k].
  static int64_t t_stride(const CompiledPath& P) { return P.mode == Mode::uvw ? P.mp2 : 1; }
  static int64_t t_index(const CompiledPath& P, int64_t u, int64_t v, int64_t k) {
    return P.mode == Mode::uvw ? (u * P.d3 + k) * P.mp2 + v : u * P.d3 + k;
  }
  static void pair_scalars(const Compiled& c, const CompiledPath& P, const T* x1_t, const T* x2_row,
                           const T* x2_t, T* ts) {
    const T* a = x1_t + P.x1_t;
    if (P.mode == Mode::uuw) {
      const T* x2 = x2_row + P.x2_row;
      zero_fill(ts, int64_t(P.mul1) * P.d3);
      for (int64_t u = 0; u < P.mul1; ++u)
        for (int32_t e = P.cg_begin; e < P.cg_begin + P.cg_count; ++e) {
          const Entry& en = c.cg[e];
          ts[u * P.d3 + en.k] += cg_value<T>(en) * a[int64_t(en.i) * P.mp1 + u] * x2[u * P.d2 + en.j];
        }
      return;
    }
    const T* b = x2_t + P.x2_t;
    const int32_t* kc = c.k_cg_bounds.data() + P.k_ranges;
    for (int64_t u = 0; u < P.mul1; ++u)
      for (int32_t k = 0; k < P.d3; ++k) {
        T* tk = ts + t_index(P, u, 0, k);
        u_blocks<4>(P.mul2, [&](auto block, int32_t v0) {
          constexpr int U = decltype(block)::value;
          V acc[U];
          for (int j = 0; j < U; ++j) acc[j] = V::zero();
          for (int32_t e = kc[k]; e < kc[k + 1]; ++e) {
            const Entry& en = c.cg[e];
            const V sv = V::set1(cg_value<T>(en) * a[int64_t(en.i) * P.mp1 + u]);
            const T* bj = b + int64_t(en.j) * P.mp2 + v0;
            for (int j = 0; j < U; ++j) acc[j] = V::fma(sv, V::load(bj + j * W), acc[j]);
          }
          for (int j = 0; j < U; ++j) V::store(tk + v0 + j * W, acc[j]);
        });
      }
  }

  // uvw backward, the CG contraction of gT[u][k][v] (gts, t_index layout) back to x1 and x2, in vectors over v
  // (x2 and the gradients in the T layout; gT's padding lanes are masked off):
  //   gx1[i][u] += sum_e c sum_v gT[u][k][v] x2[j][v],   gx2[j][v] += sum_e c sum_u x1[i][u] gT[u][k][v].
  static void contract_back_uvw(const Compiled& c, const CompiledPath& P, const T* a, const T* b, const T* gts,
                                T* gx1, T* gx2) {
    const int64_t row = int64_t(P.d3) * P.mp2;  // gT elements per u
    for (int32_t e = P.cg_begin; e < P.cg_begin + P.cg_count; ++e) {
      const Entry& en = c.cg[e];
      const T ce = cg_value<T>(en);
      const T* gk = gts + int64_t(en.k) * P.mp2;
      const T* bj = b + int64_t(en.j) * P.mp2;
      const T* ai = a + int64_t(en.i) * P.mp1;
      if (gx1)
        for (int64_t u = 0; u < P.mul1; ++u) {
          V acc = V::zero();
          for (int32_t v0 = 0; v0 < P.mul2; v0 += W)
            acc = V::fma(V::load_n(gk + u * row + v0, P.mul2 - v0), V::load(bj + v0), acc);
          gx1[int64_t(en.i) * P.mp1 + u] += ce * V::hsum(acc);
        }
      if (gx2)
        for (int32_t v0 = 0; v0 < P.mul2; v0 += W) {
          V acc = V::zero();
          for (int64_t u = 0; u < P.mul1; ++u)
            acc = V::fma(V::set1(ce * ai[u]), V::load_n(gk + u * row + v0, P.mul2 - v0), acc);
          T* g2 = gx2 + int64_t(en.j) * P.mp2 + v0;
          V::store(g2, V::add(V::load(g2), acc));
        }
    }
  }

  // Calls f(std::integral_constant<int, KC>, k0) over the d3 output components in blocks of KC = 4, then
  // one block of the 3, 2 or 1 left (KC accumulators in registers).
  template <class F>
  static void k_blocks(int32_t d3, F&& f) {
    int32_t k0 = 0;
    for (; k0 + 4 <= d3; k0 += 4) f(std::integral_constant<int, 4>{}, k0);
    switch (d3 - k0) {
      case 3: f(std::integral_constant<int, 3>{}, k0); break;
      case 2: f(std::integral_constant<int, 2>{}, k0); break;
      case 1: f(std::integral_constant<int, 1>{}, k0); break;
      default: break;
    }
  }

  // Calls f(std::integral_constant<int, U>, u0) over the vectors of `mul` channels in blocks of U = MaxU,
  // then 4, then 1 vectors: U independent accumulator chains hide the FMA latency.
  template <int MaxU, class F>
  static void u_blocks(int32_t mul, F&& f) {
    const int32_t vectors = (mul + W - 1) / W;
    int32_t v = 0;
    for (; v + MaxU <= vectors; v += MaxU) f(std::integral_constant<int, MaxU>{}, v * W);
    if constexpr (MaxU > 4)
      for (; v + 4 <= vectors; v += 4) f(std::integral_constant<int, 4>{}, v * W);
    for (; v < vectors; ++v) f(std::integral_constant<int, 1>{}, v * W);
  }

  // Backward block of U channel vectors at u0: the weights (ones without) and zeroed weight-gradient sums.
  template <int U>
  static void start_block(const T* w, int32_t mul, int32_t u0, V* wvec, V* gw_acc) {
    for (int j = 0; j < U; ++j) {
      wvec[j] = weight_vec(w ? w + u0 + j * W : nullptr, mul - u0 - j * W);
      gw_acc[j] = V::zero();
    }
  }
  // ... and per output component: g[k] (at g_k), s = W g[k], and zeroed t[k] sums.
  template <int U>
  static void start_component(const T* g_k, const V* wvec, V* gk, V* sk, V* t) {
    for (int j = 0; j < U; ++j) {
      gk[j] = V::load(g_k + j * W);
      sk[j] = V::mul(wvec[j], gk[j]);
      t[j] = V::zero();
    }
  }

  // uvu: the weights W[., v] over u, contiguous (copied into `column` when mul2 > 1); null: no weights.
  static const T* weight_column(const CompiledPath& P, const T* w, int32_t v, T* column) {
    if (!w || P.mul2 == 1) return w;
    for (int32_t u = 0; u < P.mul1; ++u) column[u] = w[int64_t(u) * P.mul2 + v];
    return column;
  }

  static V weight_vec(const T* w, int64_t n) { return w ? V::load_n(w, n) : V::ones_n(n); }

  // acc[k][w] += sum_p T_p[k] W[p][w] for KC components k0.. and WB vectors of w from w0 at once (KC x WB
  // accumulators in registers): each broadcast T_p[k] feeds WB FMAs and each weight vector KC, so the
  // loads per FMA drop from (KC + 1) / KC to (KC + WB) / (KC WB).
  template <int KC, int WB>
  static void pairs_times_weight_block(const CompiledPath& P, const T* ts, const T* w, int32_t k0, int32_t w0,
                                       T* acc) {
    const int64_t vs = P.mode == Mode::uvw ? P.mul2 : 1, stride = t_stride(P);
    V a[KC][WB];
    for (int c = 0; c < KC; ++c)
      for (int b = 0; b < WB; ++b) a[c][b] = V::load(acc + int64_t(k0 + c) * P.mpo + w0 + b * W);
    for (int64_t u = 0; u < P.mul1; ++u)
      for (int64_t v = 0; v < vs; ++v) {
        const int64_t p = u * vs + v;
        V wv[WB];
        for (int b = 0; b < WB; ++b)
          wv[b] = weight_vec(w ? w + p * P.mul_out + w0 + b * W : nullptr, P.mul_out - w0 - b * W);
        const T* tp = ts + t_index(P, u, v, k0);
        for (int c = 0; c < KC; ++c) {
          const V t = V::set1(tp[c * stride]);
          for (int b = 0; b < WB; ++b) a[c][b] = V::fma(t, wv[b], a[c][b]);
        }
      }
    for (int c = 0; c < KC; ++c)
      for (int b = 0; b < WB; ++b) V::store(acc + int64_t(k0 + c) * P.mpo + w0 + b * W, a[c][b]);
  }

  // gt[k * t_stride] = sum_w wp[w] g[k][w] for KC components k0.. (a weight vector loaded once for all KC).
  template <int KC>
  static void weight_dots(const CompiledPath& P, const T* wp, const T* g, int32_t k0, T* gt) {
    V acc[KC];
    for (int c = 0; c < KC; ++c) acc[c] = V::zero();
    for (int32_t w0 = 0; w0 < P.mul_out; w0 += W) {
      const V wv = weight_vec(wp ? wp + w0 : nullptr, P.mul_out - w0);
      for (int c = 0; c < KC; ++c) acc[c] = V::fma(wv, V::load(g + int64_t(k0 + c) * P.mpo + w0), acc[c]);
    }
    for (int c = 0; c < KC; ++c) gt[(k0 + c) * t_stride(P)] = V::hsum(acc[c]);
  }

  // grad W[p][w] += sum_s sum_k T_s,p[k] g_s[k][w] over n samples (ts[s]: T in the t_index layout, gs[s]: the
  // path's grad_out block): one broadcast of T per block of 4 w vectors, the gradient row touched once.
  static void add_weight_grad(const CompiledPath& P, const T* const* ts, const T* const* gs, int n, T* gw) {
    const int64_t vs = P.mode == Mode::uvw ? P.mul2 : 1, stride = t_stride(P);
    for (int64_t u = 0; u < P.mul1; ++u)
      for (int64_t v = 0; v < vs; ++v) {
        const int64_t t0 = t_index(P, u, v, 0);
        T* gp = gw + (u * vs + v) * P.mul_out;
        u_blocks<4>(P.mul_out, [&](auto block, int32_t w0) {
          constexpr int U = decltype(block)::value;
          V acc[U];
          for (int j = 0; j < U; ++j) acc[j] = V::zero();
          for (int smp = 0; smp < n; ++smp)
            for (int32_t k = 0; k < P.d3; ++k) {
              const V t = V::set1(ts[smp][t0 + k * stride]);
              const T* gk = gs[smp] + int64_t(k) * P.mpo + w0;
              for (int j = 0; j < U; ++j) acc[j] = V::fma(t, V::load(gk + j * W), acc[j]);
            }
          for (int j = 0; j < U; ++j) V::add_n(gp + w0 + j * W, acc[j], P.mul_out - w0 - j * W);
        });
      }
  }

  // The stashed samples' uvw / uuw weight gradients (stash slots of stash_t + pad(t_out): T, then grad_out).
  static void flush_weight_grads(const Compiled& c, const T* stash, int n, T* grad_w) {
    const int64_t slot = c.stash_slot;
    for (const CompiledPath& P : c.paths) {
      if (P.t_stash < 0) continue;
      const T* ts[kGwBlock];
      const T* gs[kGwBlock];
      for (int smp = 0; smp < n; ++smp) {
        ts[smp] = stash + smp * slot + P.t_stash;
        gs[smp] = stash + smp * slot + c.stash_t + P.out_t;
      }
      add_weight_grad(P, ts, gs, n, grad_w + P.weight);
    }
  }

  // uvw with the weight transposed (wt: [u][w][v], v padded to mp2): gT[u][k][v] = sum_w wt[u][w][v] g[k][w]
  // in vectors over v, KC components at once (no horizontal sums).
  template <int KC>
  static void transposed_dots(const CompiledPath& P, const T* wt, const T* g, int64_t u, int32_t v0, int32_t k0,
                              T* gts) {
    V acc[KC];
    for (int c = 0; c < KC; ++c) acc[c] = V::zero();
    const T* wu = wt + u * P.mul_out * P.mp2 + v0;
    for (int32_t w = 0; w < P.mul_out; ++w) {
      const V wv = V::load(wu + int64_t(w) * P.mp2);
      for (int c = 0; c < KC; ++c) acc[c] = V::fma(V::set1(g[int64_t(k0 + c) * P.mpo + w]), wv, acc[c]);
    }
    for (int c = 0; c < KC; ++c) V::store(gts + t_index(P, u, v0, k0 + c), acc[c]);
  }
  static void transposed_weight_dots(const CompiledPath& P, const T* wt, const T* g, T* gts) {
    for (int64_t u = 0; u < P.mul1; ++u)
      for (int32_t v0 = 0; v0 < P.mul2; v0 += W) {
        k_blocks(P.d3, [&](auto kc, int32_t k0) {
          transposed_dots<decltype(kc)::value>(P, wt, g, u, v0, k0, gts);
        });
      }
  }

  // Pairs of w vectors while the second still starts below mul_out, then one.
  template <int KC>
  static void pairs_times_weight(const CompiledPath& P, const T* ts, const T* w, int32_t k0, T* acc) {
    int32_t w0 = 0;
    for (; w0 + W < P.mul_out; w0 += 2 * W) pairs_times_weight_block<KC, 2>(P, ts, w, k0, w0, acc);
    for (; w0 < P.mul_out; w0 += W) pairs_times_weight_block<KC, 1>(P, ts, w, k0, w0, acc);
  }

  // One sample's contribution to acc_t (T layout of the output row).
  static void forward_sample(const Compiled& c, const T* x1_t, const T* x2_row, const T* x2_t, const T* w_row,
                             const Scratch& s, T* acc_t) {
    for (const CompiledPath& P : c.paths) {
      const T* a = x1_t + P.x1_t;
      T* o = acc_t + P.out_t;
      const T* w = P.weight >= 0 ? w_row + P.weight : nullptr;
      const int32_t* kp = c.k_pair_bounds.data() + P.k_ranges;
      const int32_t* kc = c.k_cg_bounds.data() + P.k_ranges;
      if (P.mode == Mode::uvu) {
        for (int32_t v = 0; v < P.mul2; ++v) {
          contract_x2(c, P, x2_row, v, s.m);
          const T* wv = weight_column(P, w, v, s.column);
          u_blocks<8>(P.mul1, [&](auto block, int32_t u0) {
            constexpr int U = decltype(block)::value;
            V wvec[U];
            for (int j = 0; j < U; ++j) wvec[j] = weight_vec(wv ? wv + u0 + j * W : nullptr, P.mul1 - u0 - j * W);
            for (int32_t k = 0; k < P.d3; ++k) {
              V t[U];
              for (int j = 0; j < U; ++j) t[j] = V::zero();
              for (int32_t q = kp[k]; q < kp[k + 1]; ++q) {
                const V mq = V::set1(s.m[q - P.pair_begin]);
                const T* ai = a + int64_t(c.pairs[q].i) * P.mp1 + u0;
                for (int j = 0; j < U; ++j) t[j] = V::fma(mq, V::load(ai + j * W), t[j]);
              }
              T* ok = o + int64_t(k) * P.mpo + u0;
              for (int j = 0; j < U; ++j) V::store(ok + j * W, V::fma(wvec[j], t[j], V::load(ok + j * W)));
            }
          });
        }
      } else if (P.mode == Mode::uuu) {
        const T* b = x2_t + P.x2_t;
        u_blocks<8>(P.mul1, [&](auto block, int32_t u0) {
          constexpr int U = decltype(block)::value;
          V wvec[U];
          for (int j = 0; j < U; ++j) wvec[j] = weight_vec(w ? w + u0 + j * W : nullptr, P.mul1 - u0 - j * W);
          for (int32_t k = 0; k < P.d3; ++k) {
            V t[U];
            for (int j = 0; j < U; ++j) t[j] = V::zero();
            for (int32_t e = kc[k]; e < kc[k + 1]; ++e) {
              const Entry& en = c.cg[e];
              const V ce = V::set1(cg_value<T>(en));
              const T* ai = a + int64_t(en.i) * P.mp1 + u0;
              const T* bj = b + int64_t(en.j) * P.mp2 + u0;
              for (int j = 0; j < U; ++j) t[j] = V::fma(ce, V::mul(V::load(ai + j * W), V::load(bj + j * W)), t[j]);
            }
            T* ok = o + int64_t(k) * P.mpo + u0;
            for (int j = 0; j < U; ++j) V::store(ok + j * W, V::fma(wvec[j], t[j], V::load(ok + j * W)));
          }
        });
      } else {  // uvw, uuw
        pair_scalars(c, P, x1_t, x2_row, x2_t, s.t_scalars);
        k_blocks(P.d3, [&](auto kc, int32_t k0) {
          pairs_times_weight<decltype(kc)::value>(P, s.t_scalars, w, k0, o);
        });
      }
    }
  }

  // One sample's gradients: gx1_t and gx2_t (T layout) and grad_w (a mul_ir weight row) are added to.
  // stash_t: non-null for a shared weight, where the uvw / uuw paths leave their T_p[k] (at P.t_stash) for
  // gw_block instead of adding to grad_w.
  // weight_t: the shared weight's uvw blocks transposed (BackwardWork::weight_t) or null.
  static void backward_sample(const Compiled& c, const T* x1_t, const T* x2_row, const T* x2_t, const T* w_row,
                              const T* g_t, const Scratch& s, T* gx1_t, T* gx2_t, T* grad_w, T* stash_t,
                              const T* weight_t) {
    for (const CompiledPath& P : c.paths) {
      const T* a = x1_t + P.x1_t;
      const T* g = g_t + P.out_t;
      const T* w = P.weight >= 0 ? w_row + P.weight : nullptr;
      T* gw = (P.weight >= 0 && grad_w) ? grad_w + P.weight : nullptr;
      const int32_t* kp = c.k_pair_bounds.data() + P.k_ranges;
      const int32_t* kc = c.k_cg_bounds.data() + P.k_ranges;
      if (P.mode == Mode::uvu) {
        for (int32_t v = 0; v < P.mul2; ++v) {
          contract_x2(c, P, x2_row, v, s.m);
          const T* wv = weight_column(P, w, v, s.column);
          T* gwv = gw;
          if (gw && P.mul2 > 1) {
            zero_fill(s.grad_column, P.mul1);
            gwv = s.grad_column;
          }
          // N[q] = sum over u of x1[i_q][u] s_k[u] (one vector per pair, summed across lanes at the end)
          if (gx2_t) zero_fill(s.n_vectors, int64_t(P.pair_count) * W);
          u_blocks<4>(P.mul1, [&](auto block, int32_t u0) {
            constexpr int U = decltype(block)::value;
            V wvec[U], gw_acc[U];
            start_block<U>(wv, P.mul1, u0, wvec, gw_acc);
            for (int32_t k = 0; k < P.d3; ++k) {
              V gk[U], sk[U], t[U];
              start_component<U>(g + int64_t(k) * P.mpo + u0, wvec, gk, sk, t);
              for (int32_t q = kp[k]; q < kp[k + 1]; ++q) {
                const int64_t ai = int64_t(c.pairs[q].i) * P.mp1 + u0;
                const V mq = V::set1(s.m[q - P.pair_begin]);
                V xi[U];
                for (int j = 0; j < U; ++j) {
                  xi[j] = V::load(a + ai + j * W);
                  t[j] = V::fma(mq, xi[j], t[j]);
                }
                if (gx1_t) {
                  T* gi = gx1_t + P.x1_t + ai;
                  for (int j = 0; j < U; ++j) V::store(gi + j * W, V::fma(mq, sk[j], V::load(gi + j * W)));
                }
                if (gx2_t) {
                  T* nq = s.n_vectors + int64_t(q - P.pair_begin) * W;
                  V acc = V::load(nq);
                  for (int j = 0; j < U; ++j) acc = V::fma(xi[j], sk[j], acc);
                  V::store(nq, acc);
                }
              }
              for (int j = 0; j < U; ++j) gw_acc[j] = V::fma(gk[j], t[j], gw_acc[j]);
            }
            if (gwv)
              for (int j = 0; j < U; ++j) V::add_n(gwv + u0 + j * W, gw_acc[j], P.mul1 - u0 - j * W);
          });
          if (gw && P.mul2 > 1)
            for (int32_t u = 0; u < P.mul1; ++u) gw[int64_t(u) * P.mul2 + v] += s.grad_column[u];
          if (gx2_t) {
            for (int32_t q = 0; q < P.pair_count; ++q) s.m[q] = V::hsum(V::load(s.n_vectors + int64_t(q) * W));
            T* gx2 = gx2_t + P.x2_t + v;  // (v, j) at j * mp2 + v
            for (int32_t e = P.cg_begin; e < P.cg_begin + P.cg_count; ++e) {
              const Entry& en = c.cg[e];
              gx2[int64_t(en.j) * P.mp2] += cg_value<T>(en) * s.m[en.pair - P.pair_begin];
            }
          }
        }
      } else if (P.mode == Mode::uuu) {
        const T* b = x2_t + P.x2_t;
        u_blocks<4>(P.mul1, [&](auto block, int32_t u0) {
          constexpr int U = decltype(block)::value;
          V wvec[U], gw_acc[U];
          start_block<U>(w, P.mul1, u0, wvec, gw_acc);
          for (int32_t k = 0; k < P.d3; ++k) {
            V gk[U], sk[U], t[U];
            start_component<U>(g + int64_t(k) * P.mpo + u0, wvec, gk, sk, t);
            for (int32_t e = kc[k]; e < kc[k + 1]; ++e) {
              const Entry& en = c.cg[e];
              const int64_t ai = int64_t(en.i) * P.mp1 + u0, bj = int64_t(en.j) * P.mp2 + u0;
              const V ce = V::set1(cg_value<T>(en));
              for (int j = 0; j < U; ++j) {
                const V xi = V::load(a + ai + j * W), xj = V::load(b + bj + j * W);
                t[j] = V::fma(ce, V::mul(xi, xj), t[j]);
                const V cs = V::mul(ce, sk[j]);
                if (gx1_t) V::store(gx1_t + P.x1_t + ai + j * W, V::fma(cs, xj, V::load(gx1_t + P.x1_t + ai + j * W)));
                if (gx2_t) V::store(gx2_t + P.x2_t + bj + j * W, V::fma(cs, xi, V::load(gx2_t + P.x2_t + bj + j * W)));
              }
            }
            for (int j = 0; j < U; ++j) gw_acc[j] = V::fma(gk[j], t[j], gw_acc[j]);
          }
          if (gw)
            for (int j = 0; j < U; ++j) V::add_n(gw + u0 + j * W, gw_acc[j], P.mul1 - u0 - j * W);
        });
      } else {  // uvw, uuw
        const int64_t vs = P.mode == Mode::uvw ? P.mul2 : 1;
        if (gw && stash_t) {
          pair_scalars(c, P, x1_t, x2_row, x2_t, stash_t + P.t_stash);
        } else if (gw) {
          pair_scalars(c, P, x1_t, x2_row, x2_t, s.t_scalars);
          add_weight_grad(P, &s.t_scalars, &g, 1, gw);
        }
        if (!gx1_t && !gx2_t) continue;
        // gT_p[k] = sum_w W[p][w] g[k][w], then the CG contraction back to x1 and x2.
        if (weight_t && P.wt >= 0) {
          transposed_weight_dots(P, weight_t + P.wt, g, s.gt_scalars);
        } else {
          for (int64_t u = 0; u < P.mul1; ++u)
            for (int64_t v = 0; v < vs; ++v) {
              const T* wp = w ? w + (u * vs + v) * P.mul_out : nullptr;
              T* gt = s.gt_scalars + t_index(P, u, v, 0);
              k_blocks(P.d3, [&](auto kc, int32_t k0) {
                weight_dots<decltype(kc)::value>(P, wp, g, k0, gt);
              });
            }
        }
        if (P.mode == Mode::uvw) {
          contract_back_uvw(c, P, a, x2_t + P.x2_t, s.gt_scalars, gx1_t ? gx1_t + P.x1_t : nullptr,
                            gx2_t ? gx2_t + P.x2_t : nullptr);
          continue;
        }
        const T* x2 = x2_row + P.x2_row;
        for (int64_t u = 0; u < P.mul1; ++u)
          for (int64_t vi = 0; vi < vs; ++vi) {
            const int64_t v = P.mode == Mode::uvw ? vi : u;  // the x2 channel
            for (int32_t e = P.cg_begin; e < P.cg_begin + P.cg_count; ++e) {
              const Entry& en = c.cg[e];
              const T ge = cg_value<T>(en) * s.gt_scalars[t_index(P, u, vi, en.k)];
              const int64_t ai = int64_t(en.i) * P.mp1 + u;
              if (gx1_t) gx1_t[P.x1_t + ai] += ge * x2[v * P.d2 + en.j];
              if (gx2_t) gx2_t[P.x2_t + int64_t(en.j) * P.mp2 + v] += ge * a[ai];
            }
          }
      }
    }
  }

  static int64_t visit(const Work& wk, int64_t i) { return wk.order ? wk.order[i] : i; }
  static int64_t seg_first(const Work& wk, int64_t s) { return wk.segment_bounds ? wk.segment_bounds[s] : s; }
  static int64_t seg_last(const Work& wk, int64_t s) { return wk.segment_bounds ? wk.segment_bounds[s + 1] : s + 1; }

  // x1 row of sample t in the T layout: the pre-transposed row, or transposed into scratch.
  static const T* x1_of(const Work& wk, const Scratch& s, int64_t t) {
    const Problem& p = *wk.p;
    const int64_t r = p.x1_index ? p.x1_index[t] : t;
    if (wk.x1_t_rows) return static_cast<const T*>(wk.x1_t_rows) + r * wk.c->t1;
    to_t(wk.c->x1_blocks, static_cast<const T*>(p.x1) + r * p.x1_stride, s.x1_t);
    return s.x1_t;
  }
  static const T* x2_row_of(const Problem& p, int64_t t) { return static_cast<const T*>(p.x2) + t * p.x2_stride; }
  static const T* weight_row_of(const Problem& p, int64_t t) {
    return p.weight ? static_cast<const T*>(p.weight) + t * p.weight_stride : nullptr;
  }
  static const T* x2_t_of(const Work& wk, const Scratch& s, int64_t t) {
    if (!wk.c->needs_x2_t) return nullptr;
    to_t(wk.c->x2_blocks, x2_row_of(*wk.p, t), s.x2_t);
    return s.x2_t;
  }

  // The rows of the next sample are random (samples go in output-row order): fetch them while this one
  // computes.
  static void prefetch_sample(const Work& wk, int64_t t) {
    const Problem& p = *wk.p;
    auto lines = [](const void* base, int64_t bytes) {
      for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(static_cast<const char*>(base) + b);
    };
    if (p.weight && p.weight_stride) lines(weight_row_of(p, t), wk.c->weight_numel * int64_t(sizeof(T)));
    if (wk.x1_t_rows) lines(static_cast<const T*>(wk.x1_t_rows) + p.x1_index[t] * wk.c->t1, wk.c->t1 * int64_t(sizeof(T)));
    lines(x2_row_of(p, t), wk.c->dim2 * int64_t(sizeof(T)));
    // Backward: the grad_out row (pre-transposed) of the next sample's output row.
    if (wk.grad_t_rows && p.out_index)
      lines(static_cast<const T*>(wk.grad_t_rows) + p.out_index[t] * wk.c->t_out, wk.c->t_out * int64_t(sizeof(T)));
  }

  static void forward(const ForwardWork& wk) {
    const Compiled& c = *wk.c;
    const Problem& p = *wk.p;
    const Scratch s = carve(c, wk.scratch);
    for (int64_t seg = wk.seg_begin; seg < wk.seg_end; ++seg) {
      const int64_t first = seg_first(wk, seg), last = seg_last(wk, seg);
      zero_fill(s.acc_t, c.t_out);
      for (int64_t i = first; i < last; ++i) {
        const int64_t t = visit(wk, i);
        if (i + 1 < seg_last(wk, wk.seg_end - 1)) prefetch_sample(wk, visit(wk, i + 1));
        forward_sample(c, x1_of(wk, s, t), x2_row_of(p, t), x2_t_of(wk, s, t), weight_row_of(p, t), s, s.acc_t);
      }
      const int64_t t0 = visit(wk, first);
      const int64_t row = p.out_index ? p.out_index[t0] : t0;
      from_t(c.out_blocks, c.dim_out, c.out_covered, s.acc_t, static_cast<T*>(wk.out) + row * wk.out_stride);
    }
  }

  static void backward(const BackwardWork& wk) {
    const Compiled& c = *wk.c;
    const Problem& p = *wk.p;
    const Grads& gr = wk.grads;
    const Scratch s = carve(c, wk.scratch);
    const bool want_x1 = gr.x1 != nullptr, want_x2 = gr.x2 != nullptr;
    const bool shared_w = p.weight_stride == 0;
    const bool stashing = shared_w && gr.weight && c.stash_slot > 0;  // kGwBlock samples per weight-gradient pass
    int stashed = 0;
    for (int64_t seg = wk.seg_begin; seg < wk.seg_end; ++seg) {
      const int64_t first = seg_first(wk, seg), last = seg_last(wk, seg);
      if (want_x1) zero_fill(s.gx1_t, c.t1);
      for (int64_t i = first; i < last; ++i) {
        const int64_t t = visit(wk, i);
        if (i + 1 < seg_last(wk, wk.seg_end - 1)) prefetch_sample(wk, visit(wk, i + 1));
        const int64_t grow = p.out_index ? p.out_index[t] : t;
        const T* g_t;
        if (wk.grad_t_rows) {
          g_t = static_cast<const T*>(wk.grad_t_rows) + grow * c.t_out;
        } else {
          to_t(c.out_blocks, static_cast<const T*>(wk.grad_out) + grow * wk.grad_out_stride, s.grad_t);
          g_t = s.grad_t;
        }
        if (want_x2) zero_fill(s.gx2_t, c.t2);
        T* gw = nullptr;
        if (gr.weight) {
          if (shared_w) {
            gw = static_cast<T*>(wk.shared_grad_weight);
          } else {
            gw = static_cast<T*>(gr.weight) + t * gr.weight_stride;
            zero_fill(gw, c.weight_numel);
          }
        }
        T* stash_t = nullptr;
        if (stashing) {
          stash_t = s.gw_stash + stashed * c.stash_slot;
          for (int64_t e = 0; e < c.t_out; ++e) stash_t[c.stash_t + e] = g_t[e];
        }
        backward_sample(c, x1_of(wk, s, t), x2_row_of(p, t), x2_t_of(wk, s, t), weight_row_of(p, t), g_t, s,
                        want_x1 ? s.gx1_t : nullptr, want_x2 ? s.gx2_t : nullptr, gw, stash_t,
                        static_cast<const T*>(wk.weight_t));
        if (stashing && ++stashed == kGwBlock) {
          flush_weight_grads(c, s.gw_stash, stashed, gw);
          stashed = 0;
        }
        if (want_x2) from_t(c.x2_blocks, c.dim2, c.x2_covered, s.gx2_t, static_cast<T*>(gr.x2) + t * gr.x2_stride);
      }
      if (want_x1) {
        const int64_t t0 = visit(wk, first);
        const int64_t row = p.x1_index ? p.x1_index[t0] : t0;
        from_t(c.x1_blocks, c.dim1, c.x1_covered, s.gx1_t, static_cast<T*>(gr.x1) + row * gr.x1_stride);
      }
    }
    if (stashed) flush_weight_grads(c, s.gw_stash, stashed, static_cast<T*>(wk.shared_grad_weight));
  }
};

template <class VF, class VD>
CpuKernels make_kernels(const char* name) {
  return CpuKernels{name, &Kernels<VF>::forward, &Kernels<VD>::forward, &Kernels<VF>::backward,
                    &Kernels<VD>::backward};
}

}  // namespace
}  // namespace detail
}  // namespace so3
}  // namespace fastops
