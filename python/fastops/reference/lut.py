"""Reference for fastops.lut_gemm: decode the packed planes element by element from the format
description in csrc/lut/lut_format.h, dequantize in float64, multiply in float64."""
from __future__ import annotations

import numpy as np
import torch


def unpack_codes(planes: torch.Tensor, m: int, k: int, bits: int) -> np.ndarray:
    """Q[m, k] = sum_i 2^i beta_i[m, k], each bit read from where lut_format.h puts it."""
    flat = planes.detach().cpu().numpy().reshape(-1).astype(np.int64)
    kblocks = -(-k // 32)
    mm, kk = np.meshgrid(np.arange(m), np.arange(k), indexing="ij")
    tile, row = mm // 16, mm % 16
    kb, u, j = kk // 32, (kk % 32) // 4, kk % 4
    byte_in_block = (u % 4) * 16 + row
    bit_in_byte = (u // 4) * 4 + j
    codes = np.zeros((m, k), dtype=np.int64)
    for plane in range(bits):
        offset = ((tile * kblocks + kb) * bits + plane) * 64 + byte_in_block
        codes |= ((flat[offset] >> bit_in_byte) & 1) << plane
    return codes


def dequantize(w) -> np.ndarray:
    """float64 [M, K] weight of a LutWeight."""
    m, k = w.shape
    codes = unpack_codes(w.planes, m, k, w.bits)
    group = np.arange(k) // w.group_size
    scales = w.scales.detach().cpu().numpy().astype(np.float64)[:, :, :m]  # [G, A, M]
    zeros = w.zeros.detach().cpu().numpy().astype(np.float64)[:, :m]  # [G, M]
    z = zeros[group].T  # [M, K]
    if w.scheme == "bcq":
        out = z.copy()
        for i in range(w.bits):
            sign = ((codes >> i) & 1) * 2.0 - 1.0
            out += scales[group, i, :].T * sign
        return out
    return scales[group, 0, :].T * (codes - z)


def lut_gemm(x: torch.Tensor, w, bias: torch.Tensor | None = None) -> torch.Tensor:
    """float64 result of x[..., K] @ dequantize(w).T + bias, on the CPU."""
    xd = x.detach().cpu().to(torch.float64)
    y = xd @ torch.from_numpy(dequantize(w)).T
    if bias is not None:
        y = y + bias.detach().cpu().to(torch.float64)
    return y
