"""fastops.lut: quantizers, packing, lut_gemm on every device / CPU ISA, torch integration, modules."""
from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch

import fastops
from fastops import _C, lut
from fastops.reference import lut as ref
from conftest import CPU_ISAS, DEVICES
from tolerances import lut_bound, rel_err

FLOATS = [torch.float32, torch.float16, torch.bfloat16]


def _weight(gen, m, k, bits, group_size, scheme):
    return lut.quantize(torch.randn(m, k, generator=gen), bits, group_size, scheme)


def _check_gemm(x, w, bias, y, device, precise):
    expect = ref.lut_gemm(x, w, bias)
    assert y.shape == expect.shape and y.dtype == x.dtype and y.device.type == device
    assert torch.isfinite(y).all()
    assert rel_err(y, expect) <= lut_bound(device, precise, x.dtype)


# ---------------------------------------------------------------------------------------------------
# Packing and quantizers
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m,k", [(1, 1), (16, 32), (17, 33), (37, 100), (5, 257)])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_pack_layout_matches_reference_decoder(gen, m, k, bits):
    codes = torch.randint(0, 1 << bits, (m, k), generator=gen, dtype=torch.int32)
    groups = -(-k // 32)
    scales = torch.rand(m, groups, generator=gen) + 0.1
    w = lut.pack(codes, scales, bits=bits, group_size=32)
    np.testing.assert_array_equal(ref.unpack_codes(w.planes, m, k, bits), codes.numpy())
    assert torch.equal(w.codes(), codes.to(torch.uint8))
    # padding rows and k are zero bits (the kernels rely on it)
    full = ref.unpack_codes(w.planes, w.planes.shape[0] * 16, w.planes.shape[1] * 32, bits)
    full[:m, :k] = 0
    assert not full.any()


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_pack_dequantize_is_exact(gen, bits):
    m, k, g = 19, 150, 64  # partial last group
    codes = torch.randint(0, 1 << bits, (m, k), generator=gen)
    scales = (torch.rand(m, 3, generator=gen) + 0.05).half().float()
    zeros = torch.randint(0, 1 << bits, (m, 3), generator=gen).float()
    w = lut.pack(codes, scales, zeros, bits=bits, group_size=g)
    group = torch.arange(k) // g
    expect = scales[:, group] * (codes.float() - zeros[:, group])
    assert torch.equal(w.dequantize(), expect)
    np.testing.assert_allclose(ref.dequantize(w), expect.double().numpy(), rtol=0, atol=0)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("scheme", ["asym", "sym"])
def test_uniform_quantizers_round_to_nearest(gen, bits, scheme):
    w = torch.randn(33, 200, generator=gen)
    q = lut.quantize(w, bits, 64, scheme)
    deq = q.dequantize()
    group = torch.arange(200) // 64
    s = q.scales[:, 0, :33].float()[group].t()
    if bits == 1:  # two levels per group, split at 0 (sym) or at the group mean (asym)
        split = 0 if scheme == "sym" else w.view(33, -1)[:, :192].reshape(33, 3, 64).mean(-1)
        if scheme == "sym":
            assert torch.equal(deq > 0, w >= 0)
        else:
            assert torch.equal((deq[:, :192] > deq[:, :192].view(33, 3, 64).amin(-1).repeat_interleave(64, 1)),
                               w[:, :192] >= split.repeat_interleave(64, 1))
    else:  # half a step, plus the float16 rounding of the stored scale times the largest code distance
        assert ((deq - w).abs() <= s / 2 + s * 2.0 ** (bits - 11) + 1e-6).all()
    assert rel_err(deq, w) < {1: 0.85, 2: 0.6, 3: 0.25, 4: 0.12}[bits]


def test_ternary_levels(gen):
    w = torch.randn(20, 96, generator=gen)
    q = lut.quantize(w, 2, 32, "ternary")
    deq = q.dequantize()
    s = q.scales[:, 0, :20].float()[torch.arange(96) // 32].t()
    assert torch.all((deq == 0) | (deq == s) | (deq == -s))
    assert rel_err(deq, w) < 0.6
    with pytest.raises(ValueError, match="ternary.*bits=2"):
        lut.quantize(w, 3, 32, "ternary")


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_bcq_refinement_beats_greedy(gen, bits):
    w = torch.randn(24, 256, generator=gen)
    greedy = rel_err(lut.quantize(w, bits, 128, "bcq", bcq_iters=0).dequantize(), w)
    refined = rel_err(lut.quantize(w, bits, 128, "bcq").dequantize(), w)
    assert refined <= greedy + 1e-6
    assert refined < {1: 0.65, 2: 0.35, 3: 0.2, 4: 0.12}[bits]


def test_quantize_per_row_group_and_partial_group(gen):
    w = torch.randn(8, 100, generator=gen)
    for g in (None, -1):
        q = lut.quantize(w, 4, g)
        assert q.scales.shape[0] == 1 and q.group_size == 128
    q = lut.quantize(w, 4, 96)
    assert q.scales.shape[0] == 2  # 96 + a partial group of 4
    assert rel_err(q.dequantize(), w) < 0.12


def test_weight_state_dict_to_and_pickle(gen):
    w = _weight(gen, 21, 70, 3, 32, "bcq")
    again = lut.LutWeight.from_state_dict(w.state_dict())
    assert torch.equal(again.dequantize(), w.dequantize()) and again.scheme == "bcq"
    buf = io.BytesIO()
    torch.save(w, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded.planes, w.planes) and loaded.shape == (21, 70)
    assert w.to("cpu").nbytes == w.planes.numel() + 2 * (w.scales.numel() + w.zeros.numel())


# ---------------------------------------------------------------------------------------------------
# lut_gemm against the float64 reference
# ---------------------------------------------------------------------------------------------------
SHAPES = [(1, 1), (15, 31), (16, 32), (17, 33), (67, 257), (40, 200)]
GRID = list(itertools.product([1, 2, 3, 4], ["asym", "sym", "bcq"]))


@pytest.mark.parametrize("cpu_isa", CPU_ISAS, indirect=True)
@pytest.mark.parametrize("precise", [False, True])
@pytest.mark.parametrize("bits,scheme", GRID + [(2, "ternary")])
def test_lut_gemm_cpu_isas(gen, cpu_isa, precise, bits, scheme):
    for (m, k), n in zip(SHAPES, [1, 3, 17, 64, 5, 2]):
        w = _weight(gen, m, k, bits, 32 if k < 64 else 64, scheme)
        x = torch.randn(n, k, generator=gen)
        _check_gemm(x, w, None, lut.lut_gemm(x, w, precise=precise), "cpu", precise)


@pytest.mark.parametrize("cpu_isa", CPU_ISAS, indirect=True)
@pytest.mark.parametrize("bits,scheme", GRID + [(2, "ternary")])
@pytest.mark.parametrize("group_size", [32, 64, 4096])
def test_lut_gemm_precise_one_token(gen, cpu_isa, bits, scheme, group_size):
    """Decode (one token) in the precise mode: its own kernel on AVX2 for the uniform schemes (per-group
    sums of Q x, scale and zero point applied once per group). k = 300: a partial last group and k block;
    45 rows: a partial tile; group 4096 > k: one group."""
    w = _weight(gen, 45, 300, bits, group_size, scheme)
    for dtype in FLOATS:
        x = torch.randn(1, 300, generator=gen).to(dtype)
        bias = torch.randn(45, generator=gen).to(dtype)
        assert lut.cpu_path(w, 1, precise=True) == _C.lut_cpu_kernel_name(True)
        _check_gemm(x, w, bias, lut.lut_gemm(x, w, bias, precise=True), "cpu", True)
        _check_gemm(x * 1e3, w, None, lut.lut_gemm(x * 1e3, w, precise=True), "cpu", True)


def _int8_kernel_for(isa: str) -> str:
    f = _C.cpu_features()
    if isa == "avx512" and not (f["avx512bw"] and f["avx512_vbmi"] and f["avx512_vnni"]):
        return "avx2-int8"  # the AVX-512 LUT kernel needs VBMI and VNNI
    return f"{isa}-int8"


@pytest.mark.parametrize("cpu_isa", CPU_ISAS, indirect=True)
@pytest.mark.parametrize("bits,scheme", GRID + [(2, "ternary")])
def test_lut_gemm_int8_kernels_agree_bit_for_bit(gen, cpu_isa, bits, scheme):
    """Each ISA's int8 kernel does the scalar kernel's integer sums and fp32 operations in its order."""
    assert _C.lut_cpu_kernel_name(False) == _int8_kernel_for(cpu_isa)
    # n = 6, 7: token blocks of 4 plus 2 and 1; group 64 at k = 200: pairs of k blocks and a lone one
    for (m, k), n in zip(SHAPES, [1, 3, 7, 6, 5, 2]):
        w = _weight(gen, m, k, bits, 32 if k < 64 else 64, scheme)
        for dtype in FLOATS:
            x = torch.randn(n, k, generator=gen).to(dtype)
            bias = torch.randn(m, generator=gen).to(dtype)
            y = lut.lut_gemm(x, w, bias)
            _C.set_isa("scalar")
            expect = lut.lut_gemm(x, w, bias)
            _C.set_isa(cpu_isa)
            assert torch.equal(y, expect), (m, k, n, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [1, 3, 17, 64])
@pytest.mark.parametrize("group_size", [32, 128, 4096])
def test_lut_gemm_dtypes_and_groups(gen, device, dtype, n, group_size):
    m, k = 45, 300  # partial last group for g=32/128, one partial group for g=4096
    w = _weight(gen, m, k, 3, group_size, "asym").to(device)
    x = torch.randn(n, k, generator=gen).to(device=device, dtype=dtype)
    bias = torch.randn(m, generator=gen).to(device=device, dtype=dtype)
    _check_gemm(x, w, bias, lut.lut_gemm(x, w, bias), device, False)


@pytest.mark.gpu
@pytest.mark.parametrize("m,k,n,group_size", [
    (300, 256, 40, 128),   # M > 128: several tensor-core row blocks, several warps of LUT tiles per CTA
    (45, 1100, 600, 96),   # > 16 k blocks per LUT split (fp32), a group across the 16-block chunk boundary
])
def test_lut_gemm_cuda_large_tiles(gen, m, k, n, group_size):
    w = _weight(gen, m, k, 3, group_size, "asym").cuda()
    for dtype in FLOATS:
        x = torch.randn(n, k, generator=gen).to(device="cuda", dtype=dtype)
        bias = torch.randn(m, generator=gen).to(device="cuda", dtype=dtype)
        _check_gemm(x, w, bias, lut.lut_gemm(x, w, bias), "cuda", False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 8, 16, 64, 256])
def test_lut_gemm_batch_sizes_cross_paths(gen, device, n):
    """Every batch size, including those where CUDA switches from the LUT kernel to tensor cores."""
    w = _weight(gen, 96, 512, 4, 128, "asym").to(device)
    for dtype in FLOATS:
        x = torch.randn(n, 512, generator=gen).to(device=device, dtype=dtype)
        _check_gemm(x, w, None, lut.lut_gemm(x, w), device, False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_lut_gemm_strided_and_batched_x_untouched(gen, device, dtype):
    """Views with odd element offsets too (x[:, 1:4, 50:146] is not 16-byte aligned): in fp16/bf16 on CUDA
    they take the tensor-core kernel's unaligned-x loads, padding token rows included."""
    w = _weight(gen, 33, 96, 2, 32, "asym").to(device)
    base = torch.randn(4, 5, 192, generator=gen).to(device=device, dtype=dtype)
    for x in (base[..., ::2], base.transpose(0, 1)[..., :96], base[:, 1:4, 50:146], base[:, :, :96].unsqueeze(0)):
        before = base.clone()
        y = lut.lut_gemm(x, w)
        assert y.shape == (*x.shape[:-1], 33)
        _check_gemm(x, w, None, y, device, False)
        assert torch.equal(base, before)


# ---------------------------------------------------------------------------------------------------
# The CPU dense path: dequantized row blocks times torch's fp32 matmul
# ---------------------------------------------------------------------------------------------------
def _dequantize_kernel(w, dtype, row_begin=0, cols=None):
    m, k = w.shape
    cols = -(-m // 16) * 16 - row_begin if cols is None else cols
    out = torch.full((k, cols), float("nan"), dtype=dtype)  # poisoned: every element must be written
    _C.lut_dequantize(w.planes, w.scales, w.zeros, out, m, k, w.bits, w.group_size, lut._KERNEL_SCHEME[w.scheme],
                      row_begin, nthreads=2)
    return out


@pytest.mark.parametrize("cpu_isa", CPU_ISAS, indirect=True)
@pytest.mark.parametrize("bits,scheme", GRID + [(2, "ternary")])
def test_dequantize_kernel_is_bit_exact(gen, cpu_isa, bits, scheme):
    """out[k, r] = W[r, k] with the float32 values of the torch-op dequantization (the path LutWeight.dequantize
    takes on CUDA), bf16 rounded to nearest even."""
    for m, k, g in [(1, 1, 32), (37, 100, 32), (64, 256, 128), (50, 97, 64)]:
        w = _weight(gen, m, k, bits, g, scheme)
        expect = lut._dequantize(w.planes, w.scales, w.zeros, m, k, bits, w.group_size, lut._KERNEL_SCHEME[scheme],
                                 torch.float32)
        assert torch.equal(w.dequantize(), expect) and w.dequantize().is_contiguous()
        assert torch.equal(w.dequantize(torch.float16), expect.half())
        assert torch.equal(w.dequantize(torch.bfloat16), expect.bfloat16())
        np.testing.assert_allclose(ref.dequantize(w), expect.double().numpy(), rtol=1e-6, atol=1e-6)
        out = _dequantize_kernel(w, torch.float32)
        assert torch.equal(out[:, :m].t(), expect), (m, k)
        assert (out[:, m:] == 0).all()  # padding rows of the last tile
        assert torch.equal(_dequantize_kernel(w, torch.bfloat16)[:, :m].t(), expect.bfloat16())
        if m > 32:
            assert torch.equal(_dequantize_kernel(w, torch.float32, 32, 16)[:, :min(16, m - 32)].t(), expect[32:48])


def test_dequantize_kernel_bad_input(gen):
    w = _weight(gen, 20, 64, 2, 32, "asym")
    args = (w.planes, w.scales, w.zeros)
    with pytest.raises(ValueError, match=r"out must have shape \[64, cols\]"):
        _C.lut_dequantize(*args, torch.empty(32, 64), 20, 64, 2, 32, 0, 0)
    with pytest.raises(ValueError, match="multiples of 16"):
        _C.lut_dequantize(*args, torch.empty(64, 16), 20, 64, 2, 32, 0, 8)
    with pytest.raises(ValueError, match="multiples of 16"):
        _C.lut_dequantize(*args, torch.empty(64, 48), 20, 64, 2, 32, 0, 0)  # past the padded 32 rows
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        _C.lut_dequantize(*args, torch.empty(64, 32, dtype=torch.float16), 20, 64, 2, 32, 0, 0)
    with pytest.raises(ValueError, match="planes has"):
        _C.lut_dequantize(w.planes[:1], w.scales, w.zeros, torch.empty(64, 32), 20, 64, 2, 32, 0, 0)


def test_cpu_path_choice(gen):
    w = _weight(gen, 300, 256, 4, 128, "asym")
    kernel = _C.lut_cpu_kernel_name(False)
    dense = lut._default_dense_path()
    precise_min = lut._PRECISE_DENSE_MIN_TOKENS
    assert lut.cpu_path(w, precise_min - 1, precise=True) == _C.lut_cpu_kernel_name(True)
    assert lut.cpu_path(w, precise_min, precise=True) == "dense-fp32"
    assert lut.cpu_path(w, 1) == kernel
    rule = lut._DENSE_MIN_TOKENS.get((kernel, dense))
    threshold = rule(4, 300, 256) if rule else None
    if threshold is not None:
        assert lut.cpu_path(w, threshold - 1) == kernel and lut.cpu_path(w, threshold) == dense
    _C.set_isa("scalar")
    try:
        w2 = _weight(gen, 20, 64, 2, 32, "asym")
        assert lut.cpu_path(w2, 15) == "scalar-int8" and lut.cpu_path(w2, 16) == "dense-fp32"
    finally:
        _C.set_isa("auto")
    with pytest.raises(TypeError, match="w must be a LutWeight"):
        lut.cpu_path(torch.zeros(4, 4), 4)
    with pytest.raises(TypeError, match="n must be an int"):
        lut.cpu_path(w, 4.0)
    with pytest.raises(ValueError, match="n must be"):
        lut.cpu_path(w, -1)
    with pytest.raises(TypeError, match="precise must be a bool"):
        lut.cpu_path(w, 4, precise=1)


def test_avx512_bf16_crossover_model():
    """The fitted model: small-m layers (costly per-token tables) switch early, tiny weights (the dense
    path's fixed cost) late, 1-2 bit lookups on large layers never (cheaper than a bf16 matmul)."""
    rule = lut._avx512_bf16_min_tokens
    assert rule(4, 384, 1536) < rule(4, 4096, 4096) < rule(4, 11008, 4096)
    assert rule(4, 64, 4096) < rule(4, 128, 256)
    assert all(rule(b, 384, 1536) < rule(b, 1536, 384) for b in (1, 2, 3, 4))
    assert rule(1, 11008, 4096) is None and rule(2, 4096, 4096) is None
    assert all(rule(b, 4096, 4096) is None or rule(b, 4096, 4096) >= rule(b + 1, 4096, 4096) for b in (1, 2, 3))


@pytest.fixture
def small_dense_blocks(monkeypatch):
    """Dense-path blocks of 16 or 32 rows, so small weights take several blocks (and a partial tile), and
    the precise mode's dense path from 2 tokens."""
    monkeypatch.setattr(lut, "_DENSE_BLOCK_BYTES", 16 * 4 * 100)
    monkeypatch.setattr(lut, "_PRECISE_DENSE_MIN_TOKENS", 2)


@pytest.mark.parametrize("dense", ["dense-fp32", "dense-bf16"])
@pytest.mark.parametrize("bits,scheme", GRID + [(2, "ternary")])
def test_dense_path_matches_reference(gen, small_dense_blocks, monkeypatch, dense, bits, scheme):
    # the scalar kernel's thresholds (16 or 32 tokens) for either dense path, whatever this CPU has
    monkeypatch.setattr(lut, "_default_dense_path", lambda: dense)
    scalar_rule = lut._DENSE_MIN_TOKENS[("scalar-int8", "dense-fp32")]
    monkeypatch.setitem(lut._DENSE_MIN_TOKENS, ("scalar-int8", dense), scalar_rule)
    _C.set_isa("scalar")
    try:
        for (m, k), n in [((67, 100), 32), ((40, 257), 33), ((5, 33), 40)]:
            w = _weight(gen, m, k, bits, 32 if k < 128 else 64, scheme)
            for dtype in FLOATS:
                x = torch.randn(n, k, generator=gen).to(dtype)
                bias = torch.randn(m, generator=gen).to(dtype)
                assert lut.cpu_path(w, n) == dense
                _check_gemm(x, w, bias, lut.lut_gemm(x, w, bias), "cpu", False)
                for xs in (x, x[::2]):  # precise: dense from 2 tokens, strided x too
                    _check_gemm(xs, w, bias, lut.lut_gemm(xs, w, bias, precise=True), "cpu", True)
    finally:
        _C.set_isa("auto")


def test_dense_path_precise_is_float32_linear(gen, small_dense_blocks):
    """precise=True from 2 tokens is F.linear(x, w.dequantize()) to float32 round-off, bias included."""
    w = _weight(gen, 70, 200, 3, 64, "asym")
    x = torch.randn(9, 200, generator=gen)
    bias = torch.randn(70, generator=gen)
    torch.testing.assert_close(lut.lut_gemm(x, w, bias, precise=True),
                               torch.nn.functional.linear(x, w.dequantize(), bias), rtol=1e-5, atol=1e-5)
    empty = lut.lut_gemm(torch.randn(0, 200), w, precise=True)
    assert empty.shape == (0, 70)


def test_gradient_through_dense_blocks(gen, small_dense_blocks):
    w = _weight(gen, 70, 96, 2, 32, "bcq")  # 70 rows: blocks of 16 or 32 rows and a partial tile
    x = torch.randn(3, 4, 96, generator=gen, requires_grad=True)
    grad_y = torch.randn(3, 4, 70, generator=gen)
    lut.lut_gemm(x, w).backward(grad_y)
    w64 = torch.from_numpy(ref.dequantize(w))
    torch.testing.assert_close(x.grad.double(), grad_y.double() @ w64, rtol=1e-5, atol=1e-5)


def test_lut_gemm_kernel_writes_every_element(gen):
    """Destination-passing call with a NaN-poisoned output: every element must be written."""
    w = _weight(gen, 37, 129, 3, 32, "bcq")
    x = torch.randn(9, 129, generator=gen)
    for precise in (False, True):
        y = torch.full((9, 37), float("nan"))
        _C.lut_gemm(x, w.planes, w.scales, w.zeros, None, y, 37, 129, 3, 32, 1, precise, nthreads=2)
        _check_gemm(x, w, None, y, "cpu", precise)


def test_lut_gemm_output_rows_strided(gen):
    w = _weight(gen, 20, 64, 4, 32, "asym")
    x = torch.randn(3, 64, generator=gen)
    y = torch.full((3, 50), float("nan"))
    _C.lut_gemm(x, w.planes, w.scales, w.zeros, None, y[:, 5:25], 20, 64, 4, 32, 0, True, nthreads=1)
    assert torch.isnan(y[:, :5]).all() and torch.isnan(y[:, 25:]).all()
    _check_gemm(x, w, None, y[:, 5:25], "cpu", True)


@pytest.mark.parametrize("device", DEVICES)
def test_lut_gemm_empty_batch(gen, device):
    w = _weight(gen, 10, 40, 2, 32, "asym").to(device)
    y = lut.lut_gemm(torch.randn(0, 40, device=device), w)
    assert y.shape == (0, 10)
    y = lut.lut_gemm(torch.randn(2, 0, 40, device=device), w)
    assert y.shape == (2, 0, 10)


def test_lut_gemm_threads_deterministic(gen):
    w = _weight(gen, 300, 512, 4, 128, "asym")
    x = torch.randn(5, 512, generator=gen)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = lut.lut_gemm(x, w)
        torch.set_num_threads(2)
        y2 = lut.lut_gemm(x, w)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(y1, y2)


def test_lut_gemm_large_k_int_accumulation(gen):
    """Long groups (g = K) and large activations must not overflow the integer accumulators."""
    k = 8192
    w = _weight(gen, 20, k, 4, k, "asym")
    x = 50 * torch.randn(2, k, generator=gen)
    _check_gemm(x, w, None, lut.lut_gemm(x, w), "cpu", False)


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------
def test_bad_input(gen):
    w = _weight(gen, 8, 64, 2, 32, "asym")
    x = torch.randn(3, 64, generator=gen)
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 64\]"):
        lut.lut_gemm(torch.randn(3, 65), w)
    with pytest.raises(TypeError, match="x must have dtype"):
        lut.lut_gemm(x.to(torch.int32), w)
    with pytest.raises(TypeError, match="x must have dtype"):
        lut.lut_gemm(x.double(), w)
    with pytest.raises(TypeError, match="LutWeight"):
        lut.lut_gemm(x, torch.randn(8, 64))
    with pytest.raises(ValueError, match=r"bias must have shape \[8\]"):
        lut.lut_gemm(x, w, torch.randn(7))
    with pytest.raises(TypeError, match="bias must have the dtype of x"):
        lut.lut_gemm(x, w, torch.randn(8, dtype=torch.float16))
    with pytest.raises(ValueError, match="same device|is on meta"):
        lut.lut_gemm(x.to("meta"), w)
    for bits in (0, 5):
        with pytest.raises(ValueError, match="bits must be in"):
            lut.quantize(torch.randn(8, 64), bits)
    for g in (0, -5, 48):
        with pytest.raises(ValueError, match="group_size"):
            lut.quantize(torch.randn(8, 64), 2, g)
    with pytest.raises(TypeError, match="group_size must be an int"):
        lut.quantize(torch.randn(8, 64), 2, 32.0)
    with pytest.raises(ValueError, match="scheme"):
        lut.quantize(torch.randn(8, 64), 2, 32, "nf4")
    with pytest.raises(TypeError, match="w must have dtype"):
        lut.quantize(torch.randint(0, 3, (8, 64)), 2)
    bad = torch.randn(8, 64)
    bad[3, 7] = float("nan")
    with pytest.raises(ValueError, match="w contains NaN"):
        lut.quantize(bad, 2)
    with pytest.raises(ValueError, match="non-empty"):
        lut.quantize(torch.randn(0, 64), 2)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 3\]"):
        lut.pack(torch.full((8, 64), 4), torch.ones(8, 2), bits=2, group_size=32)
    with pytest.raises(ValueError, match=r"scales must have shape \[8, 2\]"):
        lut.pack(torch.zeros(8, 64, dtype=torch.int32), torch.ones(2, 8), bits=2, group_size=32)
    with pytest.raises(TypeError, match="qweight must be an integer"):
        lut.pack(torch.zeros(8, 64), torch.ones(8, 2), bits=2, group_size=32)


def test_binding_errors_map_to_python_types(gen):
    w = _weight(gen, 8, 64, 2, 32, "asym")
    x, y = torch.randn(3, 64), torch.empty(3, 8)
    with pytest.raises(TypeError, match="x must be float32, float16 or bfloat16"):
        _C.lut_gemm(x.double(), w.planes, w.scales, w.zeros, None, y.double(), 8, 64, 2, 32, 0)
    with pytest.raises(ValueError, match="planes has"):
        _C.lut_gemm(x, w.planes[:, :1], w.scales, w.zeros, None, y, 8, 64, 2, 32, 0)
    with pytest.raises(ValueError, match=r"y must have shape \[3, 8\]"):
        _C.lut_gemm(x, w.planes, w.scales, w.zeros, None, torch.empty(3, 9), 8, 64, 2, 32, 0)
    with pytest.raises(ValueError, match="bits must be in 1..4"):
        _C.lut_gemm(x, w.planes, w.scales, w.zeros, None, y, 8, 64, 7, 32, 0)
    with pytest.raises(TypeError):  # .noconvert(): no silent copy of a non-tensor
        _C.lut_gemm(x.tolist(), w.planes, w.scales, w.zeros, None, y, 8, 64, 2, 32, 0)


# ---------------------------------------------------------------------------------------------------
# torch integration
# ---------------------------------------------------------------------------------------------------
def test_opcheck(gen):
    w = _weight(gen, 24, 96, 3, 32, "bcq")
    for x, bias in ((torch.randn(4, 96, generator=gen), None),
                    (torch.randn(2, 3, 96, generator=gen, requires_grad=True), torch.randn(24, generator=gen))):
        torch.library.opcheck(torch.ops.fastops.lut_gemm.default,
                              (x, w.planes, w.scales, w.zeros, bias, 24, 96, 3, 32, 1, True))
    grad_y = torch.randn(2, 3, 24, generator=gen)
    torch.library.opcheck(torch.ops.fastops.lut_gemm_grad_x.default, (grad_y, w.planes, w.scales, w.zeros, 24, 96, 3,
                                                                      32, 1))


def test_gradient_wrt_x_and_bias(gen):
    w = _weight(gen, 24, 96, 4, 32, "asym")
    x = torch.randn(5, 96, generator=gen, requires_grad=True)
    bias = torch.randn(24, generator=gen, requires_grad=True)
    grad_y = torch.randn(5, 24, generator=gen)
    lut.lut_gemm(x, w, bias, precise=True).backward(grad_y)
    w64 = torch.from_numpy(ref.dequantize(w))
    torch.testing.assert_close(x.grad.double(), grad_y.double() @ w64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bias.grad, grad_y.sum(0))


def test_torch_compile_fullgraph(gen):
    layer = fastops.nn.LutLinear(_weight(gen, 32, 64, 2, 32, "asym"), torch.randn(32, generator=gen), precise=True)
    x = torch.randn(3, 64, generator=gen)
    compiled = torch.compile(lambda t: torch.relu(layer(t)), fullgraph=True)
    torch.testing.assert_close(compiled(x), torch.relu(layer(x)))


# ---------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------
def test_lut_linear_model_swap(gen):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    model.add_module("lm_head", torch.nn.Linear(64, 10))
    x = torch.randn(7, 128, generator=gen)
    want = model[2](model[1](model[0](x)))
    quantized = lut.quantize_model(model, bits=4, group_size=64, progress=False)
    assert isinstance(quantized[0], fastops.nn.LutLinear) and isinstance(quantized[2], fastops.nn.LutLinear)
    assert type(quantized.lm_head) is torch.nn.Linear  # skipped by default
    got = quantized[2](quantized[1](quantized[0](x)))
    assert rel_err(got, want) < 0.15  # 4-bit quantization error of two layers, not kernel error
    state = quantized.state_dict()
    fresh = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    fresh.add_module("lm_head", torch.nn.Linear(64, 10))
    lut.quantize_model(fresh, bits=4, group_size=64, progress=False)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh[2](fresh[1](fresh[0](x))), got)


def test_lut_linear_matches_its_weight(gen):
    linear = torch.nn.Linear(96, 40)
    layer = fastops.nn.LutLinear.from_linear(linear, bits=3, group_size=32, scheme="bcq")
    x = torch.randn(2, 6, 96, generator=gen)
    expect = ref.lut_gemm(x, layer.weight, linear.bias)
    assert rel_err(layer(x), expect) <= lut_bound("cpu", False, torch.float32)
    assert "bits=3" in repr(layer)
    skip_all = lut.quantize_model(torch.nn.Sequential(torch.nn.Linear(8, 8)), bits=2, group_size=32,
                                  skip=lambda name, mod: True, progress=False)
    assert type(skip_all[0]) is torch.nn.Linear
