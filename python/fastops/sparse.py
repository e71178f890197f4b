"""Unstructured-sparse weight x dense activation (SpMM): `fastops.spmm(x, w)` with `w = fastops.sparse.pack(W)`.

A pruned weight W[M, K] (nn.Linear layout, fp16 / bf16 / fp32) travels in the "strip bitmap" format of
csrc/sparse/sparse_format.h: strips of 16 rows, one uint32 mask per 16 x 2 unit, the nonzero values in
mask order, and offsets per strip and per 64-column chunk. Bytes: 2 per nonzero (4 for fp32) + 1 bit per
element + 4 bytes per 1024 elements, with no cap on the nonzeros of any tile. The kernels load it as
sparse and compute as dense: units are expanded in registers (VPEXPANDW on AVX-512, shuffle tables on
AVX2, bit ranks on CUDA) and multiplied with fp32 accumulation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from . import _C
from ._core import (DTYPE_CODE, FLOAT_DTYPES, SkipSpec, call_c, check_device_usable, check_dtype, check_same_device,
                    check_shape, check_tensor, cuda_stream, custom_op, num_threads, replace_linears)

__all__ = ["SparseWeight", "pack", "spmm", "from_sparse_bitmask", "to_sparse_bitmask", "magnitude_prune",
           "sparsify_model", "SparsityWarning"]

# Mirrors of csrc/sparse/sparse_format.h.
STRIP_ROWS = 16
UNIT_COLS = 2
CHUNK_COLS = 64
VALUE_PAD = 32
MAX_COLS = (1 << 31) // STRIP_ROWS - CHUNK_COLS


class SparsityWarning(UserWarning):
    """The weight is too dense for the sparse format to save bytes over the dense weight."""


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _geometry(m: int, k: int):
    """(strips, units per strip, chunks per strip) of a [m, k] weight."""
    kp = _ceil_div(k, CHUNK_COLS) * CHUNK_COLS
    return _ceil_div(m, STRIP_ROWS), kp // UNIT_COLS, kp // CHUNK_COLS


def _unit_popcounts(masks: torch.Tensor) -> torch.Tensor:
    """Number of set bits of every int32 mask (int64, same shape), SWAR in int64."""
    v = masks.to(torch.int64) & 0xFFFFFFFF
    v = v - ((v >> 1) & 0x55555555)
    v = (v & 0x33333333) + ((v >> 2) & 0x33333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F
    return ((v * 0x01010101) & 0xFFFFFFFF) >> 24


def _legal_bits(m: int, k: int, device) -> torch.Tensor:
    """int64 [S, U]: the mask bits of elements inside the logical [m, k] (padding must stay clear)."""
    strips, units, _ = _geometry(m, k)
    legal = torch.full((strips, units), 0xFFFFFFFF, dtype=torch.int64, device=device)
    if m % STRIP_ROWS:
        legal[-1] &= (1 << (UNIT_COLS * (m % STRIP_ROWS))) - 1
    first_pad_unit = k // UNIT_COLS
    if k % UNIT_COLS:  # the last unit holds column k - 1 only: the j = 0 bits
        legal[:, first_pad_unit] &= 0x55555555
        first_pad_unit += 1
    legal[:, first_pad_unit:] = 0
    return legal


@dataclass(frozen=True)
class SparseWeight:
    """A pruned weight of logical shape [out_features, in_features] in the strip-bitmap format.

    masks: int32 [S, U] (uint32 bit patterns), values: [nnz + 32] in the weight dtype, strip_offsets:
    int64 [S + 1], chunk_offsets: int32 [S, C]; S = ceil(M / 16), U = Kp / 2, C = Kp / 64, Kp = K rounded
    up to 64. Layout: csrc/sparse/sparse_format.h. Build it with `fastops.sparse.pack`; a weight built
    from tensors directly is checked in full (`validate()`: every offset against the masks, one pass) —
    the kernels trust it afterwards.
    """

    masks: torch.Tensor
    values: torch.Tensor
    strip_offsets: torch.Tensor
    chunk_offsets: torch.Tensor
    shape: tuple
    # True where the tensors are known consistent (pack output, .to() of a checked weight): skips validate().
    checked: bool = dataclasses.field(default=False, repr=False, compare=False)

    def __post_init__(self):
        op = "SparseWeight"
        if not (isinstance(self.shape, tuple) and len(self.shape) == 2 and all(isinstance(v, int) for v in self.shape)):
            raise TypeError(f"{op}: shape must be a tuple (out_features, in_features) of ints, got {self.shape!r}")
        m, k = self.shape
        if m < 1 or k < 1 or k > MAX_COLS:
            raise ValueError(f"{op}: shape must have out_features >= 1 and 1 <= in_features <= {MAX_COLS}; got {self.shape}")
        strips, units, chunks = _geometry(m, k)
        check_dtype(op, "masks", self.masks, (torch.int32,))
        check_dtype(op, "values", self.values, FLOAT_DTYPES)
        check_dtype(op, "strip_offsets", self.strip_offsets, (torch.int64,))
        check_dtype(op, "chunk_offsets", self.chunk_offsets, (torch.int32,))
        check_shape(op, "masks", self.masks, (strips, units))
        check_shape(op, "values", self.values, (None,))
        check_shape(op, "strip_offsets", self.strip_offsets, (strips + 1,))
        check_shape(op, "chunk_offsets", self.chunk_offsets, (strips, chunks))
        check_same_device(op, "masks", self.masks, values=self.values, strip_offsets=self.strip_offsets,
                          chunk_offsets=self.chunk_offsets)
        for name in ("masks", "values", "strip_offsets", "chunk_offsets"):
            if not getattr(self, name).is_contiguous():
                raise ValueError(f"{op}: {name} must be contiguous")
        if self.values.numel() < VALUE_PAD:
            raise ValueError(f"{op}: values must end with {VALUE_PAD} padding elements")
        if not self.checked and self.masks.device.type != "meta":
            self.validate()
            object.__setattr__(self, "checked", True)

    # ---- properties -------------------------------------------------------------------------------
    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.masks.device

    @property
    def nnz(self) -> int:
        return self.values.numel() - VALUE_PAD

    @property
    def sparsity(self) -> float:
        """Fraction of the M * K elements that are zero."""
        return 1.0 - self.nnz / (self.shape[0] * self.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of the packed tensors (what a SpMM reads)."""
        return sum(t.numel() * t.element_size()
                   for t in (self.masks, self.values, self.strip_offsets, self.chunk_offsets))

    # ---- conversions -------------------------------------------------------------------------------
    def to(self, device) -> "SparseWeight":
        """The same weight on `device` (the format is device independent)."""
        return dataclasses.replace(self, masks=self.masks.to(device), values=self.values.to(device),
                                   strip_offsets=self.strip_offsets.to(device),
                                   chunk_offsets=self.chunk_offsets.to(device))

    def cpu(self) -> "SparseWeight":
        return self.to("cpu")

    def cuda(self, device=None) -> "SparseWeight":
        return self.to(torch.device("cuda") if device is None else device)

    def to_dense(self) -> torch.Tensor:
        """The dense weight [M, K] in the weight dtype (exact; -0.0 comes back as +0.0)."""
        return _to_dense_op(self.masks, self.values, self.strip_offsets, self.chunk_offsets, *self.shape)

    def _to_dense_torch(self) -> torch.Tensor:
        """to_dense with torch ops (any device; the CPU takes the faster C++ path)."""
        m, k = self.shape
        strips, units, _ = _geometry(m, k)
        dense = torch.zeros(strips, units, 32, dtype=self.dtype, device=self.device)
        dense[self._present()] = self.values[:self.nnz]
        # bit = 2 r + j: [S, U, 16, 2] -> [S, 16, U, 2] = rows x columns
        dense = dense.view(strips, units, STRIP_ROWS, UNIT_COLS).permute(0, 2, 1, 3)
        return dense.reshape(strips * STRIP_ROWS, units * UNIT_COLS)[:m, :k].contiguous()

    def state_dict(self) -> dict:
        return {"masks": self.masks, "values": self.values, "strip_offsets": self.strip_offsets,
                "chunk_offsets": self.chunk_offsets, "shape": torch.tensor(self.shape, dtype=torch.int64)}

    def save(self, path) -> None:
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path, map_location=None) -> "SparseWeight":
        return cls.from_state_dict(torch.load(path, map_location=map_location, weights_only=True))

    @classmethod
    def from_state_dict(cls, state: dict) -> "SparseWeight":
        """Rebuilds a weight from state_dict(), checking every offset against the masks."""
        m, k = (int(v) for v in state["shape"].tolist())
        return cls(masks=state["masks"], values=state["values"], strip_offsets=state["strip_offsets"],
                   chunk_offsets=state["chunk_offsets"], shape=(m, k))

    def validate(self) -> None:
        """Checks that the offsets agree with the masks and the number of values (a full pass over the
        masks); raises ValueError otherwise. pack() output is valid by construction."""
        op = "SparseWeight.validate"
        strips, _, chunks = _geometry(*self.shape)
        counts = _unit_popcounts(self.masks).view(strips, chunks, -1).sum(-1)  # [S, C]
        chunk_offsets = counts.cumsum(1) - counts
        strip_offsets = torch.zeros(strips + 1, dtype=torch.int64, device=self.device)
        strip_offsets[1:] = counts.sum(1).cumsum(0)
        if not torch.equal(chunk_offsets.to(torch.int32), self.chunk_offsets):
            raise ValueError(f"{op}: chunk_offsets do not match the masks")
        if not torch.equal(strip_offsets, self.strip_offsets):
            raise ValueError(f"{op}: strip_offsets do not match the masks")
        if int(strip_offsets[-1]) != self.nnz:
            raise ValueError(f"{op}: values holds {self.nnz} nonzeros (+ {VALUE_PAD} padding) but the masks "
                             f"have {int(strip_offsets[-1])}")
        illegal = (self.masks.to(torch.int64) & 0xFFFFFFFF) & ~_legal_bits(*self.shape, self.device)
        if bool(illegal.any()):
            raise ValueError(f"{op}: masks mark elements outside the logical shape {self.shape}")

    def _present(self) -> torch.Tensor:
        """bool [S, U, 32]: bit b of unit (s, u) set; in this order the set bits enumerate the values."""
        bits = torch.arange(32, device=self.device, dtype=torch.int32)
        return ((self.masks.unsqueeze(-1) >> bits) & 1).bool()


