"""fastops.sparse: strip-bitmap packing (against an independent encoder), spmm on every device / CPU ISA /
dtype / sparsity / token count against the dense float64 product, bad input, torch integration and
SparseLinear."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fastops import _C, sparse
from fastops.nn import SparseLinear
from fastops.reference import sparse as ref
from conftest import CPU_ISAS, DEVICES
from tolerances import SPMM_ELEMENT_BOUND

FLOATS = [torch.float32, torch.float16, torch.bfloat16]
SPARSITIES = [0.0, 0.5, 0.7, 0.9, 0.99, 1.0]
TOKENS = [1, 3, 8, 16, 64, 257]


def _pruned(gen, m, k, sparsity, dtype=torch.float32):
    w = torch.randn(m, k, generator=gen)
    w[torch.rand(m, k, generator=gen) < sparsity] = 0
    return w.to(dtype)


def _pack(w):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sparse.SparsityWarning)
        return sparse.pack(w)


def _check_spmm(y, x, w_dense, bias=None):
    """Elementwise: |y - ref| <= bound * (sum |x w| + |bias|), ref and scale in float64."""
    expect, scale = ref.spmm(x.reshape(-1, x.shape[-1]), w_dense, bias)
    got = y.detach().cpu().double().reshape(expect.shape)
    bound = SPMM_ELEMENT_BOUND[y.dtype] * scale + 1e-30
    bad = ~((got - expect).abs() <= bound)
    assert not bool(bad.any()), (f"{int(bad.sum())} of {bad.numel()} elements off; worst "
                                 f"{float(((got - expect).abs() / bound).max()):.3g} x the bound")


# ---------------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("m,k,sparsity", [(1, 1, 0.0), (16, 64, 0.0), (17, 65, 0.5), (40, 131, 0.9),
                                          (33, 128, 1.0), (5, 200, 0.7)])
def test_pack_matches_reference_encoder(gen, device, dtype, m, k, sparsity):
    w = _pruned(gen, m, k, sparsity, dtype)
    sw = _pack(w.to(device))
    masks, values, strip_offsets, chunk_offsets = ref.encode(w)
    assert np.array_equal(sw.masks.cpu().numpy().view(np.uint32), masks)
    assert np.array_equal(ref._bits_of(sw.values[:sw.nnz]), values)
    assert not bool(sw.values[sw.nnz:].any())  # the padding is zeros
    assert np.array_equal(sw.strip_offsets.cpu().numpy(), strip_offsets)
    assert np.array_equal(sw.chunk_offsets.cpu().numpy(), chunk_offsets)
    assert torch.equal(sw.to_dense().cpu(), w)
    assert torch.equal(sw._to_dense_torch().cpu(), w)  # the path CUDA weights take, checked everywhere
    np.testing.assert_array_equal(ref.decode(sw), w.double().numpy())
    assert sw.shape == (m, k) and sw.dtype == dtype and sw.device.type == device
    assert sw.nnz == int((w != 0).sum()) and sw.sparsity == pytest.approx(1 - sw.nnz / (m * k))
    sw.validate()


@pytest.mark.parametrize("device", DEVICES)
def test_pack_zero_sign_nan_and_strided_weight(gen, device):
    w = torch.randn(20, 70, generator=gen)
    w[3, 4], w[5, 6], w[7, 8] = -0.0, float("nan"), float("inf")
    w[:, 10:30] = 0
    base = torch.randn(70, 40, generator=gen)
    for dtype in FLOATS:
        sw = _pack(w.to(dtype).to(device))
        assert sw.nnz == int((w != 0).sum())  # -0.0 is zero, NaN and inf are values
        torch.testing.assert_close(sw.to_dense().cpu(), w.to(dtype), equal_nan=True, rtol=0, atol=0)
        t = base.to(dtype).to(device).t()  # column-major view: any strides pack the same
        assert torch.equal(_pack(t).masks, _pack(t.contiguous()).masks)
        assert torch.equal(_pack(t).values, _pack(t.contiguous()).values)


def test_pack_warns_below_break_even(gen):
    with pytest.warns(sparse.SparsityWarning, match="not smaller than the dense one"):
        sparse.pack(_pruned(gen, 32, 128, 0.02, torch.bfloat16))
    with warnings.catch_warnings():
        warnings.simplefilter("error", sparse.SparsityWarning)
        sw = sparse.pack(_pruned(gen, 32, 128, 0.5, torch.bfloat16))
    assert sw.nbytes < 32 * 128 * 2


def test_format_bytes_stay_within_the_bitmap_budget(gen):
    """At 50-90% sparsity: 2 B per nonzero + 1 bit per element + SpInfer's metadata (20 B per 4096)."""
    m, k = 256, 1024
    for s in (0.5, 0.7, 0.9):
        sw = sparse.pack(_pruned(gen, m, k, s, torch.float16))
        assert sw.nbytes <= 2 * sw.nnz + m * k / 8 + 20 * m * k / 4096 + 2 * 32 + 8 * (m // 16 + 1)


def test_state_dict_save_load_and_validate(gen, tmp_path):
    sw = sparse.pack(_pruned(gen, 50, 300, 0.7, torch.bfloat16))
    path = tmp_path / "w.pt"
    sw.save(path)
    back = sparse.SparseWeight.load(path)
    assert torch.equal(back.to_dense(), sw.to_dense()) and back.nbytes == sw.nbytes
    assert torch.equal(sw.to("cpu").values, sw.values)
    bad = dict(sw.state_dict())
    bad["chunk_offsets"] = bad["chunk_offsets"].clone()
    bad["chunk_offsets"][1, 1] += 1
    with pytest.raises(ValueError, match="chunk_offsets do not match"):
        sparse.SparseWeight.from_state_dict(bad)
    bad = dict(sw.state_dict())
    bad["masks"] = bad["masks"].clone()
    bad["masks"][-1, -1] |= 1  # a column past K = 300 (padding): the bit counts disagree first
    with pytest.raises(ValueError, match="do not match"):
        sparse.SparseWeight.from_state_dict(bad)
    # The same counts, one bit moved from a real column (unit 140) to padding (unit 150, same chunk).
    masks = sw.masks.clone()
    strip = int((masks[:, 140] != 0).nonzero()[0])
    bit = (int(masks[strip, 140]) & -int(masks[strip, 140])).bit_length() - 1
    masks[strip, 140] ^= 1 << bit
    masks[strip, 150] |= 1 << bit
    with pytest.raises(ValueError, match="outside the logical shape"):
        sparse.SparseWeight.from_state_dict(dict(sw.state_dict(), masks=masks))
    with pytest.raises(ValueError, match="outside the logical shape"):  # built directly: checked too
        sparse.SparseWeight(masks=masks, values=sw.values, strip_offsets=sw.strip_offsets,
                            chunk_offsets=sw.chunk_offsets, shape=sw.shape)
    bad = dict(sw.state_dict())
    bad["values"] = bad["values"][:-1].contiguous()
    with pytest.raises(ValueError, match="values holds"):
        sparse.SparseWeight.from_state_dict(bad)


def test_sparse_bitmask_import_export(gen):
    w = _pruned(gen, 9, 21, 0.6, torch.float16)
    # The compressed-tensors layout built by hand: row-major values, little-endian bit order per byte.
    present = (w != 0).numpy()
    bitmask = torch.from_numpy(np.packbits(present, axis=-1, bitorder="little"))
    counts = present.sum(1)
    row_offsets = torch.from_numpy(np.cumsum(counts) - counts)
    sw = sparse.from_sparse_bitmask(w[w != 0], bitmask, torch.tensor([9, 21]), row_offsets)
    assert torch.equal(sw.to_dense(), w)
    out = sparse.to_sparse_bitmask(sw)
    assert torch.equal(out["bitmask"], bitmask) and torch.equal(out["compressed"], w[w != 0])
    assert torch.equal(out["row_offsets"], row_offsets) and out["shape"].tolist() == [9, 21]
    with pytest.raises(ValueError, match="bitmask marks"):
        sparse.from_sparse_bitmask(w[w != 0][:-1], bitmask, [9, 21])
    with pytest.raises(ValueError, match="row_offsets do not match"):
        sparse.from_sparse_bitmask(w[w != 0], bitmask, [9, 21], row_offsets + 1)


def test_magnitude_prune(gen):
    w = torch.randn(30, 40, generator=gen)
    before = w.clone()
    p = sparse.magnitude_prune(w, 0.7)
    assert torch.equal(w, before)
    assert int((p == 0).sum()) == 840
    kept = p != 0
    assert float(w[kept].abs().min()) >= float(w[~kept].abs().max())
    assert torch.equal(p[kept], w[kept])
    assert torch.equal(sparse.magnitude_prune(w, 0.0), w)
    assert not bool(sparse.magnitude_prune(w, 1.0).any())


# ---------------------------------------------------------------------------------------------------
# spmm
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("n", TOKENS)
def test_spmm_matches_dense(gen, device, dtype, sparsity, n):
    m, k = 67, 131
    w = _pruned(gen, m, k, sparsity, dtype)
    x = torch.randn(n, k, generator=gen).to(dtype)
    bias = torch.randn(m, generator=gen).to(dtype) if n % 2 else None
    y = sparse.spmm(x.to(device), _pack(w.to(device)), None if bias is None else bias.to(device))
    assert y.shape == (n, m) and y.dtype == dtype and y.device.type == device
    _check_spmm(y, x, w, bias)


def _usable_sparse_kernels() -> list[str]:
    names = []
    for name in ("avx512", "avx512f", "avx2", "scalar"):
        try:
            _C.sparse_set_cpu_kernels(name)
            names.append(name)
        except ValueError:
            pass
    _C.sparse_set_cpu_kernels("auto")
    return names


SPARSE_KERNELS = _usable_sparse_kernels()


@pytest.fixture
def sparse_kernels(request):
    """Runs the test with the CPU SpMM kernels forced to request.param."""
    _C.sparse_set_cpu_kernels(request.param)
    yield request.param
    _C.sparse_set_cpu_kernels("auto")


@pytest.mark.parametrize("cpu_isa", CPU_ISAS, indirect=True)
def test_spmm_kernel_choice_follows_the_isa_level(cpu_isa):
    assert _C.sparse_cpu_kernel_name() in {"scalar": ("scalar",), "avx2": ("avx2",),
                                           "avx512": ("avx512", "avx512f")}[cpu_isa]
    with pytest.raises(ValueError, match="not one of auto"):
        _C.sparse_set_cpu_kernels("sse9")


@pytest.mark.parametrize("sparse_kernels", SPARSE_KERNELS, indirect=True)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 300])
def test_spmm_cpu_kernels(gen, sparse_kernels, dtype, n):
    """Every CPU kernel set's paths (decode straight into the multiply for 1-4 and 5-8 tokens, the tile,
    token slabs of 256: one thread, so one task holds all tokens) on a weight with a fully dense 16 x 64
    tile, an empty strip, empty columns and a partial last strip and chunk, and on a tiny odd one; NaN-
    poisoned outputs, strided x."""
    assert _C.sparse_cpu_kernel_name() == sparse_kernels
    w = _pruned(gen, 75, 300, 0.7)
    w[16:32, 64:128] = torch.randn(16, 64, generator=gen)
    w[32:48] = 0
    w[:, 200:240] = 0
    for w in (w.to(dtype), _pruned(gen, 5, 37, 0.5, dtype)):
        m, k = w.shape
        sw = _pack(w)
        x = torch.randn(n, 2 * k, generator=gen).to(dtype)[:, ::2]  # column stride 2
        for bias in (torch.randn(m, generator=gen).to(dtype), None):
            y = torch.full((n, m), float("nan"), dtype=dtype)
            _C.sparse_spmm(x, sw.masks, sw.values, sw.strip_offsets, sw.chunk_offsets, m, k, bias, y, nthreads=1)
            _check_spmm(y, x, w, bias)


