"""The math layer of fastops.so3, in e3nn 0.6's conventions: irreps, Wigner-3j symbols, real spherical
harmonics and Wigner-D matrices. Pure torch (any derivative order, torch.compile-friendly) or float64 host
constants; e3nn itself is never imported.

Conventions (e3nn's): an irrep "lp" has dimension 2l+1 and parity p (e = +1, o = -1); a block of `mul`
copies is stored [mul, 2l+1] (m fastest, m = -l..l). Spherical harmonics use y as the polar axis: they are
the standard real harmonics (no Condon-Shortley phase) of (x', y', z') = (z, x, y), so l = 1 is
proportional to (x, y, z). Rotations: angles_to_matrix(a, b, c) = Ry(a) Rx(b) Ry(c) and
Y(R x) = D(R) Y(x).
"""
from __future__ import annotations

import functools
import math
import re
from fractions import Fraction
from typing import Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch

_IRREP_RE = re.compile(r"^\s*(\d+)\s*([eoy])\s*$")
_MUL_IRREP_RE = re.compile(r"^\s*(?:(\d+)\s*x\s*)?(\d+)\s*([eoy])\s*$")


class Irrep(tuple):
    """An irreducible representation of O(3): degree l >= 0 and parity p in {+1, -1}."""

    def __new__(cls, l: Union[int, str, "Irrep", tuple], p: Optional[int] = None):
        if isinstance(l, Irrep):
            return l
        if isinstance(l, str):
            m = _IRREP_RE.match(l)
            if not m:
                raise ValueError(f"Irrep: {l!r} is not an irrep like '0e', '1o' or '2y'")
            deg = int(m.group(1))
            p = {"e": 1, "o": -1, "y": (-1) ** deg}[m.group(2)]
            l = deg
        elif isinstance(l, tuple):
            l, p = l
        if isinstance(l, bool) or not isinstance(l, int) or l < 0:
            raise ValueError(f"Irrep: l must be an int >= 0, got {l!r}")
        if p not in (-1, 1):
            raise ValueError(f"Irrep: parity must be +1 or -1, got {p!r}")
        return super().__new__(cls, (l, p))

    @property
    def l(self) -> int:  # noqa: E743
        return self[0]

    @property
    def p(self) -> int:
        return self[1]

    @property
    def dim(self) -> int:
        return 2 * self.l + 1

    def is_scalar(self) -> bool:
        return self.l == 0 and self.p == 1

    def __repr__(self) -> str:
        return f"{self.l}{'e' if self.p == 1 else 'o'}"

    __str__ = __repr__

    def __mul__(self, other) -> Iterator["Irrep"]:
        """The irreps of the product, by the selection rule, in ascending l."""
        other = Irrep(other)
        p = self.p * other.p
        for l in range(abs(self.l - other.l), self.l + other.l + 1):
            yield Irrep(l, p)

    def __rmul__(self, mul: int) -> "Irreps":
        return Irreps([(mul, self)])

    def __lt__(self, other) -> bool:  # e3nn's order: by l, odd before even
        other = Irrep(other)
        return (self.l, self.p) < (other.l, other.p)

    def __eq__(self, other) -> bool:
        try:
            return tuple.__eq__(self, Irrep(other))
        except (ValueError, TypeError):
            return False

    def __hash__(self) -> int:
        return tuple.__hash__(self)

    def D_from_matrix(self, R: torch.Tensor) -> torch.Tensor:
        return _D_of_irrep(self, R)


class MulIr(NamedTuple):
    mul: int
    ir: Irrep

    @property
    def dim(self) -> int:
        return self.mul * self.ir.dim

    def __repr__(self) -> str:
        return f"{self.mul}x{self.ir}"


class _Sorted(NamedTuple):
    irreps: "Irreps"
    p: tuple
    inv: tuple


