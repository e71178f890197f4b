"""Arbitrary-precision (1..8 bit) integer GEMM by bit-slicing onto 1-bit AND-popcount products.

    w = fastops.bitgemm.pack(w_int, bits=2, fmt="signed")          # once, for weights [N, K]
    a, a_scale = fastops.bitgemm.quantize_pack(x, bits=4)           # per call, for activations [M, K]
    c = fastops.bitgemm.gemm(a, w)                                  # exact int32 [M, N] = A_int @ W_int^T
    y = fastops.bitgemm.gemm_scaled(a, w, a_scale, w_scale, bias)   # scaled, fp16/bf16/fp32 out

An operand is a `BitPacked`: `bits` bit planes of an integer matrix plus a per-row offset and row sum,
laid out as described once, in csrc/bitgemm/bitgemm_format.h. Formats:
  "unsigned"  values 0 .. 2^bits - 1, optionally minus a per-row zero point in [0, 2^bits - 1]
  "signed"    two's complement, -2^(bits-1) .. 2^(bits-1) - 1
  "bipolar"   odd values +-1, +-3, .., +-(2^bits - 1) (the bipolar-INT format; no zero, symmetric)
Any pair of formats and bit widths multiplies exactly; shapes whose product could overflow int32
(K * (2^bits_a - 1) * (2^bits_w - 1) > 2^31 - 1) are rejected.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from . import _C
from ._core import (DTYPE_CODE, FLOAT_DTYPES, call_c, check_device_usable, check_dtype, check_int, check_same_device,
                    check_tensor, cuda_stream, custom_op, num_threads)

__all__ = ["BitPacked", "pack", "quantize_pack", "gemm", "gemm_scaled", "cpu_kernel_name", "FORMATS", "METHODS"]

# Mirrors of csrc/bitgemm/bitgemm_format.h and bitgemm.h.
PAD_BITS = 256
WORD_BITS = 32
GROUP_MULTIPLE = 128
MAX_BITS = 8
INT32_MAX = 2 ** 31 - 1

FORMATS = ("unsigned", "signed", "bipolar")
_FMT_CODE = {name: i for i, name in enumerate(FORMATS)}  # bitgemm::Format
METHODS = ("auto", "popcount", "int8")
_OUT_DTYPES = FLOAT_DTYPES
_DTYPE_FROM_CODE = {code: dt for dt, code in DTYPE_CODE.items()}
_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def words_per_row(k: int) -> int:
    return -(-k // PAD_BITS) * PAD_BITS // WORD_BITS


def value_range(bits: int, fmt: str) -> tuple[int, int]:
    """Smallest and largest integer a `bits`-bit value of `fmt` holds."""
    if fmt == "unsigned":
        return 0, (1 << bits) - 1
    if fmt == "signed":
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return -((1 << bits) - 1), (1 << bits) - 1


def _format_offset(bits: int, fmt: str) -> int:
    return -((1 << bits) - 1) if fmt == "bipolar" else 0


def _plane_coeff(bits: int, fmt: str, i: int) -> int:
    if fmt == "bipolar":
        return 2 << i
    if fmt == "signed" and i == bits - 1:
        return -(1 << i)
    return 1 << i


def _to_int32_wrapping(v: torch.Tensor) -> torch.Tensor:
    """int64 -> int32 modulo 2^32 (the kernels' arithmetic), without relying on cast behaviour."""
    v = torch.remainder(v, 2 ** 32)
    return torch.where(v >= 2 ** 31, v - 2 ** 32, v).to(torch.int32)


def _check_bits(op: str, name: str, bits) -> int:
    return check_int(op, name, bits, 1, MAX_BITS)


def _check_fmt(op: str, name: str, fmt) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"{op}: {name} must be one of {FORMATS}, got {fmt!r}")
    return fmt


def _check_matrix_bits_fmt(op: str, name: str, t, dtypes, bits, fmt) -> tuple[int, str]:
    """A 2-D [rows, K] tensor of one of dtypes, and valid bits / fmt for it."""
    check_dtype(op, name, t, dtypes)
    if t.dim() != 2:
        raise ValueError(f"{op}: {name} must be 2-D [rows, K]; got shape {list(t.shape)}")
    return _check_bits(op, "bits", bits), _check_fmt(op, "fmt", fmt)


