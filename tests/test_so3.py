"""fastops.so3 tensor products against e3nn 0.6 (the oracle) and against the float64 einsum reference."""
import pytest
import torch

import fastops.so3 as so3
from fastops import _C
from fastops.reference import so3 as ref_so3

from conftest import CPU_ISAS

try:
    from e3nn import o3
except ImportError:  # a GPU box may lack it: the e3nn comparisons skip, the CUDA-vs-CPU tests still run
    o3 = None
needs_e3nn = pytest.mark.skipif(o3 is None, reason="e3nn 0.6 is a test dependency: pip install '.[test]'")


def _e3nn(cls, *args, **kwargs):
    """An e3nn module built in float64: e3nn computes its Wigner-3j buffers in the default dtype, and
    float32 buffers cast to float64 later would carry 1e-8 errors into the float64 comparisons."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return cls(*args, **kwargs)
    finally:
        torch.set_default_dtype(before)

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}

MACE_NODE = "8x0e+8x1o+8x2e"
SH3 = "0e+1o+2e+3o"


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _mace(node=MACE_NODE, sh=SH3, target="0e+0o+1e+1o+2e+2o+3e+3o"):
    out, ins = so3.channelwise_instructions(node, sh, target)
    return node, sh, str(out), ins


# (irreps_in1, irreps_in2, irreps_out, instructions): every mode, mixed modes, unweighted paths,
# multiplicities that are not lane multiples, l up to 4.
PROBLEMS = {
    "mace": _mace(),
    "nequip": _mace("5x0e+3x1o+2x1e+3x2e", "0e+1o+2e", "0e+1o+1e+2e"),
    "fully_connected": ("5x0e+3x1o+2x2e", "2x0e+3x1o", "4x0e+3x1o+2x1e+3x2e",
                        so3.fully_connected_instructions("5x0e+3x1o+2x2e", "2x0e+3x1o", "4x0e+3x1o+2x1e+3x2e")),
    "mixed": ("17x0e+3x1o+2x4e", "17x0e+3x1o+2x2e", "17x0e+3x1o+3x1e+2x3e+4x0e",
              [(0, 0, 0, "uuu", True), (1, 1, 2, "uuu", False), (1, 1, 4, "uuw", True), (0, 1, 1, "uvw", True),
               (2, 2, 3, "uvu", True, 0.5), (1, 2, 1, "uvw", True), (0, 0, 4, "uvw", True, 2.0)]),
    "uuw_unweighted": ("3x0e+3x1o", "3x0e+3x1o", "1x0e+2x1o",
                       [(0, 0, 0, "uuw", False), (1, 1, 0, "uuw", True), (0, 1, 1, "uuw", True)]),
    "uvu_mul2": ("18x1o+3x2e", "2x1o+1x0e", "18x1e+18x2e+18x1o",
                 [(0, 0, 0, "uvu", True), (0, 0, 1, "uvu", False), (0, 1, 2, "uvu", True)]),
    # uvw outputs of 40 and 8 channels: pairs of output vectors plus a single one, on every ISA
    "fc_wide": ("6x0e+4x1o", "3x0e+2x1o", "40x0e+8x1o+40x2e",
                so3.fully_connected_instructions("6x0e+4x1o", "3x0e+2x1o", "40x0e+8x1o+40x2e")),
}


def _inputs(tp, z, dtype, gen, shared):
    x1 = torch.randn(z, tp.irreps_in1.dim, generator=gen, dtype=dtype)
    x2 = torch.randn(z, tp.irreps_in2.dim, generator=gen, dtype=dtype)
    shape = (tp.weight_numel,) if shared else (z, tp.weight_numel)
    w = torch.randn(shape, generator=gen, dtype=dtype) if tp.weight_numel else None
    return x1, x2, w


def _pair(name, shared, irrep_normalization="component", path_normalization="element"):
    r1, r2, ro, ins = PROBLEMS[name]
    kw = dict(irrep_normalization=irrep_normalization, path_normalization=path_normalization,
              shared_weights=shared, internal_weights=False)
    return _e3nn(o3.TensorProduct, r1, r2, ro, ins, **kw), so3.TensorProduct(r1, r2, ro, ins, **kw)


def _grads(out, inputs, g):
    leaves = [t for t in inputs if t is not None]
    return torch.autograd.grad((out * g).sum(), leaves)


@pytest.mark.parametrize("name", list(PROBLEMS))
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@needs_e3nn
def test_tensor_product_matches_e3nn(name, shared, dtype, gen):
    e, f = _pair(name, shared)
    e = e.to(dtype)
    x1, x2, w = _inputs(f, 7, dtype, gen, shared)
    leaves = [t.requires_grad_() for t in (x1, x2, w) if t is not None]
    want = e(x1, x2, w) if w is not None else e(x1, x2)
    got = f(x1, x2, w)
    assert got.dtype == dtype and got.shape == want.shape
    assert _rel(got, want) <= TOL[dtype]
    g = torch.randn(want.shape, generator=gen, dtype=dtype)
    for a, b in zip(_grads(got, leaves, g), _grads(want, leaves, g)):
        assert _rel(a, b) <= TOL[dtype]


@pytest.mark.parametrize("irrep_normalization", ["component", "norm", "none"])
@pytest.mark.parametrize("path_normalization", ["element", "path", "none"])
@needs_e3nn
def test_normalizations_match_e3nn(irrep_normalization, path_normalization, gen):
    e, f = _pair("mixed", False, irrep_normalization, path_normalization)
    x1, x2, w = _inputs(f, 5, torch.float64, gen, False)
    assert _rel(f(x1, x2, w), e.double()(x1, x2, w)) <= 1e-12


@needs_e3nn
def test_reference_matches_e3nn(gen):
    """The einsum reference is itself checked against e3nn, so the ISA tests below can use it."""
    e, f = _pair("mixed", True)
    x1, x2, w = _inputs(f, 4, torch.float64, gen, True)
    irreps = [[(m, ir.l, ir.p) for m, ir in r] for r in (f.irreps_in1, f.irreps_in2, f.irreps_out)]
    ref = ref_so3.tensor_product(*irreps, PROBLEMS["mixed"][3], x1, x2, w)
    assert _rel(ref, e.double()(x1, x2, w)) <= 1e-12


@pytest.mark.parametrize("cpu_isa", CPU_ISAS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["mixed", "uvu_mul2", "mace", "fc_wide"])
def test_every_cpu_kernel_set(cpu_isa, dtype, name, gen):
    assert so3.cpu_kernel_name() == cpu_isa
    r1, r2, ro, ins = PROBLEMS[name]
    f = so3.TensorProduct(r1, r2, ro, ins, shared_weights=False, internal_weights=False)
    x1, x2, w = _inputs(f, 9, dtype, gen, False)
    leaves = [t.requires_grad_() for t in (x1, x2, w)]
    irreps = [[(m, ir.l, ir.p) for m, ir in r] for r in (f.irreps_in1, f.irreps_in2, f.irreps_out)]
    lv = [t.detach().double().requires_grad_() for t in leaves]
    want = ref_so3.tensor_product(*irreps, ins, *lv)
    got = f(*leaves)
    assert _rel(got, want) <= TOL[dtype]
    g = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    for a, b in zip(_grads(got, leaves, g.to(dtype)), _grads(want, lv, g)):
        assert _rel(a, b) <= TOL[dtype]


@needs_e3nn
def test_results_do_not_depend_on_thread_count(gen):
    _, f = _pair("mace", True)
    x1, x2, w = _inputs(f, 33, torch.float32, gen, True)
    leaves = [t.requires_grad_() for t in (x1, x2, w)]
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = f(*leaves)
            results.append([out] + list(_grads(out, leaves, torch.ones_like(out))))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs_e3nn
def test_broadcasting_matches_e3nn(gen):
    e, f = _pair("nequip", False)
    x1 = torch.randn(2, 1, f.irreps_in1.dim, generator=gen, dtype=torch.float64)
    x2 = torch.randn(1, 3, f.irreps_in2.dim, generator=gen, dtype=torch.float64)
    w = torch.randn(3, f.weight_numel, generator=gen, dtype=torch.float64)
    got = f(x1, x2, w)
    assert got.shape == (2, 3, f.irreps_out.dim)
    assert _rel(got, e.double()(x1, x2, w)) <= 1e-12


@pytest.mark.parametrize("z", [0, 1])
@needs_e3nn
def test_tiny_batches(z, gen):
    e, f = _pair("mace", False)
    x1, x2, w = _inputs(f, z, torch.float64, gen, False)
    got = f(x1, x2, w)
    assert got.shape == (z, f.irreps_out.dim)
    if z:
        assert _rel(got, e.double()(x1, x2, w)) <= 1e-12


@needs_e3nn
def test_from_e3nn_copies_weights_and_normalization(gen):
    r1, r2, ro, ins = PROBLEMS["mixed"]
    e = _e3nn(o3.TensorProduct, r1, r2, ro, ins, irrep_normalization="norm", path_normalization="path")
    f = so3.TensorProduct.from_e3nn(e)
    assert f.internal_weights and torch.equal(f.weight, e.weight)
    x1 = torch.randn(6, e.irreps_in1.dim, generator=gen, dtype=torch.float64)
    x2 = torch.randn(6, e.irreps_in2.dim, generator=gen, dtype=torch.float64)
    assert _rel(f(x1, x2), e(x1, x2)) <= 1e-12
    assert f.weight_view_for_instruction(3).shape == e.weight_view_for_instruction(3).shape


@needs_e3nn
def test_fully_connected_and_elementwise_helpers_match_e3nn(gen):
    fc_e = _e3nn(o3.FullyConnectedTensorProduct, "3x0e+2x1o", "2x1o+0e", "2x0e+3x1o+1x1e")
    fc = so3.fully_connected_tp("3x0e+2x1o", "2x1o+0e", "2x0e+3x1o+1x1e").double()
    assert fc.weight_numel == fc_e.weight_numel
    with torch.no_grad():
        fc.weight.copy_(fc_e.weight)
    x1 = torch.randn(5, 9, generator=gen, dtype=torch.float64)
    x2 = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    assert _rel(fc(x1, x2), fc_e(x1, x2)) <= 1e-12
    el_e = _e3nn(o3.ElementwiseTensorProduct, "3x0e+2x1o", "1x1o+4x0e")
    el = so3.elementwise_tp("3x0e+2x1o", "1x1o+4x0e")
    assert str(el.irreps_out) == str(el_e.irreps_out)
    a = torch.randn(4, 9, generator=gen, dtype=torch.float64)
    b = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    assert _rel(el(a, b), el_e.double()(a, b)) <= 1e-12


def test_modules_pickle_across_processes(tmp_path, gen):
    """Plans live in a per-process registry: a module saved with torch.save must find its plan again in
    a process that built other plans first."""
    import subprocess
    import sys

    r1, r2, ro, ins = PROBLEMS["nequip"]
    conv = so3.TensorProductConv(r1, r2, ro, ins)
    tp = so3.TensorProduct(r1, r2, ro, ins, shared_weights=True)
    torch.save({"conv": conv, "tp": tp}, tmp_path / "modules.pt")
    x1 = torch.randn(3, tp.irreps_in1.dim, generator=gen)
    x2 = torch.randn(3, tp.irreps_in2.dim, generator=gen)
    torch.save({"x1": x1, "x2": x2, "out": tp(x1, x2)}, tmp_path / "data.pt")
    script = f"""