class Irreps(tuple):
    """A direct sum of irreps, e3nn-compatible: Irreps("128x0e+128x1o + 2e"), from (mul, ir) pairs, from
    an Irrep, or from any object whose str() parses (e3nn.o3.Irreps included)."""

    def __new__(cls, irreps=None):
        if isinstance(irreps, Irreps):
            return super().__new__(cls, tuple(irreps))
        out: List[MulIr] = []
        if irreps is None:
            pass
        elif isinstance(irreps, Irrep):
            out.append(MulIr(1, irreps))
        elif isinstance(irreps, (list, tuple)):
            for item in irreps:
                if isinstance(item, str):
                    out.extend(Irreps(item))
                    continue
                if isinstance(item, Irrep):
                    out.append(MulIr(1, item))
                    continue
                try:
                    mul, ir = item
                except (TypeError, ValueError):
                    raise ValueError(f"Irreps: {item!r} is not a (mul, irrep) pair") from None
                if isinstance(mul, bool) or not isinstance(mul, int) or mul < 0:
                    raise ValueError(f"Irreps: multiplicity must be an int >= 0, got {mul!r}")
                out.append(MulIr(mul, Irrep(ir)))
        else:
            text = irreps if isinstance(irreps, str) else str(irreps)
            if text.strip():
                for part in text.split("+"):
                    m = _MUL_IRREP_RE.match(part)
                    if not m:
                        raise ValueError(f"Irreps: {part.strip()!r} in {text!r} is not a block like '16x1o' or '2e'")
                    mul = int(m.group(1)) if m.group(1) is not None else 1
                    out.append(MulIr(mul, Irrep(m.group(2) + m.group(3))))
        return super().__new__(cls, tuple(out))

    @property
    def dim(self) -> int:
        return sum(mi.dim for mi in self)

    @property
    def num_irreps(self) -> int:
        return sum(mi.mul for mi in self)

    @property
    def ls(self) -> List[int]:
        return [mi.ir.l for mi in self for _ in range(mi.mul)]

    @property
    def lmax(self) -> int:
        if not self:
            raise ValueError("Irreps: lmax of an empty Irreps")
        return max(mi.ir.l for mi in self)

    def slices(self) -> List[slice]:
        out, start = [], 0
        for mi in self:
            out.append(slice(start, start + mi.dim))
            start += mi.dim
        return out

    def simplify(self) -> "Irreps":
        """Consecutive equal irreps merged, multiplicity-0 blocks dropped (e3nn 0.6)."""
        out: List[Tuple[int, Irrep]] = []
        for mul, ir in self:
            if out and out[-1][1] == ir:
                out[-1] = (out[-1][0] + mul, ir)
            elif mul > 0:
                out.append((mul, ir))
        return Irreps(out)

    def sort(self) -> _Sorted:
        """(irreps sorted by (l, p), p: old index -> new index, inv: new index -> old index), like e3nn."""
        inv = tuple(sorted(range(len(self)), key=lambda i: (self[i].ir.l, self[i].ir.p)))
        p = tuple(inv.index(i) for i in range(len(self)))
        return _Sorted(Irreps([self[i] for i in inv]), p, inv)

    def count(self, ir) -> int:
        ir = Irrep(ir)
        return sum(mul for mul, i in self if i == ir)

    def __contains__(self, ir) -> bool:
        try:
            ir = Irrep(ir)
        except (ValueError, TypeError):
            return False
        return any(i == ir for _, i in self)

    def __getitem__(self, i):
        x = tuple.__getitem__(self, i)
        return Irreps(x) if isinstance(i, slice) else x

    def __add__(self, other) -> "Irreps":
        return Irreps(tuple(self) + tuple(Irreps(other)))

    def __radd__(self, other) -> "Irreps":
        return Irreps(other) + self

    def __mul__(self, n: int) -> "Irreps":
        if isinstance(n, Irreps):
            raise NotImplementedError("Irreps x Irreps: use a tensor product")
        return Irreps(tuple(self) * n)

    __rmul__ = __mul__

    def __eq__(self, other) -> bool:
        try:
            return tuple.__eq__(self, Irreps(other))
        except (ValueError, TypeError):
            return False

    def __ne__(self, other) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return tuple.__hash__(self)

    def __repr__(self) -> str:
        return "+".join(repr(mi) for mi in self)

    __str__ = __repr__

    @staticmethod
    def spherical_harmonics(lmax: int, p: int = -1) -> "Irreps":
        return Irreps([(1, (l, p ** l)) for l in range(lmax + 1)])

    def D_from_angles(self, alpha, beta, gamma, k=0) -> torch.Tensor:
        """Block-diagonal representation matrix of the rotation (alpha, beta, gamma), times parity^k."""
        alpha, beta, gamma, k = (torch.as_tensor(t) for t in (alpha, beta, gamma, k))
        blocks = []
        for mul, ir in self:
            d = wigner_D(ir.l, alpha, beta, gamma) * (ir.p ** k.to(alpha.dtype))[..., None, None]
            blocks += [d] * mul
        return _block_diag(blocks, alpha.shape, alpha.dtype)

    def D_from_matrix(self, R: torch.Tensor) -> torch.Tensor:
        """Representation matrix of the orthogonal matrix R (det -1: the inversion times a rotation)."""
        d = torch.det(R).sign()
        angles = matrix_to_angles(R * d[..., None, None])
        return self.D_from_angles(*angles, (1 - d) / 2)


