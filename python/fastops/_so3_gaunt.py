"""Gaunt and CP-decomposed tensor products (re-exported by fastops.so3; see README "so3").

GauntTensorProduct: the weightless product of spherical functions, out = projection onto l <= lmax_out of
f * g, f = sum x_lm Y_lm, g = sum y_lm Y_lm (integral-normalized real harmonics in e3nn's frame). This equals
e3nn's 'uuu' TensorProduct on irreps 0e+1o+2e+... with path weights kappa^2 and normalization 'none'.
Methods: 'grid' (Gauss-Legendre x uniform grid, separable transforms), 'fft' (Luo et al.'s 2D-Fourier route),
'direct' (sparse Gaunt coefficients), 'auto' (the fastest for the degrees; BENCHMARKS.md). Every derivative
is again a Gaunt product (G is symmetric in its three indices), so autograd works to any order.

CPTensorProduct: TDN's rank-R CP approximation of the stacked Clebsch-Gordan tensor, with one weight per
channel shared by all paths, fitted once (alternating least squares) and frozen.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import math
import warnings
from typing import Optional, Sequence, Tuple

import torch

from . import _C
from . import _gaunt_programs as gp
from ._core import (call_c, check_device_usable, check_indices, check_tensor, contiguous_last_dim, cuda_stream,
                    custom_op, num_threads)
from ._so3_math import Irreps, wigner_3j

_REAL = (torch.float32, torch.float64)
_METHODS = ("grid", "fft", "direct")
# 'auto': the direct sum wins at low degree, the grid above (bench/bench_so3.py gaunt_methods, BENCHMARKS.md)
_AUTO_DIRECT_MAX_DEGREE = 2


def _dtype_name(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


def _lmax_of(op: str, name: str, n: int) -> int:
    l = math.isqrt(n) - 1
    if n < 1 or (l + 1) ** 2 != n:
        raise ValueError(f"{op}: the last dimension of {name} must be (lmax + 1)^2; got {n}")
    return l


def _check_lmax(op: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    if not 0 <= value <= 24:
        raise ValueError(f"{op}: {name} must be in [0, 24]; got {value}")
    return value


# ------------------------------------------------------------------------------------------- the custom op
@functools.lru_cache(maxsize=None)
def _cpu_program(method: str, l1: int, l2: int, l3: int, n_beta: int, n_alpha: int):
    if method == "grid":
        p = gp.grid_program(l1, l2, l3, n_beta, n_alpha)
    elif method == "fft":
        p = gp.fft_program(l1, l2, l3)
    else:
        p = gp.direct_program(l1, l2, l3)
    return _C.GauntProgram(p.ops, p.consts, p.index, p.in1_slots, p.in2_slots, p.out_slots, p.num_slots)


# nanobind reports handles still alive at interpreter exit as leaks: drop the cached ones first.
atexit.register(_cpu_program.cache_clear)

_DEVICE_TABLES = {}


def _device_tables(l1, l2, l3, n_beta, n_alpha, dtype, device):
    key = (l1, l2, l3, n_beta, n_alpha, dtype, device)
    if key not in _DEVICE_TABLES:
        _DEVICE_TABLES[key] = tuple(t.to(dtype=dtype, device=device).contiguous()
                                    for t in gp.dense_tables(l1, l2, l3, n_beta, n_alpha))
    return _DEVICE_TABLES[key]


def _grid_for(method: str, l1: int, l2: int, l3: int, n_beta: int, n_alpha: int) -> Tuple[int, int]:
    """The grid the CUDA kernel uses: the requested one for 'grid', else the minimal exact one (the fft and
    direct methods are exact, so any exact grid gives the same product)."""
    return (n_beta, n_alpha) if method == "grid" else gp.minimal_grid(l1, l2, l3)


@custom_op("fastops::gaunt_tp")
def _gaunt_op(x1: torch.Tensor, x2: torch.Tensor, l1: int, l2: int, l3: int, method: str, n_beta: int,
              n_alpha: int) -> torch.Tensor:
    x1, x2 = contiguous_last_dim(x1), contiguous_last_dim(x2)
    out = x1.new_empty((x1.shape[0], gp.dim(l3)))
    if x1.device.type == "cuda":
        nb, na = _grid_for(method, l1, l2, l3, n_beta, n_alpha)
        y1, y2, z = _device_tables(l1, l2, l3, nb, na, x1.dtype, x1.device)
        with torch.cuda.device(x1.device):  # the kernel launches on the current device: x1's
            call_c(_C.gaunt_dense, x1, x2, y1, y2, z, out, stream=cuda_stream(x1.device))
    else:
        call_c(_C.gaunt_forward, _cpu_program(method, l1, l2, l3, n_beta, n_alpha), x1, x2, out,
               nthreads=num_threads())
    return out


@_gaunt_op.register_fake
def _(x1, x2, l1, l2, l3, method, n_beta, n_alpha):
    return x1.new_empty((x1.shape[0], gp.dim(l3)))


def _gaunt_setup(ctx, inputs, output):
    x1, x2, l1, l2, l3, method, n_beta, n_alpha = inputs
    ctx.save_for_backward(x1, x2)
    ctx.args = (l1, l2, l3, method, n_beta, n_alpha)


def _gaunt_backward(ctx, grad):
    x1, x2 = ctx.saved_tensors
    l1, l2, l3, method, n_beta, n_alpha = ctx.args
    # G_ijk is symmetric in (i, j, k) (also the grid's quadrature version): the gradient with respect to one
    # input is the product of the other input with grad, projected onto that input's degrees.
    g1 = _gaunt_op(grad, x2, l3, l2, l1, method, n_beta, n_alpha) if ctx.needs_input_grad[0] else None
    g2 = _gaunt_op(grad, x1, l3, l1, l2, method, n_beta, n_alpha) if ctx.needs_input_grad[1] else None
    return g1, g2, None, None, None, None, None, None


_gaunt_op.register_autograd(_gaunt_backward, setup_context=_gaunt_setup)


# ------------------------------------------------------------------------------------------------ modules
def gaunt(l1: int, l2: int, l3: int) -> torch.Tensor:
    """Real Gaunt coefficients G[m1, m2, m3] = int Y_l1m1 Y_l2m2 Y_l3m3 dOmega (e3nn's real harmonics, integral
    normalization), float64 [2l1+1, 2l2+1, 2l3+1]: kappa * wigner_3j with kappa = sqrt((2l1+1)(2l2+1)(2l3+1)/4pi)
    |(l1 l2 l3; 0 0 0)|; zero when l1 + l2 + l3 is odd or the triangle rule fails."""
    for name, v in (("l1", l1), ("l2", l2), ("l3", l3)):
        _check_lmax("gaunt", name, v)
    return gp.gaunt_block(l1, l2, l3).clone()


def s2grid_resolution(lmax1: int, lmax2: int, lmax_out: int) -> Tuple[int, int]:
    """Minimal (n_beta, n_alpha) on which the product of degrees <= lmax1 and <= lmax2, projected onto degrees
    <= lmax_out, is exact: (ceil((lmax1 + lmax2 + lmax_out + 1) / 2), lmax1 + lmax2 + lmax_out + 1)."""
    return gp.minimal_grid(lmax1, lmax2, lmax_out)


def s2grid(res: Tuple[int, int], dtype=torch.float64, device=None):
    """(beta [n_beta], alpha [n_alpha], weight [n_beta]) of the Gauss-Legendre x uniform grid: the integral
    of f over the sphere is sum_t weight[t] * sum_k f(alpha[k], beta[t]), exact for band-limited f."""
    n_beta, n_alpha = _check_res("s2grid", res)
    return tuple(t.to(dtype=dtype, device=device) for t in gp.grid_points(n_beta, n_alpha))


def _check_res(op: str, res) -> Tuple[int, int]:
    if not (isinstance(res, (tuple, list)) and len(res) == 2 and all(isinstance(r, int) and not isinstance(r, bool)
                                                                      for r in res)):
        raise TypeError(f"{op}: res must be a pair of ints (n_beta, n_alpha); got {res!r}")
    if res[0] < 1 or res[1] < 1:
        raise ValueError(f"{op}: res must be positive; got {tuple(res)}")
    return int(res[0]), int(res[1])


def _normalization_scale(op: str, normalization: str, lmax: int) -> torch.Tensor:
    """Per-coefficient factor s with Y^normalization = s * Y^integral."""
    if normalization not in ("integral", "component", "norm"):
        raise ValueError(f"{op}: normalization must be 'integral', 'component' or 'norm'; got {normalization!r}")
    s = torch.ones(gp.dim(lmax), dtype=torch.float64)
    for l in range(lmax + 1):
        f = {"integral": 1.0, "component": math.sqrt(4 * math.pi),
             "norm": math.sqrt(4 * math.pi / (2 * l + 1))}[normalization]
        s[l * l:(l + 1) ** 2] = f
    return s


def to_s2grid(x: torch.Tensor, res: Optional[Tuple[int, int]] = None, normalization: str = "integral") -> torch.Tensor:
    """Values of f = sum_lm x[..., lm] Y_lm on the grid: x [..., (lmax+1)^2] -> [..., n_beta, n_alpha]
    (beta ascending from the +y pole, alpha = 2 pi k / n_alpha; e3nn's layout and frame). res defaults to the
    smallest grid from which from_s2grid recovers x exactly, (lmax + 1, 2 lmax + 1); a product of two
    functions needs s2grid_resolution(l1, l2, l_out). normalization: of the Y_lm ('integral' matches the
    Gaunt product; e3nn's ToS2Grid default is 'component')."""
    op = "so3.to_s2grid"
    check_tensor(op, "x", x)
    if x.dtype not in _REAL:
        raise TypeError(f"{op}: x must be float32 or float64; got {_dtype_name(x.dtype)}")
    lmax = _lmax_of(op, "x", x.shape[-1]) if x.dim() else _lmax_of(op, "x", 0)
    n_beta, n_alpha = (lmax + 1, 2 * lmax + 1) if res is None else _check_res(op, res)
    y = gp.sh_on_grid(lmax, n_beta, n_alpha) * _normalization_scale(op, normalization, lmax)[:, None, None]
    return torch.einsum("...i,itk->...tk", x, y.to(dtype=x.dtype, device=x.device))


def from_s2grid(f: torch.Tensor, lmax: int, normalization: str = "integral") -> torch.Tensor:
    """Harmonic coefficients of grid values f [..., n_beta, n_alpha] -> [..., (lmax+1)^2] by the grid's
    quadrature: the inverse of to_s2grid (same normalization), exact when f has degree <= D and
    n_beta >= ceil((D + lmax + 1) / 2), n_alpha >= D + lmax + 1."""
    op = "so3.from_s2grid"
    check_tensor(op, "f", f)
    lmax = _check_lmax(op, "lmax", lmax)
    if f.dtype not in _REAL:
        raise TypeError(f"{op}: f must be float32 or float64; got {_dtype_name(f.dtype)}")
    if f.dim() < 2:
        raise ValueError(f"{op}: f must have shape [..., n_beta, n_alpha]; got {list(f.shape)}")
    n_beta, n_alpha = f.shape[-2], f.shape[-1]
    s = _normalization_scale(op, normalization, lmax)
    # the dual basis of Y^normalization under the integral inner product is Y^integral / s
    _, _, w = gp.grid_points(n_beta, n_alpha)
    z = gp.sh_on_grid(lmax, n_beta, n_alpha) * w[None, :, None] / s[:, None, None]
    return torch.einsum("...tk,itk->...i", f, z.to(dtype=f.dtype, device=f.device))


def _l_expand(lmax: int, device) -> torch.Tensor:
    """Index of the degree of each of the (lmax+1)^2 components."""
    return torch.repeat_interleave(torch.arange(lmax + 1, device=device), torch.arange(lmax + 1, device=device) * 2 + 1)


def _mul_ir_to_channels(x: torch.Tensor, channels: int, lmax: int) -> torch.Tensor:
    """[..., C * (lmax+1)^2] in e3nn's mul_ir order (per l a [C, 2l+1] block) -> [..., C, (lmax+1)^2]."""
    blocks, start = [], 0
    for l in range(lmax + 1):
        n = channels * (2 * l + 1)
        blocks.append(x[..., start:start + n].reshape(*x.shape[:-1], channels, 2 * l + 1))
        start += n
    return torch.cat(blocks, -1)


def _channels_to_mul_ir(x: torch.Tensor, lmax: int) -> torch.Tensor:
    return torch.cat([x[..., l * l:(l + 1) ** 2].flatten(-2) for l in range(lmax + 1)], -1)


class GauntTensorProduct(torch.nn.Module):
    """out = Gaunt product of x [..., C, (lmax1+1)^2] and y [..., C or 1, (lmax2+1)^2] -> [..., C, (lmax_out+1)^2].

    The product of the two spherical functions, projected onto degrees <= lmax_out (default lmax1 + lmax2):
    equal to e3nn's 'uuu' TensorProduct of Cx(0e+1o+2e+...) with path weights kappa^2 (fastops.so3.gaunt) and
    irrep/path normalization 'none'. layout='mul_ir' takes and returns e3nn's flat [..., C*(L+1)^2] rows.
    Leading dimensions broadcast (y of one channel is shared by all channels).

    method: 'grid', 'fft', 'direct' or 'auto' (all agree to round-off). res: the grid's (n_beta, n_alpha)
    for method 'grid'; default and minimum s2grid_resolution(lmax1, lmax2, lmax_out); a coarser grid raises
    unless exact=False (then the product is the grid's quadrature, no longer equal to the Gaunt product).
    On CUDA every method runs one fused kernel over the grid (its exact minimal grid unless 'grid' with res).

    Optional weights at call time, as in Gaunt-MACE: w_in1 [..., C, lmax1+1], w_in2 [..., C, lmax2+1] and
    w_out [..., C, lmax_out+1] scale each (channel, degree) block of x, y and the output (broadcasting)."""

    def __init__(self, lmax1: int, lmax2: int, lmax_out: Optional[int] = None, method: str = "auto",
                 res: Optional[Tuple[int, int]] = None, exact: bool = True, channels: Optional[int] = None,
                 layout: str = "channels"):
        super().__init__()
        op = "GauntTensorProduct"
        self.lmax1 = _check_lmax(op, "lmax1", lmax1)
        self.lmax2 = _check_lmax(op, "lmax2", lmax2)
        self.lmax_out = self.lmax1 + self.lmax2 if lmax_out is None else _check_lmax(op, "lmax_out", lmax_out)
        if method not in _METHODS + ("auto",):
            raise ValueError(f"{op}: method must be 'grid', 'fft', 'direct' or 'auto'; got {method!r}")
        if method == "auto":
            method = "direct" if max(self.lmax1, self.lmax2) <= _AUTO_DIRECT_MAX_DEGREE else "grid"
        if res is not None and method != "grid":
            raise ValueError(f"{op}: res applies to method='grid' only (got method={method!r})")
        if layout not in ("channels", "mul_ir"):
            raise ValueError(f"{op}: layout must be 'channels' or 'mul_ir'; got {layout!r}")
        if layout == "mul_ir" and channels is None:
            raise ValueError(f"{op}: layout='mul_ir' needs channels")
        if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int) or channels < 1):
            raise ValueError(f"{op}: channels must be a positive int; got {channels!r}")
        minimal = gp.minimal_grid(self.lmax1, self.lmax2, self.lmax_out)
        self.res = minimal if res is None else _check_res(op, res)
        if exact and (self.res[0] < minimal[0] or self.res[1] < minimal[1]):
            raise ValueError(f"{op}: res={self.res} is too coarse for an exact product of degrees {self.lmax1} x "
                             f"{self.lmax2} -> {self.lmax_out}: it needs at least {minimal} (pass exact=False to "
                             "accept the quadrature error)")
        self.method, self.exact, self.channels, self.layout = method, exact, channels, layout

    @property
    def irreps_in1(self) -> Irreps:
        return _sh_irreps(self.channels or 1, self.lmax1)

    @property
    def irreps_in2(self) -> Irreps:
        return _sh_irreps(self.channels or 1, self.lmax2)

    @property
    def irreps_out(self) -> Irreps:
        return _sh_irreps(self.channels or 1, self.lmax_out)

    def flops_per_sample(self) -> int:
        """Floating-point operations per (sample, channel) of the CPU program."""
        p = {"grid": lambda: gp.grid_program(self.lmax1, self.lmax2, self.lmax_out, *self.res),
             "fft": lambda: gp.fft_program(self.lmax1, self.lmax2, self.lmax_out),
             "direct": lambda: gp.direct_program(self.lmax1, self.lmax2, self.lmax_out)}[self.method]()
        return p.flops_per_sample()

    def extra_repr(self) -> str:
        return (f"lmax1={self.lmax1}, lmax2={self.lmax2}, lmax_out={self.lmax_out}, method={self.method!r}, "
                f"res={self.res}" + (f", channels={self.channels}, layout={self.layout!r}" if self.channels else ""))

    def _input(self, op, name, t, lmax, dtype, device):
        check_tensor(op, name, t)
        if t.dtype not in _REAL:
            raise TypeError(f"{op}: {name} must be float32 or float64; got {_dtype_name(t.dtype)}")
        if dtype is not None and t.dtype != dtype:
            raise TypeError(f"{op}: {name} is {_dtype_name(t.dtype)} but x is {_dtype_name(dtype)}; pass one dtype")
        if device is not None and t.device != device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {device}")
        d = gp.dim(lmax)
        if self.layout == "mul_ir":
            if t.dim() < 1 or t.shape[-1] != self.channels * d:
                raise ValueError(f"{op}: {name} must have shape [..., {self.channels * d}] (layout 'mul_ir', "
                                 f"{self.channels} channels of lmax {lmax}); got {list(t.shape)}")
            return _mul_ir_to_channels(t, self.channels, lmax)
        if t.dim() < 2 or t.shape[-1] != d:
            raise ValueError(f"{op}: {name} must have shape [..., channels, {d}] (lmax {lmax}); got {list(t.shape)}")
        if self.channels is not None and t.shape[-2] not in (1, self.channels):
            raise ValueError(f"{op}: {name} has {t.shape[-2]} channels; expected {self.channels} (or 1)")
        return t

    def _scale(self, op, name, w, t, lmax):
        if w is None:
            return t
        check_tensor(op, name, w)
        if w.dtype != t.dtype or w.device != t.device:
            raise TypeError(f"{op}: {name} must have x's dtype and device")
        if w.dim() < 1 or w.shape[-1] != lmax + 1:
            raise ValueError(f"{op}: {name} must have shape [..., channels, {lmax + 1}] (one weight per degree); "
                             f"got {list(w.shape)}")
        return t * w[..., _l_expand(lmax, w.device)]

    def forward(self, x: torch.Tensor, y: torch.Tensor, w_in1: Optional[torch.Tensor] = None,
                w_in2: Optional[torch.Tensor] = None, w_out: Optional[torch.Tensor] = None) -> torch.Tensor:
        op = "GauntTensorProduct"
        check_tensor(op, "x", x)
        check_device_usable(op, x)
        xc = self._input(op, "x", x, self.lmax1, None, None)
        yc = self._input(op, "y", y, self.lmax2, x.dtype, x.device)
        xc = self._scale(op, "w_in1", w_in1, xc, self.lmax1)
        yc = self._scale(op, "w_in2", w_in2, yc, self.lmax2)
        try:
            lead = torch.broadcast_shapes(xc.shape[:-1], yc.shape[:-1])
        except RuntimeError:
            raise ValueError(f"{op}: x {list(x.shape)} and y {list(y.shape)} do not broadcast") from None
        x2d = xc.expand(*lead, xc.shape[-1]).reshape(-1, xc.shape[-1])
        y2d = yc.expand(*lead, yc.shape[-1]).reshape(-1, yc.shape[-1])
        out = _gaunt_op(x2d, y2d, self.lmax1, self.lmax2, self.lmax_out, self.method, *self.res)
        out = out.reshape(*lead, out.shape[-1])
        out = self._scale(op, "w_out", w_out, out, self.lmax_out)
        return _channels_to_mul_ir(out, self.lmax_out) if self.layout == "mul_ir" else out


