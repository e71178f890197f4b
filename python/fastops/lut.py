"""LUT-based low-bit weight GEMM (mpGEMM): `fastops.lut_gemm(x, w)` with `w = fastops.lut.quantize(...)`.

Weights of shape [M, K] (nn.Linear layout) are stored as q binary planes plus per-group parameters and
multiplied through lookup tables of signed activation sums (LUT-GEMM, T-MAC); the packed layout is
described once, in csrc/lut/lut_format.h, and mirrored by `_pack_codes` / `_unpack_codes` here.

Schemes (all weights are `W[m, k]` with group `G = k // group_size`):
  "asym"     uniform with zero point:  w = s * (Q - Z),  Q in [0, 2^bits), Z in [0, 2^bits) integer;
             1-bit: the two levels are the means of each side of the group mean (Z fractional)
  "sym"      uniform, Z = 2^(bits-1) (GPTQ convention); 1-bit: Z = 1/2, w = +-s/2
  "ternary"  bits = 2, w in {-s, 0, +s} (BitNet b1.58 absmean), stored as Q = t + 1, Z = 1
  "bcq"      binary-coding quantization: w = sum_i alpha_i * b_i + z, b_i = +-1 (greedy + alternating LS)
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch

from . import _C
from ._core import (DTYPE_CODE, FLOAT_DTYPES, SkipSpec, call_c, check_device_usable, check_dtype, check_finite,
                    check_int, check_same_device, check_shape, check_tensor, cuda_stream, custom_op, linear_targets,
                    num_threads, replace_linears)

__all__ = ["LutWeight", "quantize", "pack", "lut_gemm", "cpu_path", "quantize_model", "gptq_quantize", "hqq_quantize",
           "SCHEMES", "METHODS"]

# Mirrors of csrc/lut/lut_format.h.
TILE_ROWS = 16
BLOCK_K = 32
CHUNK = 4
BLOCK_BYTES = 64
GROUP_MULTIPLE = 32

SCHEMES = ("asym", "sym", "bcq", "ternary")
_KERNEL_SCHEME = {"asym": 0, "sym": 0, "ternary": 0, "bcq": 1}  # lut::Scheme: uniform = 0, bcq = 1
_STORED_SCHEME = {name: i for i, name in enumerate(SCHEMES)}  # for state_dict metadata
_FP16_MAX = 65504.0
_FP16_TINY = 2.0 ** -24


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------------------------------
# Packing: integer codes Q[m, k] = sum_i 2^i beta_i[m, k]  <->  planes uint8 [Mt, Kb, q, 64]
# ---------------------------------------------------------------------------------------------------
_PACK_TILES_PER_STEP = 256  # bounds the temporaries of (un)packing to ~bits * 4096 rows * K bytes


def _pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes uint8 [M, K] -> planes uint8 [Mt, Kb, bits, 64] (lut_format.h)."""
    m, k = codes.shape
    mt, kb = _ceil_div(m, TILE_ROWS), _ceil_div(k, BLOCK_K)
    padded = torch.zeros(mt * TILE_ROWS, kb * BLOCK_K, dtype=torch.uint8, device=codes.device)
    padded[:m, :k] = codes
    out = torch.empty(mt, kb, bits, BLOCK_BYTES, dtype=torch.uint8, device=codes.device)
    shifts = torch.arange(CHUNK, dtype=torch.uint8, device=codes.device)
    for t0 in range(0, mt, _PACK_TILES_PER_STEP):
        t1 = min(mt, t0 + _PACK_TILES_PER_STEP)
        c = padded[t0 * TILE_ROWS:t1 * TILE_ROWS].view(t1 - t0, TILE_ROWS, kb, 2, 4, CHUNK)  # tile,row,kb,nib,lane,j
        for i in range(bits):
            beta = (c >> i) & 1
            idx = (beta << shifts).sum(dim=-1, dtype=torch.uint8)  # tile,row,kb,nib,lane
            byte = idx[..., 0, :] | (idx[..., 1, :] << 4)  # tile,row,kb,lane
            out[t0:t1, :, i] = byte.permute(0, 2, 3, 1).reshape(t1 - t0, kb, BLOCK_BYTES)
    return out


def _unpack_codes(planes: torch.Tensor, m: int, k: int, bits: int) -> torch.Tensor:
    """planes uint8 [Mt, Kb, bits, 64] -> codes uint8 [M, K]."""
    mt, kb = planes.shape[0], planes.shape[1]
    codes = torch.zeros(mt, TILE_ROWS, kb, 2, 4, CHUNK, dtype=torch.uint8, device=planes.device)
    shifts = torch.arange(CHUNK, dtype=torch.uint8, device=planes.device)
    for i in range(bits):
        byte = planes[:, :, i].reshape(mt, kb, 4, TILE_ROWS).permute(0, 3, 1, 2)  # tile,row,kb,lane
        idx = torch.stack((byte & 0xF, byte >> 4), dim=3)  # tile,row,kb,nib,lane
        beta = (idx.unsqueeze(-1) >> shifts) & 1
        codes |= beta << i
    return codes.reshape(mt * TILE_ROWS, kb * BLOCK_K)[:m, :k].contiguous()


