"""fastops.spmm (unstructured-sparse weight x dense activation) against what a user would otherwise run:
dense F.linear on the pruned weight (bf16 and fp32 on CPU, fp16 = cuBLAS on CUDA) and torch's CSR
sparse matmul (fp32 CSR on CPU; on CUDA it is cuSPARSE, fp16).

Shapes are M x K (out x in, nn.Linear layout) at sparsity s (percent of zeros, unstructured, uniform
at random); x is [N, K]. Bytes per call = the weight as each impl stores it (fastops: strip bitmap,
dense: M*K elements, CSR: values + int64 column indices + row pointers) + x + y; FLOPs = 2*N*M*K
(dense-equivalent). Activations: bf16 on CPU (fp32 for the fp32 peers), fp16 on CUDA. Every impl
cycles through enough weight copies to read them from DRAM / HBM. Usually run through bench/run.py.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

import harness
from harness import Case, Prepared, Rotation, memo

OP = "spmm"
DTYPE = {"cpu": torch.bfloat16, "cuda": torch.float16}
X_DTYPE = {"torch_fp32": torch.float32, "torch_csr_fp32": torch.float32}
PEERS = {"cpu": ("torch_bf16", "torch_fp32", "torch_csr_fp32"), "cuda": ("torch_fp16", "torch_csr")}
# OPT-66B layer shapes of the research note (QKV fused, out, FC1, FC2).
OPT66B = [(27648, 9216), (9216, 9216), (36864, 9216), (9216, 36864)]


def _plan(device: str, quick: bool) -> dict:
    if device == "cpu":
        if quick:
            return {"shapes": [(8192, 8192)], "sparsities": [70], "ns": [1, 8], "peers": ("torch_bf16",)}
        return {"shapes": [(8192, 8192), (11008, 4096)], "sparsities": [50, 70, 90], "ns": [1, 8, 32],
                "peers": PEERS["cpu"]}
    if quick:
        return {"shapes": [(8192, 8192)], "sparsities": [70], "ns": [8, 16], "peers": ("torch_fp16",)}
    return {"shapes": [(8192, 8192), *OPT66B], "sparsities": [50, 70, 90], "ns": [8, 16, 32],
            "peers": PEERS["cuda"]}


def _pruned(m: int, k: int, sparsity: int) -> torch.Tensor:
    """The fp32 weight with `sparsity` percent zeros that every impl of (shape, s) uses (CPU, seeded)."""
    def make():
        w = harness.seeded_randn(m, k, seed=m * 7 + k, scale=0.02)
        keep = torch.rand(m, k, generator=torch.Generator().manual_seed(sparsity)) >= sparsity / 100
        return w * keep
    return memo(("pruned", sparsity), make)


def _weights(impl: str, m: int, k: int, sparsity: int, device: str, dtype: torch.dtype) -> Rotation:
    def make() -> Rotation:
        w = _pruned(m, k, sparsity).to(device, dtype)
        if impl == "fastops":
            import fastops  # here, not at import: the peers still run while fastops is missing

            w = fastops.sparse.pack(w)
        rotation = Rotation(w, device, min_copies=2)  # every copy is already beyond the last-level cache
        if impl.startswith("torch_csr"):  # sparse tensors cannot be deep-copied: convert every dense copy
            rotation.items = [t.to_sparse_csr() for t in rotation.items]
            rotation.copy_bytes = _csr_bytes(rotation.items[0])
        return rotation

    return memo(("weights", impl, sparsity), make)


def _csr_bytes(w: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in (w.values(), w.col_indices(), w.crow_indices()))


def _runner(impl: str, x: torch.Tensor):
    if impl == "fastops":
        import fastops

        return lambda w: fastops.spmm(x, w)
    if impl.startswith("torch_csr"):
        xt = x.t().contiguous()
        return lambda w: torch.mm(w, xt).t()  # y^T = W x^T: the CSR operand must come first
    return lambda w: F.linear(x, w)


def _case(device: str, m: int, k: int, sparsity: int, n: int, impl: str) -> Case:
    dtype = X_DTYPE.get(impl, DTYPE[device])

    def prepare() -> Prepared:
        rotation = _weights(impl, m, k, sparsity, device, dtype)
        x = memo(("x", n, dtype), lambda: harness.seeded_randn(n, k, seed=n).to(device, dtype))
        nbytes = rotation.copy_bytes + x.nbytes + n * m * x.element_size()
        return Prepared(_runner(impl, x), rotation, nbytes, 2 * n * m * k, dtype)

    return Case(OP, device, f"{m}x{k}", {"s": sparsity, "N": n}, impl, prepare)


def build_cases(device: str, quick: bool) -> list[Case]:
    plan = _plan(device, quick)
    cases = []
    for (m, k), s, n in itertools.product(plan["shapes"], plan["sparsities"], plan["ns"]):
        cases += [_case(device, m, k, s, n, impl) for impl in ("fastops", *plan["peers"])]
    return cases


if __name__ == "__main__":
    harness.main(build_cases)