def pack(w: torch.Tensor) -> SparseWeight:
    """Packs a pruned float weight w[M, K] (nn.Linear layout; fp16, bf16 or fp32; CPU or CUDA) into the
    strip-bitmap format. Zero means == 0 (-0.0 included). Any M and K; no cap on the nonzeros of a tile.
    Warns (SparsityWarning) when the packed weight is not smaller than w itself (below ~6.5% zeros for
    large fp16/bf16 weights, ~3.3% for fp32; tiny weights always, where the fixed padding and offsets
    dominate): spmm still runs and is exact, just not faster.
    """
    op = "sparse.pack"
    check_dtype(op, "w", w, FLOAT_DTYPES)
    if w.dim() != 2:
        raise ValueError(f"{op}: w must have shape [out_features, in_features]; got {list(w.shape)}")
    m, k = w.shape
    if m == 0 or k == 0:
        raise ValueError(f"{op}: w must be non-empty; got shape {list(w.shape)}")
    if k > MAX_COLS:
        raise ValueError(f"{op}: in_features must be <= {MAX_COLS}; got {k}")
    check_device_usable(op, w)
    if w.device.type == "meta":
        raise ValueError(f"{op}: w is on the meta device; pack needs its values (CPU or CUDA)")
    w = w.detach()
    strips, units, chunks = _geometry(m, k)
    dev = w.device
    counts = torch.empty(strips, chunks, dtype=torch.int32, device=dev)
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        call_c(_C.sparse_pack_count, w, counts, nthreads=num_threads(), stream=cuda_stream(dev))
        totals = counts.sum(1, dtype=torch.int64)
        strip_offsets = torch.zeros(strips + 1, dtype=torch.int64, device=dev)
        torch.cumsum(totals, 0, out=strip_offsets[1:])
        chunk_offsets = (counts.cumsum(1, dtype=torch.int32) - counts).contiguous()
        nnz = int(strip_offsets[-1])  # one sync on CUDA: values must be allocated
        values = torch.empty(nnz + VALUE_PAD, dtype=w.dtype, device=dev)
        masks = torch.empty(strips, units, dtype=torch.int32, device=dev)
        call_c(_C.sparse_pack_fill, w, masks, values, strip_offsets, chunk_offsets, nthreads=num_threads(),
               stream=cuda_stream(dev))
    packed = SparseWeight(masks=masks, values=values, strip_offsets=strip_offsets, chunk_offsets=chunk_offsets,
                          shape=(m, k), checked=True)
    dense_bytes = m * k * w.element_size()
    if packed.nbytes >= dense_bytes:
        warnings.warn(f"{op}: at {packed.sparsity:.1%} sparsity the packed weight ({packed.nbytes} bytes) is not "
                      f"smaller than the dense one ({dense_bytes} bytes), so spmm reads more than F.linear",
                      SparsityWarning, stacklevel=2)
    return packed