# ---------------------------------------------------------------------------------------------------
# The packed weight
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LutWeight:
    """A packed low-bit weight of logical shape [out_features, in_features].

    planes: uint8 [ceil(M/16), ceil(K/32), bits, 64] bit planes; scales: float16 [groups, A, Mp]
    (A = 1, or bits for "bcq"); zeros: float16 [groups, Mp] (zero points, or the bcq offsets);
    Mp = 16 * ceil(M/16). Layout: csrc/lut/lut_format.h.
    """

    planes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    shape: tuple
    bits: int
    group_size: int
    scheme: str

    def __post_init__(self):
        op = "LutWeight"
        m, k = self.shape
        check_int(op, "bits", self.bits, 1, 4)
        if self.scheme not in SCHEMES:
            raise ValueError(f"{op}: scheme must be one of {SCHEMES}, got {self.scheme!r}")
        _check_group_size(op, self.group_size)
        mt, kb, groups = _ceil_div(m, TILE_ROWS), _ceil_div(k, BLOCK_K), _ceil_div(k, self.group_size)
        alphas = self.bits if self.scheme == "bcq" else 1
        check_dtype(op, "planes", self.planes, (torch.uint8,))
        check_dtype(op, "scales", self.scales, (torch.float16,))
        check_dtype(op, "zeros", self.zeros, (torch.float16,))
        check_shape(op, "planes", self.planes, (mt, kb, self.bits, BLOCK_BYTES))
        check_shape(op, "scales", self.scales, (groups, alphas, mt * TILE_ROWS))
        check_shape(op, "zeros", self.zeros, (groups, mt * TILE_ROWS))
        check_same_device(op, "planes", self.planes, scales=self.scales, zeros=self.zeros)
        for name in ("planes", "scales", "zeros"):
            if not getattr(self, name).is_contiguous():
                raise ValueError(f"{op}: {name} must be contiguous")

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def device(self) -> torch.device:
        return self.planes.device

    @property
    def nbytes(self) -> int:
        """Bytes of the packed tensors (what a GEMM reads)."""
        return sum(t.numel() * t.element_size() for t in (self.planes, self.scales, self.zeros))

    def to(self, device) -> "LutWeight":
        """The same weight on `device` (the packed layout is device independent)."""
        return dataclasses.replace(self, planes=self.planes.to(device), scales=self.scales.to(device),
                                   zeros=self.zeros.to(device))

    def cpu(self) -> "LutWeight":
        return self.to("cpu")

    def cuda(self, device=None) -> "LutWeight":
        return self.to(torch.device("cuda") if device is None else device)

    def codes(self) -> torch.Tensor:
        """Integer codes Q[m, k] = sum_i 2^i beta_i (uint8 [M, K])."""
        return _unpack_codes(self.planes, self.shape[0], self.shape[1], self.bits)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight [M, K] this packed weight stands for, computed in float32 (float64 if asked)."""
        m, k = self.shape
        scheme = _KERNEL_SCHEME[self.scheme]
        if self.planes.device.type == "cpu" and dtype != torch.float64:
            # The dequantization kernel (bit-identical to _dequantize, ~8x faster; bf16 rounded by it),
            # which writes transposed tiles.
            kernel_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
            w_t = torch.empty((k, _ceil_div(m, 16) * 16), dtype=kernel_dtype)
            call_c(_C.lut_dequantize, self.planes, self.scales, self.zeros, w_t, m, k, self.bits, self.group_size,
                   scheme, 0, num_threads())
            return w_t[:, :m].t().contiguous().to(dtype)
        return _dequantize(self.planes, self.scales, self.zeros, m, k, self.bits, self.group_size, scheme, dtype)

    def state_dict(self) -> dict:
        m, k = self.shape
        meta = torch.tensor([m, k, self.bits, self.group_size, _STORED_SCHEME[self.scheme]], dtype=torch.int64)
        return {"planes": self.planes, "scales": self.scales, "zeros": self.zeros, "meta": meta}

    @classmethod
    def from_state_dict(cls, state: dict) -> "LutWeight":
        m, k, bits, group_size, scheme = (int(v) for v in state["meta"].tolist())
        return cls(planes=state["planes"], scales=state["scales"], zeros=state["zeros"], shape=(m, k),
                   bits=bits, group_size=group_size, scheme=SCHEMES[scheme])


def _dequantize(planes, scales, zeros, m, k, bits, group_size, kernel_scheme, dtype):
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    codes = _unpack_codes(planes, m, k, bits)
    w = _dequantize_codes(codes, scales[:, :, :m].permute(2, 0, 1).to(compute), zeros[:, :m].t().to(compute),
                          bits, group_size, kernel_scheme)
    return w.to(dtype)


def _dequantize_codes(codes, scales, zeros, bits, group_size, kernel_scheme):
    """codes uint8 [M, K]; scales [M, G, A]; zeros [M, G] (in the compute dtype) -> the float weight [M, K]."""
    group_of_k = torch.arange(codes.shape[1], device=codes.device) // group_size
    s, z = scales[:, group_of_k], zeros[:, group_of_k]  # [M, K, A], [M, K]
    if kernel_scheme == 0:
        return s[..., 0] * (codes.to(s.dtype) - z)
    w = z.clone()
    for i in range(bits):
        w += s[..., i] * (((codes >> i) & 1).to(s.dtype) * 2 - 1)
    return w


def _check_group_size(op: str, group_size) -> None:
    check_int(op, "group_size", group_size, 1)
    if group_size % GROUP_MULTIPLE:
        raise ValueError(f"{op}: group_size must be a positive multiple of {GROUP_MULTIPLE}, got {group_size}")


def _effective_group_size(group_size: Optional[int], k: int) -> int:
    """None or -1 mean one group per row; otherwise the group size is kept (a last partial group is fine)."""
    if group_size is None or group_size == -1:
        return _ceil_div(k, GROUP_MULTIPLE) * GROUP_MULTIPLE
    return group_size


def _assemble(codes, scales, zeros, m, k, bits, group_size, scheme) -> LutWeight:
    """codes uint8 [M, K]; scales float [M, G, A]; zeros float [M, G] -> LutWeight (padding rows zero)."""
    mp = _ceil_div(m, TILE_ROWS) * TILE_ROWS
    groups, alphas = scales.shape[1], scales.shape[2]
    s = torch.zeros(groups, alphas, mp, dtype=torch.float16, device=codes.device)
    s[:, :, :m] = scales.permute(1, 2, 0).to(torch.float16)
    z = torch.zeros(groups, mp, dtype=torch.float16, device=codes.device)
    z[:, :m] = zeros.t().to(torch.float16)
    return LutWeight(planes=_pack_codes(codes, bits), scales=s, zeros=z, shape=(m, k), bits=bits,
                     group_size=group_size, scheme=scheme)


# ---------------------------------------------------------------------------------------------------
# Quantizers: each maps full groups w3 [M, G, g] (float32) -> codes uint8 [M, G, g], scales [M, G, A]
# (already representable in float16), zeros [M, G].
# ---------------------------------------------------------------------------------------------------
def _to_fp16_values(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float16).to(torch.float32)


def _safe_scale(s: torch.Tensor) -> torch.Tensor:
    """Scales as stored (float16-rounded), never zero, so codes are computed against the stored scale."""
    return _to_fp16_values(torch.where(s > 0, s, torch.ones_like(s)).clamp(min=_FP16_TINY))


def _quantize_asym(w3: torch.Tensor, bits: int, **_):
    if bits == 1:  # two levels: the means of each side of the group mean (one Lloyd step), float zero point
        high = w3 >= w3.mean(dim=-1, keepdim=True)
        count_hi = high.sum(dim=-1)
        hi = torch.where(high, w3, 0).sum(dim=-1) / count_hi.clamp(min=1)
        lo = torch.where(high, 0, w3).sum(dim=-1) / (w3.shape[-1] - count_hi).clamp(min=1)
        lo = torch.where(count_hi == w3.shape[-1], hi, lo)
        s = _safe_scale(hi - lo)
        return high.to(torch.uint8), s[..., None], -lo / s
    maxq = (1 << bits) - 1
    wmin, wmax = w3.amin(dim=-1), w3.amax(dim=-1)
    flat = wmax == wmin
    # A constant group v is exact as s = |v| (or 1), Z = -v / s, Q = 0.
    s = torch.where(flat, wmin.abs(), (wmax - wmin) / maxq)
    s = _safe_scale(s)
    z = torch.where(flat, -wmin / s, torch.round(-wmin / s).clamp(0, maxq))
    q = torch.round(w3 / s[..., None] + z[..., None]).clamp(0, maxq)
    return q.to(torch.uint8), s[..., None], z


def _quantize_sym(w3: torch.Tensor, bits: int, **_):
    if bits == 1:  # +-s/2 with s/2 = mean |w|: the least-squares binary scale
        s = _safe_scale(2 * w3.abs().mean(dim=-1))
        z = torch.full_like(s, 0.5)
        return (w3 >= 0).to(torch.uint8), s[..., None], z
    maxq, mid = (1 << bits) - 1, 1 << (bits - 1)
    s = _safe_scale(2 * w3.abs().amax(dim=-1) / maxq)
    q = (torch.round(w3 / s[..., None]) + mid).clamp(0, maxq)
    return q.to(torch.uint8), s[..., None], torch.full_like(s, float(mid))


def _quantize_ternary(w3: torch.Tensor, bits: int, **_):
    s = _safe_scale(w3.abs().mean(dim=-1))  # BitNet b1.58 absmean, per group
    t = torch.round(w3 / s[..., None]).clamp(-1, 1)
    return (t + 1).to(torch.uint8), s[..., None], torch.ones_like(s)


def _bcq_signs(bits: int, device) -> torch.Tensor:
    """Row c holds the signs (2 bit_i(c) - 1) of code c, and a trailing 1 for the offset: [2^bits, bits + 1]."""
    c = torch.arange(1 << bits, device=device)
    signs = [((c >> i) & 1) * 2 - 1 for i in range(bits)] + [torch.ones_like(c)]
    return torch.stack(signs, dim=1).to(torch.float32)


def _bcq_assign(w3, theta, signs):
    """Code of the nearest level for every weight: bucketize against the midpoints of the sorted levels."""
    levels, order = (theta @ signs.t()).sort(dim=-1)  # [M, G, 2^bits], theta = (alpha, z)
    midpoints = (levels[..., 1:] + levels[..., :-1]) * 0.5
    rank = torch.searchsorted(midpoints.contiguous(), w3.contiguous())  # [M, G, g]
    return order.gather(-1, rank)


def _quantize_bcq(w3: torch.Tensor, bits: int, bcq_iters: int = 10, **_):
    # Greedy: offset = mean, then peel off one +-alpha plane at a time from the residual.
    z = w3.mean(dim=-1)
    r = w3 - z[..., None]
    alphas, codes = [], torch.zeros(w3.shape, dtype=torch.int64, device=w3.device)
    for i in range(bits):
        a = r.abs().mean(dim=-1)
        positive = r >= 0
        alphas.append(a)
        codes |= positive.to(torch.int64) << i
        r = r - a[..., None] * torch.where(positive, 1.0, -1.0)
    theta = torch.cat([torch.stack(alphas, dim=-1), z[..., None]], dim=-1)  # [M, G, bits + 1]
    # Alternating least squares: solve for (alpha, z) given the codes, then re-pick the best codes.
    # The normal equations only need per-code counts and per-code sums of w (the design rows are the
    # sign rows of the codes), so nothing of size [group, bits + 1] is materialized.
    signs = _bcq_signs(bits, w3.device)
    outer = (signs[:, :, None] * signs[:, None, :]).reshape(1 << bits, -1)  # [2^bits, (bits + 1)^2]
    eye = torch.eye(bits + 1, device=w3.device)
    for _it in range(bcq_iters):
        counts = torch.zeros(*w3.shape[:-1], 1 << bits, device=w3.device).scatter_add_(-1, codes, torch.ones_like(w3))
        sums = torch.zeros_like(counts).scatter_add_(-1, codes, w3)
        gram = (counts @ outer).view(*w3.shape[:-1], bits + 1, bits + 1)
        gram = gram + eye * (1e-6 * w3.shape[-1])  # planes that never flip sign make gram singular
        theta = torch.linalg.solve(gram, sums @ signs)
        codes = _bcq_assign(w3, theta, signs)
    theta = _to_fp16_values(theta)
    codes = _bcq_assign(w3, theta, signs)  # final codes against the stored (float16) parameters
    return codes.to(torch.uint8), theta[..., :bits], theta[..., bits]


_QUANTIZERS = {"asym": _quantize_asym, "sym": _quantize_sym, "ternary": _quantize_ternary, "bcq": _quantize_bcq}
_ROWS_PER_STEP_ELEMS = 1 << 22  # quantize in row slices to bound the temporaries of bcq


def quantize(w: torch.Tensor, bits: int, group_size: Optional[int] = 128, scheme: str = "asym", *,
             bcq_iters: int = 10) -> LutWeight:
    """Quantize a float weight w[M, K] (nn.Linear layout) to a packed LutWeight.

    bits: 1..4 ("ternary" needs 2). group_size: a multiple of 32 (K need not be a multiple of it; the
    last group may be partial), or None / -1 for one group per row. scheme: "asym", "sym", "bcq",
    "ternary". bcq_iters: alternating least-squares rounds of the bcq fit.
    """
    op = "lut.quantize"
    group_size = _check_quantize_args(op, w, bits, group_size, scheme)
    check_int(op, "bcq_iters", bcq_iters, 0)
    m, k = w.shape
    codes, scales, zeros = _quantize_groups(w, bits, group_size, _QUANTIZERS[scheme], bcq_iters=bcq_iters)
    return _assemble(codes, scales, zeros, m, k, bits, group_size, scheme)


def _check_quantize_args(op: str, w: torch.Tensor, bits: int, group_size: Optional[int], scheme: str) -> int:
    """Validates quantize()'s common arguments; returns the effective group size."""
    check_dtype(op, "w", w, FLOAT_DTYPES + (torch.float64,))
    if w.dim() != 2:
        raise ValueError(f"{op}: w must have shape [out_features, in_features]; got {list(w.shape)}")
    check_int(op, "bits", bits, 1, 4)
    if scheme not in SCHEMES:
        raise ValueError(f"{op}: scheme must be one of {SCHEMES}, got {scheme!r}")
    if scheme == "ternary" and bits != 2:
        raise ValueError(f"{op}: scheme 'ternary' needs bits=2, got bits={bits}")
    m, k = w.shape
    if m == 0 or k == 0:
        raise ValueError(f"{op}: w must be non-empty; got shape {list(w.shape)}")
    group_size = _effective_group_size(group_size, k)
    _check_group_size(op, group_size)
    check_finite(op, "w", w)
    if float(w.detach().abs().amax()) > _FP16_MAX:
        raise ValueError(f"{op}: w has values beyond the float16 range of the stored scales (|w| > 65504)")
    return group_size