def _sh_irreps(channels: int, lmax: int) -> Irreps:
    return Irreps([(channels, (l, (-1) ** l)) for l in range(lmax + 1)])


# ------------------------------------------------------------------------------------------------ CP (TDN)
def cp_reference_tensor(lmax: int) -> torch.Tensor:
    """The stacked Clebsch-Gordan tensor M[i, j, k] (i, j, k over all (l, m) with l <= lmax) that TDN
    decomposes: every triangle-allowed (l1, l2, l3), odd paths included, e3nn's wigner_3j blocks, no
    normalization."""
    d = gp.dim(lmax)
    m = torch.zeros(d, d, d, dtype=torch.float64)
    for l1 in range(lmax + 1):
        for l2 in range(lmax + 1):
            for l3 in range(abs(l1 - l2), min(l1 + l2, lmax) + 1):
                m[l1 * l1:(l1 + 1) ** 2, l2 * l2:(l2 + 1) ** 2, l3 * l3:(l3 + 1) ** 2] = wigner_3j(l1, l2, l3)
    return m


def default_rank(lmax: int) -> int:
    """TDN's 'quadratic' rank schedule 7 L^2 (at least 1). NOTE: on the exact stacked CG tensor it leaves a
    relative error of 2-6% (lmax 1-3, measured); reaching 1e-3 takes about (lmax + 1)^4 / 2.4."""
    return max(1, 7 * lmax * lmax)