def from_sparse_bitmask(compressed: torch.Tensor, bitmask: torch.Tensor, shape, row_offsets=None) -> SparseWeight:
    """Imports a weight stored in the compressed-tensors "sparse-bitmask" layout: `compressed` the nonzero
    values in row-major order, `bitmask` uint8 [M, ceil(K / 8)] with element (r, c) at bit c % 8 of byte
    c // 8 (little bit order), `shape` [M, K]; `row_offsets` (the first value of each row) is checked when
    given."""
    op = "sparse.from_sparse_bitmask"
    check_dtype(op, "compressed", compressed, FLOAT_DTYPES)
    check_dtype(op, "bitmask", bitmask, (torch.uint8, torch.int8))
    shape = list(shape.tolist() if isinstance(shape, torch.Tensor) else shape)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in shape):
        raise TypeError(f"{op}: shape must hold ints, got {shape}")
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"{op}: shape must be [out_features, in_features] with both >= 1; got {shape}")
    m, k = shape
    check_shape(op, "bitmask", bitmask, (m, _ceil_div(k, 8)))
    check_same_device(op, "bitmask", bitmask, compressed=compressed, row_offsets=row_offsets)
    bits = torch.arange(8, device=bitmask.device, dtype=torch.uint8)
    present = ((bitmask.view(torch.uint8).unsqueeze(-1) >> bits) & 1).bool().reshape(m, -1)[:, :k]
    counts = present.sum(1)
    if int(counts.sum()) != compressed.numel():
        raise ValueError(f"{op}: bitmask marks {int(counts.sum())} elements but compressed holds {compressed.numel()}")
    if row_offsets is not None:
        check_shape(op, "row_offsets", row_offsets, (m,))
        if not torch.equal(row_offsets.to(torch.int64).cpu(), (counts.cumsum(0) - counts).cpu()):
            raise ValueError(f"{op}: row_offsets do not match the bitmask")
    dense = torch.zeros(m, k, dtype=compressed.dtype, device=compressed.device)
    dense[present] = compressed.reshape(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SparsityWarning)
        return pack(dense)