def _quantize_groups(w: torch.Tensor, bits: int, group_size: int, quantizer, **options):
    """Applies a group quantizer to w[M, K] group by group (the last group may be partial), in row slices.
    Returns codes uint8 [M, K], scales float32 [M, G, A], zeros float32 [M, G]."""
    m, k = w.shape
    full, rest = divmod(k, group_size)
    rows_per_step = max(1, _ROWS_PER_STEP_ELEMS // (k * (bits + 1)))
    codes_parts, scale_parts, zero_parts = [], [], []
    for r0 in range(0, m, rows_per_step):
        wr = w[r0:r0 + rows_per_step].to(torch.float32)
        pieces = []
        if full:
            pieces.append(quantizer(wr[:, :full * group_size].reshape(wr.shape[0], full, group_size), bits, **options))
        if rest:
            pieces.append(quantizer(wr[:, full * group_size:].reshape(wr.shape[0], 1, rest), bits, **options))
        codes_parts.append(torch.cat([p[0].reshape(wr.shape[0], -1) for p in pieces], dim=1))
        scale_parts.append(torch.cat([p[1] for p in pieces], dim=1))
        zero_parts.append(torch.cat([p[2] for p in pieces], dim=1))
    return torch.cat(codes_parts), torch.cat(scale_parts), torch.cat(zero_parts)


def pack(qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor] = None, *, bits: int,
         group_size: Optional[int] = 128) -> LutWeight:
    """Import an already-quantized weight: w[m, k] = scales[m, g] * (qweight[m, k] - zeros[m, g]), g = k // group_size.

    qweight: integer codes [M, K] in [0, 2^bits) (unpack GPTQ/AWQ int32 words first); scales:
    [M, groups] float; zeros: [M, groups] integer or float zero points (HQQ-style float zeros are kept
    as float16), or None for the symmetric midpoint 2^(bits-1).
    """
    op = "lut.pack"
    check_int(op, "bits", bits, 1, 4)
    check_tensor(op, "qweight", qweight)
    if qweight.dtype.is_floating_point or qweight.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise TypeError(f"{op}: qweight must be an integer tensor of codes, got {str(qweight.dtype).replace('torch.', '')}")
    if qweight.dim() != 2:
        raise ValueError(f"{op}: qweight must have shape [out_features, in_features]; got {list(qweight.shape)}")
    m, k = qweight.shape
    if m == 0 or k == 0:
        raise ValueError(f"{op}: qweight must be non-empty; got shape {list(qweight.shape)}")
    group_size = _effective_group_size(group_size, k)
    _check_group_size(op, group_size)
    groups = _ceil_div(k, group_size)
    check_dtype(op, "scales", scales, FLOAT_DTYPES + (torch.float64,))
    check_shape(op, "scales", scales, (m, groups))
    check_same_device(op, "qweight", qweight, scales=scales, zeros=zeros)
    check_finite(op, "scales", scales)
    if int(qweight.min()) < 0 or int(qweight.max()) >= (1 << bits):
        raise ValueError(f"{op}: qweight codes must lie in [0, {(1 << bits) - 1}] for bits={bits}; "
                         f"got [{int(qweight.min())}, {int(qweight.max())}]")
    if zeros is None:
        zeros = torch.full((m, groups), 0.5 if bits == 1 else float(1 << (bits - 1)), device=qweight.device)
    else:
        check_dtype(op, "zeros", zeros, FLOAT_DTYPES + (torch.float64, torch.int32, torch.int64, torch.int16,
                                                        torch.uint8, torch.int8))
        check_shape(op, "zeros", zeros, (m, groups))
        check_finite(op, "zeros", zeros)
    for name, t in (("scales", scales), ("zeros", zeros)):
        if float(t.abs().amax()) > _FP16_MAX:
            raise ValueError(f"{op}: {name} has values beyond the float16 range (65504)")
    return _assemble(qweight.to(torch.uint8), scales.to(torch.float32)[..., None], zeros.to(torch.float32), m, k,
                     bits, group_size, "asym")