def check_fits_int32(op: str, k: int, bits_a: int, bits_w: int) -> None:
    bound = k * ((1 << bits_a) - 1) * ((1 << bits_w) - 1)
    if bound > INT32_MAX:
        kmax = INT32_MAX // (((1 << bits_a) - 1) * ((1 << bits_w) - 1))
        raise ValueError(f"{op}: K={k} with bits_a={bits_a}, bits_w={bits_w} can overflow int32 "
                         f"(K * (2^bits_a - 1) * (2^bits_w - 1) = {bound} > 2^31 - 1); the largest K is {kmax}. "
                         f"Split K and add the partial products in int64.")


# ---------------------------------------------------------------------------------------------------
# The packed operand
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BitPacked:
    """`bits` bit planes of an integer matrix X[rows, k] (csrc/bitgemm/bitgemm_format.h).

    planes  int32 [bits, rows, words_per_row(k)]  (uint32 bit patterns; K padded to 256 with zero bits)
    offset  int32 [rows]  X = sum_i coeff_i * bit_i + offset  (bipolar: -(2^bits - 1); unsigned: -zero_point)
    rowsum  int32 [rows]  sum over the k columns of X - offset (the epilogue's rank-1 correction term)
    """
    planes: torch.Tensor
    offset: torch.Tensor
    rowsum: torch.Tensor
    bits: int
    fmt: str
    k: int

    def __post_init__(self):
        op = "BitPacked"
        _check_bits(op, "bits", self.bits)
        _check_fmt(op, "fmt", self.fmt)
        check_int(op, "k", self.k, 0)
        for name in ("planes", "offset", "rowsum"):
            t = check_tensor(op, name, getattr(self, name))
            check_dtype(op, name, t, (torch.int32,))
            if not t.is_contiguous():
                raise ValueError(f"{op}: {name} must be contiguous")
        if self.planes.dim() != 3 or self.planes.shape[0] != self.bits or \
                self.planes.shape[2] != words_per_row(self.k):
            raise ValueError(f"{op}: planes must have shape [{self.bits}, rows, {words_per_row(self.k)}] for "
                             f"bits={self.bits}, k={self.k}; got {list(self.planes.shape)}")
        rows = self.planes.shape[1]
        for name in ("offset", "rowsum"):
            if tuple(getattr(self, name).shape) != (rows,):
                raise ValueError(f"{op}: {name} must have shape [{rows}]; got {list(getattr(self, name).shape)}")
        check_same_device(op, "planes", self.planes, offset=self.offset, rowsum=self.rowsum)

    @property
    def rows(self) -> int:
        return self.planes.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.k)

    @property
    def device(self) -> torch.device:
        return self.planes.device

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.planes, self.offset, self.rowsum))

    @property
    def zero_point(self) -> Optional[torch.Tensor]:
        """Per-row zero points of an unsigned operand (None for the other formats)."""
        return -self.offset if self.fmt == "unsigned" else None

    def to(self, device) -> "BitPacked":
        return BitPacked(self.planes.to(device), self.offset.to(device), self.rowsum.to(device), self.bits,
                         self.fmt, self.k)

    def _bits(self) -> torch.Tensor:
        """Every bit of every plane, int64 [bits, rows, padded k] (bit t of word w is column 32 w + t)."""
        shifts = torch.arange(WORD_BITS, device=self.device, dtype=torch.int64)
        words = self.planes.to(torch.int64) & 0xFFFFFFFF
        return ((words[..., None] >> shifts) & 1).flatten(2)

    def _codes(self) -> torch.Tensor:
        """The unsigned code u[rows, k] = sum_i 2^i bit_i, int64."""
        bits = self._bits()
        codes = torch.zeros_like(bits[0])
        for i in range(self.bits):
            codes |= bits[i] << i
        return codes[:, : self.k]

    def unpack(self) -> torch.Tensor:
        """The integers given to `pack` (unsigned: the codes, before subtracting zero points), int32 [rows, k]."""
        u = self._codes()
        if self.fmt == "signed":
            u = torch.where(u >= (1 << (self.bits - 1)), u - (1 << self.bits), u)
        elif self.fmt == "bipolar":
            u = 2 * u - ((1 << self.bits) - 1)
        return u.to(torch.int32)

    def values(self) -> torch.Tensor:
        """The integers the GEMM multiplies (unpack() minus zero points), int64 [rows, k]."""
        v = self.unpack().to(torch.int64)
        return v + self.offset.to(torch.int64)[:, None] if self.fmt == "unsigned" else v

    def plane_popcounts(self) -> torch.Tensor:
        """popcount of each plane row, int32 [bits, rows] (the row sums combine these with the coefficients)."""
        return self._bits().sum(dim=2).to(torch.int32)

    def state_dict(self) -> dict:
        meta = torch.tensor([self.bits, _FMT_CODE[self.fmt], self.k], dtype=torch.int64)
        return {"planes": self.planes, "offset": self.offset, "rowsum": self.rowsum, "meta": meta}

    @classmethod
    def from_state_dict(cls, state: dict) -> "BitPacked":
        bits, fmt, k = (int(v) for v in state["meta"].tolist())
        if not 0 <= fmt < len(FORMATS):
            raise ValueError(f"BitPacked.from_state_dict: unknown format code {fmt}")
        return cls(state["planes"], state["offset"], state["rowsum"], bits, FORMATS[fmt], k)

    def save(self, path: str | os.PathLike) -> None:
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location=None) -> "BitPacked":
        return cls.from_state_dict(torch.load(path, map_location=map_location, weights_only=True))


