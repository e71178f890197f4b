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


def _uniform_group_params(w: np.ndarray, bits: int, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (scale, zero point) of one group w[M, g] (bits >= 2): asym min-max with an integer zero
    point, or sym max-abs around 2^(bits-1); scales rounded to float16 as they are stored (through float32,
    as torch converts float64 to float16)."""
    maxq = 2 ** bits - 1

    def to_fp16(v):
        return v.astype(np.float32).astype(np.float16).astype(np.float64)

    if scheme == "asym":
        lo, hi = w.min(axis=1), w.max(axis=1)
        assert np.all(hi > lo), "the reference expects non-constant groups"
        s = to_fp16((hi - lo) / maxq)
        return s, np.clip(np.round(-lo / s), 0, maxq)
    assert scheme == "sym"
    s = to_fp16(2 * np.abs(w).max(axis=1) / maxq)
    return s, np.full(w.shape[0], 2.0 ** (bits - 1))


CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)


def _fitted_group_params(w: np.ndarray, h_block: np.ndarray | None, bits: int, scheme: str):
    """Group parameters; with h_block, per row the range clip (ratio of min-max) with the smallest output
    error dw H dw^T among CLIP_RATIOS (the first one on ties)."""
    s, z = _uniform_group_params(w, bits, scheme)
    if h_block is None:
        return s, z
    best_err = np.full(w.shape[0], np.inf)
    lo, hi = w.min(axis=1, keepdims=True), w.max(axis=1, keepdims=True)
    for ratio in CLIP_RATIOS:
        sr, zr = _uniform_group_params(np.clip(w, lo * ratio, hi * ratio), bits, scheme)
        q = np.clip(np.round(w / sr[:, None] + zr[:, None]), 0, 2 ** bits - 1)
        d = w - sr[:, None] * (q - zr[:, None])
        err = np.einsum("mi,ij,mj->m", d, h_block, d)
        better = err < best_err
        s, z, best_err = np.where(better, sr, s), np.where(better, zr, z), np.where(better, err, best_err)
    return s, z


def gptq(w: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int, scheme: str, act_order: bool,
         damp: float, clip: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ in float64 as the paper states it (optimal brain quantization, one column at a time): quantize
    column j, spread its error e / [H^-1]_jj over the columns not yet quantized along row j of H^-1, then
    eliminate j from H^-1 (Gaussian elimination; no Cholesky factor, no blocking). A group's parameters
    are fitted to its weights as they stand when its first column comes up (with clip: the range clip
    minimizing the group's output error on its block of H). Returns codes [M, K] and
    per-group scales, zeros [M, G] (uniform schemes, bits >= 2)."""
    wd = w.detach().cpu().numpy().astype(np.float64).copy()
    h = hessian.detach().cpu().numpy().astype(np.float64).copy()
    m, k = wd.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    h_inv = np.linalg.inv(h + damp * np.mean(np.diag(h)) * np.eye(k))
    groups = -(-k // group_size)
    scales, zeros = np.zeros((m, groups)), np.zeros((m, groups))
    fitted = np.zeros(groups, dtype=bool)
    codes = np.zeros((m, k), dtype=np.int64)
    for t, j in enumerate(order):
        g = j // group_size
        if not fitted[g]:
            members = slice(g * group_size, (g + 1) * group_size)
            scales[:, g], zeros[:, g] = _fitted_group_params(wd[:, members], h[members, members] if clip else None,
                                                             bits, scheme)
            fitted[g] = True
        s, z = scales[:, g], zeros[:, g]
        q = np.clip(np.round(wd[:, j] / s + z), 0, 2 ** bits - 1)
        codes[:, j] = q
        err = (wd[:, j] - s * (q - z)) / h_inv[j, j]
        rest = order[t + 1:]
        wd[:, rest] -= np.outer(err, h_inv[j, rest])
        h_inv = h_inv - np.outer(h_inv[:, j], h_inv[j, :]) / h_inv[j, j]
    return codes, scales, zeros