# ---------------------------------------------------------------------------------------------------
# The operator: torch.ops.fastops.lut_gemm (custom op, fake, autograd) and fastops.lut_gemm
# ---------------------------------------------------------------------------------------------------
# CPU dense path: dequantize a block of rows (transposed: _C.lut_dequantize), multiply it with torch's
# dense matmul into the block's output columns, next block. The lookup kernels' cost grows with
# tokens x bits, a dense matmul's with tokens only, so the dense path wins for long token batches.
# Blocks are large (8 MB) because every switch between fastops' thread pool and torch's costs a
# hand-over of the cores (smaller, cache-sized blocks measured slower on 2 cores).
# "dense-fp32" multiplies in float32: the precise mode's (its kernel, FMAs on float32 x, is ahead up to
# ~64 tokens) and the default mode's on CPUs without native bf16. "dense-bf16" (default mode, CPUs with
# AVX512_BF16, where oneDNN's bf16 matmul runs ~3x float32's) rounds W, x and the product to bf16 with
# float32 accumulation: 2-3e-3 relative error on normal data (the int8 tables: 1.6-6e-3), inside the
# default mode's 1e-2 bound.
_DENSE_BLOCK_BYTES = 8 << 20
_PRECISE_DENSE_MIN_TOKENS = 96
# Tokens from which the dense path beats the int8-table kernel, by (kernel, dense path): a rule
# (bits, m, k) -> tokens, None for never. avx2/scalar with fp32: timed at N = 1-512 on 11008 x 4096 and 4096 x 4096,
# 2-core Zen 3 (noise +-30%). avx512-int8 with fp32 is absent: its lookups stay ahead of an fp32 matmul
# per token (Zen 4: 0.27 vs 0.45 ms per token at q = 4, 11008 x 4096). avx2-int8 with bf16 (AVX512_BF16
# without VBMI: Cooper Lake) is unmeasured and uses the fp32 thresholds, which a faster matmul only
# makes safer.
def _avx512_bf16_min_tokens(bits: int, m: int, k: int) -> Optional[int]:
    """A cost model fitted on 2-core Zen 4 (M = 64-11008, K = 256-4096, N = 8-2048; ps per weight): per
    token the int8 kernel costs LOOKUP[bits] per weight plus TABLE per K element (the tables it builds
    per token, shared by all m rows, so small-m layers pay more per weight), the dense path MATMUL per
    weight, plus DEQUANT per weight and CALL (its fixed cost: buffers, pool hand-overs) once per call.
    It errs late on small weights (128 x 256 at q = 4: predicts 184 tokens, measured ~80)."""
    lookup = {1: 3.4, 2: 3.9, 3: 4.8, 4: 5.8}[bits]
    table, matmul, dequant, call = 3300.0, 5.3, 270.0, 150e6
    saving = lookup + table / m - matmul  # per weight and token
    return math.ceil((dequant + call / (m * k)) / saving) if saving > 0 else None