def _block_diag(blocks, shape, dtype) -> torch.Tensor:
    n = sum(b.shape[-1] for b in blocks)
    out = torch.zeros(*shape, n, n, dtype=dtype)
    i = 0
    for b in blocks:
        k = b.shape[-1]
        out[..., i:i + k, i:i + k] = b
        i += k
    return out


def _D_of_irrep(ir: Irrep, R: torch.Tensor) -> torch.Tensor:
    return Irreps([(1, ir)]).D_from_matrix(R)


# ---- Wigner 3j -------------------------------------------------------------------------------------

def _su2_cg(j1: int, j2: int, j3: int, m1: int, m2: int) -> float:
    """<j1 m1 j2 m2 | j3 m1+m2> (Condon-Shortley), Racah's formula in exact rationals."""
    m3 = m1 + m2
    if abs(m1) > j1 or abs(m2) > j2 or abs(m3) > j3:
        return 0.0
    f = math.factorial
    pre = Fraction((2 * j3 + 1) * f(j1 + j2 - j3) * f(j1 - j2 + j3) * f(-j1 + j2 + j3), f(j1 + j2 + j3 + 1))
    pre *= f(j1 + m1) * f(j1 - m1) * f(j2 + m2) * f(j2 - m2) * f(j3 + m3) * f(j3 - m3)
    total = Fraction(0)
    for k in range(0, j1 + j2 - j3 + 1):
        dens = (k, j1 + j2 - j3 - k, j1 - m1 - k, j2 + m2 - k, j3 - j2 + m1 + k, j3 - j1 - m2 + k)
        if min(dens) < 0:
            continue
        den = 1
        for d in dens:
            den *= f(d)
        total += Fraction((-1) ** k, den)
    return float(total) * math.sqrt(pre)


def _real_to_complex(l: int) -> np.ndarray:
    """Q with complex Y_l = Q^T-contracted real harmonics in e3nn's phase convention (real form of the
    spherical harmonics, times (-i)^l so that the real-basis Clebsch-Gordan coefficients are real)."""
    q = np.zeros((2 * l + 1, 2 * l + 1), dtype=np.complex128)
    s = 1 / math.sqrt(2)
    for m in range(-l, 0):
        q[l + m, l - m] = s
        q[l + m, l + m] = -1j * s
    q[l, l] = 1
    for m in range(1, l + 1):
        q[l + m, l + m] = (-1) ** m * s
        q[l + m, l - m] = 1j * (-1) ** m * s
    return (-1j) ** l * q


@functools.lru_cache(maxsize=None)
def _wigner_3j_f64(l1: int, l2: int, l3: int) -> torch.Tensor:
    cg = np.zeros((2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1))
    for m1 in range(-l1, l1 + 1):
        for m2 in range(-l2, l2 + 1):
            if abs(m1 + m2) <= l3:
                cg[l1 + m1, l2 + m2, l3 + m1 + m2] = _su2_cg(l1, l2, l3, m1, m2)
    q1, q2, q3 = _real_to_complex(l1), _real_to_complex(l2), _real_to_complex(l3)
    c = np.einsum("ij,kl,mn,ikn->jlm", q1, q2, np.conj(q3.T), cg)
    c = c.real
    c /= np.linalg.norm(c)
    c[np.abs(c) < 1e-15] = 0.0
    return torch.from_numpy(np.ascontiguousarray(c))


