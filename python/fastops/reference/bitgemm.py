"""Reference for fastops.bitgemm, written from the format description (csrc/bitgemm/bitgemm_format.h)
and the quantization rules (csrc/bitgemm/bitgemm.h): numpy, element by element where it matters, int64 /
float64 products. Never calls the packers or kernels it checks."""
from __future__ import annotations

import numpy as np
import torch


def decode_values(planes: torch.Tensor, offset: torch.Tensor, bits: int, fmt: str, k: int) -> np.ndarray:
    """X[r, c] = sum_i coeff_i * bit_i(r, c) + offset[r], each bit read from where the format puts it."""
    words = planes.detach().cpu().numpy().astype(np.int64) & 0xFFFFFFFF  # [bits, rows, words]
    cols = np.arange(k)
    out = np.zeros((words.shape[1], k), dtype=np.int64)
    for i in range(bits):
        bit = (words[i][:, cols // 32] >> (cols % 32)) & 1
        coeff = (2 << i) if fmt == "bipolar" else (-(1 << i) if fmt == "signed" and i == bits - 1 else 1 << i)
        out += coeff * bit
    return out + offset.detach().cpu().numpy().astype(np.int64)[:, None]


def padding_is_zero(planes: torch.Tensor, k: int) -> bool:
    words = planes.detach().cpu().numpy().astype(np.int64) & 0xFFFFFFFF
    cols = np.arange(words.shape[2] * 32)
    bits = (words[:, :, cols // 32] >> (cols % 32)) & 1
    return not bits[:, :, k:].any()


def values(bp) -> np.ndarray:
    return decode_values(bp.planes, bp.offset, bp.bits, bp.fmt, bp.k)


def gemm(a_values: np.ndarray, w_values: np.ndarray) -> np.ndarray:
    """Exact int64 A @ W^T."""
    return a_values.astype(np.int64) @ w_values.astype(np.int64).T


def gemm_scaled(a_values, w_values, a_scale, w_scale, bias=None, group_size=None) -> np.ndarray:
    """float64 sum over K groups of a_scale[m, g] * w_scale[n, g] * (A_g @ W_g^T), plus bias."""
    m, k = a_values.shape
    n = w_values.shape[0]
    g = k if not group_size else group_size
    groups = max(1, -(-k // g))

    def as_2d(s, rows):  # [] / [1] per tensor, [rows] per row, [rows, groups] per group
        s = s.detach().cpu().double().numpy()
        s = s.reshape(1, 1) if s.size == 1 else (s.reshape(rows, 1) if s.ndim == 1 else s)
        return np.broadcast_to(s, (rows, groups))

    sa, sw = as_2d(a_scale, m), as_2d(w_scale, n)
    y = np.zeros((m, n))
    for j in range(groups):
        cols = slice(j * g, min(k, (j + 1) * g))
        c = gemm(a_values[:, cols], w_values[:, cols]).astype(np.float64)
        y += sa[:, j:j + 1] * sw[:, j][None, :] * c
    if bias is not None:
        y += bias.detach().cpu().double().numpy()[None, :]
    return y


def quantize(x: torch.Tensor, bits: int, fmt: str, per_tensor: bool) -> tuple[np.ndarray, np.ndarray]:
    """(X int64 [rows, k], scales float32 [rows] or [1]) by the rules of bitgemm.h, in numpy float32."""
    xf = x.detach().cpu().float().numpy().astype(np.float32)
    rows, k = xf.shape
    groups = [xf] if per_tensor else [xf[r:r + 1] for r in range(rows)]
    q_rows, scales = [], []
    for part in groups:
        if fmt == "unsigned":
            lo = np.float32(min(part.min(initial=0.0), 0.0))
            hi = np.float32(max(part.max(initial=0.0), 0.0))
            qmax = np.float32((1 << bits) - 1)
            scale = np.float32((hi - lo) / qmax)
        else:
            absmax = np.float32(np.abs(part).max(initial=0.0))
            qmax = np.float32((1 << (bits - 1)) - 1 if fmt == "signed" and bits > 1 else
                              (1 if fmt == "signed" else (1 << bits) - 1))
            scale = np.float32(absmax / qmax)
        if scale == 0:
            scale = np.float32(1.0)
        inv = np.float32(np.float32(1.0) / scale)
        v = (part * inv).astype(np.float32)
        if fmt == "signed":
            lo_q, hi_q = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if bits > 1 else (-1, 0)
            q = np.clip(np.rint(v), lo_q, hi_q)
        elif fmt == "bipolar":
            u = np.clip(np.rint(((v + qmax).astype(np.float32) / np.float32(2)).astype(np.float32)), 0, qmax)
            q = 2 * u - qmax
        else:
            zero = np.clip(np.rint((-lo * inv).astype(np.float32)), 0, qmax)
            q = np.clip(np.rint(v) + zero, 0, qmax) - zero
        q_rows.append(q.astype(np.int64))
        scales.append(scale)
    return np.concatenate(q_rows, axis=0).reshape(rows, k), np.array(scales, dtype=np.float32)