@pytest.mark.parametrize("sparse_kernels", SPARSE_KERNELS, indirect=True)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n,nthreads", [(2, 1), (7, 1), (9, 1), (17, 1), (20, 2), (64, 2), (300, 1)])
def test_spmm_cpu_kernels_mixed_density(gen, sparse_kernels, dtype, n, nthreads):
    """A 95%-sparse weight (AVX2: the per-nonzero path for several tokens, at most 20% dense) whose second
    strip group is 70% sparse (the dense tile), a partial last group and chunk; token ranges split across
    threads at offsets that are not multiples of 8, two slabs (300), strided x, NaN-poisoned outputs."""
    w = _pruned(gen, 150, 300, 0.95)
    w[64:128] = _pruned(gen, 64, 300, 0.7)
    w = w.to(dtype)
    sw = _pack(w)
    padded = 320  # columns rounded up to 64; 10 strips of 16 rows
    assert sw.nnz / (160 * padded) <= 0.2 < int((w[64:128] != 0).sum()) / (64 * padded)
    x = torch.randn(n, 600, generator=gen).to(dtype)[:, ::2]
    for bias in (torch.randn(150, generator=gen).to(dtype), None):
        y = torch.full((n, 150), float("nan"), dtype=dtype)
        _C.sparse_spmm(x, sw.masks, sw.values, sw.strip_offsets, sw.chunk_offsets, 150, 300, bias, y,
                       nthreads=nthreads)
        _check_spmm(y, x, w, bias)


