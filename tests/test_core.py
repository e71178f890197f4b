"""The foundation: build configuration, CPU dispatch, CUDA availability errors, CLI."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import fastops
from fastops import _C


def test_info_describes_build_and_machine():
    d = fastops.info()
    assert d["version"] == fastops.__version__
    assert d["built_with_cuda"] == fastops.built_with_cuda
    assert d["cpu_isa"] in ("scalar", "avx2", "avx512")
    assert set(d["cpu_features"]) >= {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vpopcntdq",
                                      "avx512_vnni", "avx512_bf16", "avx512_vbmi"}
    if fastops.built_with_cuda:
        assert "80" in d["cuda_archs"] and "90a" in d["cuda_archs"]
    text = fastops.format_info(d)
    assert "CUDA" in text and "CPU kernel ISA" in text


def test_cuda_build_when_torch_sees_a_gpu():
    """A GPU machine must never silently get a CPU-only build (CUDACXX / FASTOPS_CUDA=ON)."""
    if torch.cuda.is_available():
        assert fastops.built_with_cuda, "torch sees a GPU but fastops was built without CUDA"
        assert fastops.cuda_available()


@pytest.mark.skipif(not fastops.built_with_cuda or torch.cuda.is_available(),
                    reason="needs a CUDA build of fastops on a machine without a usable GPU")
def test_no_usable_cuda_device_is_a_clear_runtime_error():
    with pytest.raises(RuntimeError, match="no usable CUDA device"):
        _C.cuda_device_count()
    assert not fastops.cuda_available()


@pytest.mark.skipif(fastops.built_with_cuda, reason="CPU-only build behaviour")
def test_cpu_only_build_says_so():
    with pytest.raises(RuntimeError, match="built without CUDA"):
        _C.cuda_device_count()


def test_isa_override_and_errors():
    best, default = _C.best_isa(), _C.active_isa()  # default: best, or lowered by FASTOPS_ISA
    try:
        _C.set_isa("scalar")
        assert _C.active_isa() == "scalar"
        assert _C.lut_cpu_kernel_name(False).startswith("scalar")
    finally:
        _C.set_isa("auto")
    assert _C.active_isa() == default
    with pytest.raises(ValueError, match="isa must be one of"):
        _C.set_isa("sse9")
    if best != "avx512":
        with pytest.raises(ValueError, match="not supported by this CPU"):
            _C.set_isa("avx512")


def _run(args, **env):
    full_env = dict(os.environ, **env)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full_env, timeout=300)


def test_isa_environment_variable_forces_scalar():
    out = _run(["-c", "import fastops; print(fastops.info()['cpu_isa'])"], FASTOPS_ISA="scalar")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "scalar"


def test_cli_info():
    out = _run(["-m", "fastops", "info"])
    assert out.returncode == 0, out.stderr
    assert "CUDA kernels built" in out.stdout and "CPU kernel ISA" in out.stdout


def test_cli_check_passes_everywhere_available():
    out = _run(["-m", "fastops", "check"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAIL" not in out.stdout and " 0 failed" in out.stdout
    if not fastops.cuda_available():
        assert "CUDA: skipped" in out.stdout


@pytest.mark.parametrize("family", ["lut", "bitgemm", "sparse", "trie"])
def test_cuda_kernel_index_math_on_cpu(family):
    """The CUDA kernels' layout / fragment / bank / vector-split math, checked on the host (no GPU needed)."""
    failures, report = getattr(_C, f"_{family}_cuda_layout_selftest")()
    assert failures == 0, report
