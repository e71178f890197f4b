"""Tables and CPU transform programs of the Gaunt tensor product (fastops.so3.GauntTensorProduct).

Everything here is float64 and built once per (method, degrees, grid), then cached.

Frame and normalization: e3nn's. A point of the sphere is (alpha, beta) with xyz = (sin b sin a, cos b,
sin b cos a) (polar axis y), and the real harmonics separate as Y_lm(a, b) = Lam_lm(b) * trig_m(a) with
trig_m = sqrt2 sin(|m| a) for m < 0, 1 for m = 0, sqrt2 cos(m a) for m > 0. The Gaunt product uses the
'integral' normalization (int Y_lm^2 = 1): out_k = int f g Y_k for f = sum x_i Y_i, g = sum y_j Y_j.

A program (csrc/so3/gaunt.h) is a list of small matrix-vector products, butterflies and pointwise
products over slots; the CPU kernel runs it on SIMD vectors of samples. Three builders:

grid    Gauss-Legendre rings in cos(beta) x uniform alpha. Per input: for each (m, parity of l+|m|) one
        matrix over the ring pairs (north/south rings share |Lam| up to (-1)^(l+|m|), so the even and odd
        parts are summed once and a butterfly gives both rings), then per ring the alpha synthesis split
        into its cos and sin halves (points alpha_k and -alpha_k share them, another butterfly). The product
        is pointwise; the projection runs the same steps transposed, with the quadrature weights folded in.
fft     the 2D-Fourier route of Luo et al.: per m the theta-part becomes a cos (even |m|) or sin (odd |m|)
        series (sh2f), both series are evaluated on a P x P torus (P = 2(L1 + L2) + 1, the zero-padded size
        of the linear 2D convolution; the DFTs are small matrices), multiplied, transformed back to Fourier
        coefficients, and projected onto the output harmonics (f2sh).
direct  out_k = sum_{i, j} G_ijk x_i y_j over the nonzero Gaunt coefficients, one gather-dot per (k, i).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import List, Tuple

import torch

from ._so3_math import spherical_harmonics, wigner_3j

SQRT2 = math.sqrt(2.0)
# op codes and field count of csrc/so3/gaunt.h
MATVEC, BUTTERFLY, MUL, GATHER_DOT, GATHER_DOT_ADD = 1, 3, 4, 5, 6
OP_FIELDS = 8


def dim(lmax: int) -> int:
    return (lmax + 1) ** 2


def lm_index(l: int, m: int) -> int:
    return l * l + l + m


def minimal_grid(l1: int, l2: int, l3: int) -> Tuple[int, int]:
    """Smallest (n_beta, n_alpha) on which the product of degrees l1 x l2 projected to l3 is exact: the
    integrand has degree l1 + l2 + l3 in cos(beta) (Gauss-Legendre: 2n - 1 >= degree) and frequency
    l1 + l2 + l3 in alpha (the uniform rule integrates frequencies below n exactly)."""
    s = l1 + l2 + l3
    return (s + 2) // 2, s + 1


# ------------------------------------------------------------------------------------------------ tables
@functools.lru_cache(maxsize=None)
def gauss_legendre(n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nodes z (descending: beta ascending) and weights of the n-point Gauss-Legendre rule on [-1, 1]."""
    if n == 1:
        return torch.zeros(1, dtype=torch.float64), torch.full((1,), 2.0, dtype=torch.float64)
    k = torch.arange(1, n, dtype=torch.float64)
    jacobi = torch.diag(k / torch.sqrt(4 * k * k - 1), 1)
    z = torch.linalg.eigvalsh(jacobi + jacobi.T).flip(0)
    for _ in range(3):  # Newton on P_n, from the eigenvalues (already ~1e-15) to the last bit
        p, dp = _legendre_p(n, z)
        z = z - p / dp
    z = (z - z.flip(0)) / 2  # exactly antisymmetric, so the ring pairs mirror exactly
    _, dp = _legendre_p(n, z)
    w = 2 / ((1 - z * z) * dp * dp)
    return z, (w + w.flip(0)) / 2