_PACK_ROWS_PER_STEP = 1024  # bounds pack's int64 temporaries to ~1024 * K * 8 bytes


def pack(x_int: torch.Tensor, bits: int, fmt: str = "signed", zero_point=None) -> BitPacked:
    """Pack an integer matrix x_int[R, K] (K-major rows) into `bits` bit planes of format `fmt`.

    Values must lie in the format's range (`value_range(bits, fmt)`; bipolar values must be odd).
    zero_point (unsigned only): an int or an integer tensor [R] in [0, 2^bits - 1]; the GEMM then
    multiplies x_int - zero_point. Runs on x_int's device; `unpack()` returns x_int exactly.
    """
    op = "bitgemm.pack"
    bits, fmt = _check_matrix_bits_fmt(op, "x_int", x_int, _INT_DTYPES, bits, fmt)
    rows, k = x_int.shape
    lo, hi = value_range(bits, fmt)
    x = x_int.to(torch.int64)
    if x.numel():
        xmin, xmax = int(x.min()), int(x.max())
        if xmin < lo or xmax > hi:
            raise ValueError(f"{op}: x_int values must lie in [{lo}, {hi}] for bits={bits}, fmt={fmt!r}; "
                             f"got [{xmin}, {xmax}]")
        if fmt == "bipolar" and bool(((x & 1) == 0).any()):
            raise ValueError(f"{op}: bipolar values must be odd (+-1, +-3, ...); x_int has even values")
    offset = torch.full((rows,), _format_offset(bits, fmt), dtype=torch.int64, device=x.device)
    if zero_point is not None:
        if fmt != "unsigned":
            raise ValueError(f"{op}: zero_point is only supported with fmt='unsigned', got fmt={fmt!r}")
        if isinstance(zero_point, int) and not isinstance(zero_point, bool):
            zp = torch.full((rows,), zero_point, dtype=torch.int64, device=x.device)
        else:
            check_dtype(op, "zero_point", zero_point, _INT_DTYPES)
            if tuple(zero_point.shape) != (rows,):
                raise ValueError(f"{op}: zero_point must be an int or have shape [{rows}]; "
                                 f"got {list(zero_point.shape)}")
            check_same_device(op, "x_int", x_int, zero_point=zero_point)
            zp = zero_point.to(torch.int64)
        if zp.numel() and (int(zp.min()) < 0 or int(zp.max()) > hi):
            raise ValueError(f"{op}: zero_point must lie in [0, {hi}] for bits={bits}")
        offset = offset - zp
    if fmt == "signed":
        codes = x & ((1 << bits) - 1)
    elif fmt == "bipolar":
        codes = (x + (1 << bits) - 1) >> 1
    else:
        codes = x
    words = words_per_row(k)
    planes = torch.empty(bits, rows, words, dtype=torch.int32, device=x.device)
    weights = torch.ones(WORD_BITS, dtype=torch.int64, device=x.device) << torch.arange(WORD_BITS, device=x.device)
    for r0 in range(0, rows, _PACK_ROWS_PER_STEP):
        r1 = min(rows, r0 + _PACK_ROWS_PER_STEP)
        padded = torch.zeros(r1 - r0, words * WORD_BITS, dtype=torch.int64, device=x.device)
        padded[:, :k] = codes[r0:r1]
        for i in range(bits):
            bit = ((padded >> i) & 1).view(r1 - r0, words, WORD_BITS)
            planes[i, r0:r1] = _to_int32_wrapping((bit * weights).sum(dim=-1))
    # sum of X - offset = sum_i coeff_i * bit_i: the input values relative to the format's own offset
    rowsum = _to_int32_wrapping((x - _format_offset(bits, fmt)).sum(dim=1, dtype=torch.int64))
    return BitPacked(planes, _to_int32_wrapping(offset), rowsum, bits, fmt, k)


