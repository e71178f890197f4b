"""Reference for fastops.so3: the Clebsch-Gordan tensor product as dense einsums in float64, written from
e3nn 0.6's definition (irreps blocks in mul_ir layout, wigner_3j, the path normalization and the weight
order) and never from the plan or kernels it checks."""
from __future__ import annotations

from math import sqrt
from typing import Optional, Sequence

import torch


def _fan_in(mode: str, mul1: int, mul2: int) -> int:
    return {"uvw": mul1 * mul2, "uvu": mul2, "uuw": mul1, "uuu": 1}[mode]


def _weight_shape(mode: str, mul1: int, mul2: int, mul_out: int) -> tuple:
    return {"uvw": (mul1, mul2, mul_out), "uvu": (mul1, mul2), "uuw": (mul1, mul_out), "uuu": (mul1,)}[mode]


def tensor_product(irreps_in1, irreps_in2, irreps_out, instructions: Sequence[tuple], x1: torch.Tensor,
                   x2: torch.Tensor, weight: Optional[torch.Tensor], irrep_normalization: str = "component",
                   path_normalization: str = "element", wigner_3j=None) -> torch.Tensor:
    """out[z] for x1 [Z, dim1], x2 [Z, dim2] and weight [weight_numel] (shared) or [Z, weight_numel]; in
    float64. `irreps_*` are lists of (mul, l, parity); instructions are e3nn tuples
    (i1, i2, i_out, mode, has_weight[, path_weight])."""
    if wigner_3j is None:
        from .._so3_math import wigner_3j
    ins = [tuple(i) + (1.0,) if len(i) == 5 else tuple(i) for i in instructions]

    def blocks(irreps, x):
        out, start = [], 0
        for mul, l, _ in irreps:
            d = 2 * l + 1
            out.append(x[:, start:start + mul * d].reshape(-1, mul, d))
            start += mul * d
        return out

    x1, x2 = x1.double(), x2.double()
    b1, b2 = blocks(irreps_in1, x1), blocks(irreps_in2, x2)
    z = x1.shape[0]
    outs = [torch.zeros(z, mul, 2 * l + 1, dtype=torch.float64) for mul, l, _ in irreps_out]
    w_start = 0
    for i1, i2, io, mode, has_weight, path_weight in ins:
        (m1, l1, _), (m2, l2, _), (mo, l3, _) = irreps_in1[i1], irreps_in2[i2], irreps_out[io]
        a = {"component": 2 * l3 + 1, "norm": (2 * l1 + 1) * (2 * l2 + 1), "none": 1}[irrep_normalization]
        if path_normalization == "element":
            fan = sum(_fan_in(j[3], irreps_in1[j[0]][0], irreps_in2[j[1]][0]) for j in ins if j[2] == io)
        elif path_normalization == "path":
            fan = _fan_in(mode, m1, m2) * sum(1 for j in ins if j[2] == io)
        else:
            fan = 1
        alpha = sqrt(a / fan * path_weight) if fan > 0 else sqrt(a * path_weight)
        c = wigner_3j(l1, l2, l3).double()
        if has_weight:
            shape = _weight_shape(mode, m1, m2, mo)
            n = 1
            for s in shape:
                n *= s
            wp = weight[..., w_start:w_start + n].double()
            w_start += n
            wp = wp.reshape(shape) if wp.dim() == 1 else wp.reshape((z,) + shape)
        else:
            wp = None
        u, v = b1[i1], b2[i2]
        if mode == "uvw":
            t = torch.einsum("zui,zvj,ijk->zuvk", u, v, c)
            r = torch.einsum("uvw,zuvk->zwk" if wp.dim() == 3 else "zuvw,zuvk->zwk", wp, t)
        elif mode == "uvu":
            t = torch.einsum("zui,zvj,ijk->zuvk", u, v, c)
            r = t.sum(2) if wp is None else torch.einsum("uv,zuvk->zuk" if wp.dim() == 2 else "zuv,zuvk->zuk", wp, t)
        elif mode == "uuw":
            t = torch.einsum("zui,zuj,ijk->zuk", u, v, c)
            r = t.sum(1, keepdim=True) if wp is None else torch.einsum(
                "uw,zuk->zwk" if wp.dim() == 2 else "zuw,zuk->zwk", wp, t)
        else:  # uuu
            t = torch.einsum("zui,zuj,ijk->zuk", u, v, c)
            r = t if wp is None else (wp[None, :, None] if wp.dim() == 1 else wp[:, :, None]) * t
        outs[io] = outs[io] + alpha * r
    return torch.cat([o.reshape(z, -1) for o in outs], dim=1) if outs else x1.new_zeros(z, 0)


def _gaunt_coefficients(l1: int, l2: int, l3: int) -> torch.Tensor:
    """int Y_l1 Y_l2 Y_l3 over the sphere (integral normalization) from the closed form
    G = sqrt((2l1+1)(2l2+1)(2l3+1) / 4pi) |(l1 l2 l3; 0 0 0)| * wigner_3j, with the 3j symbol at m = 0 from
    Racah's formula; zero for odd l1 + l2 + l3 (parity)."""
    from math import factorial, pi

    from .._so3_math import wigner_3j
    J = l1 + l2 + l3
    if J % 2:
        return torch.zeros(2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1, dtype=torch.float64)
    g = J // 2
    three_j = sqrt(factorial(J - 2 * l1) * factorial(J - 2 * l2) * factorial(J - 2 * l3) / factorial(J + 1)) * \
        factorial(g) / (factorial(g - l1) * factorial(g - l2) * factorial(g - l3))
    return sqrt((2 * l1 + 1) * (2 * l2 + 1) * (2 * l3 + 1) / (4 * pi)) * three_j * wigner_3j(l1, l2, l3).double()


def gaunt_tp(x: torch.Tensor, y: torch.Tensor, l1: int, l2: int, l3: int) -> torch.Tensor:
    """Gaunt product of x [..., (l1+1)^2] and y [..., (l2+1)^2] -> [..., (l3+1)^2] in float64, summed over
    every (a <= l1, b <= l2, c <= l3) inside the triangle rule."""
    x, y = x.double(), y.double()
    out = x.new_zeros(torch.broadcast_shapes(x.shape[:-1], y.shape[:-1]) + ((l3 + 1) ** 2,))
    for a in range(l1 + 1):
        for b in range(l2 + 1):
            for c in range(abs(a - b), min(a + b, l3) + 1):
                out[..., c * c:(c + 1) ** 2] += torch.einsum(
                    "ijk,...i,...j->...k", _gaunt_coefficients(a, b, c), x[..., a * a:(a + 1) ** 2],
                    y[..., b * b:(b + 1) ** 2])
    return out


def cp_tp(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor,
          f3: torch.Tensor) -> torch.Tensor:
    """CP product out[e, c, k] = w[e, c] sum_r f3[k, r] (sum_i f1[i, r] x[e, c, i]) (sum_j f2[j, r] y[e, j]),
    float64, through the full tensor sum_r f1 (x) f2 (x) f3 (independent of the factored evaluation)."""
    m = torch.einsum("ir,jr,kr->ijk", f1.double(), f2.double(), f3.double())
    return torch.einsum("ijk,eci,ej,ec->eck", m, x.double(), y.double(), w.double())
