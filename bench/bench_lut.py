"""fastops.lut_gemm (low-bit weight x float activation GEMM) against the torch paths a user would
otherwise take: dense F.linear in fp32/bf16 (CPU) or fp16 (CUDA), torch's int4 group-wise kernels
(_weight_int4pack_mm[_for_cpu]) and, on CPU, its int8 per-channel kernel (_weight_int8pack_mm).

Shapes are M x K (out x in, nn.Linear layout); x is [N, K]. Weights are group-wise asymmetric with
g = 128 for fastops and int4pack. Bytes per call = packed weight (planes + scales + zeros, or the
peer's own weight format) + x + y; FLOPs = 2*N*M*K. Activations: fastops fp32 on CPU and fp16
on CUDA; each peer in its fast dtype (X_DTYPE). On the CPU, fastops takes its dense path (dequantized
row blocks x torch's fp32 matmul, bf16 on CPUs with AVX512_BF16) for long batches: precise=True from
N = 96, the default from an N that depends on the kernel, bits and shape (fastops.lut.cpu_path); the
N = 256 and 8192 rows time it. Usually run through bench/run.py.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

import harness
from harness import Case, Prepared, Rotation, memo

OP = "lut_gemm"
GROUP = 128
# Activation dtype per impl and device: fastops is timed on the dtype users feed it (fp32 on CPU,
# fp16 on CUDA); each peer on its fast dtype. torch's CPU int4pack/int8pack kernels take fp32 too
# but are ~20x slower there than in bf16 (measured, torch 2.13, AVX2); the CUDA int4pack takes bf16 only.
X_DTYPE = {
    "cpu": {"fastops": torch.float32, "torch_fp32": torch.float32, "torch_bf16": torch.bfloat16,
            "torch_int4pack": torch.bfloat16, "torch_int8pack": torch.bfloat16},
    "cuda": {"fastops": torch.float16, "torch_fp16": torch.float16, "torch_int4pack": torch.bfloat16},
}
PEERS = {"cpu": ("torch_fp32", "torch_bf16", "torch_int4pack", "torch_int8pack"),
         "cuda": ("torch_fp16", "torch_int4pack")}


def _plan(device: str, quick: bool) -> dict:
    """Shapes (M, K), N and q per device; `long` = [(shape, ns)] of extra long token batches (where the CPU
    dense path takes over; 1536 x 384 and 384 x 1536 at N = 8192 are a small encoder's (MiniLM's) FFN
    at batch 64 x 128 tokens); `precise` = (shape, qs, ns) timed with precise=True."""
    if device == "cpu":
        if quick:
            return {"shapes": [(11008, 4096)], "ns": [1, 16], "qs": [2, 4], "long": None,
                    "precise": ((11008, 4096), [4], [1, 16])}
        return {"shapes": [(4096, 4096), (11008, 4096), (4096, 11008)], "ns": [1, 4, 16, 64],
                "qs": [1, 2, 3, 4],
                "long": [((11008, 4096), [256]), ((1536, 384), [8192]), ((384, 1536), [8192])],
                "precise": ((11008, 4096), [1, 2, 3, 4], [1, 16, 256])}
    if quick:
        return {"shapes": [(28672, 8192)], "ns": [1, 16], "qs": [2, 4], "long": None, "precise": None}
    return {"shapes": [(28672, 8192), (4096, 4096)], "ns": [1, 8, 16, 64, 256], "qs": [2, 3, 4], "long": None,
            "precise": None}


def _weight(m: int, k: int) -> torch.Tensor:
    """The fp32 weight every impl of a shape quantizes or converts (CPU, seeded)."""
    return memo("weight", lambda: harness.seeded_randn(m, k, seed=m * 7 + k, scale=0.02))


def _x(n: int, k: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    return memo(("x", n, dtype), lambda: harness.seeded_randn(n, k, seed=n).to(device, dtype))


def _int4_groupwise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's int4pack convention: w ~ (q - 8) * scale + zero per (row, group of GROUP along K),
    q int32 [M, K] in 0..15, scales_and_zeros [K / GROUP, M, 2]."""
    m, k = w.shape
    wg = w.view(m, k // GROUP, GROUP)
    lo, hi = wg.amin(-1), wg.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-8)
    q = ((wg - lo[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32).view(m, k)
    zero = lo + 8 * scale
    return q, torch.stack([scale.t(), zero.t()], -1).contiguous()


def _int4pack(w: torch.Tensor, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    q, scales_and_zeros = _int4_groupwise(w.to(device))
    if device == "cpu":
        packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)  # int32 [M, K] -> uint8 [M, K/2]
    else:
        # CUDA takes uint8 [M, K/2], even k in the high nibble; inner_k_tiles=8 as in torchao.
        packed = torch._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), 8)
    return packed, scales_and_zeros.to(dtype)