def _by_bits(table: dict) -> Callable[[int, int, int], Optional[int]]:
    """A threshold rule (bits, m, k) -> tokens that depends on the bits only."""
    return lambda bits, m, k: table[bits]


_AVX2_FP32_MIN_TOKENS = _by_bits({1: 1024, 2: 512, 3: 512, 4: 256})
_DENSE_MIN_TOKENS = {
    ("avx2-int8", "dense-fp32"): _AVX2_FP32_MIN_TOKENS,
    ("avx2-int8", "dense-bf16"): _AVX2_FP32_MIN_TOKENS,
    ("scalar-int8", "dense-fp32"): _by_bits({1: 32, 2: 16, 3: 16, 4: 16}),
    ("avx512-int8", "dense-bf16"): _avx512_bf16_min_tokens,
}
_DENSE_DTYPES = {"dense-fp32": torch.float32, "dense-bf16": torch.bfloat16}


@functools.lru_cache(maxsize=None)
def _cpu_has_bf16() -> bool:
    return bool(_C.cpu_features()["avx512_bf16"])


def _default_dense_path() -> str:
    """bf16 where the CPU multiplies bf16 natively (and fastops may use AVX-512), float32 elsewhere."""
    return "dense-bf16" if _cpu_has_bf16() and _C.active_isa() == "avx512" else "dense-fp32"


