"""Pure-torch math of the `fastops.so3` family: irreps bookkeeping, Wigner 3j symbols, real spherical
harmonics and Wigner D matrices, all in e3nn 0.6's conventions (without importing e3nn).

Conventions (the same as e3nn):
- Frame: the polar axis is **y**. Real SH components of degree l run m = -l..l; l = 1 is (x, y, z). They are
  the standard real SH without Condon-Shortley phase evaluated at (x', y', z') = (z, x, y).
- Parity: e = +1, o = -1. Data of an `Irreps` is laid out "mul_ir": block after block, each [mul, 2l+1].
- Rotations act as Y(R x) = D(R) Y(x), with D^1(R) = R in (x, y, z) order. Euler angles are YXY:
  R(alpha, beta, gamma) = Ry(alpha) Rx(beta) Ry(gamma) (gamma applied first).
- wigner_3j(l1, l2, l3) is real, has Frobenius norm 1 and is invariant under D^l1 x D^l2 x D^l3.
"""
from __future__ import annotations

import collections
import functools
import math
import operator
import re
from collections.abc import Iterator
from fractions import Fraction
from typing import NamedTuple

import torch

__all__ = ["Irrep", "MulIr", "Irreps", "wigner_3j", "spherical_harmonics", "wigner_D", "rand_matrix",
           "angles_to_matrix", "matrix_to_angles"]

_PARITY = {"e": 1, "o": -1}
_TERM = re.compile(r"\s*(?:([0-9]+)\s*x\s*)?([0-9]+)\s*([eoy])\s*")
_IRREP = re.compile(r"\s*([0-9]+)\s*([eoy])\s*")