def test_spmm_large_shape_many_tasks(gen):
    m, k, n = 1000, 1500, 33
    w = _pruned(gen, m, k, 0.8, torch.bfloat16)
    x = torch.randn(n, k, generator=gen).to(torch.bfloat16)
    _check_spmm(sparse.spmm(x, _pack(w)), x, w)


@pytest.mark.parametrize("device", DEVICES)
def test_spmm_strided_and_batched_x_untouched(gen, device):
    w = _pruned(gen, 33, 96, 0.7).to(device)
    sw = _pack(w)
    base = torch.randn(4, 5, 192, generator=gen).to(device)
    for x in (base[..., ::2], base.transpose(0, 1)[..., :96], base[:, 1:4, 50:146], base[:, :, :96].unsqueeze(0)):
        before = base.clone()
        y = sparse.spmm(x, sw)
        assert y.shape == (*x.shape[:-1], 33)
        _check_spmm(y, x.cpu(), w.cpu())
        assert torch.equal(base, before)


def test_spmm_kernel_writes_every_element_and_only_its_rows(gen):
    """Destination-passing call with NaN-poisoned outputs: every element written, nothing outside."""
    w = _pruned(gen, 37, 129, 0.6)
    sw = _pack(w)
    for n in (1, 9):
        x = torch.randn(n, 129, generator=gen)
        y = torch.full((n, 50), float("nan"))
        _C.sparse_spmm(x, sw.masks, sw.values, sw.strip_offsets, sw.chunk_offsets, 37, 129, None, y[:, 5:42],
                       nthreads=2)
        assert torch.isnan(y[:, :5]).all() and torch.isnan(y[:, 42:]).all()
        _check_spmm(y[:, 5:42], x, w)