def wigner_3j(l1: int, l2: int, l3: int, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """C[m1, m2, m3] of shape (2l1+1, 2l2+1, 2l3+1), Frobenius norm 1, invariant under simultaneous
    rotation of its three indices; equal to e3nn.o3.wigner_3j (same signs)."""
    for name, l in (("l1", l1), ("l2", l2), ("l3", l3)):
        if isinstance(l, bool) or not isinstance(l, int) or l < 0:
            raise ValueError(f"wigner_3j: {name} must be an int >= 0, got {l!r}")
    if not abs(l1 - l2) <= l3 <= l1 + l2:
        raise ValueError(f"wigner_3j: ({l1}, {l2}, {l3}) violates the triangle rule |l1 - l2| <= l3 <= l1 + l2")
    return _wigner_3j_f64(l1, l2, l3).to(dtype=dtype, device=device, copy=True)


# ---- spherical harmonics ------------------------------------------------------------------------------

_NORMALIZATIONS = ("integral", "component", "norm")


def _parse_ls(ls) -> List[int]:
    if isinstance(ls, bool):
        raise ValueError(f"spherical_harmonics: ls must be an int, a list of ints or irreps; got {ls!r}")
    if isinstance(ls, int):
        if ls < 0:
            raise ValueError(f"spherical_harmonics: lmax must be >= 0, got {ls}")
        return list(range(ls + 1))
    if isinstance(ls, (list, tuple)) and all(isinstance(l, int) and not isinstance(l, bool) for l in ls):
        if any(l < 0 for l in ls):
            raise ValueError(f"spherical_harmonics: every l must be >= 0, got {list(ls)}")
        return list(ls)
    irreps = Irreps(ls)
    out = []
    for mul, ir in irreps:
        if ir.p != (-1) ** ir.l:
            raise ValueError(f"spherical_harmonics: {ir} has parity {ir.p}; spherical harmonics have (-1)^l")
        out += [ir.l] * mul
    return out


def spherical_harmonics(ls, vectors: torch.Tensor, normalize: bool = True,
                        normalization: str = "component") -> torch.Tensor:
    """Real spherical harmonics of `vectors [..., 3]` for the degrees `ls` (an int lmax: 0..lmax; a list
    of ints; or irreps such as "0e+1o+2e"), concatenated: [..., sum(2l+1)]. Equal to
    e3nn.o3.spherical_harmonics(ls, vectors, normalize, normalization) — note our default normalization is
    "component" (sum_m Y_lm^2 = 2l+1 on the unit sphere), e3nn's is "integral". With normalize=False the
    harmonics are the homogeneous polynomials of the raw vectors (solid harmonics)."""
    if not isinstance(vectors, torch.Tensor):
        raise TypeError(f"spherical_harmonics: vectors must be a torch.Tensor, got {type(vectors).__name__}")
    if not vectors.is_floating_point():
        raise TypeError(f"spherical_harmonics: vectors must be floating point, got {vectors.dtype}")
    if vectors.dim() < 1 or vectors.shape[-1] != 3:
        raise ValueError(f"spherical_harmonics: vectors must have shape [..., 3], got {list(vectors.shape)}")
    if normalization not in _NORMALIZATIONS:
        raise ValueError(f"spherical_harmonics: normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")
    degrees = _parse_ls(ls)
    if not degrees:
        return vectors.new_zeros(vectors.shape[:-1] + (0,))
    if normalize:
        # e3nn: x / |x| with zero vectors mapped to zero (torch.nn.functional.normalize)
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
    # the standard real harmonics evaluated at (z, x, y): polar axis y
    sx, sy, sz = vectors[..., 2], vectors[..., 0], vectors[..., 1]
    r2 = sx * sx + sy * sy + sz * sz
    lmax = max(degrees)
    # C_m + i S_m = (sx + i sy)^m
    cos_m, sin_m = [torch.ones_like(sx)], [torch.zeros_like(sx)]
    for m in range(1, lmax + 1):
        c, s = cos_m[-1], sin_m[-1]
        cos_m.append(sx * c - sy * s)
        sin_m.append(sx * s + sy * c)
    # q[l][m] = d^m P_l / dz^m as a homogeneous polynomial of degree l - m in (sz, r2)
    q = [[None] * (lmax + 1) for _ in range(lmax + 1)]
    for m in range(lmax + 1):
        q[m][m] = torch.full_like(sx, float(_double_factorial(2 * m - 1)))
        if m + 1 <= lmax:
            q[m + 1][m] = (2 * m + 1) * sz * q[m][m]
        for l in range(m + 2, lmax + 1):
            q[l][m] = ((2 * l - 1) * sz * q[l - 1][m] - (l + m - 1) * r2 * q[l - 2][m]) / (l - m)
    blocks = []
    for l in degrees:
        scale = {"integral": 1.0, "component": math.sqrt(4 * math.pi),
                 "norm": math.sqrt(4 * math.pi / (2 * l + 1))}[normalization]
        comps = []
        for m in range(-l, l + 1):
            a = abs(m)
            n = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - a) / math.factorial(l + a)) * scale
            if m == 0:
                comps.append(n * q[l][0])
            else:
                comps.append(n * math.sqrt(2) * q[l][a] * (cos_m[a] if m > 0 else sin_m[a]))
        blocks.append(torch.stack(comps, dim=-1))
    return torch.cat(blocks, dim=-1)