def _int8pack(w: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    scale = w.abs().amax(1).clamp(min=1e-8) / 127  # per output channel, symmetric
    q = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
    return q, scale.to(dtype)


def _weights(impl: str, q: int | None, m: int, k: int, device: str, dtype: torch.dtype) -> Rotation:
    """Rotation of one impl's weight, shared by every N of the shape."""

    def make() -> Rotation:
        w = _weight(m, k)
        if impl == "fastops":
            import fastops  # here, not at import: the peers still run while fastops is missing

            # On the device the weight will live on: seconds on a GPU, tens of seconds on a CPU at 28672x8192.
            base = fastops.lut.quantize(w.to(device), q, group_size=GROUP, scheme="asym")
        elif impl == "torch_int4pack":
            base = _int4pack(w, device, dtype)
        elif impl == "torch_int8pack":
            base = tuple(t.to(device) for t in _int8pack(w, dtype))
        else:
            base = w.to(device, dtype)
        return Rotation(base, device)

    return memo(("weights", impl, q), make)


def _runner(impl: str, x: torch.Tensor, precise: bool):
    if impl == "fastops":
        import fastops

        return lambda w: fastops.lut_gemm(x, w, precise=precise)
    if impl == "torch_int4pack":
        mm = torch._weight_int4pack_mm_for_cpu if x.device.type == "cpu" else torch._weight_int4pack_mm
        return lambda w: mm(x, w[0], GROUP, w[1])
    if impl == "torch_int8pack":
        return lambda w: torch._weight_int8pack_mm(x, w[0], w[1])
    return lambda w: F.linear(x, w)


def _case(device: str, m: int, k: int, n: int, impl: str, q: int | None = None, precise: bool = False) -> Case:
    dtype = X_DTYPE[device][impl]

    def prepare() -> Prepared:
        rotation = _weights(impl, q, m, k, device, dtype)
        x = _x(n, k, device, dtype)
        nbytes = rotation.copy_bytes + x.nbytes + n * m * x.element_size()
        return Prepared(_runner(impl, x, precise), rotation, nbytes, 2 * n * m * k, dtype)

    params = {"N": n} | ({"q": q} if q is not None else {}) | ({"precise": 1} if precise else {})
    return Case(OP, device, f"{m}x{k}", params, impl, prepare)


def build_cases(device: str, quick: bool) -> list[Case]:
    plan = _plan(device, quick)
    runs = list(itertools.product(plan["shapes"], plan["ns"]))
    for shape, ns in plan["long"] or ():
        runs += [(shape, n) for n in ns]
    cases = []
    for (m, k), n in runs:
        cases += [_case(device, m, k, n, "fastops", q) for q in plan["qs"]]
        if plan["precise"] and plan["precise"][0] == (m, k) and n in plan["precise"][2]:
            cases += [_case(device, m, k, n, "fastops", q, precise=True) for q in plan["precise"][1]]
        cases += [_case(device, m, k, n, peer) for peer in PEERS[device]]
    return cases


if __name__ == "__main__":
    harness.main(build_cases)