def _cpu_path(n: int, m: int, k: int, bits: int, precise: bool) -> str:
    if precise:
        return "dense-fp32" if n >= _PRECISE_DENSE_MIN_TOKENS else _C.lut_cpu_kernel_name(True)
    kernel = _C.lut_cpu_kernel_name(False)
    dense = _default_dense_path()
    rule = _DENSE_MIN_TOKENS.get((kernel, dense))
    threshold = rule(bits, m, k) if rule else None
    return dense if threshold is not None and n >= threshold else kernel


def cpu_path(w: LutWeight, n: int, precise: bool = False) -> str:
    """Which CPU path lut_gemm(x, w) takes for n tokens (rows of x): "dense-fp32" / "dense-bf16"
    (dequantized blocks times torch's float32 / bf16 matmul) or the kernel's name ("avx2-int8",
    "avx512-int8", "avx2-dequant-fp32", ...)."""
    op = "cpu_path"
    if not isinstance(w, LutWeight):
        raise TypeError(f"{op}: w must be a LutWeight, got {type(w).__name__}")
    check_int(op, "n", n, 0)
    if not isinstance(precise, bool):
        raise TypeError(f"{op}: precise must be a bool, got {type(precise).__name__}")
    return _cpu_path(n, w.shape[0], w.shape[1], w.bits, precise)


