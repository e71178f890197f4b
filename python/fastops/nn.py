"""Drop-in modules for torch.nn.Linear: LutLinear (packed low-bit weight, float activations), BitLinear
(low-bit weight and activations, exact integer GEMM) and SparseLinear (unstructured-sparse weight, exact)."""
from __future__ import annotations

from typing import Optional

import torch

from . import bitgemm
from ._core import FLOAT_DTYPES, check_dtype, check_same_device, check_shape
from .bitgemm import BitPacked
from .lut import SCHEMES, LutWeight, lut_gemm, quantize
from .sparse import SparseWeight, magnitude_prune, spmm
from .sparse import pack as sparse_pack

__all__ = ["LutLinear", "BitLinear", "SparseLinear"]


def _packed_weight(module: torch.nn.Module, buffers: tuple, build):
    """module's packed weight object, built by build() once per set of buffers: validating one costs
    ~20 us, too much for every forward; .to() replaces the buffers (a rebuild), load_state_dict copies
    into them in place (no rebuild needed)."""
    cached = module.__dict__.get("_weight_cache")
    if cached is None or any(a is not b for a, b in zip(cached[0], buffers)):
        cached = (buffers, build())
        module.__dict__["_weight_cache"] = cached
    return cached[1]


class LutLinear(torch.nn.Module):
    """y = x @ W^T + b with W held as a fastops.lut.LutWeight.

    The packed tensors are buffers (they follow .to(), .cuda() and state_dict()); the weight is frozen,
    the bias (if any) is an ordinary parameter. Gradients flow to x, for adapter fine-tuning.
    """

    def __init__(self, weight: LutWeight, bias: Optional[torch.Tensor] = None, *, precise: bool = False,
                 input_scale: Optional[torch.Tensor] = None):
        super().__init__()
        if not isinstance(weight, LutWeight):
            raise TypeError(f"LutLinear: weight must be a fastops.lut.LutWeight, got {type(weight).__name__}")
        if input_scale is not None:
            check_dtype("LutLinear", "input_scale", input_scale, FLOAT_DTYPES)
            check_shape("LutLinear", "input_scale", input_scale, (weight.shape[1],))
            check_same_device("LutLinear", "weight", weight.planes, input_scale=input_scale)
            input_scale = input_scale.detach().to(torch.float32).clone()
        # AWQ's per-input-channel scale where it could not be folded into the layer before: x * input_scale.
        self.register_buffer("input_scale", input_scale)
        self.register_buffer("planes", weight.planes)
        self.register_buffer("scales", weight.scales)
        self.register_buffer("zeros", weight.zeros)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.bits, self.group_size, self.scheme = weight.bits, weight.group_size, weight.scheme
        self.precise = precise
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)

    @property
    def weight(self) -> LutWeight:
        return _packed_weight(self, (self.planes, self.scales, self.zeros), lambda: LutWeight(
            planes=self.planes, scales=self.scales, zeros=self.zeros, shape=(self.out_features, self.in_features),
            bits=self.bits, group_size=self.group_size, scheme=self.scheme))

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, bits: int, group_size: Optional[int] = 128, scheme: str = "asym",
                    *, precise: bool = False, bcq_iters: int = 10) -> "LutLinear":
        if not isinstance(linear, torch.nn.Linear):
            raise TypeError(f"LutLinear.from_linear: linear must be a torch.nn.Linear, got {type(linear).__name__}")
        if scheme not in SCHEMES:
            raise ValueError(f"LutLinear.from_linear: scheme must be one of {SCHEMES}, got {scheme!r}")
        weight = quantize(linear.weight.detach(), bits, group_size, scheme, bcq_iters=bcq_iters)
        return cls(weight, linear.bias, precise=precise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)  # like autocast: the module follows the activation dtype
        if self.input_scale is not None:
            x = x * self.input_scale.to(x.dtype)
        return lut_gemm(x, self.weight, bias, precise=self.precise)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, scheme={self.scheme!r}, bias={self.bias is not None}"
                + (", input_scale=True" if self.input_scale is not None else ""))