def fit_cp(tensor: torch.Tensor, rank: int, tol: float = 1e-6, max_iter: int = 2000, seed: int = 0,
           progress: bool = False):
    """Rank-`rank` CP factors (A, B, C) of a 3-way float64 tensor by alternating least squares:
    tensor[i, j, k] ~ sum_r A[i, r] B[j, r] C[k, r]. Stops when the relative Frobenius error is below tol or
    stalls. Returns (A, B, C, relative_error)."""
    g = torch.Generator().manual_seed(seed)
    d1, d2, d3 = tensor.shape
    A = torch.randn(d1, rank, generator=g, dtype=torch.float64)
    B = torch.randn(d2, rank, generator=g, dtype=torch.float64)
    C = torch.randn(d3, rank, generator=g, dtype=torch.float64)
    norm = float(tensor.norm())
    t1 = tensor.reshape(d1, d2 * d3)
    t2 = tensor.permute(1, 0, 2).reshape(d2, d1 * d3)
    t3 = tensor.permute(2, 0, 1).reshape(d3, d1 * d2)
    eye = torch.eye(rank, dtype=torch.float64)

    def solve(unfolded, P, Q):  # argmin_X |unfolded - X (P kr Q)^T|, with a vanishing ridge for stability
        kr = (P[:, None, :] * Q[None, :, :]).reshape(-1, rank)
        gram = (P.T @ P) * (Q.T @ Q)
        return torch.linalg.solve(gram + 1e-12 * eye * gram.diagonal().mean(), (unfolded @ kr).T).T

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=max_iter, desc=f"CP fit rank {rank}", leave=False)
    err, history = float("inf"), []
    for it in range(max_iter):
        A = solve(t1, B, C)
        B = solve(t2, A, C)
        C = solve(t3, A, B)
        if it % 10 == 9 or it == max_iter - 1:
            err = float((torch.einsum("ir,jr,kr->ijk", A, B, C) - tensor).norm()) / norm
            history.append(err)
            if bar is not None:
                bar.update(min(10, max_iter - bar.n))
                bar.set_postfix(rel_error=f"{err:.2e}")
            # ALS moves in plateaus: stop at tol, or when 200 sweeps gained less than 0.1%
            if err < tol or (len(history) > 20 and err > 0.999 * history[-21]):
                break
    if bar is not None:
        bar.close()
    # balance the columns' norms (the product is unchanged)
    scale = (A.norm(dim=0) * B.norm(dim=0) * C.norm(dim=0)).clamp_min(1e-300) ** (1 / 3)
    A, B, C = (F / F.norm(dim=0).clamp_min(1e-300) * scale for F in (A, B, C))
    return A, B, C, err