def _legendre_p(n: int, z: torch.Tensor):
    """P_n(z) and P_n'(z) by the three-term recurrence."""
    p0, p1 = torch.ones_like(z), z.clone()
    for k in range(2, n + 1):
        p0, p1 = p1, ((2 * k - 1) * z * p1 - (k - 1) * p0) / k
    dp = n * (z * p1 - p0) / (z * z - 1)
    return p1, dp


def _xyz(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.sin(beta) * torch.sin(alpha), torch.cos(beta), torch.sin(beta) * torch.cos(alpha)], -1)


def theta_part(lmax: int, beta: torch.Tensor) -> torch.Tensor:
    """Lam[t, lm] for betas [n]: Y_lm(a, b_t) = Lam[t, lm] trig_m(a) (integral normalization), from e3nn's
    harmonics evaluated where trig_m(a) is known (a = 0 for m >= 0, a = pi / (2|m|) for m < 0)."""
    lam = torch.zeros(beta.numel(), dim(lmax), dtype=torch.float64)
    for m in range(-lmax, lmax + 1):
        a = 0.0 if m >= 0 else math.pi / (2 * -m)
        y = spherical_harmonics(lmax, _xyz(torch.full_like(beta, a), beta), normalization="integral")
        cols = [lm_index(l, m) for l in range(abs(m), lmax + 1)]
        lam[:, cols] = y[:, cols] / (1.0 if m == 0 else SQRT2)
    return lam


def trig(m: int, alpha: torch.Tensor) -> torch.Tensor:
    if m == 0:
        return torch.ones_like(alpha)
    return SQRT2 * (torch.cos(m * alpha) if m > 0 else torch.sin(-m * alpha))


def grid_points(n_beta: int, n_alpha: int):
    """(beta [n_beta], alpha [n_alpha], weight [n_beta]): Gauss-Legendre in cos(beta), uniform alpha; the
    quadrature of f is sum_t weight[t] * sum_k f(alpha_k, beta_t), with 2 pi / n_alpha folded into weight."""
    z, w = gauss_legendre(n_beta)
    alpha = torch.arange(n_alpha, dtype=torch.float64) * (2 * math.pi / n_alpha)
    return torch.arccos(z), alpha, w * (2 * math.pi / n_alpha)


@functools.lru_cache(maxsize=None)
def sh_on_grid(lmax: int, n_beta: int, n_alpha: int) -> torch.Tensor:
    """Y[lm, t, k] = Y_lm(alpha_k, beta_t), integral normalization."""
    beta, alpha, _ = grid_points(n_beta, n_alpha)
    lam = theta_part(lmax, beta)  # [t, lm]
    out = torch.empty(dim(lmax), n_beta, n_alpha, dtype=torch.float64)
    for l in range(lmax + 1):
        for m in range(-l, l + 1):
            out[lm_index(l, m)] = lam[:, lm_index(l, m), None] * trig(m, alpha)[None, :]
    return out


@functools.lru_cache(maxsize=None)
def dense_tables(l1: int, l2: int, l3: int, n_beta: int, n_alpha: int):
    """(Y1 [d1, G], Y2 [d2, G], Z [G, d3]) with G = n_beta * n_alpha: out = ((x Y1) * (y Y2)) Z."""
    _, _, w = grid_points(n_beta, n_alpha)
    y1 = sh_on_grid(l1, n_beta, n_alpha).reshape(dim(l1), -1)
    y2 = sh_on_grid(l2, n_beta, n_alpha).reshape(dim(l2), -1)
    z = (sh_on_grid(l3, n_beta, n_alpha) * w[None, :, None]).reshape(dim(l3), -1).T.contiguous()
    return y1, y2, z


def three_j_000(l1: int, l2: int, l3: int) -> float:
    """The Wigner 3j symbol (l1 l2 l3; 0 0 0), closed form (zero for odd l1 + l2 + l3)."""
    J = l1 + l2 + l3
    if J % 2 or not abs(l1 - l2) <= l3 <= l1 + l2:
        return 0.0
    g = J // 2
    f = math.factorial
    value = math.sqrt(f(J - 2 * l1) * f(J - 2 * l2) * f(J - 2 * l3) / f(J + 1)) * f(g) / (f(g - l1) * f(g - l2) * f(g - l3))
    return (-1) ** g * value