class BitLinear(torch.nn.Module):
    """y = x @ W^T + b computed as an exact low-bit integer GEMM (fastops.bitgemm).

    The weight is quantized per output channel and packed once (`from_linear`); activations are quantized
    per token (row) on every call by the fused `bitgemm.quantize_pack`, then multiplied by
    `bitgemm.gemm_scaled`, which applies both scales and the bias and writes x's dtype. Inference only
    (no gradients). `ternary=True` gives the BitNet b1.58 / MatMul-free LM layer: weights in {-1, 0, +1}
    times one per-tensor absmean scale, stored as two signed planes, with 8-bit activations by default.
    `w_bits=1, w_fmt="bipolar"` gives binary weights: sign(w) times each row's mean |w| (BitNet b1);
    every other weight format uses quantize_pack's absmax rules.
    """

    def __init__(self, weight: BitPacked, w_scale: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                 a_bits: int = 8, a_fmt: str = "signed", method: str = "auto"):
        super().__init__()
        if not isinstance(weight, BitPacked):
            raise TypeError(f"BitLinear: weight must be a fastops.bitgemm.BitPacked, got {type(weight).__name__}")
        if a_fmt not in bitgemm.FORMATS:
            raise ValueError(f"BitLinear: a_fmt must be one of {bitgemm.FORMATS}, got {a_fmt!r}")
        bitgemm.check_fits_int32("BitLinear", weight.k, a_bits, weight.bits)
        self.register_buffer("w_planes", weight.planes)
        self.register_buffer("w_offset", weight.offset)
        self.register_buffer("w_rowsum", weight.rowsum)
        self.register_buffer("w_scale", w_scale.to(torch.float32).reshape(-1).contiguous())
        self.in_features, self.out_features = weight.k, weight.rows
        self.w_bits, self.w_fmt, self.a_bits, self.a_fmt, self.method = weight.bits, weight.fmt, a_bits, a_fmt, method
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=False)

    @property
    def weight(self) -> BitPacked:
        return _packed_weight(self, (self.w_planes, self.w_offset, self.w_rowsum), lambda: BitPacked(
            self.w_planes, self.w_offset, self.w_rowsum, self.w_bits, self.w_fmt, self.in_features))

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, w_bits: int = 4, a_bits: int = 8, w_fmt: str = "signed",
                    a_fmt: str = "signed", *, ternary: bool = False, method: str = "auto") -> "BitLinear":
        op = "BitLinear.from_linear"
        if not isinstance(linear, torch.nn.Linear):
            raise TypeError(f"{op}: linear must be a torch.nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach().to(torch.float32).contiguous()
        if ternary:
            # BitNet b1.58: one absmean scale per tensor, weights rounded to {-1, 0, +1}.
            scale = w.abs().mean().clamp_min(1e-8)
            q = torch.clamp(torch.round(w / scale), -1, 1).to(torch.int8)
            packed, w_scale = bitgemm.pack(q, 2, "signed"), scale.reshape(1)
        elif w_bits == 1 and w_fmt == "bipolar":
            # Binary weights (BitNet b1): sign(w) times the row's mean |w|, the least-squares scale for a
            # sign code. quantize_pack's absmax scale would leave a relative error near 1 here.
            scale = w.abs().mean(dim=1).clamp_min(1e-8)
            q = torch.where(w >= 0, 1, -1).to(torch.int8)
            packed, w_scale = bitgemm.pack(q, 1, "bipolar"), scale
        else:
            packed, w_scale = bitgemm.quantize_pack(w, w_bits, w_fmt, "per_row")
        return cls(packed, w_scale, linear.bias, a_bits=a_bits, a_fmt=a_fmt, method=method)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"BitLinear: x must have shape [..., {self.in_features}]; got {list(x.shape)}")
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[1] > 1 and x2.stride(1) != 1:
            x2 = x2.contiguous()
        a, a_scale = bitgemm.quantize_pack(x2, self.a_bits, self.a_fmt, "per_row")
        bias = None if self.bias is None else self.bias.to(x.dtype)
        y = bitgemm.gemm_scaled(a, self.weight, a_scale, self.w_scale, bias, out_dtype=x.dtype, method=self.method)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, w_bits={self.w_bits}, "
                f"w_fmt={self.w_fmt!r}, a_bits={self.a_bits}, a_fmt={self.a_fmt!r}, bias={self.bias is not None}")


class SparseLinear(torch.nn.Module):
    """y = x @ W^T + b with W held as a fastops.sparse.SparseWeight (exact: only the zeros are dropped).

    The packed tensors are buffers (they follow .to(), .cuda() and state_dict(); a state dict must come
    from a weight with the same number of nonzeros, and is checked against its masks on load); the weight
    is frozen, the bias (if any) is an ordinary parameter. x must have the weight's dtype. Gradients flow
    to x (and the bias).
    """

    def __init__(self, weight: SparseWeight, bias: Optional[torch.Tensor] = None):
        super().__init__()
        if not isinstance(weight, SparseWeight):
            raise TypeError(f"SparseLinear: weight must be a fastops.sparse.SparseWeight, got {type(weight).__name__}")
        self.register_buffer("masks", weight.masks)
        self.register_buffer("values", weight.values)
        self.register_buffer("strip_offsets", weight.strip_offsets)
        self.register_buffer("chunk_offsets", weight.chunk_offsets)
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        # load_state_dict copies into the buffers in place (the weight cache stays): check what arrived.
        self._buffers_checked = True
        self.register_load_state_dict_post_hook(SparseLinear._check_loaded)

    @staticmethod
    def _check_loaded(module: "SparseLinear", _incompatible_keys) -> None:
        # The buffers now hold what was loaded: until it checks out, every use re-checks (and raises).
        module._buffers_checked = False
        module.__dict__.pop("_weight_cache", None)
        module._packed(checked=False)  # ValueError when the loaded tensors disagree
        module._buffers_checked = True

    def _packed(self, checked: bool) -> SparseWeight:
        return SparseWeight(masks=self.masks, values=self.values, strip_offsets=self.strip_offsets,
                            chunk_offsets=self.chunk_offsets, shape=(self.out_features, self.in_features),
                            checked=checked)

    @property
    def weight(self) -> SparseWeight:
        # Buffers replaced by .to() come from a checked weight; loaded ones are checked by the hook above.
        return _packed_weight(self, (self.masks, self.values, self.strip_offsets, self.chunk_offsets),
                              lambda: self._packed(checked=self._buffers_checked))

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, sparsity: Optional[float] = None) -> "SparseLinear":
        """Packs linear's weight (its zeros), magnitude-pruned to `sparsity` first when given."""
        if not isinstance(linear, torch.nn.Linear):
            raise TypeError(f"SparseLinear.from_linear: linear must be a torch.nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        if sparsity is not None:
            w = magnitude_prune(w, sparsity)
        return cls(sparse_pack(w), linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spmm(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        w = self.weight
        return (f"in_features={self.in_features}, out_features={self.out_features}, dtype={w.dtype}, "
                f"sparsity={w.sparsity:.3f}, bias={self.bias is not None}")