@functools.lru_cache(maxsize=16)
def _fitted(lmax: int, rank: int, seed: int, tol: float, max_iter: int, progress: bool):
    return fit_cp(cp_reference_tensor(lmax), rank, tol=tol, max_iter=max_iter, seed=seed, progress=progress)


@custom_op("fastops::cp_tp")
def _cp_op(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor,
           f3: torch.Tensor) -> torch.Tensor:
    x = contiguous_last_dim(x)
    y, w = contiguous_last_dim(y), contiguous_last_dim(w)
    out = x.new_empty((x.shape[0], x.shape[1], f3.shape[0]))
    with torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext():
        call_c(_C.cp_forward, x, y, w, f1, f2, f3, out, nthreads=num_threads(), stream=cuda_stream(x.device))
    return out


@_cp_op.register_fake
def _(x, y, w, f1, f2, f3):
    return x.new_empty((x.shape[0], x.shape[1], f3.shape[0]))


def _cp_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _cp_backward(ctx, grad):
    x, y, w, f1, f2, f3 = ctx.saved_tensors
    gx = gy = gw = None
    if ctx.needs_input_grad[0]:  # the same product with the roles of F1 and F3 exchanged
        gx = _cp_op(grad, y, w, f3, f2, f1)
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        p = x @ f1                      # [E, C, R]
        q = y @ f2                      # [E, R]
        g3 = grad @ f3                  # [E, C, R]
        if ctx.needs_input_grad[1]:
            gy = ((w[..., None] * p * g3).sum(1)) @ f2.T
        if ctx.needs_input_grad[2]:
            gw = (p * g3 * q[:, None, :]).sum(-1)
    return gx, gy, gw, None, None, None