def to_sparse_bitmask(w: SparseWeight) -> dict:
    """The weight in the compressed-tensors "sparse-bitmask" layout: {"shape", "compressed", "bitmask",
    "row_offsets"} (the inverse of from_sparse_bitmask)."""
    if not isinstance(w, SparseWeight):
        raise TypeError(f"sparse.to_sparse_bitmask: w must be a fastops.sparse.SparseWeight, got {type(w).__name__}")
    m, k = w.shape
    dense = w.to_dense()
    present = dense != 0
    counts = present.sum(1)
    padded = torch.zeros(m, _ceil_div(k, 8) * 8, dtype=torch.uint8, device=w.device)
    padded[:, :k] = present.to(torch.uint8)
    weights = (1 << torch.arange(8, device=w.device, dtype=torch.int32)).to(torch.uint8)
    bitmask = (padded.view(m, -1, 8) * weights).sum(-1, dtype=torch.int32).to(torch.uint8)
    return {"shape": torch.tensor([m, k]), "compressed": dense[present], "bitmask": bitmask,
            "row_offsets": counts.cumsum(0) - counts}


@custom_op("fastops::sparse_to_dense")
def _to_dense_op(masks: torch.Tensor, values: torch.Tensor, strip_offsets: torch.Tensor, chunk_offsets: torch.Tensor,
                 m: int, k: int) -> torch.Tensor:
    if masks.device.type == "cpu":  # C++, multi-threaded over strips
        dense = torch.empty(m, k, dtype=values.dtype)
        call_c(_C.sparse_unpack, masks, values, strip_offsets, chunk_offsets, m, k, dense, nthreads=num_threads())
        return dense
    return SparseWeight(masks=masks, values=values, strip_offsets=strip_offsets, chunk_offsets=chunk_offsets,
                        shape=(m, k), checked=True)._to_dense_torch()


