"""fastops.bitgemm: packing, quantize_pack, exact gemm and gemm_scaled on every device / CPU ISA / method,
the overflow guard, torch integration and BitLinear."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import fastops
from fastops import _C, bitgemm
from fastops.nn import BitLinear
from fastops.reference import bitgemm as ref
from conftest import CPU_ISAS, DEVICES
from tolerances import REL_ERR, rel_err

FLOATS = [torch.float32, torch.float16, torch.bfloat16]
# (fmt, with zero points): every way an operand can be stored.
KINDS = [("unsigned", False), ("unsigned", True), ("signed", False), ("bipolar", False)]
CPU_METHODS = ["popcount", "int8"]


def _random_int(gen, rows, k, bits, fmt):
    lo, hi = bitgemm.value_range(bits, fmt)
    if fmt == "bipolar":
        return 2 * torch.randint(0, 1 << bits, (rows, k), generator=gen) - ((1 << bits) - 1)
    return torch.randint(lo, hi + 1, (rows, k), generator=gen)


def _operand(gen, rows, k, bits, kind, device="cpu"):
    fmt, with_zp = kind
    x = _random_int(gen, rows, k, bits, fmt)
    zp = torch.randint(0, 1 << bits, (rows,), generator=gen) if with_zp else None
    return bitgemm.pack(x.to(device), bits, fmt, zero_point=None if zp is None else zp.to(device)), x, zp


def _exact(a_vals, w_vals) -> torch.Tensor:
    return torch.from_numpy(ref.gemm(a_vals, w_vals))


def _assert_exact(c, a, w):
    expect = _exact(ref.values(a.to("cpu")), ref.values(w.to("cpu")))
    assert c.dtype == torch.int32 and tuple(c.shape) == tuple(expect.shape)
    assert torch.equal(c.cpu().to(torch.int64), expect)


# ---------------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k[0] + ("-zp" if k[1] else ""))
@pytest.mark.parametrize("rows,k", [(0, 9), (3, 0), (1, 1), (7, 31), (5, 256), (9, 257)])
def test_pack_round_trip_and_layout(gen, device, bits, kind, rows, k):
    bp, x, zp = _operand(gen, rows, k, bits, kind, device)
    assert bp.planes.shape == (bits, rows, -(-k // 256) * 8) and bp.device.type == device
    assert torch.equal(bp.unpack().cpu(), x.to(torch.int32))
    logical = x - (zp[:, None] if zp is not None else 0)
    np.testing.assert_array_equal(ref.values(bp), logical.numpy())  # decoded from the format description
    assert torch.equal(bp.values().cpu(), logical)
    assert ref.padding_is_zero(bp.planes, k)
    assert torch.equal(bp.rowsum.cpu().to(torch.int64), (logical - bp.offset.cpu()[:, None]).sum(1))
    popc = torch.stack([((x.to(torch.int64) & ((1 << bits) - 1) if kind[0] == "signed" else
                          (x + (1 << bits) - 1) // 2 if kind[0] == "bipolar" else x) >> i & 1).sum(1)
                        for i in range(bits)])
    assert torch.equal(bp.plane_popcounts().cpu().to(torch.int64), popc)


def test_bitpacked_to_save_load_state_dict(gen, tmp_path):
    bp, _, _ = _operand(gen, 6, 300, 3, ("unsigned", True))
    path = tmp_path / "w.pt"
    bp.save(path)
    back = bitgemm.BitPacked.load(path)
    assert (back.bits, back.fmt, back.k) == (3, "unsigned", 300)
    assert torch.equal(back.unpack(), bp.unpack()) and torch.equal(back.zero_point, bp.zero_point)
    again = bitgemm.BitPacked.from_state_dict(bp.state_dict())
    assert torch.equal(again.planes, bp.planes) and again.nbytes == bp.nbytes
    assert bp.nbytes == 3 * 6 * 16 * 4 + 2 * 6 * 4
    assert bp.to("cpu").shape == (6, 300)


def test_pack_rejects_bad_input(gen):
    ok = torch.zeros(2, 8, dtype=torch.int32)
    with pytest.raises(TypeError, match="x_int"):
        bitgemm.pack(ok.float(), 2)
    with pytest.raises(ValueError, match="bits"):
        bitgemm.pack(ok, 9)
    with pytest.raises(ValueError, match="bits"):
        bitgemm.pack(ok, 0)
    with pytest.raises(ValueError, match="fmt"):
        bitgemm.pack(ok, 2, "twos")
    with pytest.raises(ValueError, match=r"\[-2, 1\]"):
        bitgemm.pack(ok + 2, 2, "signed")
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        bitgemm.pack(ok - 1, 2, "unsigned")
    with pytest.raises(ValueError, match="odd"):
        bitgemm.pack(ok, 2, "bipolar")
    with pytest.raises(ValueError, match="zero_point"):
        bitgemm.pack(ok, 2, "signed", zero_point=1)
    with pytest.raises(ValueError, match="zero_point"):
        bitgemm.pack(ok, 2, "unsigned", zero_point=4)
    with pytest.raises(ValueError, match="2-D"):
        bitgemm.pack(ok[0], 2)
    x = ok.clone()
    bitgemm.pack(x, 2)
    assert torch.equal(x, ok)  # inputs are never modified


# ---------------------------------------------------------------------------------------------------
# Exact gemm: every bit pair x every format pair, every CPU ISA and method
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cpu_isa", CPU_ISAS, indirect=True)
@pytest.mark.parametrize("method", CPU_METHODS)
@pytest.mark.parametrize("bits_a,bits_w", list(itertools.product(range(1, 9), repeat=2)))
def test_gemm_exact_all_bits_and_formats_cpu(gen, cpu_isa, method, bits_a, bits_w):
    # m = 1 and 7 take the decode blocking (m = 1: short popcount tiles where there are some), m = 40 the
    # big-GEMM one, m = 100 the int8 panel kernel where there is one
    for (kind_a, kind_w), m in itertools.product(itertools.product(KINDS, repeat=2), (1, 7, 40, 100)):
        a, _, _ = _operand(gen, m, 257, bits_a, kind_a)
        w, _, _ = _operand(gen, 70, 257, bits_w, kind_w)
        _assert_exact(bitgemm.gemm(a, w, method=method), a, w)


@pytest.mark.parametrize("cpu_isa", CPU_ISAS, indirect=True)
def test_cpu_kernel_name_follows_isa_and_method(cpu_isa):
    assert bitgemm.cpu_kernel_name(16, 2, 2, "popcount") == f"{cpu_isa}-popcount"
    assert bitgemm.cpu_kernel_name(16, 2, 2, "int8") == f"{cpu_isa}-int8"
    # auto: one plane pair per output is always popcount; 64 plane pairs over a large batch never is
    assert bitgemm.cpu_kernel_name(4096, 1, 1) == f"{cpu_isa}-popcount"
    assert bitgemm.cpu_kernel_name(4096, 8, 8) == f"{cpu_isa}-int8"
    with pytest.raises(ValueError, match="method"):
        bitgemm.cpu_kernel_name(1, 2, 2, "fast")
    with pytest.raises(ValueError, match="bits_w"):
        bitgemm.cpu_kernel_name(1, 2, 9)


@pytest.mark.gpu
@pytest.mark.parametrize("bits_a,bits_w", list(itertools.product(range(1, 9), repeat=2)))
def test_gemm_exact_all_bits_and_formats_cuda(gen, bits_a, bits_w):
    for kind_a, kind_w in itertools.product(KINDS, repeat=2):
        a, _, _ = _operand(gen, 7, 257, bits_a, kind_a, "cuda")
        w, _, _ = _operand(gen, 13, 257, bits_w, kind_w, "cuda")
        _assert_exact(bitgemm.gemm(a, w), a, w)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 31, 127, 128, 255, 256, 257, 4096])
@pytest.mark.parametrize("bits_a,bits_w,kind_a,kind_w", [
    (1, 1, KINDS[3], KINDS[3]), (2, 1, KINDS[2], KINDS[3]), (3, 5, KINDS[1], KINDS[2]), (8, 8, KINDS[2], KINDS[1]),
    (4, 2, KINDS[0], KINDS[3])])
def test_gemm_exact_shapes(gen, device, k, bits_a, bits_w, kind_a, kind_w):
    ws = {n: _operand(gen, n, k, bits_w, kind_w, device)[0] for n in (1, 7, 64, 129)}
    for m in (1, 7, 64, 129):
        a, _, _ = _operand(gen, m, k, bits_a, kind_a, device)
        for n, w in ws.items():
            methods = CPU_METHODS if device == "cpu" else ["auto"]
            for method in methods:
                _assert_exact(bitgemm.gemm(a, w, method=method), a, w)


@pytest.mark.parametrize("device", DEVICES)
def test_gemm_large_multithreaded(gen, device):
    a, _, _ = _operand(gen, 150, 1000, 3, ("signed", False), device)
    w, _, _ = _operand(gen, 301, 1000, 2, ("bipolar", False), device)
    for method in (CPU_METHODS if device == "cpu" else ["auto"]):
        _assert_exact(bitgemm.gemm(a, w, method=method), a, w)


@pytest.mark.parametrize("cpu_isa", CPU_ISAS[-1:], indirect=True)
@pytest.mark.parametrize("m,n", [(100, 600), (1100, 40)])
def test_gemm_int8_operands_in_chunks(gen, cpu_isa, m, n):
    """At K = 16384 the int8 panel path (best ISA only: AVX-512) unpacks W in chunks of 256 rows and A in
    chunks of 1024."""
    k = 16384
    a, _, _ = _operand(gen, m, k, 8, ("signed", False))
    w, _, _ = _operand(gen, n, k, 7, ("unsigned", True))
    c = bitgemm.gemm(a, w, method="int8")
    # every partial sum is below 2^53 in magnitude, so float64 products and sums are exact
    expect = ref.values(a).astype(np.float64) @ ref.values(w).astype(np.float64).T
    assert c.dtype == torch.int32 and np.array_equal(c.numpy().astype(np.float64), expect)


def test_gemm_size_zero(gen):
    a, _, _ = _operand(gen, 0, 64, 2, KINDS[2])
    w, _, _ = _operand(gen, 5, 64, 2, KINDS[2])
    assert bitgemm.gemm(a, w).shape == (0, 5)
    a, _, _ = _operand(gen, 3, 0, 2, KINDS[3])
    w, _, _ = _operand(gen, 4, 0, 2, KINDS[3])
    assert torch.equal(bitgemm.gemm(a, w), torch.zeros(3, 4, dtype=torch.int32))


@pytest.mark.parametrize("device", DEVICES)
def test_overflow_guard_at_its_exact_boundary(device):
    # W8A8 unsigned at the extreme value: K = 33025 gives 33025 * 255 * 255 = 2147450625 <= 2^31 - 1.
    k = 33025
    full = torch.full((2, k), 255, dtype=torch.int32, device=device)
    a, w = bitgemm.pack(full, 8, "unsigned"), bitgemm.pack(full, 8, "unsigned")
    c = bitgemm.gemm(a, w)
    assert torch.equal(c.cpu(), torch.full((2, 2), k * 255 * 255, dtype=torch.int32))
    # the most negative product: signed -128 * bipolar +255 ... stays in range too
    big = bitgemm.pack(torch.full((1, k + 1), 255, dtype=torch.int32, device=device), 8, "unsigned")
    with pytest.raises(ValueError, match="overflow int32.*largest K is 33025"):
        bitgemm.gemm(big, big)
    with pytest.raises(ValueError, match="overflow"):
        bitgemm.gemm_scaled(big, big, torch.ones(1), torch.ones(1))
    # lower bit widths allow longer K: W1A1 at K = 2^31 - 1 would be fine, W4A4 up to 9544371
    assert bitgemm.INT32_MAX // (15 * 15) == 9544371


def test_gemm_rejects_bad_input(gen):
    a, _, _ = _operand(gen, 3, 64, 2, KINDS[2])
    w, _, _ = _operand(gen, 4, 65, 2, KINDS[2])
    with pytest.raises(ValueError, match="same K"):
        bitgemm.gemm(a, w)
    with pytest.raises(TypeError, match="BitPacked"):
        bitgemm.gemm(a, torch.zeros(4, 64))
    with pytest.raises(ValueError, match="method"):
        bitgemm.gemm(a, a, method="xor")
    if not fastops.cuda_available():
        fake = bitgemm.BitPacked(a.planes.to("meta"), a.offset.to("meta"), a.rowsum.to("meta"), 2, "signed", 64)
        with pytest.raises(ValueError, match="same device"):
            bitgemm.gemm(a, fake)
    with pytest.raises(ValueError, match="planes must have shape"):
        bitgemm.BitPacked(a.planes[:, :, :4].contiguous(), a.offset, a.rowsum, 2, "signed", 64)
    with pytest.raises(TypeError, match="planes"):
        bitgemm.BitPacked(a.planes.float(), a.offset, a.rowsum, 2, "signed", 64)


# ---------------------------------------------------------------------------------------------------
# gemm_scaled
# ---------------------------------------------------------------------------------------------------
def _scaled_case(gen, device, m, n, k, scale_kind, group_size):
    a, _, _ = _operand(gen, m, k, 4, ("signed", False), device)
    w, _, _ = _operand(gen, n, k, 3, ("unsigned", True), device)
    groups = -(-k // group_size) if group_size else 1
    if scale_kind == "tensor":
        sa, sw = torch.rand((), generator=gen) + 0.1, torch.rand(1, generator=gen) + 0.1
    elif scale_kind == "row":
        sa, sw = torch.rand(m, generator=gen) + 0.1, torch.rand(n, generator=gen) + 0.1
    else:
        sa, sw = torch.rand(m, groups, generator=gen) + 0.1, torch.rand(n, groups, generator=gen) + 0.1
    return a, w, sa.to(device), sw.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("out_dtype", FLOATS)
@pytest.mark.parametrize("scale_kind,group_size,k", [("tensor", None, 300), ("row", None, 257), ("row", 128, 300),
                                                     ("group", 128, 300), ("group", 256, 700), ("group", 384, 384)])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("m", [9, 45, 100])  # decode, big-GEMM blocking, int8 panel kernel
def test_gemm_scaled_matches_float64(gen, device, out_dtype, scale_kind, group_size, k, with_bias, m):
    n = 70
    a, w, sa, sw = _scaled_case(gen, device, m, n, k, scale_kind, group_size)
    bias = (torch.randn(n, generator=gen) * 10).to(device=device, dtype=out_dtype) if with_bias else None
    methods = CPU_METHODS if device == "cpu" else ["auto"]
    for method in methods:
        y = bitgemm.gemm_scaled(a, w, sa, sw, bias, out_dtype=out_dtype, group_size=group_size, method=method)
        assert y.dtype == out_dtype and y.shape == (m, n) and y.device.type == device
        expect = ref.gemm_scaled(ref.values(a.to("cpu")), ref.values(w.to("cpu")), sa, sw, bias, group_size)
        assert rel_err(y, torch.from_numpy(expect)) <= REL_ERR[("bitgemm_scaled", device, out_dtype)]


def test_gemm_scaled_rejects_bad_input(gen):
    a, w, sa, sw = _scaled_case(gen, "cpu", 3, 4, 300, "row", None)
    with pytest.raises(ValueError, match="a_scale must have shape"):
        bitgemm.gemm_scaled(a, w, torch.ones(5), sw)
    with pytest.raises(TypeError, match="w_scale"):
        bitgemm.gemm_scaled(a, w, sa, sw.double())
    with pytest.raises(ValueError, match="a_scale must have shape"):
        bitgemm.gemm_scaled(a, w, torch.ones(3, 3), sw)  # per-group scales need group_size
    with pytest.raises(ValueError, match="multiple of 128"):
        bitgemm.gemm_scaled(a, w, sa, sw, group_size=100)
    with pytest.raises(TypeError, match="bias must have dtype"):
        bitgemm.gemm_scaled(a, w, sa, sw, torch.zeros(4, dtype=torch.float16), out_dtype=torch.float32)
    with pytest.raises(ValueError, match="bias must have shape"):
        bitgemm.gemm_scaled(a, w, sa, sw, torch.zeros(5))
    with pytest.raises(TypeError, match="out_dtype"):
        bitgemm.gemm_scaled(a, w, sa, sw, out_dtype=torch.int32)


# ---------------------------------------------------------------------------------------------------
# quantize_pack
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("fmt", bitgemm.FORMATS)
@pytest.mark.parametrize("group", ["per_row", "per_tensor"])
def test_quantize_pack_matches_reference(gen, device, bits, fmt, group):
    x = torch.randn(11, 300, generator=gen) * (torch.rand(11, 1, generator=gen) * 4)
    x[3] = 0  # an all-zero row gets scale 1
    x[5, :10] = torch.tensor([0.5, -0.5, 1.5, -2.5, 2.5, 3.5, 0.0, -0.0, 7.0, -7.0])  # ties to even
    for dtype in FLOATS:
        xd = x.to(device=device, dtype=dtype)
        bp, scales = bitgemm.quantize_pack(xd, bits, fmt, group)
        q, s = ref.quantize(xd, bits, fmt, group == "per_tensor")
        assert scales.dtype == torch.float32 and scales.shape == ((1,) if group == "per_tensor" else (11,))
        np.testing.assert_array_equal(scales.cpu().numpy(), s)
        np.testing.assert_array_equal(ref.values(bp.to("cpu")), q)
        assert ref.padding_is_zero(bp.planes, 300)
        assert torch.equal(bp.rowsum.cpu().to(torch.int64),
                           torch.from_numpy(q - bp.offset.cpu().numpy()[:, None]).sum(1))


def test_quantize_pack_strided_rows_and_bad_input(gen):
    big = torch.randn(6, 400, generator=gen)
    view = big[:, 50:350]  # row stride 400 > k
    bp, s = bitgemm.quantize_pack(view, 4)
    bp2, s2 = bitgemm.quantize_pack(view.contiguous(), 4)
    assert torch.equal(bp.planes, bp2.planes) and torch.equal(s, s2)
    with pytest.raises(ValueError, match="unit stride"):
        bitgemm.quantize_pack(big.t(), 4)
    with pytest.raises(TypeError, match="x must have dtype"):
        bitgemm.quantize_pack(big.double(), 4)
    with pytest.raises(ValueError, match="group"):
        bitgemm.quantize_pack(big, 4, group="per_group")
    with pytest.raises(ValueError, match="bits"):
        bitgemm.quantize_pack(big, 9)


# ---------------------------------------------------------------------------------------------------
# Device parity and torch integration
# ---------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cuda_matches_cpu_bit_for_bit(gen):
    x = torch.randn(33, 515, generator=gen)
    for fmt in bitgemm.FORMATS:
        a_cpu, s_cpu = bitgemm.quantize_pack(x, 5, fmt)
        a_gpu, s_gpu = bitgemm.quantize_pack(x.cuda(), 5, fmt)
        assert torch.equal(a_cpu.planes, a_gpu.planes.cpu()) and torch.equal(s_cpu, s_gpu.cpu())
        w, _, _ = _operand(gen, 300, 515, 2, ("signed", False))
        y_cpu = bitgemm.gemm_scaled(a_cpu, w, s_cpu, torch.ones(300))
        y_gpu = bitgemm.gemm_scaled(a_gpu, w.to("cuda"), s_gpu, torch.ones(300, device="cuda"))
        torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=1e-6, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 2, 5, 16])
@pytest.mark.parametrize("bits_a,bits_w", [(8, 1), (8, 2), (4, 4), (2, 2), (1, 1)])
def test_cuda_decode_path(gen, m, bits_a, bits_w):
    a, _, _ = _operand(gen, m, 4096, bits_a, ("signed", False), "cuda")
    w, _, _ = _operand(gen, 1100, 4096, bits_w, ("bipolar", False), "cuda")
    _assert_exact(bitgemm.gemm(a, w), a, w)


def test_opcheck(gen):
    x = torch.randn(5, 300, generator=gen)
    a, sa = bitgemm.quantize_pack(x, 3, "bipolar")
    w, _, _ = _operand(gen, 6, 300, 2, ("unsigned", True))
    sw = torch.rand(6, generator=gen)
    ops = torch.ops.fastops
    torch.library.opcheck(ops.bitgemm_quantize_pack.default, (x, 3, 2, False))
    operands = (a.planes, a.offset, a.rowsum, 3, 2, w.planes, w.offset, w.rowsum, 2, 0, 300)
    torch.library.opcheck(ops.bitgemm_gemm.default, (*operands, "auto"))
    torch.library.opcheck(ops.bitgemm_gemm_scaled.default,
                          (*operands, sa.reshape(-1, 1), sw.reshape(-1, 1), torch.randn(6), 0, 0, "auto"))


def test_torch_compile_fullgraph(gen):
    layer = BitLinear.from_linear(torch.nn.Linear(300, 20), w_bits=2, a_bits=4)
    x = torch.randn(3, 300, generator=gen)
    compiled = torch.compile(lambda t: torch.relu(layer(t)), fullgraph=True)
    torch.testing.assert_close(compiled(x), torch.relu(layer(x)))


# ---------------------------------------------------------------------------------------------------
# BitLinear
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("w_bits,a_bits,w_fmt,a_fmt", [(4, 8, "signed", "signed"), (2, 4, "bipolar", "unsigned"),
                                                       (8, 8, "signed", "signed"), (1, 8, "bipolar", "signed")])
def test_bitlinear_equals_its_quantized_math(gen, device, w_bits, a_bits, w_fmt, a_fmt):
    linear = torch.nn.Linear(257, 40)
    layer = BitLinear.from_linear(linear, w_bits=w_bits, a_bits=a_bits, w_fmt=w_fmt, a_fmt=a_fmt).to(device)
    x = torch.randn(2, 3, 257, generator=gen).to(device)
    y = layer(x)
    assert y.shape == (2, 3, 40) and y.dtype == torch.float32
    # The same computation from the reference quantizer and float64 products.
    if w_bits == 1 and w_fmt == "bipolar":  # binary weights: sign times the row's mean |w|
        wf = linear.weight.detach()
        qw, sw = np.where(wf.numpy() >= 0, 1, -1), wf.abs().mean(dim=1).numpy()
    else:
        qw, sw = ref.quantize(linear.weight, w_bits, w_fmt, False)
    qa, sa = ref.quantize(x.reshape(6, 257), a_bits, a_fmt, False)
    expect = ref.gemm_scaled(qa, qw, torch.from_numpy(sa), torch.from_numpy(sw), linear.bias)
    assert rel_err(y.reshape(6, 40), torch.from_numpy(expect)) <= 1e-6
    # and it approximates the float layer as well as its bit widths allow
    err = rel_err(y, linear(x.cpu()))
    assert err <= {8: 0.02, 4: 0.15}.get(min(w_bits, a_bits), 1.0)


def test_bitlinear_ternary_bitnet_layer(gen):
    linear = torch.nn.Linear(512, 64, bias=False)
    layer = BitLinear.from_linear(linear, a_bits=8, ternary=True)
    assert layer.w_bits == 2 and layer.w_fmt == "signed"
    w = layer.weight.unpack()
    assert set(w.unique().tolist()) <= {-1, 0, 1}
    scale = linear.weight.abs().mean()
    assert torch.equal(w, torch.clamp(torch.round(linear.weight / scale), -1, 1).to(torch.int32))
    x = torch.randn(4, 512, generator=gen, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    expect = x.float() @ (w.float() * scale).T
    assert rel_err(y, expect) <= 2e-2  # 8-bit activations + bf16 output


def test_bitlinear_in_a_small_model(gen):
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 10))
    quant = torch.nn.Sequential(BitLinear.from_linear(model[0], w_bits=8, a_bits=8), torch.nn.GELU(),
                                BitLinear.from_linear(model[2], w_bits=8, a_bits=8))
    x = torch.randn(32, 128, generator=gen)
    assert rel_err(quant(x), model(x)) <= 0.02
    state = quant.state_dict()
    assert {"0.w_planes", "0.w_scale", "2.bias"} <= set(state)