# ---------------------------------------------------------------------------------------------------
# quantize_pack: torch.ops.fastops.bitgemm_quantize_pack
# ---------------------------------------------------------------------------------------------------
@custom_op("fastops::bitgemm_quantize_pack")
def _quantize_pack_op(x: torch.Tensor, bits: int, fmt: int, per_tensor: bool) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, k = x.shape
    planes = torch.empty(bits, rows, words_per_row(k), dtype=torch.int32, device=x.device)
    offset = torch.empty(rows, dtype=torch.int32, device=x.device)
    rowsum = torch.empty(rows, dtype=torch.int32, device=x.device)
    scales = torch.empty(1 if per_tensor else rows, dtype=torch.float32, device=x.device)
    if x.device.type == "cuda":
        with torch.cuda.device(x.device):
            nbytes = _C.bitgemm_quantize_pack_cuda_workspace_bytes(rows, k, bits, fmt, per_tensor)
            workspace = torch.empty(nbytes, dtype=torch.uint8, device=x.device) if nbytes else None
            call_c(_C.bitgemm_quantize_pack, x, bits, fmt, per_tensor, planes, offset, rowsum, scales,
                   stream=cuda_stream(x.device), workspace=workspace)
    else:
        call_c(_C.bitgemm_quantize_pack, x, bits, fmt, per_tensor, planes, offset, rowsum, scales,
               nthreads=num_threads())
    return planes, offset, rowsum, scales


@_quantize_pack_op.register_fake
def _(x, bits, fmt, per_tensor):
    rows, k = x.shape
    return (x.new_empty((bits, rows, words_per_row(k)), dtype=torch.int32), x.new_empty((rows,), dtype=torch.int32),
            x.new_empty((rows,), dtype=torch.int32), x.new_empty((1 if per_tensor else rows,), dtype=torch.float32))


def quantize_pack(x: torch.Tensor, bits: int, fmt: str = "signed", group: str = "per_row") -> tuple[
        BitPacked, torch.Tensor]:
    """Quantize float x[R, K] to `bits`-bit integers of `fmt` and pack them, in one pass.

    Returns (BitPacked, scales fp32 [R] for group="per_row" or [1] for "per_tensor") with x ~ scale * X.
    Rules (inv = 1 / scale in fp32; a zero row gets scale 1):
      signed    scale = absmax / (2^(bits-1) - 1), X = clamp(round(x * inv)); bits=1: scale = absmax, X in {-1, 0}
      bipolar   scale = absmax / (2^bits - 1), X = the odd integer nearest x * inv, clamped to +-(2^bits - 1)
      unsigned  asymmetric over [min(x, 0), max(x, 0)] with a per-row (per-tensor) zero point
    Rounding is half to even, identical on CPU and CUDA.
    """
    op = "bitgemm.quantize_pack"
    bits, fmt = _check_matrix_bits_fmt(op, "x", x, FLOAT_DTYPES, bits, fmt)
    if group not in ("per_row", "per_tensor"):
        raise ValueError(f"{op}: group must be 'per_row' or 'per_tensor', got {group!r}")
    check_device_usable(op, x)
    if x.shape[1] > 1 and x.stride(1) != 1:
        raise ValueError(f"{op}: x must have unit stride along K (call .contiguous())")
    planes, offset, rowsum, scales = _quantize_pack_op(x, bits, _FMT_CODE[fmt], group == "per_tensor")
    return BitPacked(planes, offset, rowsum, bits, fmt, x.shape[1]), scales