@pytest.mark.parametrize("device", DEVICES)
def test_spmm_empty_batch(gen, device):
    sw = _pack(_pruned(gen, 10, 40, 0.5).to(device))
    assert sparse.spmm(torch.randn(0, 40, device=device), sw).shape == (0, 10)
    assert sparse.spmm(torch.randn(2, 0, 40, device=device), sw).shape == (2, 0, 10)


def test_spmm_threads_deterministic(gen):
    sw = _pack(_pruned(gen, 40, 512, 0.7))  # one strip group: the tokens are split by thread count
    x = torch.randn(64, 512, generator=gen)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = sparse.spmm(x, sw)
        torch.set_num_threads(2)
        y2 = sparse.spmm(x, sw)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(y1, y2)


@pytest.mark.parametrize("sparse_kernels", SPARSE_KERNELS, indirect=True)
@pytest.mark.parametrize("sparsity,n", [(0.5, 2), (0.95, 1), (0.95, 9)])
def test_spmm_non_finite_x_matches_dense_semantics(gen, sparse_kernels, sparsity, n):
    """An inf or NaN in x meets the stored zeros of W as 0 * inf = NaN, like F.linear, on every path (the
    AVX2 per-nonzero path, which skips zeros, steps aside for such x)."""
    w = _pruned(gen, 40, 200, sparsity)
    x = torch.randn(n, 200, generator=gen)
    x[0, 3] = float("inf")
    x[n - 1, 150] = float("nan")
    y = sparse.spmm(x, _pack(w))
    torch.testing.assert_close(y, torch.nn.functional.linear(x, w), equal_nan=True)


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------
def test_bad_input(gen):
    sw = _pack(_pruned(gen, 8, 64, 0.5))
    x = torch.randn(3, 64, generator=gen)
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 64\]"):
        sparse.spmm(torch.randn(3, 65), sw)
    with pytest.raises(TypeError, match="x must have dtype"):
        sparse.spmm(x.to(torch.int32), sw)
    with pytest.raises(TypeError, match="x must have the dtype of w"):
        sparse.spmm(x.to(torch.float16), sw)
    with pytest.raises(TypeError, match="SparseWeight"):
        sparse.spmm(x, torch.randn(8, 64))
    with pytest.raises(ValueError, match=r"bias must have shape \[8\]"):
        sparse.spmm(x, sw, torch.randn(7))
    with pytest.raises(TypeError, match="bias must have the dtype of x"):
        sparse.spmm(x, sw, torch.randn(8, dtype=torch.float16))
    with pytest.raises(ValueError, match="same device|is on meta"):
        sparse.spmm(x.to("meta"), sw)
    with pytest.raises(ValueError, match="w must have shape"):
        sparse.pack(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="w must have dtype"):
        sparse.pack(torch.randint(0, 3, (8, 64)))
    with pytest.raises(TypeError, match="w must have dtype"):
        sparse.pack(torch.randn(8, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-empty"):
        sparse.pack(torch.randn(0, 64))
    with pytest.raises(ValueError, match="sparsity must be a number"):
        sparse.magnitude_prune(torch.randn(4, 4), 1.5)
    with pytest.raises(ValueError, match="masks must have shape"):
        sparse.SparseWeight(masks=sw.masks[:, :1].contiguous(), values=sw.values, strip_offsets=sw.strip_offsets,
                            chunk_offsets=sw.chunk_offsets, shape=(8, 64))
    with pytest.raises(ValueError, match="strip_offsets do not match"):
        sparse.SparseWeight(masks=sw.masks, values=sw.values, strip_offsets=sw.strip_offsets * 0,
                            chunk_offsets=sw.chunk_offsets, shape=(8, 64))
    with pytest.raises(TypeError, match="shape must be a tuple"):
        sparse.SparseWeight(masks=sw.masks, values=sw.values, strip_offsets=sw.strip_offsets,
                            chunk_offsets=sw.chunk_offsets, shape=[8, 64])
    with pytest.raises(ValueError, match="meta device"):
        sparse.pack(torch.randn(8, 64, device="meta"))
    with pytest.raises(ValueError, match="bias must be contiguous"):
        sparse.spmm(x, sw, torch.randn(16)[::2])
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 64\]"):
        sparse.spmm(torch.tensor(1.0), sw)
    with pytest.raises(TypeError, match="shape must hold ints"):
        sparse.from_sparse_bitmask(torch.ones(3, dtype=torch.float16), torch.zeros(2, 1, dtype=torch.uint8), [1.9, 3])
    with pytest.raises(TypeError, match="SparseWeight"):
        sparse.to_sparse_bitmask(torch.randn(8, 64))
    with pytest.raises(TypeError, match="torch.nn.Linear"):
        SparseLinear.from_linear(torch.nn.Conv1d(2, 2, 1))


def test_binding_errors_map_to_python_types(gen):
    sw = _pack(_pruned(gen, 8, 64, 0.5))
    x, y = torch.randn(3, 64), torch.empty(3, 8)
    args = (sw.masks, sw.values, sw.strip_offsets, sw.chunk_offsets, 8, 64, None)
    with pytest.raises(TypeError, match="x must be float32, float16 or bfloat16"):
        _C.sparse_spmm(x.double(), *args, y)
    with pytest.raises(TypeError, match="share one dtype"):
        _C.sparse_spmm(x.half(), *args, y)
    with pytest.raises(ValueError, match=r"y must have shape \[3, 8\]"):
        _C.sparse_spmm(x, *args, torch.empty(3, 9))
    with pytest.raises(ValueError, match="masks has"):
        _C.sparse_spmm(x, sw.masks.reshape(-1)[:5], *args[1:], y)
    with pytest.raises(ValueError, match="strip_offsets must start at 0"):
        _C.sparse_spmm(x, sw.masks, sw.values[:-2], *args[2:], y)
    wild = sw.strip_offsets.clone()
    wild[0] = 1 << 40
    with pytest.raises(ValueError, match="strip_offsets must start at 0"):
        _C.sparse_spmm(x, sw.masks, sw.values, wild, sw.chunk_offsets, 8, 64, None, y)
    with pytest.raises(TypeError):  # .noconvert(): no silent copy of a non-tensor
        _C.sparse_spmm(x.tolist(), *args, y)


# ---------------------------------------------------------------------------------------------------
# torch integration
# ---------------------------------------------------------------------------------------------------
def test_opcheck(gen):
    sw = _pack(_pruned(gen, 24, 96, 0.7))
    for x, bias in ((torch.randn(4, 96, generator=gen), None),
                    (torch.randn(2, 3, 96, generator=gen, requires_grad=True), torch.randn(24, generator=gen))):
        torch.library.opcheck(torch.ops.fastops.spmm.default,
                              (x, sw.masks, sw.values, sw.strip_offsets, sw.chunk_offsets, bias, 24, 96))
    torch.library.opcheck(torch.ops.fastops.sparse_to_dense.default,
                          (sw.masks, sw.values, sw.strip_offsets, sw.chunk_offsets, 24, 96))


def test_gradient_wrt_x_and_bias(gen):
    w = _pruned(gen, 24, 96, 0.7)
    x = torch.randn(5, 96, generator=gen, requires_grad=True)
    bias = torch.randn(24, generator=gen, requires_grad=True)
    grad_y = torch.randn(5, 24, generator=gen)
    sparse.spmm(x, _pack(w), bias).backward(grad_y)
    torch.testing.assert_close(x.grad.double(), grad_y.double() @ w.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bias.grad, grad_y.sum(0))


def test_torch_compile_fullgraph(gen):
    linear = torch.nn.Linear(64, 32)
    layer = SparseLinear.from_linear(linear, sparsity=0.5)
    x = torch.randn(3, 64, generator=gen)
    compiled = torch.compile(lambda t: torch.relu(layer(t)), fullgraph=True)
    torch.testing.assert_close(compiled(x), torch.relu(layer(x)))


# ---------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------
def test_sparse_linear_from_linear(gen):
    linear = torch.nn.Linear(96, 40)
    layer = SparseLinear.from_linear(linear, sparsity=0.75)
    assert layer.weight.sparsity == pytest.approx(0.75, abs=1e-3)
    x = torch.randn(2, 6, 96, generator=gen)
    pruned = sparse.magnitude_prune(linear.weight.detach(), 0.75)
    _check_spmm(layer(x), x, pruned, linear.bias)
    assert "sparsity=0.750" in repr(layer)
    with pytest.warns(sparse.SparsityWarning):  # no pruning: the dense weight as it is
        exact = SparseLinear.from_linear(linear)
    _check_spmm(exact(x), x, linear.weight.detach(), linear.bias)


def test_sparsify_model_and_state_dict(gen):
    torch.manual_seed(0)

    def make():
        model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
        model.add_module("lm_head", torch.nn.Linear(64, 10))
        return model

    model = make()
    x = torch.randn(7, 128, generator=gen)
    pruned = [sparse.magnitude_prune(model[i].weight.detach(), 0.6) for i in (0, 2)]
    want = torch.nn.functional.linear(torch.nn.functional.gelu(torch.nn.functional.linear(x, pruned[0], model[0].bias)),
                                      pruned[1], model[2].bias)
    sparse.sparsify_model(model, sparsity=0.6, progress=False)
    assert isinstance(model[0], SparseLinear) and isinstance(model[2], SparseLinear)
    assert type(model.lm_head) is torch.nn.Linear  # skipped by default
    got = model[2](model[1](model[0](x)))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    fresh = make()
    sparse.sparsify_model(fresh, sparsity=0.6, progress=False)  # same seed-free pruning -> same nnz
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh[2](fresh[1](fresh[0](x))), got)
    corrupt = model.state_dict()
    corrupt["0.strip_offsets"] = corrupt["0.strip_offsets"].flip(0)
    with pytest.raises(ValueError, match="do not match"):
        fresh.load_state_dict(corrupt)
    with pytest.raises(ValueError, match="do not match"):  # the half-loaded layer refuses to run
        fresh[0](x)