_cp_op.register_autograd(_cp_backward, setup_context=_cp_setup)


class CPTensorProduct(torch.nn.Module):
    """TDN's CP-decomposed tensor product: out[..., c, k] = w[..., c] sum_r F3[k, r] (F1^T x[..., c])_r (F2^T y)_r.

    x [..., C, (lmax+1)^2], y [..., (lmax+1)^2] (e.g. edge harmonics, shared by the channels), weight [..., C]
    (one weight per channel shared by all paths) -> [..., C, (lmax+1)^2]. The factors approximate the stacked
    CG tensor (cp_reference_tensor) at `rank` (default 7 lmax^2); they are fitted by fit_() at construction
    unless `factors` is given, frozen (buffers, saved in the state dict) and reported by .fit_error (relative
    Frobenius error). The fit is deterministic (seed) and cached per process."""

    def __init__(self, lmax: int, channels: int, rank: Optional[int] = None, factors: Optional[Sequence] = None,
                 tol: float = 1e-6, max_iter: int = 2000, seed: int = 0, progress: bool = False):
        super().__init__()
        op = "CPTensorProduct"
        self.lmax = _check_lmax(op, "lmax", lmax)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"{op}: channels must be a positive int; got {channels!r}")
        self.channels = channels
        self.rank = default_rank(self.lmax) if rank is None else rank
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"{op}: rank must be a positive int; got {rank!r}")
        d = gp.dim(self.lmax)
        for name in ("f1", "f2", "f3"):
            self.register_buffer(name, torch.zeros(d, self.rank, dtype=torch.float64))
        self.register_buffer("fit_error", torch.tensor(float("nan"), dtype=torch.float64))
        if factors is None:
            self.fit_(tol=tol, max_iter=max_iter, seed=seed, progress=progress)
        else:
            if len(factors) != 3:
                raise ValueError(f"{op}: factors must be (F1, F2, F3)")
            for name, f in zip(("f1", "f2", "f3"), factors):
                check_tensor(op, "factors", f)
                if tuple(f.shape) != (d, self.rank):
                    raise ValueError(f"{op}: each of the factors must have shape [{d}, {self.rank}]; got {list(f.shape)}")
                getattr(self, name).copy_(f.detach().to(torch.float64))
            self.fit_error.fill_(self.relative_error())

    @torch.no_grad()
    def fit_(self, tol: float = 1e-6, max_iter: int = 2000, seed: int = 0, progress: bool = True) -> float:
        """Fits the factors to the exact tensor (alternating least squares, tqdm progress bar); returns and
        stores the relative error, and warns when it exceeds 1e-3 (TDN's stopping point)."""
        a, b, c, err = _fitted(self.lmax, self.rank, seed, tol, max_iter, progress)
        if err > 1e-3:
            warnings.warn(f"CPTensorProduct(lmax={self.lmax}): rank {self.rank} fits the CG tensor only to a relative "
                          f"error of {err:.1e}; ranks reaching 1e-3 are about (lmax + 1)^4 / 2.4 (lmax 1: 8, 2: 40, "
                          "3: 110, 4: 260)", stacklevel=2)
        for name, f in zip(("f1", "f2", "f3"), (a, b, c)):
            getattr(self, name).copy_(f)
        self.fit_error.fill_(err)
        return err

    @torch.no_grad()
    def relative_error(self) -> float:
        m = cp_reference_tensor(self.lmax)
        approx = torch.einsum("ir,jr,kr->ijk", self.f1.double(), self.f2.double(), self.f3.double())
        return float((approx - m).norm() / m.norm())

    def residual_norm(self) -> float:
        """|M - sum_r F1 (x) F2 (x) F3|_F: bounds |CP(x, y) - TP(x, y)| <= residual * |x| |y| |w| per channel, so
        the equivariance error |CP(Dx, Dy) - D CP(x, y)| is at most twice that."""
        return float(self.fit_error) * float(cp_reference_tensor(self.lmax).norm())

    def _factors(self, dtype, device):
        key = (dtype, device, self.f1.data_ptr(), self.f1._version)
        if getattr(self, "_cast_key", None) != key:
            self._cast = tuple(getattr(self, n).to(dtype=dtype, device=device).contiguous() for n in ("f1", "f2", "f3"))
            self._cast_key = key
        return self._cast

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        op = "CPTensorProduct"
        d = gp.dim(self.lmax)
        for name, t in (("x", x), ("y", y), ("weight", weight)):
            check_tensor(op, name, t)
            if t.dtype not in _REAL:
                raise TypeError(f"{op}: {name} must be float32 or float64; got {_dtype_name(t.dtype)}")
            if t.dtype != x.dtype or t.device != x.device:
                raise TypeError(f"{op}: {name} must have x's dtype and device")
        check_device_usable(op, x)
        if x.dim() < 2 or tuple(x.shape[-2:]) != (self.channels, d):
            raise ValueError(f"{op}: x must have shape [..., {self.channels}, {d}]; got {list(x.shape)}")
        if y.dim() < 1 or y.shape[-1] != d:
            raise ValueError(f"{op}: y must have shape [..., {d}]; got {list(y.shape)}")
        if weight.dim() < 1 or weight.shape[-1] != self.channels:
            raise ValueError(f"{op}: weight must have shape [..., {self.channels}]; got {list(weight.shape)}")
        try:
            lead = torch.broadcast_shapes(x.shape[:-2], y.shape[:-1], weight.shape[:-1])
        except RuntimeError:
            raise ValueError(f"{op}: x {list(x.shape)}, y {list(y.shape)} and weight {list(weight.shape)} do not "
                             "broadcast") from None
        xe = x.expand(*lead, *x.shape[-2:]).reshape(-1, self.channels, d)
        ye = y.expand(*lead, d).reshape(-1, d)
        we = weight.expand(*lead, self.channels).reshape(-1, self.channels)
        out = _cp_op(xe, ye, we, *self._factors(x.dtype, x.device))
        return out.reshape(*lead, self.channels, d)

    def extra_repr(self) -> str:
        return f"lmax={self.lmax}, channels={self.channels}, rank={self.rank}, fit_error={float(self.fit_error):.2e}"