# ---------------------------------------------------------------------------------------------------
# gemm and gemm_scaled: torch.ops.fastops.bitgemm_gemm / bitgemm_gemm_scaled
# ---------------------------------------------------------------------------------------------------
def _run_gemm(a_planes, a_offset, a_rowsum, a_bits, a_fmt, w_planes, w_offset, w_rowsum, w_bits, w_fmt, k, out,
              method, a_scale=None, w_scale=None, bias=None, group_size=0):
    args = (a_planes, a_offset, a_rowsum, a_bits, a_fmt, w_planes, w_offset, w_rowsum, w_bits, w_fmt, k, out)
    kwargs = dict(a_scale=a_scale, w_scale=w_scale, bias=bias, group_size=group_size, method=method)
    device = a_planes.device
    if device.type == "cuda":
        with torch.cuda.device(device):
            nbytes = _C.bitgemm_cuda_workspace_bytes(out.shape[0], out.shape[1], k, a_bits, w_bits,
                                                     a_scale is not None, group_size)
            workspace = torch.empty(nbytes, dtype=torch.uint8, device=device) if nbytes else None
            call_c(_C.bitgemm_gemm, *args, **kwargs, stream=cuda_stream(device), workspace=workspace)
    else:
        call_c(_C.bitgemm_gemm, *args, **kwargs, nthreads=num_threads())
    return out


@custom_op("fastops::bitgemm_gemm")
def _gemm_op(a_planes: torch.Tensor, a_offset: torch.Tensor, a_rowsum: torch.Tensor, a_bits: int, a_fmt: int,
             w_planes: torch.Tensor, w_offset: torch.Tensor, w_rowsum: torch.Tensor, w_bits: int, w_fmt: int,
             k: int, method: str) -> torch.Tensor:
    out = torch.empty(a_planes.shape[1], w_planes.shape[1], dtype=torch.int32, device=a_planes.device)
    return _run_gemm(a_planes, a_offset, a_rowsum, a_bits, a_fmt, w_planes, w_offset, w_rowsum, w_bits, w_fmt, k,
                     out, method)


@_gemm_op.register_fake
def _(a_planes, a_offset, a_rowsum, a_bits, a_fmt, w_planes, w_offset, w_rowsum, w_bits, w_fmt, k, method):
    return a_planes.new_empty((a_planes.shape[1], w_planes.shape[1]), dtype=torch.int32)


@custom_op("fastops::bitgemm_gemm_scaled")
def _gemm_scaled_op(a_planes: torch.Tensor, a_offset: torch.Tensor, a_rowsum: torch.Tensor, a_bits: int, a_fmt: int,
                    w_planes: torch.Tensor, w_offset: torch.Tensor, w_rowsum: torch.Tensor, w_bits: int, w_fmt: int,
                    k: int, a_scale: torch.Tensor, w_scale: torch.Tensor, bias: Optional[torch.Tensor],
                    group_size: int, out_dtype: int, method: str) -> torch.Tensor:
    out = torch.empty(a_planes.shape[1], w_planes.shape[1], dtype=_DTYPE_FROM_CODE[out_dtype],
                      device=a_planes.device)
    return _run_gemm(a_planes, a_offset, a_rowsum, a_bits, a_fmt, w_planes, w_offset, w_rowsum, w_bits, w_fmt, k,
                     out, method, a_scale, w_scale, bias, group_size)


@_gemm_scaled_op.register_fake
def _(a_planes, a_offset, a_rowsum, a_bits, a_fmt, w_planes, w_offset, w_rowsum, w_bits, w_fmt, k, a_scale,
      w_scale, bias, group_size, out_dtype, method):
    return a_planes.new_empty((a_planes.shape[1], w_planes.shape[1]), dtype=_DTYPE_FROM_CODE[out_dtype])


def _check_pair(op: str, a, w, method) -> None:
    for name, t in (("a", a), ("w", w)):
        if not isinstance(t, BitPacked):
            raise TypeError(f"{op}: {name} must be a fastops.bitgemm.BitPacked (see pack / quantize_pack), "
                            f"got {type(t).__name__}")
    if a.k != w.k:
        raise ValueError(f"{op}: a and w must have the same K; got a [{a.rows}, {a.k}] and w [{w.rows}, {w.k}]")
    if a.device != w.device:
        raise ValueError(f"{op}: w is on {w.device} but a is on {a.device}; move them to the same device")
    check_device_usable(op, a.planes)
    if method not in METHODS:
        raise ValueError(f"{op}: method must be one of {METHODS}, got {method!r}")
    check_fits_int32(op, a.k, a.bits, w.bits)


def _operands(a: BitPacked, w: BitPacked) -> tuple:
    return (a.planes, a.offset, a.rowsum, a.bits, _FMT_CODE[a.fmt], w.planes, w.offset, w.rowsum, w.bits,
            _FMT_CODE[w.fmt], a.k)