@_to_dense_op.register_fake
def _(masks, values, strip_offsets, chunk_offsets, m, k):
    return values.new_empty((m, k))


# ---------------------------------------------------------------------------------------------------
# The operator: torch.ops.fastops.spmm (custom op, fake, autograd) and fastops.spmm
# ---------------------------------------------------------------------------------------------------
@custom_op("fastops::spmm")
def _spmm_op(x: torch.Tensor, masks: torch.Tensor, values: torch.Tensor, strip_offsets: torch.Tensor,
             chunk_offsets: torch.Tensor, bias: Optional[torch.Tensor], m: int, k: int) -> torch.Tensor:
    x2 = x.detach().reshape(-1, k)  # a view unless the leading dims cannot be flattened
    y = torch.empty((x2.shape[0], m), dtype=x.dtype, device=x.device)
    bias = None if bias is None else bias.detach()
    if x.device.type == "cuda":
        if (k > 1 and x2.stride(1) != 1) or (x2.shape[0] > 1 and x2.stride(0) < k):
            x2 = x2.contiguous()  # the CUDA kernels read whole, distinct x rows as 32-bit pairs
        with torch.cuda.device(x.device):
            nbytes = _C.sparse_cuda_workspace_bytes(x2.shape[0], m, k, DTYPE_CODE[x.dtype])
            workspace = torch.empty(nbytes, dtype=torch.uint8, device=x.device) if nbytes else None
            call_c(_C.sparse_spmm, x2, masks, values, strip_offsets, chunk_offsets, m, k, bias, y,
                   stream=cuda_stream(x.device), workspace=workspace)
    else:
        call_c(_C.sparse_spmm, x2, masks, values, strip_offsets, chunk_offsets, m, k, bias, y,
               nthreads=num_threads())
    return y.view(*x.shape[:-1], m)


@_spmm_op.register_fake
def _(x, masks, values, strip_offsets, chunk_offsets, bias, m, k):
    torch._check(x.shape[-1] == k)
    return x.new_empty((*x.shape[:-1], m))


def _spmm_setup(ctx, inputs, output):
    x, masks, values, strip_offsets, chunk_offsets, bias, m, k = inputs
    ctx.save_for_backward(masks, values, strip_offsets, chunk_offsets)
    ctx.shape = (m, k)
    ctx.bias_needs_grad = bias is not None and bias.requires_grad


def _spmm_backward(ctx, grad):
    # Frozen weights: dx = dy @ W, with W expanded to dense on the fly (fine-tuning, not a hot path).
    masks, values, strip_offsets, chunk_offsets = ctx.saved_tensors
    m, k = ctx.shape
    w = _to_dense_op(masks, values, strip_offsets, chunk_offsets, m, k)
    grad_x = (grad.to(torch.float32) @ w.to(torch.float32)).to(grad.dtype)
    grad_bias = grad.reshape(-1, m).sum(dim=0) if ctx.bias_needs_grad else None
    return grad_x, None, None, None, None, grad_bias, None, None