def _dequantized_blocks(planes, scales, zeros, m, k, bits, group_size, scheme, dtype=torch.float32):
    """Yields (r0, w_t) for consecutive row blocks of the CPU weight: w_t[k, rows] = W[r0:r0 + rows].T in
    dtype (float32 or bfloat16), a view of one buffer that the next block overwrites."""
    cols = max(16, _DENSE_BLOCK_BYTES // (dtype.itemsize * max(k, 1)) // 16 * 16)
    block = torch.empty((k, min(cols, _ceil_div(m, 16) * 16)), dtype=dtype)
    nthreads = num_threads()
    for r0 in range(0, m, cols):
        rows = min(cols, m - r0)
        w_t = block[:, :_ceil_div(rows, 16) * 16]  # the kernel writes whole 16-row tiles
        call_c(_C.lut_dequantize, planes, scales, zeros, w_t, m, k, bits, group_size, scheme, r0, nthreads)
        yield r0, w_t[:, :rows]


def _lut_gemm_dense_cpu(path, x2, planes, scales, zeros, bias, y, m, k, bits, group_size, scheme):
    dtype = _DENSE_DTYPES[path]
    xc = x2.to(dtype)
    direct = y.dtype == dtype  # else the product goes to a buffer, then y (torch's CPU mm has no out_dtype)
    out = y if direct else torch.empty(y.shape, dtype=dtype)
    # The bias joins the matmul unless that would round it to bf16 for a more precise y.
    bias_in_mm = bias is not None and (direct or dtype == torch.float32)
    for r0, w_t in _dequantized_blocks(planes, scales, zeros, m, k, bits, group_size, scheme, dtype):
        cols = slice(r0, r0 + w_t.shape[1])
        if bias_in_mm:
            torch.addmm(bias[cols].to(dtype), xc, w_t, out=out[:, cols])
        else:
            torch.mm(xc, w_t, out=out[:, cols])
    if not direct:
        y.copy_(out)
    if bias is not None and not bias_in_mm:
        y.add_(bias)


@custom_op("fastops::lut_gemm")
def _lut_gemm_op(x: torch.Tensor, planes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 bias: Optional[torch.Tensor], m: int, k: int, bits: int, group_size: int, scheme: int,
                 precise: bool) -> torch.Tensor:
    x2 = x.detach().reshape(-1, k)  # a view unless the leading dims cannot be flattened
    y = torch.empty((x2.shape[0], m), dtype=x.dtype, device=x.device)
    bias = None if bias is None else bias.detach()
    if x.device.type == "cuda":
        with torch.cuda.device(x.device):
            nbytes = _C.lut_cuda_workspace_bytes(x2.shape[0], m, k, bits, group_size, scheme, DTYPE_CODE[x.dtype])
            workspace = torch.empty(nbytes, dtype=torch.uint8, device=x.device) if nbytes else None
            call_c(_C.lut_gemm, x2, planes, scales, zeros, bias, y, m, k, bits, group_size, scheme, precise,
                   stream=cuda_stream(x.device), workspace=workspace)
    elif (path := _cpu_path(x2.shape[0], m, k, bits, precise)).startswith("dense"):
        _lut_gemm_dense_cpu(path, x2, planes, scales, zeros, bias, y, m, k, bits, group_size, scheme)
    else:
        call_c(_C.lut_gemm, x2, planes, scales, zeros, bias, y, m, k, bits, group_size, scheme, precise,
               nthreads=num_threads())
    return y.view(*x.shape[:-1], m)


@_lut_gemm_op.register_fake
def _(x, planes, scales, zeros, bias, m, k, bits, group_size, scheme, precise):
    torch._check(x.shape[-1] == k)
    return x.new_empty((*x.shape[:-1], m))


def _lut_gemm_setup(ctx, inputs, output):
    x, planes, scales, zeros, bias, m, k, bits, group_size, scheme, _precise = inputs
    ctx.save_for_backward(planes, scales, zeros)
    ctx.meta = (m, k, bits, group_size, scheme)
    ctx.bias_needs_grad = bias is not None and bias.requires_grad


@custom_op("fastops::lut_gemm_grad_x")
def _lut_gemm_grad_x_op(grad: torch.Tensor, planes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                        m: int, k: int, bits: int, group_size: int, scheme: int) -> torch.Tensor:
    """dx = dy @ W for frozen weights, W dequantized on the fly (block by block on the CPU)."""
    g = grad.reshape(-1, m).to(torch.float32)
    if grad.device.type == "cpu":
        grad_x = torch.zeros((g.shape[0], k), dtype=torch.float32)
        for r0, w_t in _dequantized_blocks(planes, scales, zeros, m, k, bits, group_size, scheme):
            grad_x.addmm_(g[:, r0:r0 + w_t.shape[1]], w_t.t())
    else:
        grad_x = g @ _dequantize(planes, scales, zeros, m, k, bits, group_size, scheme, torch.float32)
    return grad_x.to(grad.dtype).view(*grad.shape[:-1], k)


@_lut_gemm_grad_x_op.register_fake
def _(grad, planes, scales, zeros, m, k, bits, group_size, scheme):
    return grad.new_empty((*grad.shape[:-1], k))


def _lut_gemm_backward(ctx, grad):
    planes, scales, zeros = ctx.saved_tensors
    m, k, bits, group_size, scheme = ctx.meta
    grad_x = _lut_gemm_grad_x_op(grad, planes, scales, zeros, m, k, bits, group_size, scheme)
    grad_bias = grad.reshape(-1, m).sum(dim=0) if ctx.bias_needs_grad else None
    return grad_x, None, None, None, grad_bias, None, None, None, None, None, None


_lut_gemm_op.register_autograd(_lut_gemm_backward, setup_context=_lut_gemm_setup)


def lut_gemm(x: torch.Tensor, w: LutWeight, bias: Optional[torch.Tensor] = None, *,
             precise: bool = False) -> torch.Tensor:
    """y = x @ w.dequantize().T (+ bias) for x[..., K] in float32/float16/bfloat16 on CPU or CUDA.

    Accumulates in float32 and returns x's dtype. On the CPU the default looks up int8-quantized tables
    (relative error <= 1e-2 on normal data) up to a number of tokens that depends on the kernel, bits and
    shape, from which the dense path (dequantized row blocks times torch's matmul: bf16 on CPUs with
    AVX512_BF16, float32 elsewhere) is faster; `precise=True` matches
    the dequantized reference to float32 round-off (dequantized tiles times float32 x; dense path from
    96 tokens).
    `fastops.lut.cpu_path(w, n, precise)` says which path n tokens take. Differentiable with respect
    to x (and bias).
    """
    op = "lut_gemm"
    if not isinstance(w, LutWeight):
        raise TypeError(f"{op}: w must be a fastops.lut.LutWeight (see fastops.lut.quantize), got {type(w).__name__}")
    check_dtype(op, "x", x, FLOAT_DTYPES)
    m, k = w.shape
    if x.dim() == 0 or x.shape[-1] != k:
        raise ValueError(f"{op}: x must have shape [..., {k}] (w is [{m}, {k}]); got {list(x.shape)}")
    if bias is not None:
        check_dtype(op, "bias", bias, FLOAT_DTYPES)
        check_shape(op, "bias", bias, (m,))
        if bias.dtype != x.dtype:
            raise TypeError(f"{op}: bias must have the dtype of x ({str(x.dtype).replace('torch.', '')}); "
                            f"got {str(bias.dtype).replace('torch.', '')}")
    check_same_device(op, "x", x, w=w.planes, bias=bias)
    check_device_usable(op, x)
    if not isinstance(precise, bool):
        raise TypeError(f"{op}: precise must be a bool, got {type(precise).__name__}")
    if bias is not None and not bias.is_contiguous():
        raise ValueError(f"{op}: bias must be contiguous")
    return _lut_gemm_op(x, w.planes, w.scales, w.zeros, bias, m, k, w.bits, w.group_size,
                        _KERNEL_SCHEME[w.scheme], precise)


# ---------------------------------------------------------------------------------------------------
# Whole-model conversion
# ---------------------------------------------------------------------------------------------------
def quantize_model(model: torch.nn.Module, bits: int, group_size: Optional[int] = 128, scheme: str = "asym", *,
                   method: str = "rtn", calibration: Optional[Iterable] = None, skip: SkipSpec = ("lm_head",),
                   precise: bool = False, progress: Optional[bool] = None, bcq_iters: int = 10,
                   act_order: bool = True, damp: float = 0.01, asymmetric: bool = True) -> torch.nn.Module:
    """Replace every nn.Linear of `model` (in place) by fastops.nn.LutLinear and return the model.

    method: "rtn" (round to nearest), "hqq" (data-free zero-point optimization; scheme "asym"), or the
    calibration-aware "gptq" and "awq", which need `calibration`: an iterable of model inputs (each a
    tensor, a tuple of positional arguments or a dict of keyword arguments), on the model's device. Those
    run the layers in execution order, each stage's inputs captured by forward hooks with the earlier layers
    already quantized; memory holds one [K, K] input statistic at a time, never the activations. On an
    error the model is left as it was.
    act_order, damp: gptq's options (see gptq_quantize).
    asymmetric (gptq, awq): fit each layer to the float model's output of that layer, W x_float, rather than
    to W x on the partly quantized model's own inputs x, so each layer also corrects what the earlier ones
    got wrong (asymmetric calibration, as in GPTAQ). Costs a float copy of the model while it runs, a second
    forward per stage and one more [K, K] statistic.
    skip: module-name glob patterns (default: "lm_head") or a predicate (name, module) -> bool.
    progress: show a tqdm bar (default: when there are 16 or more layers).
    """
    from . import _lut_calibrate
    from .nn import LutLinear

    op = "lut.quantize_model"
    if method not in _lut_calibrate.METHODS:
        raise ValueError(f"{op}: method must be one of {_lut_calibrate.METHODS}, got {method!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"{op}: scheme must be one of {SCHEMES}, got {scheme!r}")
    if method in _lut_calibrate.CALIBRATED_METHODS and calibration is None:
        raise ValueError(f"{op}: method {method!r} needs calibration data: an iterable of model inputs")
    if method not in _lut_calibrate.CALIBRATED_METHODS and calibration is not None:
        raise ValueError(f"{op}: method {method!r} uses no calibration data; pass calibration=None "
                         "(or use method 'gptq' or 'awq')")
    if method == "hqq" and scheme != "asym":
        raise ValueError(f"{op}: method 'hqq' optimizes asymmetric zero points and needs scheme 'asym', "
                         f"got {scheme!r}")
    desc = f"fastops: quantizing to {bits}-bit {scheme} ({method})"
    if method == "rtn":
        return replace_linears(model, lambda linear: LutLinear.from_linear(
            linear, bits=bits, group_size=group_size, scheme=scheme, precise=precise, bcq_iters=bcq_iters),
            skip, progress, desc)
    if method == "hqq":
        return replace_linears(model, lambda linear: LutLinear(
            _lut_calibrate.hqq_quantize(linear.weight.detach(), bits, group_size), linear.bias, precise=precise),
            skip, progress, desc)
    return _lut_calibrate.quantize_model_calibrated(
        model, linear_targets(model, skip), bits, group_size, scheme, method, calibration, precise=precise,
        progress=progress, bcq_iters=bcq_iters, act_order=act_order, damp=damp, asymmetric=asymmetric, op=op)


from ._lut_calibrate import CALIBRATED_METHODS, METHODS, gptq_quantize, hqq_quantize  # noqa: E402  (they build on the above)