def gemm(a: BitPacked, w: BitPacked, *, method: str = "auto") -> torch.Tensor:
    """Exact int32 [M, N] = a.values() @ w.values().T for any formats and bit widths 1..8.

    method (CPU only; CUDA ignores it): "auto", "popcount" (AND + popcount over bit planes) or "int8"
    (unpacked integer dot products); every method is exact.
    """
    _check_pair("bitgemm.gemm", a, w, method)
    return _gemm_op(*_operands(a, w), method)


def cpu_kernel_name(m: int, bits_a: int, bits_w: int, method: str = "auto") -> str:
    """The CPU kernel gemm runs for an [m, K] activation of bits_a bits against bits_w-bit weights, as
    "<isa>-<path>" (e.g. "avx512-popcount", "avx2-int8"); "auto" picks by bit pair and m."""
    op = "bitgemm.cpu_kernel_name"
    check_int(op, "m", m, 0)
    bits_a, bits_w = _check_bits(op, "bits_a", bits_a), _check_bits(op, "bits_w", bits_w)
    if method not in METHODS:
        raise ValueError(f"{op}: method must be one of {METHODS}, got {method!r}")
    return _C.bitgemm_cpu_kernel_name(m, bits_a, bits_w, method)


def _scale_2d(op: str, name: str, s, rows: int, rows_name: str, groups: Optional[int]) -> torch.Tensor:
    """Scales as [rows or 1, groups or 1] fp32 (size-1 dimensions broadcast in the kernel)."""
    check_dtype(op, name, s, (torch.float32,))
    if s.dim() == 0 or (s.dim() == 1 and s.shape[0] == 1):
        return s.reshape(1, 1)
    if s.dim() == 1 and s.shape[0] == rows:
        return s.reshape(rows, 1)
    if s.dim() == 2 and s.shape[0] == rows and s.shape[1] in (1, groups):
        return s
    want = f"[], [1], [{rows_name}={rows}]" + (f" or [{rows}, {groups}] (per group)" if groups else "")
    raise ValueError(f"{op}: {name} must have shape {want}; got {list(s.shape)}")


def gemm_scaled(a: BitPacked, w: BitPacked, a_scale: torch.Tensor, w_scale: torch.Tensor,
                bias: Optional[torch.Tensor] = None, *, out_dtype: Optional[torch.dtype] = None,
                group_size: Optional[int] = None, method: str = "auto") -> torch.Tensor:
    """y[M, N] = sum over K groups g of a_scale[m, g] * w_scale[n, g] * (A_g @ W_g^T)[m, n] (+ bias[n]).

    a_scale: fp32 [] / [1] (per tensor), [M] (per row) or [M, G] (per group of K); w_scale likewise with N.
    group_size (a multiple of 128) is required for per-group scales, G = ceil(K / group_size).
    Integer products are exact; scaling accumulates in fp32 and is written once in out_dtype
    (float32, float16 or bfloat16; default: bias's dtype, else float32).
    """
    op = "bitgemm.gemm_scaled"
    _check_pair(op, a, w, method)
    groups = None
    if group_size is not None:
        check_int(op, "group_size", group_size, 1)
        if group_size % GROUP_MULTIPLE:
            raise ValueError(f"{op}: group_size must be a multiple of {GROUP_MULTIPLE}, got {group_size}")
        groups = max(1, -(-a.k // group_size))
    check_tensor(op, "a_scale", a_scale)
    check_tensor(op, "w_scale", w_scale)
    a2 = _scale_2d(op, "a_scale", a_scale, a.rows, "M", groups)
    w2 = _scale_2d(op, "w_scale", w_scale, w.rows, "N", groups)
    if out_dtype is None:
        out_dtype = bias.dtype if bias is not None else torch.float32
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"{op}: out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    if bias is not None:
        check_dtype(op, "bias", bias, FLOAT_DTYPES)
        if tuple(bias.shape) != (w.rows,):
            raise ValueError(f"{op}: bias must have shape [{w.rows}]; got {list(bias.shape)}")
        if bias.dtype != out_dtype:
            raise TypeError(f"{op}: bias must have dtype out_dtype ({str(out_dtype).replace('torch.', '')}); "
                            f"got {str(bias.dtype).replace('torch.', '')}")
        if not bias.is_contiguous():
            raise ValueError(f"{op}: bias must be contiguous")
    check_same_device(op, "a", a.planes, a_scale=a_scale, w_scale=w_scale, bias=bias)
    return _gemm_scaled_op(*_operands(a, w), a2, w2, bias, group_size or 0, DTYPE_CODE[out_dtype], method)