def kappa(l1: int, l2: int, l3: int) -> float:
    """G = kappa * C (e3nn's wigner_3j): kappa = sqrt((2l1+1)(2l2+1)(2l3+1) / 4pi) |(l1 l2 l3; 0 0 0)|."""
    return math.sqrt((2 * l1 + 1) * (2 * l2 + 1) * (2 * l3 + 1) / (4 * math.pi)) * abs(three_j_000(l1, l2, l3))


@functools.lru_cache(maxsize=None)
def gaunt_block(l1: int, l2: int, l3: int) -> torch.Tensor:
    """G[m1, m2, m3] = int Y_l1m1 Y_l2m2 Y_l3m3 (integral normalization) = kappa * wigner_3j; zero (of the
    right shape) outside the triangle or for odd l1 + l2 + l3."""
    if (l1 + l2 + l3) % 2 or not abs(l1 - l2) <= l3 <= l1 + l2:
        return torch.zeros(2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1, dtype=torch.float64)
    return kappa(l1, l2, l3) * wigner_3j(l1, l2, l3)


# ------------------------------------------------------------------------------------------------ programs
@dataclass(frozen=True)
class Program:
    ops: torch.Tensor        # int32 [n, OP_FIELDS]
    consts: torch.Tensor     # float64
    index: torch.Tensor      # int32
    in1_slots: torch.Tensor  # int32 [d1]
    in2_slots: torch.Tensor  # int32 [d2]
    out_slots: torch.Tensor  # int32 [d3]
    num_slots: int

    def flops_per_sample(self) -> int:
        """Multiply-adds count 2, products and butterflies count 1 (per sample, as the kernel runs it)."""
        total = 0
        for code, *f in self.ops.tolist():
            if code == MATVEC:
                total += 2 * f[2] * f[5]
            elif code == BUTTERFLY:
                total += 2 * f[2]
            elif code == MUL:
                total += f[2]
            else:
                total += 2 * f[2] + 1
        return total


class _Builder:
    def __init__(self):
        self.slots = 0
        self.ops: List[List[int]] = []
        self.consts: List[torch.Tensor] = []
        self.n_consts = 0
        self.index: List[int] = []

    def alloc(self, n: int) -> int:
        first = self.slots
        self.slots += n
        return first

    def const(self, m: torch.Tensor) -> int:
        off = self.n_consts
        flat = m.reshape(-1).to(torch.float64)
        self.consts.append(flat)
        self.n_consts += flat.numel()
        return off

    def matvec(self, out, os, rows, inp, is_, m: torch.Tensor):
        if rows:
            self.ops.append([MATVEC, out, os, rows, inp, is_, m.shape[1], self.const(m)])

    def butterfly(self, a, as_, n, b, bs):
        if n:
            self.ops.append([BUTTERFLY, a, as_, n, b, bs, 0, 0])

    def mul(self, out, n, a, b):
        self.ops.append([MUL, out, 1, n, a, 1, b, 1])

    def gather_dot(self, out, a, values: List[float], slots: List[int], add: bool):
        c = self.const(torch.tensor(values, dtype=torch.float64))
        x = len(self.index)
        self.index.extend(slots)
        self.ops.append([GATHER_DOT_ADD if add else GATHER_DOT, out, a, len(values), c, x, 0, 0])

    def finish(self, in1, in2, out) -> Program:
        i32 = lambda v: torch.tensor(v, dtype=torch.int32)
        consts = torch.cat(self.consts) if self.consts else torch.zeros(0, dtype=torch.float64)
        ops = torch.tensor(self.ops, dtype=torch.int32).reshape(-1, OP_FIELDS)
        return Program(ops, consts.contiguous(), i32(self.index), i32(in1), i32(in2), i32(out), self.slots)


