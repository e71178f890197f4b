"""Reference for fastops.sparse: an element-by-element encoder and decoder of the strip-bitmap format
written from its description in csrc/sparse/sparse_format.h, and the dense float64 product."""
from __future__ import annotations

import numpy as np
import torch

STRIP_ROWS, UNIT_COLS, CHUNK_COLS = 16, 2, 64


def _bits_of(w: torch.Tensor) -> np.ndarray:
    """The raw bit patterns of w (uint16 or uint32), so -0.0 and NaN keep their identity."""
    w = w.detach().cpu().contiguous()
    return (w.view(torch.int32) if w.element_size() == 4 else w.view(torch.int16)).numpy().view(
        np.uint32 if w.element_size() == 4 else np.uint16)


def encode(w: torch.Tensor):
    """(masks uint32 [S, U], values bits [nnz], strip_offsets int64 [S + 1], chunk_offsets int32 [S, C]) of w."""
    bits = _bits_of(w)
    m, k = bits.shape
    sign = np.uint32(0x80000000) if bits.dtype == np.uint32 else np.uint16(0x8000)
    strips = -(-m // STRIP_ROWS)
    kp = -(-k // CHUNK_COLS) * CHUNK_COLS
    units, chunks = kp // UNIT_COLS, kp // CHUNK_COLS
    masks = np.zeros((strips, units), dtype=np.uint32)
    chunk_offsets = np.zeros((strips, chunks), dtype=np.int32)
    strip_offsets = np.zeros(strips + 1, dtype=np.int64)
    values = []
    for s in range(strips):
        start = len(values)
        for u in range(units):
            if u % (CHUNK_COLS // UNIT_COLS) == 0:
                chunk_offsets[s, u // (CHUNK_COLS // UNIT_COLS)] = len(values) - start
            for r in range(STRIP_ROWS):
                for j in range(UNIT_COLS):
                    row, col = s * STRIP_ROWS + r, u * UNIT_COLS + j
                    if row < m and col < k and (bits[row, col] & ~sign) != 0:
                        masks[s, u] |= np.uint32(1 << (r * UNIT_COLS + j))
                        values.append(bits[row, col])
        strip_offsets[s + 1] = len(values)
    return masks, np.array(values, dtype=bits.dtype), strip_offsets, chunk_offsets


def decode(sw) -> np.ndarray:
    """float64 [M, K] of a SparseWeight, read unit by unit in the documented order."""
    m, k = sw.shape
    masks = sw.masks.detach().cpu().numpy().view(np.uint32)
    values = sw.values.detach().cpu().double().numpy()
    offsets = sw.strip_offsets.detach().cpu().numpy()
    out = np.zeros((masks.shape[0] * STRIP_ROWS, masks.shape[1] * UNIT_COLS))
    for s in range(masks.shape[0]):
        pos = int(offsets[s])
        for u in range(masks.shape[1]):
            mask = int(masks[s, u])
            for bit in range(32):
                if mask >> bit & 1:
                    out[s * STRIP_ROWS + bit // UNIT_COLS, u * UNIT_COLS + bit % UNIT_COLS] = values[pos]
                    pos += 1
    return out[:m, :k]


def spmm(x: torch.Tensor, w_dense: torch.Tensor, bias=None):
    """(y, bound): y = F.linear in float64, and the elementwise scale sum |x| |w| + |bias| that rounding
    errors are measured against."""
    x64, w64 = x.detach().cpu().double(), w_dense.detach().cpu().double()
    y = x64 @ w64.T
    scale = x64.abs() @ w64.abs().T
    if bias is not None:
        b64 = bias.detach().cpu().double()
        y, scale = y + b64, scale + b64.abs()
    return y, scale
