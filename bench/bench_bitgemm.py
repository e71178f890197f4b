"""fastops.bitgemm.gemm (exact WxAy integer GEMM by bit-slicing) against the torch paths a user would
otherwise take: torch._int_mm (int8 x int8 -> int32), bf16 matmul and fp32 matmul (F.linear).

Shapes are MxNxK: activations A [M, K], weights W [N, K] (nn.Linear layout), C = A W^T [M, N].
fastops operands are pre-packed (weights once, activations as `quantize_pack` would produce them);
the timed call is `gemm` (int32 out). Params A:<bits_a>/W:<bits_w>; both signed. Bytes per call =
packed weight planes + packed activations + output (the memory-bound figure of merit at decode sizes);
FLOPs = 2*M*N*K integer ops. Every peer runs at every shape: on a CPU with AVX-512 VNNI / BF16
torch._int_mm and bf16 matmul are oneDNN GEMMs (hundreds of GOP/s), on an AVX2-only CPU they are much
slower, so the same plan measures the peer a user actually has.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

import harness
from harness import Case, Prepared, Rotation, memo

OP = "bitgemm"
PAIRS_FULL = list(itertools.product((1, 2, 3, 4, 8), repeat=2))  # (bits_a, bits_w)
PAIRS_QUICK = [(1, 1), (2, 1), (2, 2), (4, 4), (8, 8), (8, 2)]


def _plan(device: str, quick: bool) -> list[tuple[tuple[int, int, int], list, tuple]]:
    """[(shape (M, N, K), bit pairs, peers)] in run order."""
    if device == "cpu":
        peers = ("torch_int_mm", "torch_bf16", "torch_fp32")
        if quick:
            return [((1024, 1024, 1024), PAIRS_QUICK, peers),
                    ((1, 11008, 4096), [(8, 1), (8, 2), (8, 4), (4, 4)], peers)]
        return [((1024, 1024, 1024), PAIRS_FULL, peers), ((4096, 4096, 4096), PAIRS_FULL, peers)] \
            + [((m, 11008, 4096), PAIRS_FULL, peers) for m in (1, 8, 16)]
    peers = ("torch_int_mm", "torch_fp16")
    if quick:
        return [((8192, 8192, 8192), [(1, 1), (2, 1), (2, 2), (4, 4)], peers),
                ((16, 28672, 8192), [(8, 1), (8, 2), (8, 4)], peers)]
    return [((8192, 8192, 8192), PAIRS_FULL, peers)] + \
        [((m, 28672, 8192), PAIRS_FULL, peers) for m in (1, 8, 16)]


def _ints(rows: int, k: int, bits: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (rows, k), generator=g, dtype=torch.int32)


def _operands(impl: str, shape: tuple, bits_a: int, bits_w: int, device: str):
    """(A operand, weight Rotation) for one impl; the weight rotation is shared by every case of the shape."""
    m, n, k = shape

    def weights() -> Rotation:
        if impl == "fastops":
            import fastops  # here, not at import: the peers still run while fastops is missing

            base = fastops.bitgemm.pack(_ints(n, k, bits_w, seed=n).to(device), bits_w, "signed")
        elif impl == "torch_int_mm":
            base = _ints(n, k, 8, seed=n).to(torch.int8).t().contiguous().to(device)  # [K, N]
        else:
            dtype = {"torch_bf16": torch.bfloat16, "torch_fp16": torch.float16, "torch_fp32": torch.float32}[impl]
            base = harness.seeded_randn(n, k, seed=n).to(device, dtype)
        return Rotation(base, device)

    w = memo(("weights", impl, bits_w if impl == "fastops" else None), weights)
    if impl == "fastops":
        import fastops

        a = memo(("a", bits_a), lambda: fastops.bitgemm.pack(_ints(m, k, bits_a, seed=m).to(device), bits_a, "signed"))
    elif impl == "torch_int_mm":
        a = memo(("a", "int8"), lambda: _ints(m, k, 8, seed=m).to(torch.int8).to(device))
    else:
        a = memo(("a", w.items[0].dtype), lambda: harness.seeded_randn(m, k, seed=m).to(device, w.items[0].dtype))
    return a, w


def _runner(impl: str, a):
    if impl == "fastops":
        import fastops

        return lambda w: fastops.bitgemm.gemm(a, w)
    if impl == "torch_int_mm":
        return lambda w: torch._int_mm(a, w)
    return lambda w: F.linear(a, w)


def _case(device: str, shape: tuple, impl: str, bits_a: int = 8, bits_w: int = 8) -> Case:
    m, n, k = shape

    def prepare() -> Prepared:
        a, rotation = _operands(impl, shape, bits_a, bits_w, device)
        a_bytes = a.planes.numel() * 4 if impl == "fastops" else a.nbytes
        w_bytes = rotation.items[0].planes.numel() * 4 if impl == "fastops" else rotation.copy_bytes
        out_bytes = m * n * (4 if impl in ("fastops", "torch_int_mm") else rotation.items[0].element_size())
        dtype = torch.int32 if impl in ("fastops", "torch_int_mm") else rotation.items[0].dtype
        return Prepared(_runner(impl, a), rotation, w_bytes + a_bytes + out_bytes, 2 * m * n * k, dtype)

    params = {"A": bits_a, "W": bits_w} if impl == "fastops" else {}
    return Case(OP, device, f"{m}x{n}x{k}", params, impl, prepare)


def build_cases(device: str, quick: bool) -> list[Case]:
    cases = []
    for shape, pairs, peers in _plan(device, quick):
        cases += [_case(device, shape, "fastops", a, w) for a, w in pairs]
        cases += [_case(device, shape, peer) for peer in peers]
    return cases


if __name__ == "__main__":
    harness.main(build_cases)
