"""`python -m fastops check`: every operator on random inputs against its reference, on every usable
device, as a pass/fail table. The first thing to run on a new machine."""
from __future__ import annotations

import time

import torch

from . import _C, cuda_available, lut
from .reference import lut as lut_ref


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.detach().cpu().double(), ref.double()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-30))


def _lut_cases():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(67, 200, generator=gen)
    x = torch.randn(5, 200, generator=gen)
    # (name, dtype, precise, bound): bounds are the documented ones (README, fastops.lut_gemm).
    for bits in (1, 2, 3, 4):
        for scheme in ("asym", "bcq"):
            yield f"lut_gemm q={bits} {scheme}", lut.quantize(w, bits, 64, scheme), x, torch.float32, False, 1e-2
    packed = lut.quantize(w, 4, 64, "asym")
    yield "lut_gemm q=4 precise fp32", packed, x, torch.float32, True, 1e-5
    yield "lut_gemm q=4 bf16", packed, x, torch.bfloat16, False, 2e-2
    yield "lut_gemm q=4 fp16", packed, x, torch.float16, False, 1e-2


def run_checks(devices=None) -> list[tuple[str, str, bool, str]]:
    if devices is None:
        devices = ["cpu"] + (["cuda"] if cuda_available() else [])
    rows = []
    for device in devices:
        for name, w, x, dtype, precise, bound in _lut_cases():
            t0 = time.perf_counter()
            try:
                xd = x.to(device=device, dtype=dtype)
                y = lut.lut_gemm(xd, w.to(device), precise=precise)
                ref = lut_ref.lut_gemm(xd, w)
                err = _rel_err(y, ref)
                ok = bool(err <= bound) and y.dtype == dtype and y.device.type == device
                detail = f"rel err {err:.2e} (bound {bound:.0e}), {1e3 * (time.perf_counter() - t0):.1f} ms"
            except Exception as e:  # a check table reports failures, it does not stop at the first
                ok, detail = False, f"{type(e).__name__}: {e}"
            rows.append((name, device, ok, detail))
    return rows


def main() -> int:
    print(f"fastops {_C.__version__}: checking every operator against its reference")
    if not cuda_available():
        why = "fastops was built without CUDA" if not _C.built_with_cuda else "no usable CUDA device"
        print(f"  CUDA: skipped ({why}); CPU ISA: {_C.active_isa()}")
    rows = run_checks()
    width = max(len(r[0]) for r in rows)
    for name, device, ok, detail in rows:
        print(f"  {'PASS' if ok else 'FAIL'}  {name:<{width}}  {device:<4}  {detail}")
    failed = sum(not r[2] for r in rows)
    print(f"{len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0
