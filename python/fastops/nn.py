"""Drop-in modules: fastops.nn.LutLinear replaces torch.nn.Linear with a packed low-bit weight."""
from __future__ import annotations

from typing import Optional

import torch

from .lut import SCHEMES, LutWeight, lut_gemm, quantize

__all__ = ["LutLinear"]


class LutLinear(torch.nn.Module):
    """y = x @ W^T + b with W held as a fastops.lut.LutWeight.

    The packed tensors are buffers (they follow .to(), .cuda() and state_dict()); the weight is frozen,
    the bias (if any) is an ordinary parameter. Gradients flow to x, for adapter fine-tuning.
    """

    def __init__(self, weight: LutWeight, bias: Optional[torch.Tensor] = None, *, precise: bool = False):
        super().__init__()
        if not isinstance(weight, LutWeight):
            raise TypeError(f"LutLinear: weight must be a fastops.lut.LutWeight, got {type(weight).__name__}")
        self.register_buffer("planes", weight.planes)
        self.register_buffer("scales", weight.scales)
        self.register_buffer("zeros", weight.zeros)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.bits, self.group_size, self.scheme = weight.bits, weight.group_size, weight.scheme
        self.precise = precise
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)

    @property
    def weight(self) -> LutWeight:
        # Validating a LutWeight costs ~20 us: build it once per set of buffers (.to() replaces them;
        # load_state_dict copies into them in place), not on every forward.
        buffers = (self.planes, self.scales, self.zeros)
        cached = self.__dict__.get("_weight_cache")
        if cached is None or any(a is not b for a, b in zip(cached[0], buffers)):
            weight = LutWeight(planes=self.planes, scales=self.scales, zeros=self.zeros,
                               shape=(self.out_features, self.in_features), bits=self.bits,
                               group_size=self.group_size, scheme=self.scheme)
            cached = (buffers, weight)
            self.__dict__["_weight_cache"] = cached
        return cached[1]

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
        return lut_gemm(x, self.weight, bias, precise=self.precise)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, scheme={self.scheme!r}, bias={self.bias is not None}")
