"""Shared test plumbing: device and CPU-ISA parametrization, markers, seeded generators.

Markers: `gpu` tests need a CUDA build of fastops and a usable CUDA device; `sm90` tests need a
compute capability 9.x device. Both are skipped, with the reason, otherwise."""
from __future__ import annotations

import pytest
import torch

import fastops
from fastops import _C


def _cuda_skip_reason() -> str | None:
    if not fastops.built_with_cuda:
        return "fastops was built without CUDA"
    if not fastops.cuda_available():
        return "no usable CUDA device"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _cuda_skip_reason()
    sm90 = reason is None and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
    for item in items:
        if reason and ("gpu" in item.keywords or "sm90" in item.keywords):
            item.add_marker(pytest.mark.skip(reason=reason))
        elif "sm90" in item.keywords and not sm90:
            item.add_marker(pytest.mark.skip(reason="needs a compute capability 9.x (Hopper) GPU"))


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]

_ISA_ORDER = ["scalar", "avx2", "avx512"]
CPU_ISAS = _ISA_ORDER[: _ISA_ORDER.index(_C.best_isa()) + 1]


@pytest.fixture
def cpu_isa(request):
    """Runs the test with CPU kernels forced to request.param, restoring the automatic choice after."""
    _C.set_isa(request.param)
    yield request.param
    _C.set_isa("auto")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