def _as_int(value, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None


def _parse_term(term: str, whole: str) -> "MulIr":
    match = _TERM.fullmatch(term)
    if match is None:
        raise ValueError(f"Irreps: term {term!r} of {whole!r} is not of the form '[mul x] l p' with integers "
                         "mul >= 0, l >= 0 and parity p in e/o/y (e.g. '16x1o' or '2e')")
    mul, l, p = match.groups()
    l = int(l)
    return MulIr(1 if mul is None else int(mul), Irrep(l, (-1) ** l if p == "y" else _PARITY[p]))


class Irrep(tuple):
    """Irreducible representation (l, p) of O(3): `Irrep(1, -1)`, `Irrep("1o")`, `Irrep((1, -1))`.

    A tuple (l, p), so equality, hash and ordering are those of the tuple (odd before even for equal l), as in
    e3nn. "y" in a string means p = (-1)^l. Any object whose str() is an irrep ("1o") is accepted too.
    """

    def __new__(cls, l, p=None):
        if p is None:
            if isinstance(l, Irrep):
                return l
            if type(l) is tuple and len(l) == 2:
                l, p = l
            else:
                text = l if isinstance(l, str) else str(l)  # e.g. another library's Irrep, printed "1o"
                match = _IRREP.fullmatch(text)
                if match is None:
                    raise ValueError(f"Irrep: {text!r} is not an irrep 'lp' with an integer l >= 0 and parity p "
                                     "in e/o/y (e.g. '1o'), nor l and p given separately")
                l, p = int(match.group(1)), match.group(2)
                p = (-1) ** l if p == "y" else _PARITY[p]
        l = _as_int(l, "l")
        if l < 0:
            raise ValueError(f"Irrep: l must be >= 0, got {l}")
        if isinstance(p, bool) or p not in (1, -1):
            raise ValueError(f"Irrep: parity p must be +1 or -1, got {p!r}")
        return super().__new__(cls, (l, int(p)))

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
        """True for 0e."""
        return self.l == 0 and self.p == 1

    def __repr__(self) -> str:
        return f"{self.l}{'e' if self.p == 1 else 'o'}"

    def __mul__(self, other) -> list["Irrep"]:
        """Irreps allowed in the product (selection rule), in ascending l: |l1-l2| <= l <= l1+l2, p = p1 p2."""
        other = Irrep(other)
        return [Irrep(l, self.p * other.p) for l in range(abs(self.l - other.l), self.l + other.l + 1)]

    def __rmul__(self, mul) -> "Irreps":
        """`3 * Irrep("1o")` is `Irreps("3x1o")`."""
        if isinstance(mul, bool) or not isinstance(mul, int):
            return NotImplemented
        return Irreps([(mul, self)])

    def __add__(self, other) -> "Irreps":
        return Irreps(self) + Irreps(other)

    def D_from_angles(self, alpha, beta, gamma, k=0) -> torch.Tensor:
        """p^k D^l(alpha, beta, gamma), shape [..., 2l+1, 2l+1]."""
        return Irreps(self).D_from_angles(alpha, beta, gamma, k)

    def D_from_matrix(self, R) -> torch.Tensor:
        """Representation of the O(3) matrix R [..., 3, 3]; det(R) = -1 applies the parity once."""
        return Irreps(self).D_from_matrix(R)


class MulIr(NamedTuple):
    """`mul` copies of the irrep `ir`."""
    mul: int
    ir: Irrep

    @property
    def dim(self) -> int:
        return self.mul * self.ir.dim

    def __repr__(self) -> str:
        return f"{self.mul}x{self.ir}"


def _mul_ir(entry) -> MulIr:
    """One entry of an Irreps list: "2x1o" / "1o", an Irrep, a (mul, irrep-like) pair."""
    if isinstance(entry, Irrep):
        return MulIr(1, entry)
    if isinstance(entry, MulIr) or (type(entry) in (tuple, list) and len(entry) == 2):
        mul, ir = entry
        if isinstance(mul, bool) or not isinstance(mul, int) or mul < 0:
            raise ValueError(f"Irreps: invalid entry {entry!r}: the multiplicity must be an integer >= 0")
        return MulIr(mul, Irrep(ir))
    text = entry if isinstance(entry, str) else str(entry)  # e.g. another library's MulIr / Irrep
    return _parse_term(text, text)


class Irreps(tuple):
    """Direct sum of O(3) irreps, an immutable tuple of `MulIr(mul, ir)`; str like e3nn's ("128x0e+128x1o").

    Built from a string ("128x0e + 128x1o + 2e"; missing mul = 1, mul 0 allowed), an `Irrep`, another
    `Irreps`, an iterable of (mul, ir) / (mul, (l, p)) / irrep entries, or any object whose str() parses
    (e.g. an e3nn Irreps). Equality also accepts strings: Irreps("1o") == "1x1o" (the hash is the tuple's).
    """

    def __new__(cls, irreps=None):
        if isinstance(irreps, Irreps):
            return irreps
        if irreps is None:
            entries = []
        elif isinstance(irreps, Irrep):
            entries = [MulIr(1, irreps)]
        elif isinstance(irreps, MulIr):
            entries = [_mul_ir(irreps)]
        elif isinstance(irreps, str):
            entries = [_parse_term(term, irreps) for term in irreps.split("+")] if irreps.strip() else []
        elif type(irreps) in (list, tuple) or isinstance(irreps, Iterator):
            entries = [_mul_ir(entry) for entry in irreps]
        else:
            return cls(str(irreps))
        return super().__new__(cls, entries)

    @staticmethod
    def spherical_harmonics(lmax: int, p: int = -1) -> "Irreps":
        """Irreps of (Y^0, ..., Y^lmax): 0e+1o+2e+... for p = -1 (parity p^l)."""
        lmax = _as_int(lmax, "lmax")
        if lmax < 0:
            raise ValueError(f"lmax must be >= 0, got {lmax}")
        if p not in (1, -1):
            raise ValueError(f"p must be +1 or -1, got {p!r}")
        return Irreps([(1, (l, p ** l)) for l in range(lmax + 1)])

    @property
    def dim(self) -> int:
        return sum(mul_ir.dim for mul_ir in self)

    @property
    def num_irreps(self) -> int:
        return sum(mul for mul, _ in self)

    @property
    def ls(self) -> list[int]:
        """l of every irrep copy, in order (a block 2x1o gives [1, 1])."""
        return [ir.l for mul, ir in self for _ in range(mul)]

    @property
    def lmax(self) -> int:
        """Largest l among the irrep copies (mul-0 blocks do not count, as in e3nn)."""
        if not self.ls:
            raise ValueError(f"lmax of the empty Irreps {str(self)!r} is undefined")
        return max(self.ls)

    def slices(self) -> list[slice]:
        """slice of each block in a [..., dim] tensor."""
        out, start = [], 0
        for mul_ir in self:
            out.append(slice(start, start + mul_ir.dim))
            start += mul_ir.dim
        return out

    def simplify(self) -> "Irreps":
        """Merge consecutive blocks of the same irrep and drop mul-0 blocks (no sorting), as e3nn 0.6."""
        out = []
        for mul, ir in self:
            if out and out[-1][1] == ir:
                out[-1] = (out[-1][0] + mul, ir)
            elif mul > 0:
                out.append((mul, ir))
        return Irreps(out)

    def remove_zero_multiplicities(self) -> "Irreps":
        return Irreps([mul_ir for mul_ir in self if mul_ir.mul > 0])

    def sort(self):
        """Stable sort of the blocks by irrep: namedtuple (irreps, p, inv), with irreps[i] = self[inv[i]] and
        p[i] the new position of block i."""
        inv = tuple(sorted(range(len(self)), key=lambda i: (self[i].ir, i)))
        p = [0] * len(inv)
        for new, old in enumerate(inv):
            p[old] = new
        return _Sorted(Irreps([self[i] for i in inv]), tuple(p), inv)

    def regroup(self) -> "Irreps":
        """sort() then simplify()."""
        return self.sort().irreps.simplify()

    def count(self, ir) -> int:
        """Total multiplicity of `ir`."""
        ir = Irrep(ir)
        return sum(mul for mul, other in self if other == ir)

    def __contains__(self, item) -> bool:
        """`ir in irreps` tests the irreps (like e3nn); a MulIr is looked up as a block."""
        if isinstance(item, MulIr):
            return tuple.__contains__(self, item)
        ir = Irrep(item)
        return any(other == ir for _, other in self)

    def __getitem__(self, index):
        out = super().__getitem__(index)
        return Irreps(out) if isinstance(index, slice) else out

    def __add__(self, other) -> "Irreps":
        return Irreps(tuple(self) + tuple(Irreps(other)))

    def __radd__(self, other) -> "Irreps":
        return Irreps(other) + self

    def __mul__(self, n) -> "Irreps":
        """Repeat: Irreps("1o") * 2 == "1o+1o"."""
        if isinstance(n, bool) or not isinstance(n, int):
            return NotImplemented
        return Irreps(tuple(self) * n)

    __rmul__ = __mul__

    def __eq__(self, other) -> bool:
        if isinstance(other, str):
            try:
                other = Irreps(other)
            except ValueError:
                return False
        if not isinstance(other, tuple):
            return NotImplemented
        return tuple.__eq__(self, other)

    def __ne__(self, other) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        return "+".join(repr(mul_ir) for mul_ir in self)

    def D_from_angles(self, alpha, beta, gamma, k=0) -> torch.Tensor:
        """Block-diagonal p^k D(alpha, beta, gamma) [..., dim, dim] (YXY Euler angles; k = number of
        inversions, an int or tensor broadcast with the angles)."""
        alpha, beta, gamma, k = torch.broadcast_tensors(*map(torch.as_tensor, (alpha, beta, gamma, k)))
        return self._block_diag(angles_to_matrix(alpha, beta, gamma), k)

    def D_from_matrix(self, R) -> torch.Tensor:
        """Block-diagonal representation [..., dim, dim] of O(3) matrices R [..., 3, 3]: D(det(R) R) times
        p^k with k = 1 where det(R) = -1 (as e3nn)."""
        R = _check_matrix(R)
        d = torch.linalg.det(R).sign()
        return self._block_diag(R * d[..., None, None], (1 - d) / 2)

    def _block_diag(self, R: torch.Tensor, k) -> torch.Tensor:
        batch = R.shape[:-2]
        flip = 1 - 2 * torch.remainder(k.to(device=R.device, dtype=R.dtype), 2)  # (-1)^k for integer k
        Ds = _wigner_D_all(max(ir.l for _, ir in self), R) if self else []
        out = R.new_zeros(*batch, self.dim, self.dim)
        start = 0
        for mul, ir in self:
            D = Ds[ir.l] * flip[..., None, None] if ir.p == -1 else Ds[ir.l]
            for _ in range(mul):
                out[..., start:start + ir.dim, start:start + ir.dim] = D
                start += ir.dim
        return out


_Sorted = collections.namedtuple("sort", ["irreps", "p", "inv"])


# ---------------------------------------------------------------------------------------------- wigner 3j

def _su2_cg(j1: int, j2: int, j3: int) -> torch.Tensor:
    """Complex-basis Clebsch-Gordan <j1 m1 j2 m2 | j3 m3> [m1, m2, m3] (indices m + j), Condon-Shortley phase.

    Racah's formula for the 3j symbol (j1 j2 j3; m1 m2 -m3), with CG = (-1)^(j1-j2+m3) sqrt(2 j3 + 1) 3j; the
    two signs cancel. The alternating sum is exact: integers over one common denominator."""
    f = math.factorial
    delta = Fraction(f(j1 + j2 - j3) * f(j1 - j2 + j3) * f(-j1 + j2 + j3), f(j1 + j2 + j3 + 1)) * (2 * j3 + 1)
    C = torch.zeros(2 * j1 + 1, 2 * j2 + 1, 2 * j3 + 1, dtype=torch.float64)
    for m1 in range(-j1, j1 + 1):
        for m2 in range(max(-j2, -j3 - m1), min(j2, j3 - m1) + 1):
            m3 = m1 + m2
            a, b = j3 - j2 + m1, j3 - j1 - m2
            c, d, e = j1 + j2 - j3, j1 - m1, j2 + m2
            kmin, kmax = max(0, -a, -b), min(c, d, e)
            # sum_k (-1)^k / (k! (a+k)! (b+k)! (c-k)! (d-k)! (e-k)!), each denominator divides `den`
            den = f(kmax) * f(a + kmax) * f(b + kmax) * f(c - kmin) * f(d - kmin) * f(e - kmin)
            num = sum((-1) ** k * (den // (f(k) * f(a + k) * f(b + k) * f(c - k) * f(d - k) * f(e - k)))
                      for k in range(kmin, kmax + 1))
            if num:
                square = delta * Fraction(num * num * f(j1 + m1) * f(j1 - m1) * f(j2 + m2) * f(j2 - m2)
                                          * f(j3 + m3) * f(j3 - m3), den * den)
                C[j1 + m1, j2 + m2, j3 + m3] = math.copysign(math.sqrt(square), num)
    return C


def _real_to_complex(l: int) -> torch.Tensor:
    """Q[m_complex, m_real] with |real m> = sum_c Q[c, m] |complex c>, e3nn's phases: real m > 0 is
    ((-1)^m |m> + |-m>)/sqrt2, real -m is i((-1)^m |m> - |-m>)/sqrt2, all times (-i)^l (which makes the
    real-basis CG real)."""
    q = torch.zeros(2 * l + 1, 2 * l + 1, dtype=torch.complex128)
    h = 1 / math.sqrt(2)
    q[l, l] = 1
    for m in range(1, l + 1):
        q[l - m, l + m] = h
        q[l + m, l + m] = (-1) ** m * h
        q[l - m, l - m] = -1j * h
        q[l + m, l - m] = 1j * (-1) ** m * h
    return (-1j) ** l * q


@functools.lru_cache(maxsize=None)
def _wigner_3j_cached(l1: int, l2: int, l3: int) -> torch.Tensor:
    C = _su2_cg(l1, l2, l3).to(torch.complex128)
    Q1, Q2, Q3 = _real_to_complex(l1), _real_to_complex(l2), _real_to_complex(l3)
    # C_real[a, b, c] = sum Q1[i, a] Q2[j, b] conj(Q3[k, c]) C[i, j, k]; the imaginary part vanishes.
    C = torch.einsum("ia,jb,kc,ijk->abc", Q1, Q2, Q3.conj(), C).real
    return C / C.norm()


def wigner_3j(l1: int, l2: int, l3: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Real Wigner 3j tensor C[m1, m2, m3] of shape [2l1+1, 2l2+1, 2l3+1], equal to e3nn.o3.wigner_3j.

    Frobenius norm 1; invariant: C = einsum(C, D^l1, D^l2, D^l3) for every rotation. Needs the triangle rule
    |l1 - l2| <= l3 <= l1 + l2. Computed once in float64 (exact Racah sums) and cached; returns a copy."""
    l1, l2, l3 = _as_int(l1, "l1"), _as_int(l2, "l2"), _as_int(l3, "l3")
    if min(l1, l2, l3) < 0:
        raise ValueError(f"wigner_3j needs l >= 0, got ({l1}, {l2}, {l3})")
    if not abs(l1 - l2) <= l3 <= l1 + l2:
        raise ValueError(f"wigner_3j({l1}, {l2}, {l3}) violates the triangle rule |l1 - l2| <= l3 <= l1 + l2")
    return _wigner_3j_cached(l1, l2, l3).to(dtype=dtype, device=device, copy=True)


# ------------------------------------------------------------------------------------ spherical harmonics

def _parse_ls(ls) -> list[int]:
    """Degrees requested by `ls` (see spherical_harmonics), in output order."""
    if isinstance(ls, int) and not isinstance(ls, bool):
        if ls < 0:
            raise ValueError(f"ls: lmax must be >= 0, got {ls}")
        return list(range(ls + 1))
    if type(ls) in (list, tuple, range) and all(isinstance(l, int) and not isinstance(l, bool) for l in ls):
        out = list(ls)
        if any(l < 0 for l in out):
            raise ValueError(f"ls: degrees must be >= 0, got {out}")
    else:
        irreps = Irreps(ls)
        for _, ir in irreps:
            if ir.p != (-1) ** ir.l:
                raise ValueError(f"ls: irreps {irreps} asks for {ir}, but the spherical harmonics of a vector "
                                 f"have parity (-1)^l, here {(-1) ** ir.l:+d}")
        out = irreps.ls
    if not out:
        raise ValueError("ls: no degree requested")
    return out


def _sh_component(lmax: int, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> list[torch.Tensor]:
    """Blocks Y^0..Y^lmax [..., 2l+1], 'component' normalization, as homogeneous polynomials of degree l.

    In the polar frame (x', y', z') = (z, x, y) with r^2 = x'^2 + y'^2 + z'^2:
      Y_l^{+m} / Y_l^{-m} = sqrt(2 - delta_m0) * P_lm(z', r^2) * (Re / Im of e_m),
      e_m = sqrt((2m-1)/(2m)) (x' + i y') e_{m-1}, e_0 = 1 (sectoral part with its normalization folded in),
      P_mm = sqrt(2m+1), P_lm = a_lm z' P_{l-1,m} - b_lm r^2 P_{l-2,m} (normalized Legendre recurrence),
      a_lm = sqrt((2l-1)(2l+1) / ((l-m)(l+m))), b_lm = sqrt((2l+1)(l-m-1)(l+m-1) / ((2l-3)(l-m)(l+m))).
    Only products and sums of x, y, z: smooth everywhere, any order of autograd, traceable."""
    xp, yp, zp = z, x, y
    r2 = xp * xp + yp * yp + zp * zp
    rows = [[None] * (2 * l + 1) for l in range(lmax + 1)]
    cos_m, sin_m = torch.ones_like(xp), torch.zeros_like(xp)
    for m in range(lmax + 1):
        if m > 0:
            s = math.sqrt((2 * m - 1) / (2 * m))
            cos_m, sin_m = s * (xp * cos_m - yp * sin_m), s * (xp * sin_m + yp * cos_m)
        k = math.sqrt(2 * m + 1) * (math.sqrt(2) if m else 1.0)
        prev, cur = None, (k * cos_m, k * sin_m)
        for l in range(m, lmax + 1):
            if l > m:
                a = math.sqrt((2 * l - 1) * (2 * l + 1) / ((l - m) * (l + m)))
                nxt = (a * zp * cur[0], a * zp * cur[1])
                if prev is not None:
                    b = math.sqrt((2 * l + 1) * (l - m - 1) * (l + m - 1) / ((2 * l - 3) * (l - m) * (l + m)))
                    nxt = (nxt[0] - b * r2 * prev[0], nxt[1] - b * r2 * prev[1])
                prev, cur = cur, nxt
            rows[l][l + m] = cur[0]
            if m:
                rows[l][l - m] = cur[1]
    return [torch.stack(row, dim=-1) for row in rows]


def spherical_harmonics(ls, vectors: torch.Tensor, normalize: bool = True,
                        normalization: str = "component") -> torch.Tensor:
    """Real spherical harmonics of `vectors` [..., 3] -> [..., sum(2l+1)], equal to e3nn.o3.spherical_harmonics.

    ls: an int lmax (all l = 0..lmax, concatenated; NOTE e3nn reads an int as the single degree l), a list of
    degrees, or irreps (str / Irreps; mul repeats a block) with parities (-1)^l. (e3nn also accepts all-even
    parities, the SH of a pseudovector; we refuse them.)
    normalize: project onto the unit sphere first (x / max(|x|, 1e-12): a zero vector gives Y^0 only);
    otherwise Y^l is the homogeneous polynomial, |x|^l Y^l(x / |x|).
    normalization (our default 'component'; e3nn's default is 'integral'), on the unit sphere:
    'component' sum_m Y_lm^2 = 2l+1, 'norm' sum_m Y_lm^2 = 1, 'integral' int_S2 Y_lm^2 = 1.
    Frame: polar axis y, m = -l..l, Y^1 = sqrt(3) (x, y, z) for 'component'. Y(R x) = D(R) Y(x).
    """
    degrees = _parse_ls(ls)
    if normalization not in ("component", "norm", "integral"):
        raise ValueError(f"normalization must be 'component', 'norm' or 'integral', got {normalization!r}")
    if not isinstance(vectors, torch.Tensor):
        raise TypeError(f"vectors must be a torch.Tensor, got {type(vectors).__name__}")
    if not vectors.is_floating_point():
        raise TypeError(f"vectors must have a floating point dtype, got {vectors.dtype}")
    if vectors.dim() == 0 or vectors.shape[-1] != 3:
        raise ValueError(f"vectors must have shape [..., 3], got {list(vectors.shape)}")
    if normalize:
        vectors = torch.nn.functional.normalize(vectors, dim=-1)
    blocks = _sh_component(max(degrees), vectors[..., 0], vectors[..., 1], vectors[..., 2])
    if normalization == "integral":
        blocks = [b * (1 / math.sqrt(4 * math.pi)) for b in blocks]
    elif normalization == "norm":
        blocks = [b * (1 / math.sqrt(2 * l + 1)) for l, b in enumerate(blocks)]
    if degrees == list(range(len(blocks))):
        return torch.cat(blocks, dim=-1)
    return torch.cat([blocks[l] for l in degrees], dim=-1)


# --------------------------------------------------------------------------------------------- rotations

def _check_matrix(R) -> torch.Tensor:
    if not isinstance(R, torch.Tensor) or not R.is_floating_point():
        raise TypeError("R must be a floating-point torch.Tensor")
    if R.dim() < 2 or R.shape[-2:] != (3, 3):
        raise ValueError(f"R must have shape [..., 3, 3], got {list(R.shape)}")
    return R


def _rot_x(t: torch.Tensor) -> torch.Tensor:
    c, s, o, z = t.cos(), t.sin(), torch.ones_like(t), torch.zeros_like(t)
    return torch.stack([o, z, z, z, c, -s, z, s, c], dim=-1).unflatten(-1, (3, 3))


def _rot_y(t: torch.Tensor) -> torch.Tensor:
    c, s, o, z = t.cos(), t.sin(), torch.ones_like(t), torch.zeros_like(t)
    return torch.stack([c, z, s, z, o, z, -s, z, c], dim=-1).unflatten(-1, (3, 3))


def angles_to_matrix(alpha, beta, gamma) -> torch.Tensor:
    """R = Ry(alpha) Rx(beta) Ry(gamma) [..., 3, 3] (YXY Euler angles, gamma applied first), as e3nn."""
    alpha, beta, gamma = torch.broadcast_tensors(*map(torch.as_tensor, (alpha, beta, gamma)))
    return _rot_y(alpha) @ _rot_x(beta) @ _rot_y(gamma)


def matrix_to_angles(R: torch.Tensor):
    """(alpha, beta, gamma) with angles_to_matrix(alpha, beta, gamma) = R, for rotations R [..., 3, 3].

    R e_y = Ry(alpha) Rx(beta) e_y = (sin b sin a, cos b, sin b cos a) gives beta in [0, pi] and alpha; gamma
    comes from the remainder (Ry(alpha) Rx(beta))^T R = Ry(gamma), which stays right at beta = 0 or pi."""
    R = _check_matrix(R)
    e = torch.nn.functional.normalize(R[..., :, 1], dim=-1).clamp(-1, 1)
    beta = torch.acos(e[..., 1])
    alpha = torch.atan2(e[..., 0], e[..., 2])
    rest = (_rot_y(alpha) @ _rot_x(beta)).transpose(-1, -2) @ R
    gamma = torch.atan2(rest[..., 0, 2], rest[..., 0, 0])
    return alpha, beta, gamma


def rand_matrix(*shape, dtype=None, device=None, generator=None) -> torch.Tensor:
    """Uniform (Haar) random rotations [*shape, 3, 3]: the matrix of a normalized Gaussian quaternion."""
    q = torch.randn(*shape, 4, dtype=dtype, generator=generator,
                    device=generator.device if generator is not None else device)
    if device is not None:
        q = q.to(device)
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).unflatten(-1, (3, 3))


def _wigner_D_all(lmax: int, R: torch.Tensor) -> list[torch.Tensor]:
    """[D^0(R), ..., D^lmax(R)] for rotations R [..., 3, 3].

    D^1 = R (Y^1 is proportional to (x, y, z)); D^l = (2l+1) C^T (D^{l-1} x D^1) C with C = wigner_3j(l-1, 1, l),
    since C intertwines D^{l-1} x D^1 with D^l and sum_ij C_ijk C_ijk' = delta_kk' / (2l+1)."""
    Ds = [R.new_ones(*R.shape[:-2], 1, 1), R]
    for l in range(2, lmax + 1):
        C = wigner_3j(l - 1, 1, l, dtype=R.dtype, device=R.device)
        left = torch.einsum("ijk,...ia->...jka", C * (2 * l + 1), Ds[-1])
        Ds.append(torch.einsum("...jka,...jb,abn->...kn", left, R, C))
    return Ds[:lmax + 1]


def wigner_D(l: int, alpha, beta, gamma) -> torch.Tensor:
    """Wigner D^l(alpha, beta, gamma) [..., 2l+1, 2l+1] in the real SH basis, equal to e3nn.o3.wigner_D:
    D(Ry(alpha) Rx(beta) Ry(gamma)) with Y(R x) = D(R) Y(x)."""
    l = _as_int(l, "l")
    if l < 0:
        raise ValueError(f"l must be >= 0, got {l}")
    return _wigner_D_all(l, angles_to_matrix(alpha, beta, gamma))[l]