def _parity_groups(lmax: int):
    """Slot order of one input/output in the grid program: by m, then the parity of l + |m|, then l."""
    order, groups = [], []
    for m in range(-lmax, lmax + 1):
        for par in (0, 1):
            ls = [l for l in range(abs(m), lmax + 1) if (l + abs(m)) % 2 == par]
            groups.append((m, par, len(order), ls))
            order.extend(lm_index(l, m) for l in ls)
    slot_of = [0] * dim(lmax)
    for pos, lm in enumerate(order):
        slot_of[lm] = pos
    return groups, slot_of


class _AlphaStage:
    """Per-ring synthesis / analysis in alpha on n uniform points. A ring's values sit in slots
    [k = 0..h, (k = n/2 if n even), k = n-1 .. n-h] so that points alpha_k and -alpha_k pair up."""

    def __init__(self, b: _Builder, n: int):
        self.b = b
        self.h = (n - 1) // 2
        self.e = 1 - n % 2
        alpha = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
        self.cos_k = list(range(self.h + 1)) + ([n // 2] if self.e else [])
        self.alpha = alpha
        self._cache = {}

    def synth(self, g: int, lmax: int, v: int):
        """ring values v[n] from g[m = -lmax..lmax] (slots g .. g + 2lmax)."""
        b, h, e = self.b, self.h, self.e
        key = ("s", lmax)
        if key not in self._cache:
            a = self.alpha
            cos_m = torch.stack([trig(m, a[self.cos_k]) for m in range(lmax + 1)], 1)               # [h+1+e, L+1]
            sin_m = torch.stack([trig(-mm, a[1:h + 1]) for mm in range(lmax, 0, -1)], 1) if lmax else torch.zeros(h, 0)
            self._cache[key] = (b.const(cos_m), cos_m.shape, b.const(sin_m), sin_m.shape)
        cc, cs, sc, ss = self._cache[key]
        b.ops.append([MATVEC, v, 1, cs[0], g + lmax, 1, cs[1], cc])
        if h:
            b.ops.append([MATVEC, v + h + 1 + e, 1, h, g, 1, ss[1], sc])
            b.butterfly(v + 1, 1, h, v + h + 1 + e, 1)

    def analyse(self, v: int, lmax: int, out: int, scale: float):
        """out[m = -lmax..lmax] = scale * sum_k v_k trig_m(alpha_k); destroys v."""
        b, h, e = self.b, self.h, self.e
        key = ("a", lmax, scale)
        if key not in self._cache:
            a = self.alpha
            # after the butterfly: slots 1..h hold v_k + v_{n-k}, the mirror slots v_k - v_{n-k}
            cos_m = torch.stack([scale * trig(m, a[self.cos_k]) for m in range(lmax + 1)], 0)          # [L+1, h+1+e]
            sin_m = torch.stack([scale * trig(-mm, a[1:h + 1]) for mm in range(lmax, 0, -1)], 0) if lmax else torch.zeros(0, h)
            self._cache[key] = (b.const(cos_m), cos_m.shape, b.const(sin_m), sin_m.shape)
        cc, cs, sc, ss = self._cache[key]
        b.butterfly(v + 1, 1, h, v + h + 1 + e, 1)
        b.ops.append([MATVEC, out + lmax, 1, cs[0], v, 1, cs[1], cc])
        if lmax:
            b.ops.append([MATVEC, out, 1, lmax, v + h + 1 + e, 1, ss[1], sc])


@functools.lru_cache(maxsize=None)
def grid_program(l1: int, l2: int, l3: int, n_beta: int, n_alpha: int) -> Program:
    b = _Builder()
    z, w = gauss_legendre(n_beta)
    beta = torch.arccos(z)
    H, mid = n_beta // 2, n_beta % 2
    north = list(range(H + mid))  # ring slots 0..H-1 (+ the equator at H); south ring slot H+mid+p mirrors p
    alpha = _AlphaStage(b, n_alpha)

    def legendre_synthesis(lmax: int):
        groups, slot_of = _parity_groups(lmax)
        x = b.alloc(dim(lmax))
        width = 2 * lmax + 1
        g = b.alloc(n_beta * width)
        lam = theta_part(lmax, beta)
        for m, par, pos, ls in groups:
            rows = north if par == 0 else north[:H]
            mat = torch.stack([lam[rows, lm_index(l, m)] for l in ls], 1) if ls else torch.zeros(len(rows), 0)
            first_ring = 0 if par == 0 else H + mid
            b.matvec(g + first_ring * width + m + lmax, width, len(rows), x + pos, 1, mat)
        b.butterfly(g, 1, H * width, g + (H + mid) * width, 1)
        return [x + s for s in slot_of], g

    in1, g1 = legendre_synthesis(l1)
    in2, g2 = legendre_synthesis(l2)
    width = 2 * l3 + 1
    hs = b.alloc(n_beta * width)
    # ring by ring, so the ring values (the largest intermediate) need one ring of slots per input
    v1, v2 = b.alloc(n_alpha), b.alloc(n_alpha)
    for r in range(n_beta):
        alpha.synth(g1 + r * (2 * l1 + 1), l1, v1)
        alpha.synth(g2 + r * (2 * l2 + 1), l2, v2)
        b.mul(v1, n_alpha, v1, v2)
        alpha.analyse(v1, l3, hs + r * width, 2 * math.pi / n_alpha)
    b.butterfly(hs, 1, H * width, hs + (H + mid) * width, 1)
    groups, slot_of = _parity_groups(l3)
    out = b.alloc(dim(l3))
    lam = theta_part(l3, beta) * w[:, None]
    for m, par, pos, ls in groups:
        rows = north if par == 0 else north[:H]
        first_ring = 0 if par == 0 else H + mid
        mat = torch.stack([lam[rows, lm_index(l, m)] for l in ls], 0) if ls else None
        if ls:
            b.matvec(out + pos, 1, len(ls), hs + first_ring * width + m + l3, width, mat)
    return b.finish(in1, in2, [out + s for s in slot_of])


def fft_size(l1: int, l2: int, l3: int) -> Tuple[int, int]:
    """(P_theta, P_phi) of the 2D-Fourier route: the zero-padded linear-convolution size 2(l1 + l2) + 1,
    enlarged in phi when l3 > l1 + l2 so that no product frequency aliases onto an output order."""
    p = 2 * (l1 + l2) + 1
    return p, max(p, l1 + l2 + l3 + 1)


def _theta_series(lmax: int, m: int) -> torch.Tensor:
    """Fourier coefficients of Lam_lm(beta) for l = |m|..lmax: rows l, columns u of cos(u b) (u = 0..lmax,
    even |m|) or sin(u b) (u = 1..lmax, odd |m|); exact (Lam_lm is a trigonometric polynomial of degree l)."""
    q = 4 * lmax + 8
    beta = (torch.arange(q, dtype=torch.float64) + 0.5) * (math.pi / q)
    lam = theta_part(lmax, beta)[:, [lm_index(l, m) for l in range(abs(m), lmax + 1)]]
    basis = _theta_basis(lmax, m, beta)
    coef = torch.linalg.lstsq(basis, lam).solution.T  # [l, u]
    assert float((basis @ coef.T - lam).abs().max()) < 1e-12, "theta part is not a trigonometric polynomial"
    return coef


def _theta_basis(degree: int, m: int, beta: torch.Tensor) -> torch.Tensor:
    if abs(m) % 2 == 0:
        return torch.stack([torch.cos(u * beta) for u in range(degree + 1)], 1)
    return torch.stack([torch.sin(u * beta) for u in range(1, degree + 1)], 1)


@functools.lru_cache(maxsize=None)
def fft_program(l1: int, l2: int, l3: int) -> Program:
    b = _Builder()
    p_theta, p_phi = fft_size(l1, l2, l3)
    theta = torch.arange(p_theta, dtype=torch.float64) * (2 * math.pi / p_theta)
    alpha = _AlphaStage(b, p_phi)

    def sh2f_and_synthesis(lmax: int):
        x = b.alloc(dim(lmax))
        slot_of = [0] * dim(lmax)
        width = 2 * lmax + 1
        t = b.alloc(p_theta * width)
        pos = 0
        for m in range(-lmax, lmax + 1):
            ls = list(range(abs(m), lmax + 1))
            for i, l in enumerate(ls):
                slot_of[lm_index(l, m)] = pos + i
            coef = _theta_series(lmax, m)                     # [l, u]
            f = b.alloc(coef.shape[1])
            b.matvec(f, 1, coef.shape[1], x + pos, 1, coef.T)  # sh2f: Fourier coefficients of this m
            b.matvec(t + m + lmax, width, p_theta, f, 1, _theta_basis(lmax, m, theta))  # inverse DFT in theta
            pos += len(ls)
        return [x + s for s in slot_of], t

    in1, t1 = sh2f_and_synthesis(l1)
    in2, t2 = sh2f_and_synthesis(l2)
    width = 2 * l3 + 1
    hq = b.alloc(p_theta * width)
    v1, v2 = b.alloc(p_phi), b.alloc(p_phi)
    for j in range(p_theta):  # per torus row: inverse DFT in phi, product, DFT in phi
        alpha.synth(t1 + j * (2 * l1 + 1), l1, v1)
        alpha.synth(t2 + j * (2 * l2 + 1), l2, v2)
        b.mul(v1, p_phi, v1, v2)
        alpha.analyse(v1, l3, hq + j * width, 2 * math.pi / p_phi)
    out = b.alloc(dim(l3))
    out_slot = [0] * dim(l3)
    degree = l1 + l2
    # f2sh: int_0^pi trig_u(b) Lam_lm(b) sin(b) db by a Gauss-Legendre rule in b (the integrand is analytic)
    nq = 2 * (degree + l3) + 64
    zq, wq = gauss_legendre(nq)
    bq = (zq + 1) * (math.pi / 2)
    wq = wq * (math.pi / 2) * torch.sin(bq)
    lam_q = theta_part(l3, bq)
    pos = 0
    for m in range(-l3, l3 + 1):
        ls = list(range(abs(m), l3 + 1))
        for i, l in enumerate(ls):
            out_slot[lm_index(l, m)] = pos + i
        dft = _theta_basis(degree, m, theta).T * (2.0 / p_theta)  # [u, j]: Fourier coefficients in theta
        if abs(m) % 2 == 0:
            dft[0] /= 2
        c = b.alloc(dft.shape[0])
        b.matvec(c, 1, dft.shape[0], hq + m + l3, width, dft)
        q = (lam_q[:, [lm_index(l, m) for l in ls]] * wq[:, None]).T @ _theta_basis(degree, m, bq)  # [l, u]
        b.matvec(out + pos, 1, len(ls), c, 1, q)
        pos += len(ls)
    return b.finish(in1, in2, [out + s for s in out_slot])


@functools.lru_cache(maxsize=None)
def direct_program(l1: int, l2: int, l3: int) -> Program:
    b = _Builder()
    x, y, out = b.alloc(dim(l1)), b.alloc(dim(l2)), b.alloc(dim(l3))
    for c in range(l3 + 1):
        terms = {}  # k -> i -> [(j, G)]
        for a in range(l1 + 1):
            for bb in range(l2 + 1):
                g = gaunt_block(a, bb, c)
                for m1, m2, m3 in torch.nonzero(g.abs() > 1e-15).tolist():
                    by_i = terms.setdefault(lm_index(c, m3 - c), {})
                    by_i.setdefault(lm_index(a, m1 - a), []).append((lm_index(bb, m2 - bb), float(g[m1, m2, m3])))
        for k in range(c * c, (c + 1) ** 2):
            pairs = sorted(terms.get(k, {}).items())
            if not pairs:
                b.ops.append([MATVEC, out + k, 1, 1, 0, 1, 0, 0])  # K = 0: zero
            for n, (i, t) in enumerate(pairs):
                b.gather_dot(out + k, x + i, [v for _, v in t], [y + j for j, _ in t], add=n > 0)
    return b.finish(list(range(x, x + dim(l1))), list(range(y, y + dim(l2))), list(range(out, out + dim(l3))))
