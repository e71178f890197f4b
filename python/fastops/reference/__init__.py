"""Slow, obviously-correct references written from the math (numpy / float64), for tests and `check`.
They never call the packers or kernels they check."""
from . import bitgemm, lut

__all__ = ["bitgemm", "lut"]
