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


# ---------------------------------------------------------------------------------------------------
# _core.CustomOp: plain eager calls skip torch's dispatcher, everything else goes through it
# ---------------------------------------------------------------------------------------------------
@fastops._core.custom_op("fastops_test::scale_into", mutates_args=("out",))
def _scale_into(x: torch.Tensor, out: torch.Tensor, factor: float) -> torch.Tensor:
    out.copy_(x * factor)
    return x * factor


@_scale_into.register_fake
def _(x, out, factor):
    return torch.empty_like(x)


@fastops._core.custom_op("fastops_test::scale")
def _scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    return x * factor


@_scale.register_fake
def _(x, factor):
    return torch.empty_like(x)


def _route(op, *args, **kwargs) -> str:
    """Which way op(*args) went: "direct" (its implementation) or "dispatcher"."""
    calls = []
    real_impl = op._impl
    op._impl = lambda *a: (calls.append("direct"), real_impl(*a))[1]
    try:
        op(*args, **kwargs)
    finally:
        op._impl = real_impl
    return calls[0] if calls else "dispatcher"


class _Subclass(torch.Tensor):
    pass


class _PassThroughMode(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_custom_op_direct_call_only_when_nothing_needs_the_dispatcher():
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, out = torch.randn(4), torch.empty(4)
    assert _route(_scale_into, x, out, 2.0) == "direct"
    torch.testing.assert_close(out, 2 * x)
    xg = x.clone().requires_grad_()
    assert _route(_scale_into, xg, out, 2.0) == "dispatcher"  # autograd records
    with torch.no_grad():
        assert _route(_scale_into, xg, out, 2.0) == "direct"
    with torch.inference_mode():
        assert _route(_scale_into, x, out, 2.0) == "direct"
    assert _route(_scale_into, x, out, factor=2.0) == "dispatcher"
    assert _route(_scale_into, x.as_subclass(_Subclass), out, 2.0) == "dispatcher"
    assert _route(_scale_into, x.to("meta"), out.to("meta"), 2.0) == "dispatcher"
    with FakeTensorMode():
        fx, fout = torch.empty(4), torch.empty(4)
        assert _route(_scale_into, fx, fout, 2.0) == "dispatcher"
    with _PassThroughMode():
        assert _route(_scale_into, x, out, 2.0) == "dispatcher"
    routes = []
    torch.func.vmap(lambda v: routes.append(_route(_scale, v, 2.0)) or v)(torch.randn(3, 4))
    assert routes == ["dispatcher"]


def test_custom_op_direct_call_bumps_mutated_versions():
    x, out = torch.randn(4), torch.empty(4)
    before = out._version
    assert _route(_scale_into, x, out, 3.0) == "direct"
    assert out._version > before and x._version == 0


def test_custom_op_compiles_through_the_dispatcher():
    x, out = torch.randn(4), torch.empty(4)
    compiled = torch.compile(lambda a, b: _scale_into(a, b, 2.0), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, out), 2 * x)
    torch.testing.assert_close(out, 2 * x)


def test_check_indices():
    from fastops._core import check_indices
    idx = torch.tensor([0, 3, 1])
    key = torch.tensor([5, 9, 7])  # sorted by: 0, 2, 1
    check_indices("op", (("a", idx, 4), ("b", None, 4), ("c", torch.tensor([0, 2, 1]), 3, key)))
    with pytest.raises(ValueError, match=r"op: a has entries outside \[0, 3\)"):
        check_indices("op", (("a", idx, 3),))
    with pytest.raises(ValueError, match=r"op: n has entries outside \[0, 4\)"):
        check_indices("op", (("a", idx, 4), ("n", torch.tensor([-1]), 4)))
    with pytest.raises(ValueError, match=r"op: p must be a permutation of \[0, 3\) that sorts"):
        check_indices("op", (("p", torch.tensor([0, 0, 2]), 3, key),))  # sorted keys, not a permutation
    with pytest.raises(ValueError, match=r"op: p must be a permutation of \[0, 3\) that sorts"):
        check_indices("op", (("p", torch.tensor([0, 1, 2]), 3, key),))  # a permutation, keys 5 9 7
    with pytest.raises(ValueError, match=r"op: p must be a permutation of \[0, 3\) that sorts"):
        check_indices("op", (("p", torch.tensor([0, 2, 7]), 3, key),))  # out of range: no gather fault
    with pytest.raises(ValueError, match=r"op: p must be a permutation of \[0, 4\); it has 3 entries"):
        check_indices("op", (("p", idx, 4, key),))
    check_indices("op", (("empty", torch.tensor([], dtype=torch.int64), 0),))