class CPTensorProductConv(CPTensorProduct):
    """The message-passing form: out[v] = sum over edges e with receivers[e] = v of CP(x[senders[e]], y[e], w[e]),
    x [V, C, (lmax+1)^2] node features, y [E, (lmax+1)^2], weight [E, C], out [num_nodes, C, (lmax+1)^2]."""

    def forward(self, x, y, weight, senders, receivers, num_nodes: Optional[int] = None):
        op = "CPTensorProductConv"
        for name, idx in (("senders", senders), ("receivers", receivers)):
            check_tensor(op, name, idx)
            if idx.dtype != torch.int64 or idx.dim() != 1:
                raise TypeError(f"{op}: {name} must be an int64 vector")
            if idx.device != x.device:
                raise ValueError(f"{op}: {name} must be on x's device")
        if x.dim() != 3 or y.dim() != 2 or weight.dim() != 2:
            raise ValueError(f"{op}: x must be [V, C, d], y [E, d] and weight [E, C]")
        E = y.shape[0]
        if senders.numel() != E or receivers.numel() != E or weight.shape[0] != E:
            raise ValueError(f"{op}: senders, receivers, y and weight must have one entry per edge ({E})")
        n = x.shape[0] if num_nodes is None else num_nodes
        check_indices(op, (("senders", senders, x.shape[0]), ("receivers", receivers, n)))
        msg = super().forward(x.index_select(0, senders), y, weight)
        return msg.new_zeros((n,) + msg.shape[1:]).index_add_(0, receivers, msg)


def gaunt_cpu_kernel_name() -> str:
    return _C.gaunt_cpu_kernel_name()