_spmm_op.register_autograd(_spmm_backward, setup_context=_spmm_setup)


def spmm(x: torch.Tensor, w: SparseWeight, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = F.linear(x, w.to_dense(), bias) for x[..., K] in w's dtype (fp16, bf16 or fp32) on CPU or CUDA,
    any number of tokens, accumulated in fp32. Differentiable with respect to x (and bias).

    On CPUs with AVX512-BF16 the bf16 kernel's VDPBF16PS treats subnormal inputs and results as zero (as
    the instruction always does); other kernels keep them. The CPU reads x with any strides; on CUDA an x
    whose last dimension is strided, or whose rows overlap, is first copied to a contiguous tensor."""
    op = "spmm"
    if not isinstance(w, SparseWeight):
        raise TypeError(f"{op}: w must be a fastops.sparse.SparseWeight (see fastops.sparse.pack), got {type(w).__name__}")
    check_dtype(op, "x", x, FLOAT_DTYPES)
    if x.dtype != w.dtype:
        raise TypeError(f"{op}: x must have the dtype of w ({str(w.dtype).replace('torch.', '')}); "
                        f"got {str(x.dtype).replace('torch.', '')}")
    m, k = w.shape
    if x.dim() == 0 or x.shape[-1] != k:
        raise ValueError(f"{op}: x must have shape [..., {k}] (w is [{m}, {k}]); got {list(x.shape)}")
    if bias is not None:
        check_dtype(op, "bias", bias, FLOAT_DTYPES)
        check_shape(op, "bias", bias, (m,))
        if bias.dtype != x.dtype:
            raise TypeError(f"{op}: bias must have the dtype of x ({str(x.dtype).replace('torch.', '')}); "
                            f"got {str(bias.dtype).replace('torch.', '')}")
        if not bias.is_contiguous():
            raise ValueError(f"{op}: bias must be contiguous")
    check_same_device(op, "x", x, w=w.masks, bias=bias)
    check_device_usable(op, x)
    return _spmm_op(x, w.masks, w.values, w.strip_offsets, w.chunk_offsets, bias, m, k)


# ---------------------------------------------------------------------------------------------------
# Pruning and whole-model conversion
# ---------------------------------------------------------------------------------------------------
def magnitude_prune(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A copy of w with the round(sparsity * numel) smallest-magnitude elements set to zero (unstructured,
    one threshold per tensor; ties broken by position)."""
    op = "sparse.magnitude_prune"
    check_tensor(op, "w", w)
    if not w.is_floating_point():
        raise TypeError(f"{op}: w must be a float tensor, got {str(w.dtype).replace('torch.', '')}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"{op}: sparsity must be a number in [0, 1], got {sparsity!r}")
    drop = int(round(sparsity * w.numel()))
    out = w.detach().clone()
    if drop:
        order = out.abs().reshape(-1).argsort(stable=True)
        out.view(-1)[order[:drop]] = 0
    return out


def sparsify_model(model: torch.nn.Module, sparsity: Optional[float] = None, *, skip: SkipSpec = ("lm_head",),
                   progress: Optional[bool] = None) -> torch.nn.Module:
    """Replace every nn.Linear of `model` (in place) by fastops.nn.SparseLinear and return the model.

    sparsity: magnitude-prune each weight to this fraction of zeros first (None: keep the zeros it has).
    skip: module-name glob patterns (default: "lm_head") or a predicate (name, module) -> bool.
    progress: show a tqdm bar (default: when there are 16 or more layers).
    """
    from .nn import SparseLinear

    desc = "fastops: packing sparse weights" if sparsity is None else f"fastops: pruning to {sparsity:.0%} and packing"
    return replace_linears(model, lambda linear: SparseLinear.from_linear(linear, sparsity=sparsity), skip, progress,
                           desc)