import torch, fastops.so3 as so3
so3.fully_connected_tp("2x0e", "2x0e", "2x0e")  # a different plan takes the first registry slot
m = torch.load({str(tmp_path / "modules.pt")!r}, weights_only=False)
d = torch.load({str(tmp_path / "data.pt")!r})
assert str(m["conv"].irreps_out) == {str(conv.irreps_out)!r}
assert torch.equal(m["tp"](d["x1"], d["x2"]), d["out"])
"""
    subprocess.run([sys.executable, "-c", script], check=True)


def test_channelwise_matches_mace_construction():
    out, ins = so3.channelwise_instructions("4x0e+4x1o", "0e+1o+2e", "0e+1o+2e")
    # 0e x {0e, 1o, 2e} and 1o x {0e -> 1o, 1o -> 0e, 2e, 2e -> 1o}: one output block per path, sorted.
    assert str(out) == "4x0e+4x0e+4x1o+4x1o+4x1o+4x2e+4x2e"
    assert len(ins) == 7 and all(i[3] == "uvu" and i[4] for i in ins)
    assert sorted(i[2] for i in ins) == list(range(7))


# ---- the fused convolution ---------------------------------------------------------------------------

def _graph(nodes, edges, gen):
    senders = torch.randint(0, nodes, (edges,), generator=gen)
    receivers = torch.randint(0, max(nodes - 2, 1), (edges,), generator=gen)  # the last nodes receive nothing
    return senders, receivers


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_conv_equals_gather_tp_scatter(shared, dtype, gen):
    r1, r2, ro, ins = PROBLEMS["nequip"]
    conv = so3.TensorProductConv(r1, r2, ro, ins, shared_weights=shared, internal_weights=False)
    tp = so3.TensorProduct(r1, r2, ro, ins, shared_weights=shared, internal_weights=False)
    nodes, edges = 11, 40
    x = torch.randn(nodes, conv.irreps_in1.dim, generator=gen, dtype=dtype, requires_grad=True)
    y = torch.randn(edges, conv.irreps_in2.dim, generator=gen, dtype=dtype, requires_grad=True)
    wshape = (conv.weight_numel,) if shared else (edges, conv.weight_numel)
    w = torch.randn(wshape, generator=gen, dtype=dtype, requires_grad=True)
    s, r = _graph(nodes, edges, gen)
    got = conv(x, y, w, s, r)
    want = torch.zeros(nodes, conv.irreps_out.dim, dtype=dtype).index_add(0, r, tp(x[s], y, w))
    assert torch.equal(got[-2:], torch.zeros_like(got[-2:]))
    assert _rel(got, want) <= TOL[dtype]
    g = torch.randn(got.shape, generator=gen, dtype=dtype)
    for a, b in zip(_grads(got, (x, y, w), g), _grads(want, (x, y, w), g)):
        assert _rel(a, b) <= TOL[dtype]


def test_conv_is_deterministic_and_accepts_precomputed_orders(gen):
    r1, r2, ro, ins = PROBLEMS["mace"]
    conv = so3.TensorProductConv(r1, r2, ro, ins)
    x = torch.randn(9, conv.irreps_in1.dim, generator=gen, requires_grad=True)
    y = torch.randn(60, conv.irreps_in2.dim, generator=gen)
    w = torch.randn(60, conv.weight_numel, generator=gen)
    s, r = _graph(9, 60, gen)
    ro_, so_ = so3.edge_orders(s, r)
    a = conv(x, y, w, s, r)
    b = conv(x, y, w, s, r, receiver_order=ro_, sender_order=so_)
    assert torch.equal(a, b)
    ga, = torch.autograd.grad(a.sum(), x)
    gb, = torch.autograd.grad(b.sum(), x)
    assert torch.equal(ga, gb)


def test_conv_with_no_edges_is_zero(gen):
    r1, r2, ro, ins = PROBLEMS["mace"]
    conv = so3.TensorProductConv(r1, r2, ro, ins)
    x = torch.randn(4, conv.irreps_in1.dim, generator=gen)
    e = torch.zeros(0, dtype=torch.int64)
    out = conv(x, torch.zeros(0, conv.irreps_in2.dim), torch.zeros(0, conv.weight_numel), e, e, num_nodes=6)
    assert torch.equal(out, torch.zeros(6, conv.irreps_out.dim))


def test_gradcheck_and_gradgradcheck(gen):
    r1, r2, ro, ins = PROBLEMS["mixed"]
    tp = so3.TensorProduct(r1, r2, ro, ins, shared_weights=False, internal_weights=False)
    x1, x2, w = [t.requires_grad_() for t in _inputs(tp, 3, torch.float64, gen, False)]
    assert torch.autograd.gradcheck(tp, (x1, x2, w))
    assert torch.autograd.gradgradcheck(tp, (x1, x2, w))
    tps = so3.TensorProduct(r1, r2, ro, ins, shared_weights=True, internal_weights=False)
    ws = torch.randn(tps.weight_numel, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(tps, (x1, x2, ws))
    r1, r2, ro, ins = PROBLEMS["nequip"]
    conv = so3.TensorProductConv(r1, r2, ro, ins)
    s, r = _graph(5, 12, gen)
    x = torch.randn(5, conv.irreps_in1.dim, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(12, conv.irreps_in2.dim, generator=gen, dtype=torch.float64, requires_grad=True)
    we = torch.randn(12, conv.weight_numel, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b, c: conv(a, b, c, s, r), (x, y, we))


@needs_e3nn
def test_forces_through_spherical_harmonics(gen):
    """MACE's force training: energy from conv(node, Y(r_ij), w), forces = -dE/dr, loss on forces,
    gradient of the loss with respect to the weights (a second derivative), against e3nn."""
    r1, r2, ro, ins = _mace("4x0e+4x1o", "0e+1o+2e", "0e+1o")
    conv = so3.TensorProductConv(r1, r2, ro, ins)
    tp_e = _e3nn(o3.TensorProduct, r1, r2, ro, ins, shared_weights=False, internal_weights=False)
    pos = torch.randn(6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    s, r = _graph(6, 20, gen)
    x = torch.randn(6, conv.irreps_in1.dim, generator=gen, dtype=torch.float64)
    w = torch.randn(20, conv.weight_numel, generator=gen, dtype=torch.float64, requires_grad=True)

    def force_loss(energy_of):
        sh = o3.spherical_harmonics(r2, pos[r] - pos[s], normalize=True, normalization="component")
        energy = energy_of(sh).sum()
        forces, = torch.autograd.grad(energy, pos, create_graph=True)
        return (forces ** 2).sum()

    ours = force_loss(lambda sh: conv(x, sh, w, s, r))
    theirs = force_loss(lambda sh: torch.zeros(6, conv.irreps_out.dim, dtype=torch.float64).index_add(
        0, r, tp_e(x[s], sh, w)))
    assert _rel(ours, theirs) <= 1e-12
    ga, = torch.autograd.grad(ours, w)
    gb, = torch.autograd.grad(theirs, w)
    assert _rel(ga, gb) <= 1e-12


def test_equivariance_under_rotation(gen):
    r1, r2, ro, ins = PROBLEMS["nequip"]
    tp = so3.TensorProduct(r1, r2, ro, ins, shared_weights=False, internal_weights=False)
    x1, x2, w = _inputs(tp, 4, torch.float64, gen, False)
    rot = so3.rand_matrix(dtype=torch.float64)
    d1, d2, do = (irreps.D_from_matrix(rot) for irreps in (tp.irreps_in1, tp.irreps_in2, tp.irreps_out))
    assert _rel(tp(x1 @ d1.T, x2 @ d2.T, w), tp(x1, x2, w) @ do.T) <= 1e-12


def test_opcheck(gen):
    r1, r2, ro, ins = PROBLEMS["nequip"]
    conv = so3.TensorProductConv(r1, r2, ro, ins)
    s, r = _graph(5, 9, gen)
    ro_, so_ = so3.edge_orders(s, r)
    x = torch.randn(5, conv.irreps_in1.dim, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(9, conv.irreps_in2.dim, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, conv.weight_numel, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, conv.irreps_out.dim, generator=gen, dtype=torch.float64, requires_grad=True)
    pid = conv._plan_id
    torch.library.opcheck(torch.ops.fastops.so3_tp.default, (x, y, w, s, r, ro_, so_, 5, pid, True))
    torch.library.opcheck(torch.ops.fastops.so3_tp_backward.default,
                          (x, y, w, s, r, ro_, so_, g, pid, True, True, True, True))


def test_torch_compile_fullgraph(gen):
    r1, r2, ro, ins = PROBLEMS["nequip"]
    conv = so3.TensorProductConv(r1, r2, ro, ins)
    s, r = _graph(7, 15, gen)
    x = torch.randn(7, conv.irreps_in1.dim, generator=gen)
    y = torch.randn(15, conv.irreps_in2.dim, generator=gen)
    w = torch.randn(15, conv.weight_numel, generator=gen)
    compiled = torch.compile(lambda a, b, c: torch.tanh(conv(a, b, c, s, r)), fullgraph=True)
    assert torch.allclose(compiled(x, y, w), torch.tanh(conv(x, y, w, s, r)), rtol=1e-6, atol=1e-6)
    # the backward graph too (AOT autograd traces the registered backward op)
    leaves = [t.clone().requires_grad_() for t in (x, y, w)]
    loss = torch.compile(lambda a, b, c: conv(a, b, c, s, r).pow(2).sum(), fullgraph=True)(*leaves)
    loss.backward()
    eager = [t.clone().requires_grad_() for t in (x, y, w)]
    conv(*eager, s, r).pow(2).sum().backward()
    for a, b in zip(leaves, eager):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6)


# ---- bad input ------------------------------------------------------------------------------------------

def test_bad_instructions():
    with pytest.raises(ValueError, match="mode 'uvv' is not supported"):
        so3.TensorProduct("2x1o", "1o", "2x1o", [(0, 0, 0, "uvv", True)])
    with pytest.raises(ValueError, match="selection rule"):
        so3.TensorProduct("2x1o", "1o", "2x1o", [(0, 0, 0, "uvu", True)])
    with pytest.raises(ValueError, match="i_out = 3"):
        so3.TensorProduct("2x1o", "1o", "2x1e", [(0, 0, 3, "uvu", True)])
    with pytest.raises(ValueError, match="uvu needs the output multiplicity"):
        so3.TensorProduct("2x1o", "1o", "3x1e", [(0, 0, 0, "uvu", True)])
    with pytest.raises(ValueError, match="uvw needs has_weight"):
        so3.TensorProduct("2x1o", "1o", "3x1e", [(0, 0, 0, "uvw", False)])
    with pytest.raises(ValueError, match="irrep_normalization"):
        so3.TensorProduct("2x1o", "1o", "2x1e", [(0, 0, 0, "uvu", True)], irrep_normalization="bad")


@needs_e3nn
def test_bad_operands(gen):
    _, f = _pair("nequip", False)
    x1, x2, w = _inputs(f, 3, torch.float32, gen, False)
    with pytest.raises(ValueError, match=r"x1 must have shape \[\.\.\., 35\]"):
        f(x1[:, :-1], x2, w)
    with pytest.raises(TypeError, match="x2 is float64 but x1 is float32"):
        f(x1, x2.double(), w)
    with pytest.raises(TypeError, match="float32 or float64"):
        f(x1.half(), x2.half(), w.half())
    with pytest.raises(ValueError, match="weight is required"):
        f(x1, x2)
    with pytest.raises(ValueError, match="do not broadcast"):
        f(x1, x2[:2], w)
    with pytest.raises(ValueError, match="shared_weights=False needs weight"):
        f(x1, x2, w[0])


def test_bad_graph(gen):
    r1, r2, ro, ins = PROBLEMS["nequip"]
    conv = so3.TensorProductConv(r1, r2, ro, ins)
    x = torch.randn(4, conv.irreps_in1.dim, generator=gen)
    y = torch.randn(5, conv.irreps_in2.dim, generator=gen)
    w = torch.randn(5, conv.weight_numel, generator=gen)
    s = torch.tensor([0, 1, 2, 3, 0])
    with pytest.raises(ValueError, match=r"x1_index\[4\] = 4 is outside \[0, 4\)"):
        conv(x, y, w, torch.tensor([0, 1, 2, 3, 4]), s)
    with pytest.raises(ValueError, match=r"out_index\[1\] = -1"):
        conv(x, y, w, s, torch.tensor([0, -1, 2, 3, 0]))
    with pytest.raises(TypeError, match="senders must be int64"):
        conv(x, y, w, s.int(), s)
    with pytest.raises(ValueError, match=r"receivers must have shape \[5\]"):
        conv(x, y, w, s, s[:4])
    with pytest.raises(ValueError, match=r"edge_weight must have shape \[5, "):
        conv(x, y, w[:4], s, s)
    with pytest.raises(ValueError, match="order must be a permutation"):
        conv(x, y, w, s, s, receiver_order=torch.zeros(5, dtype=torch.int64))


@pytest.mark.gpu
def test_bad_graph_cuda(gen):
    """On CUDA the Python layer checks indices and user-supplied orders (one synchronization)."""
    r1, r2, ro, ins = PROBLEMS["nequip"]
    conv = so3.TensorProductConv(r1, r2, ro, ins).cuda()
    x = torch.randn(4, conv.irreps_in1.dim, generator=gen).cuda()
    y = torch.randn(5, conv.irreps_in2.dim, generator=gen).cuda()
    w = torch.randn(5, conv.weight_numel, generator=gen).cuda()
    s = torch.tensor([0, 1, 2, 3, 0]).cuda()
    with pytest.raises(ValueError, match=r"x1_index has entries outside \[0, 4\)"):
        conv(x, y, w, torch.tensor([0, 1, 2, 3, 4]).cuda(), s)
    with pytest.raises(ValueError, match=r"out_index has entries outside \[0, 4\)"):
        conv(x, y, w, s, torch.tensor([0, -1, 2, 3, 0]).cuda())
    with pytest.raises(ValueError, match="receiver_order must be a permutation"):
        conv(x, y, w, s, s, receiver_order=torch.zeros(5, dtype=torch.int64).cuda())
    with pytest.raises(ValueError, match="sender_order must be a permutation"):
        conv(x, y, w, s, s, sender_order=torch.tensor([0, 1, 2, 3, 5]).cuda())
    with pytest.raises(ValueError, match="receiver_order must be a permutation .* that sorts"):
        conv(x, y, w, s, s, receiver_order=torch.tensor([4, 3, 2, 1, 0]).cuda())  # keys 0 3 2 1 0
    r_order, s_order = so3.edge_orders(s, s)
    got = conv(x, y, w, s, s, receiver_order=r_order, sender_order=s_order)
    torch.testing.assert_close(got, conv(x, y, w, s, s))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_shared_weight_gradient_over_many_samples(dtype, gen):
    """600 samples: the 64 pieces of the backward hold 9-10 samples each, so the shared weight's uvw / uuw
    gradient runs full blocks of kGwBlock = 8 stashed samples and partial ones."""
    r1, r2, ro, ins = PROBLEMS["fc_wide"]
    f = so3.TensorProduct(r1, r2, ro, ins, shared_weights=True, internal_weights=False)
    x1, x2, w = _inputs(f, 600, dtype, gen, True)
    leaves = [t.requires_grad_() for t in (x1, x2, w)]
    irreps = [[(m, ir.l, ir.p) for m, ir in r] for r in (f.irreps_in1, f.irreps_in2, f.irreps_out)]
    lv = [t.detach().double().requires_grad_() for t in leaves]
    g = torch.randn(600, f.irreps_out.dim, generator=gen, dtype=dtype)
    for a, b in zip(_grads(f(*leaves), leaves, g), _grads(ref_so3.tensor_product(*irreps, ins, *lv), lv, g.double())):
        assert _rel(a, b) <= TOL[dtype]


@pytest.mark.parametrize("shared_call", [False, True])
def test_broadcast_per_sample_weight(shared_call, gen):
    """A per-sample weight expanded from one row (row stride 0) trains: its gradient sums over the samples."""
    r1, r2, ro, ins = PROBLEMS["mixed"]
    f = so3.TensorProduct(r1, r2, ro, ins, shared_weights=False, internal_weights=False)
    x1, x2, _ = _inputs(f, 6, torch.float64, gen, False)
    w = torch.randn(1, f.weight_numel, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(6, f.irreps_out.dim, generator=gen, dtype=torch.float64)
    arg = w.expand(6, -1) if shared_call else w
    got = f(x1, x2, arg)
    (gw,) = torch.autograd.grad((got * g).sum(), w)
    w_full = w.detach().expand(6, -1).clone().requires_grad_()
    want = f(x1, x2, w_full)
    (gw_full,) = torch.autograd.grad((want * g).sum(), w_full)
    assert _rel(got, want) <= 1e-12
    assert gw.shape == (1, f.weight_numel) and _rel(gw[0], gw_full.sum(0)) <= 1e-12


@needs_e3nn
def test_zero_multiplicity_irreps_match_e3nn(gen):
    """Empty blocks (0x...) are legal in e3nn: they share an offset with the next block and must not count
    as an overlap."""
    cases = [  # empty paths first, between and last; an output block fed only by an empty input stays 0
        (("0x0e+2x1o", "1x0e", "0x0e+3x1o+0x1o"), [(0, 0, 0, "uvw", True), (1, 0, 1, "uvw", True),
                                                   (1, 0, 2, "uvw", True)]),
        (("0x0e+2x1o", "1x0e", "1x0e+3x1o"), [(0, 0, 0, "uvw", True), (1, 0, 1, "uvw", True)]),
        (("2x0e+0x1o+3x1o", "0x0e+1x1o", "2x1o+2x0e"), [(0, 1, 0, "uvu", True), (1, 0, 0, "uvw", True),
                                                       (2, 1, 1, "uvw", True), (1, 1, 1, "uvw", True)]),
    ]
    for irreps, ins in cases:
        for shared in (True, False):
            e, f = (cls(*irreps, ins, shared_weights=shared, internal_weights=False)
                    for cls in (lambda *a, **k: _e3nn(o3.TensorProduct, *a, **k), so3.TensorProduct))
            assert f.weight_numel == e.weight_numel
            x1, x2, w = _inputs(f, 5, torch.float64, gen, shared)
            leaves = [t.requires_grad_() for t in (x1, x2, w)]
            got, want = f(*leaves), e.double()(*leaves)
            assert _rel(got, want) <= 1e-12, irreps
            g = torch.randn(want.shape, generator=gen, dtype=torch.float64)
            for a, b in zip(_grads(got, leaves, g), _grads(want, leaves, g)):
                assert _rel(a, b) <= 1e-12, irreps


@pytest.mark.gpu
@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_matches_cpu(deterministic, dtype, gen):
    for name in ("mace", "mixed", "uvu_mul2", "fully_connected"):
        r1, r2, ro, ins = PROBLEMS[name]
        for shared in (False, True):
            conv = so3.TensorProductConv(r1, r2, ro, ins, deterministic=deterministic, shared_weights=shared,
                                         internal_weights=False)
            s, r = _graph(13, 70, gen)
            x = torch.randn(13, conv.irreps_in1.dim, generator=gen, dtype=dtype)
            y = torch.randn(70, conv.irreps_in2.dim, generator=gen, dtype=dtype)
            w = torch.randn((conv.weight_numel,) if shared else (70, conv.weight_numel), generator=gen, dtype=dtype)
            g = torch.randn(13, conv.irreps_out.dim, generator=gen, dtype=dtype)
            outs = []
            for dev in ("cpu", "cuda"):
                leaves = [t.to(dev).requires_grad_() for t in (x, y, w)]
                out = conv(*leaves, s.to(dev), r.to(dev))
                outs.append([out] + list(torch.autograd.grad((out * g.to(dev)).sum(), leaves)))
            for a, b in zip(*outs):
                assert _rel(b.cpu(), a) <= TOL[dtype]


def test_cuda_index_math_on_the_cpu():
    """The CUDA kernels' index math (so3_cuda_layout.h): a thread-by-thread emulation of the kernels'
    phases on the CPU against the definitions in so3.h (so3_cuda_layout_test.cpp)."""
    failures, report = _C._so3_cuda_layout_selftest()
    assert failures == 0, report