def _double_factorial(n: int) -> int:
    out = 1
    while n > 1:
        out *= n
        n -= 2
    return out


# ---- rotations ----------------------------------------------------------------------------------------

def _matrix_x(a: torch.Tensor) -> torch.Tensor:
    c, s, o, z = a.cos(), a.sin(), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([torch.stack([o, z, z], -1), torch.stack([z, c, -s], -1), torch.stack([z, s, c], -1)], -2)


def _matrix_y(a: torch.Tensor) -> torch.Tensor:
    c, s, o, z = a.cos(), a.sin(), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([torch.stack([c, z, s], -1), torch.stack([z, o, z], -1), torch.stack([-s, z, c], -1)], -2)


def angles_to_matrix(alpha, beta, gamma) -> torch.Tensor:
    """R = Ry(alpha) Rx(beta) Ry(gamma) (e3nn's Euler convention), shape [..., 3, 3]."""
    alpha, beta, gamma = torch.broadcast_tensors(*(torch.as_tensor(t) for t in (alpha, beta, gamma)))
    return _matrix_y(alpha) @ _matrix_x(beta) @ _matrix_y(gamma)


def matrix_to_angles(R: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha, beta, gamma) with angles_to_matrix(alpha, beta, gamma) == R for a rotation R."""
    if not torch.allclose(torch.det(R), R.new_tensor(1.0), atol=1e-5):
        raise ValueError("matrix_to_angles: R must be a rotation (det +1)")
    y = R[..., :, 1]  # R e_y
    y = torch.nn.functional.normalize(y, dim=-1).clamp(-1, 1)
    alpha = torch.atan2(y[..., 0], y[..., 2])
    beta = torch.acos(y[..., 1])
    rest = angles_to_matrix(alpha, beta, torch.zeros_like(alpha)).transpose(-1, -2) @ R
    gamma = torch.atan2(rest[..., 0, 2], rest[..., 0, 0])
    return alpha, beta, gamma


def rand_matrix(*shape: int, dtype: Optional[torch.dtype] = None, device=None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Uniformly distributed rotation matrices [*shape, 3, 3] (normalized Gaussian quaternions)."""
    q = torch.randn(*shape, 4, dtype=dtype or torch.get_default_dtype(), generator=generator)
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    R = torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)
    return R.to(device) if device is not None else R


@functools.lru_cache(maxsize=None)
def _sh_fit_points(l: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fixed unit vectors and the pseudo-inverse of their degree-l harmonics (float64), for D matrices."""
    n = 4 * (2 * l + 1)
    pts = torch.nn.functional.normalize(torch.randn(n, 3, dtype=torch.float64,
                                                    generator=torch.Generator().manual_seed(l)), dim=-1)
    y = spherical_harmonics([l], pts, normalize=False)
    return pts, torch.linalg.pinv(y)


def wigner_D(l: int, alpha, beta, gamma) -> torch.Tensor:
    """Wigner-D matrix [..., 2l+1, 2l+1] of the rotation R = angles_to_matrix(alpha, beta, gamma) on degree-l
    harmonics: Y_l(R x) = D Y_l(x). Equal to e3nn.o3.wigner_D."""
    if isinstance(l, bool) or not isinstance(l, int) or l < 0:
        raise ValueError(f"wigner_D: l must be an int >= 0, got {l!r}")
    alpha, beta, gamma = torch.broadcast_tensors(*(torch.as_tensor(t) for t in (alpha, beta, gamma)))
    dtype = alpha.dtype if alpha.is_floating_point() else torch.get_default_dtype()
    R = angles_to_matrix(alpha.double(), beta.double(), gamma.double())
    pts, pinv = _sh_fit_points(l)
    # Y(R p)^T = D Y(p)^T for every fixed point p: D = Y(R P)^T pinv(Y(P))^T
    rotated = spherical_harmonics([l], pts @ R.transpose(-1, -2), normalize=False)  # [..., n, 2l+1]
    return (rotated.transpose(-1, -2) @ pinv.T).to(dtype)
