"""fastops.so3 Gaunt products (grid / fft / direct) and the CP tensor product, against float64 references
written from the math (fastops.reference.so3), e3nn 0.6 and the defining properties (pointwise product,
equivariance)."""
import warnings

import pytest
import torch

import fastops.so3 as so3
from fastops import _C
from fastops import _gaunt_programs as gp
from fastops import _so3_gaunt as _gaunt
from fastops.reference import so3 as ref
from conftest import CPU_ISAS

try:
    from e3nn import o3
except ImportError:
    o3 = None
needs_e3nn = pytest.mark.skipif(o3 is None, reason="e3nn 0.6 is a test dependency: pip install '.[test]'")

METHODS = ["grid", "fft", "direct"]
TOL = {torch.float64: 1e-12, torch.float32: 2e-5}


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _sh_values(lmax, vec):
    """Y_lm(vec) with the integral normalization."""
    return so3.spherical_harmonics(lmax, vec, normalization="integral")


# ------------------------------------------------------------------------------------------- coefficients
@pytest.mark.parametrize("ls", [(0, 0, 0), (1, 1, 0), (1, 1, 2), (2, 1, 1), (2, 2, 2), (3, 2, 1), (4, 4, 8), (3, 3, 3)])
def test_gaunt_is_the_integral_of_three_harmonics(ls):
    l1, l2, l3 = ls
    beta, alpha, w = so3.s2grid(so3.s2grid_resolution(l1, l2, l3))
    b, a = torch.meshgrid(beta, alpha, indexing="ij")
    xyz = torch.stack([torch.sin(b) * torch.sin(a), torch.cos(b), torch.sin(b) * torch.cos(a)], -1)
    y = [_sh_values(l, xyz)[..., l * l:(l + 1) ** 2] for l in ls]
    integral = torch.einsum("tka,tkb,tkc,t->abc", *y, w)
    g = so3.gaunt(*ls)
    assert g.dtype == torch.float64 and g.shape == (2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1)
    assert float((g - integral).abs().max()) < 1e-13
    if sum(ls) % 2:
        assert float(g.abs().max()) == 0.0  # parity: e.g. the cross product 1 x 1 -> 1 is not a Gaunt path


def test_gaunt_bad_degrees():
    with pytest.raises(TypeError, match="l2"):
        so3.gaunt(1, 1.0, 2)
    with pytest.raises(ValueError, match="l3"):
        so3.gaunt(1, 1, -1)


# ----------------------------------------------------------------------------------------------- methods
CASES = [(l, l, 2 * l) for l in range(9)] + [(1, 3, 4), (3, 1, 2), (4, 2, 6), (2, 4, 1), (0, 3, 3), (5, 2, 3)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ls", CASES, ids=lambda ls: "x".join(map(str, ls)))
def test_methods_match_the_reference_fp64(method, ls, gen):
    l1, l2, l3 = ls
    tp = so3.GauntTensorProduct(l1, l2, l3, method=method)
    x = torch.randn(23, 1, (l1 + 1) ** 2, generator=gen, dtype=torch.float64)
    y = torch.randn(23, 1, (l2 + 1) ** 2, generator=gen, dtype=torch.float64)
    out = tp(x, y)
    assert out.shape == (23, 1, (l3 + 1) ** 2) and out.dtype == torch.float64
    assert _rel(out, ref.gaunt_tp(x, y, l1, l2, l3)) <= TOL[torch.float64]


@pytest.mark.parametrize("cpu_isa", CPU_ISAS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", METHODS)
def test_every_cpu_kernel_and_dtype(cpu_isa, dtype, method, gen):
    # 37 samples: two full AVX-512 tiles of fp32 and a partial one; x2 broadcast as a zero-stride row too
    for l1, l2, l3 in [(3, 2, 5), (4, 4, 8)]:
        tp = so3.GauntTensorProduct(l1, l2, l3, method=method)
        x = torch.randn(37, 2, (l1 + 1) ** 2, generator=gen, dtype=dtype)
        y = torch.randn(37, 2, (l2 + 1) ** 2, generator=gen, dtype=dtype)
        assert _rel(tp(x, y), ref.gaunt_tp(x, y, l1, l2, l3)) <= TOL[dtype]
        y1 = torch.randn(1, 1, (l2 + 1) ** 2, generator=gen, dtype=dtype)
        assert _rel(tp(x, y1), ref.gaunt_tp(x, y1, l1, l2, l3)) <= TOL[dtype]


def test_kernel_writes_every_output(gen):
    """The raw kernel into a NaN-poisoned buffer with strided rows (the op itself allocates its output)."""
    for method in METHODS:
        program = _gaunt._cpu_program(method, 3, 3, 6, *gp.minimal_grid(3, 3, 6))
        x = torch.randn(19, 16, generator=gen, dtype=torch.float64)
        y = torch.randn(19, 30, generator=gen, dtype=torch.float64)[:, 5:21]
        out = torch.full((19, 60), float("nan"), dtype=torch.float64)
        _C.gaunt_forward(program, x, y, out[:, 3:52], nthreads=2)
        assert _rel(out[:, 3:52], ref.gaunt_tp(x, y, 3, 3, 6)) <= 1e-12
        assert out[:, :3].isnan().all() and out[:, 52:].isnan().all()


def test_zero_samples_and_auto():
    tp = so3.GauntTensorProduct(2, 2)
    assert tp.method == "direct" and tp.lmax_out == 4
    assert so3.GauntTensorProduct(6, 6).method == "grid"
    assert tp(torch.randn(0, 3, 9), torch.randn(0, 3, 9)).shape == (0, 3, 25)


@needs_e3nn
@pytest.mark.parametrize("ls", [(1, 1, 2), (2, 2, 4), (3, 2, 4), (2, 3, 3), (4, 4, 6)])
def test_equals_e3nn_uuu_with_kappa_squared_path_weights(ls, gen):
    l1, l2, l3 = ls
    C = 3
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        irreps1, irreps2 = o3.Irreps([(C, (l, (-1) ** l)) for l in range(l1 + 1)]), \
            o3.Irreps([(C, (l, (-1) ** l)) for l in range(l2 + 1)])
        out, ins = [], []
        for a in range(l1 + 1):
            for b in range(l2 + 1):
                for c in range(abs(a - b), min(a + b, l3) + 1):
                    if (a + b + c) % 2 == 0:
                        ins.append((a, b, len(out), "uuu", False, gp.kappa(a, b, c) ** 2))
                        out.append((C, (c, (-1) ** c)))
        e3 = o3.TensorProduct(irreps1, irreps2, o3.Irreps(out), ins, irrep_normalization="none",
                              path_normalization="none")
    finally:
        torch.set_default_dtype(before)
    x = torch.randn(11, irreps1.dim, generator=gen, dtype=torch.float64)
    y = torch.randn(11, irreps2.dim, generator=gen, dtype=torch.float64)
    z = e3(x, y)
    # e3nn's output has one block per path: sum the blocks of each degree
    expect = torch.zeros(11, C * (l3 + 1) ** 2, dtype=torch.float64)
    expect_ch = expect.view(11, C, (l3 + 1) ** 2)
    start = 0
    for mul, ir in o3.Irreps(out):
        n = mul * ir.dim
        expect_ch[:, :, ir.l ** 2:(ir.l + 1) ** 2] += z[:, start:start + n].reshape(11, C, ir.dim)
        start += n
    for method in METHODS:
        tp = so3.GauntTensorProduct(l1, l2, l3, method=method, channels=C, layout="mul_ir")
        got = tp(x, y)
        assert got.shape == (11, C * (l3 + 1) ** 2)
        assert _rel(_gaunt._mul_ir_to_channels(got, C, l3), expect_ch) <= 1e-12


def test_mul_ir_layout_is_a_permutation_of_channels(gen):
    tp_c = so3.GauntTensorProduct(2, 1, 3, channels=4)
    tp_m = so3.GauntTensorProduct(2, 1, 3, channels=4, layout="mul_ir")
    x = torch.randn(5, 4, 9, generator=gen, dtype=torch.float64)
    y = torch.randn(5, 4, 4, generator=gen, dtype=torch.float64)
    flat = _gaunt._channels_to_mul_ir
    assert torch.equal(_gaunt._mul_ir_to_channels(flat(x, 2), 4, 2), x)
    assert _rel(tp_m(flat(x, 2), flat(y, 1)), flat(tp_c(x, y), 3)) <= 1e-15


# ------------------------------------------------------------------------------------------------- grids
@pytest.mark.parametrize("ls", [(2, 2, 4), (3, 1, 2), (4, 4, 8)])
def test_grid_one_below_the_minimum_is_refused(ls, gen):
    nb, na = so3.s2grid_resolution(*ls)
    for res in [(nb - 1, na), (nb, na - 1)]:
        with pytest.raises(ValueError, match="too coarse"):
            so3.GauntTensorProduct(*ls, method="grid", res=res)
        rough = so3.GauntTensorProduct(*ls, method="grid", res=res, exact=False)
        x = torch.randn(50, 1, (ls[0] + 1) ** 2, generator=gen, dtype=torch.float64)
        y = torch.randn(50, 1, (ls[1] + 1) ** 2, generator=gen, dtype=torch.float64)
        assert _rel(rough(x, y), ref.gaunt_tp(x, y, *ls)) > 1e-3  # the minimum is tight
    finer = so3.GauntTensorProduct(*ls, method="grid", res=(nb + 2, na + 3))
    x = torch.randn(9, 1, (ls[0] + 1) ** 2, generator=gen, dtype=torch.float64)
    y = torch.randn(9, 1, (ls[1] + 1) ** 2, generator=gen, dtype=torch.float64)
    assert _rel(finer(x, y), ref.gaunt_tp(x, y, *ls)) <= 1e-12


def test_product_is_pointwise_multiplication(gen):
    l1, l2 = 3, 4
    tp = so3.GauntTensorProduct(l1, l2)  # lmax_out = l1 + l2: nothing of the product is dropped
    x = torch.randn(1, (l1 + 1) ** 2, generator=gen, dtype=torch.float64)
    y = torch.randn(1, (l2 + 1) ** 2, generator=gen, dtype=torch.float64)
    z = tp(x, y)
    pts = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    f = _sh_values(l1, pts) @ x[0]
    g = _sh_values(l2, pts) @ y[0]
    h = _sh_values(l1 + l2, pts) @ z[0]
    assert _rel(h, f * g) <= 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_equivariance(method, gen):
    l1, l2, l3 = 3, 2, 4
    tp = so3.GauntTensorProduct(l1, l2, l3, method=method)
    R = so3.rand_matrix(generator=gen, dtype=torch.float64)
    D = lambda l: so3.Irreps.spherical_harmonics(l).D_from_matrix(R)
    x = torch.randn(7, 2, (l1 + 1) ** 2, generator=gen, dtype=torch.float64)
    y = torch.randn(7, 2, (l2 + 1) ** 2, generator=gen, dtype=torch.float64)
    assert _rel(tp(x @ D(l1).T, y @ D(l2).T), tp(x, y) @ D(l3).T) <= 1e-12


def test_s2grid_round_trip_and_values(gen):
    lmax = 5
    x = torch.randn(3, 2, (lmax + 1) ** 2, generator=gen, dtype=torch.float64)
    for normalization in ("integral", "component", "norm"):
        f = so3.to_s2grid(x, normalization=normalization)
        assert f.shape == (3, 2, lmax + 1, 2 * lmax + 1)
        assert _rel(so3.from_s2grid(f, lmax, normalization=normalization), x) <= 1e-12
    res = (9, 14)
    f = so3.to_s2grid(x, res, normalization="component")
    beta, alpha, _ = so3.s2grid(res)
    b, a = torch.meshgrid(beta, alpha, indexing="ij")
    xyz = torch.stack([torch.sin(b) * torch.sin(a), torch.cos(b), torch.sin(b) * torch.cos(a)], -1)
    expect = torch.einsum("...i,tki->...tk", x, so3.spherical_harmonics(lmax, xyz, normalization="component"))
    assert _rel(f, expect) <= 1e-12
    # the grid route by hand: product on the grid, projection back
    tp = so3.GauntTensorProduct(2, 3, 4)
    u = torch.randn(4, 1, 9, generator=gen, dtype=torch.float64)
    v = torch.randn(4, 1, 16, generator=gen, dtype=torch.float64)
    r = so3.s2grid_resolution(2, 3, 4)
    by_hand = so3.from_s2grid(so3.to_s2grid(u, r) * so3.to_s2grid(v, r), 4)
    assert _rel(by_hand, tp(u, v)) <= 1e-12


@needs_e3nn
def test_to_s2grid_matches_e3nn_harmonics_at_the_grid_points(gen):
    lmax = 4
    x = torch.randn(2, (lmax + 1) ** 2, generator=gen, dtype=torch.float64)
    res = (7, 11)
    beta, alpha, _ = so3.s2grid(res)
    b, a = torch.meshgrid(beta, alpha, indexing="ij")
    y = o3.spherical_harmonics_alpha_beta(list(range(lmax + 1)), a, b, normalization="component")
    assert _rel(so3.to_s2grid(x, res, normalization="component"), torch.einsum("ni,tki->ntk", x, y)) <= 1e-12


def test_bad_input():
    with pytest.raises(ValueError, match="method"):
        so3.GauntTensorProduct(2, 2, method="fast")
    with pytest.raises(ValueError, match="res applies"):
        so3.GauntTensorProduct(2, 2, method="fft", res=(9, 9))
    with pytest.raises(TypeError, match="res"):
        so3.GauntTensorProduct(2, 2, method="grid", res=9)
    with pytest.raises(TypeError, match="lmax1"):
        so3.GauntTensorProduct(2.0, 2)
    tp = so3.GauntTensorProduct(2, 1, channels=3)
    x, y = torch.randn(4, 3, 9), torch.randn(4, 3, 4)
    with pytest.raises(ValueError, match=r"x must have shape \[..., channels, 9\]"):
        tp(torch.randn(4, 3, 16), y)  # lmax mismatch
    with pytest.raises(ValueError, match="y must have shape"):
        tp(x, torch.randn(4, 3, 5))
    with pytest.raises(ValueError, match="channels"):
        tp(x, torch.randn(4, 2, 4))
    with pytest.raises(TypeError, match="y is float64 but x is float32"):
        tp(x, y.double())
    with pytest.raises(TypeError, match="float32 or float64"):
        tp(x.half(), y.half())
    with pytest.raises(ValueError, match="w_in1"):
        tp(x, y, w_in1=torch.randn(3, 2))
    with pytest.raises(ValueError, match="do not broadcast"):
        tp(torch.randn(4, 3, 9), torch.randn(5, 3, 4))
    with pytest.raises(ValueError, match=r"\(lmax \+ 1\)\^2"):
        so3.to_s2grid(torch.randn(3, 8))
    with pytest.raises(ValueError, match="n_beta, n_alpha"):
        so3.from_s2grid(torch.randn(8), 2)
    with pytest.raises(ValueError, match="normalization"):
        so3.to_s2grid(torch.randn(9), normalization="schmidt")


def test_corrupt_program_is_refused():
    p = gp.grid_program(1, 1, 2, *gp.minimal_grid(1, 1, 2))
    ops = p.ops.clone()
    ops[0, 1] = p.num_slots  # write past the slots
    with pytest.raises(ValueError, match="past the slots"):
        _C.GauntProgram(ops, p.consts, p.index, p.in1_slots, p.in2_slots, p.out_slots, p.num_slots)
    with pytest.raises(ValueError, match="past the constants"):
        _C.GauntProgram(p.ops, p.consts[:3].clone(), p.index, p.in1_slots, p.in2_slots, p.out_slots, p.num_slots)


# ------------------------------------------------------------------------------------------ weights, grads
def test_weights_scale_degree_blocks(gen):
    tp = so3.GauntTensorProduct(2, 2, 3, channels=2)
    x = torch.randn(6, 2, 9, generator=gen, dtype=torch.float64)
    y = torch.randn(6, 2, 9, generator=gen, dtype=torch.float64)
    w1, w2 = torch.randn(6, 2, 3, generator=gen, dtype=torch.float64), torch.randn(2, 3, generator=gen, dtype=torch.float64)
    wo = torch.randn(6, 2, 4, generator=gen, dtype=torch.float64)
    rep = lambda w, l: w[..., torch.repeat_interleave(torch.arange(l + 1), 2 * torch.arange(l + 1) + 1)]
    expect = ref.gaunt_tp(x * rep(w1, 2), y * rep(w2, 2), 2, 2, 3) * rep(wo, 3)
    assert _rel(tp(x, y, w_in1=w1, w_in2=w2, w_out=wo), expect) <= 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_and_gradgradcheck(method, gen):
    tp = so3.GauntTensorProduct(2, 1, 3, method=method)
    x = torch.randn(3, 2, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b, c: tp(a, b, w_out=c)
    assert torch.autograd.gradcheck(fn, (x, y, w))
    assert torch.autograd.gradgradcheck(fn, (x, y, w))


def test_opcheck(gen):
    x = torch.randn(5, 9, generator=gen, dtype=torch.float64)
    y = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    for method in METHODS:
        torch.library.opcheck(torch.ops.fastops.gaunt_tp.default, (x, y, 2, 1, 3, method, *gp.minimal_grid(2, 1, 3)))
    cp = so3.CPTensorProduct(1, 3, rank=8)
    f = cp._factors(torch.float64, torch.device("cpu"))
    torch.library.opcheck(torch.ops.fastops.cp_tp.default,
                          (torch.randn(4, 3, 4, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64),
                           torch.randn(4, 3, dtype=torch.float64), *f))


def test_torch_compile(gen):
    tp = so3.GauntTensorProduct(3, 2, 4)
    cp = so3.CPTensorProduct(1, 3, rank=8)
    x = torch.randn(6, 1, 16, generator=gen)
    y = torch.randn(6, 1, 9, generator=gen)
    fn = torch.compile(lambda a, b: tp(a, b), fullgraph=True)
    assert _rel(fn(x, y), tp(x, y)) <= 1e-6
    xc, yc, wc = torch.randn(5, 3, 4, generator=gen), torch.randn(5, 4, generator=gen), torch.randn(5, 3, generator=gen)
    fc = torch.compile(lambda a, b, c: cp(a, b, c), fullgraph=True)
    assert _rel(fc(xc, yc, wc), cp(xc, yc, wc)) <= 1e-6


# ---------------------------------------------------------------------------------------------------- CP
@pytest.mark.parametrize("lmax,rank", [(1, 8), (2, 40)])
def test_cp_fit_reaches_1e3(lmax, rank):
    cp = so3.CPTensorProduct(lmax, 2, rank=rank)
    assert float(cp.fit_error) <= 1e-3
    assert abs(cp.relative_error() - float(cp.fit_error)) <= 1e-9


def test_cp_default_rank_is_tdn_schedule_and_reports_its_error():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cp = so3.CPTensorProduct(2, 2)
    assert cp.rank == 28
    assert abs(cp.relative_error() - float(cp.fit_error)) <= 1e-9
    # rank 28 cannot represent the lmax-2 CG tensor to 1e-3 (measured floor ~3e-2): the fit says so
    assert float(cp.fit_error) > 1e-3 and any("relative error" in str(w.message) for w in caught)


@pytest.mark.parametrize("cpu_isa", CPU_ISAS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cp_kernel_matches_reference(cpu_isa, dtype, gen):
    for lmax, channels, rank in [(1, 3, 8), (2, 17, 40), (3, 5, 21)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 20 sweeps leave a rough fit; any factors exercise the kernel
            cp = so3.CPTensorProduct(lmax, channels, rank=rank, max_iter=20)
        d = (lmax + 1) ** 2
        x = torch.randn(9, channels, d, generator=gen, dtype=dtype)
        y = torch.randn(9, d, generator=gen, dtype=dtype)
        w = torch.randn(9, channels, generator=gen, dtype=dtype)
        assert _rel(cp(x, y, w), ref.cp_tp(x, y, w, cp.f1, cp.f2, cp.f3)) <= TOL[dtype]


def test_cp_approximates_the_exact_tp_and_is_nearly_equivariant(gen):
    lmax, C = 2, 4
    cp = so3.CPTensorProduct(lmax, C, rank=40)
    m = so3.cp_reference_tensor(lmax)
    x = torch.randn(6, C, 9, generator=gen, dtype=torch.float64)
    y = torch.randn(6, 9, generator=gen, dtype=torch.float64)
    w = torch.randn(6, C, generator=gen, dtype=torch.float64)
    exact = torch.einsum("ijk,eci,ej,ec->eck", m, x, y, w)
    out = cp(x, y, w)
    bound = cp.residual_norm() * x.norm(dim=-1) * y.norm(dim=-1)[:, None] * w.abs()
    assert ((out - exact).norm(dim=-1) <= bound * (1 + 1e-9)).all()
    R = so3.rand_matrix(generator=gen, dtype=torch.float64)
    D = so3.Irreps.spherical_harmonics(lmax).D_from_matrix(R)
    err = (cp(x @ D.T, y @ D.T, w) - out @ D.T).norm(dim=-1)
    assert (err <= 2 * bound * (1 + 1e-9)).all()
    assert float(err.max()) > 0  # an approximation: not exactly equivariant


def test_cp_gradcheck_and_gradgradcheck(gen):
    cp = so3.CPTensorProduct(1, 2, rank=8)
    x = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cp, (x, y, w))
    assert torch.autograd.gradgradcheck(cp, (x, y, w))


def test_cp_state_dict_and_factors_round_trip(gen):
    cp = so3.CPTensorProduct(1, 3, rank=8)
    again = so3.CPTensorProduct(1, 3, rank=8, factors=(cp.f1, cp.f2, cp.f3))
    loaded = so3.CPTensorProduct(1, 3, rank=8, factors=(torch.zeros(4, 8),) * 3)
    loaded.load_state_dict(cp.state_dict())
    x, y, w = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 4, generator=gen), torch.randn(2, 3, generator=gen)
    assert torch.equal(again(x, y, w), cp(x, y, w)) and torch.equal(loaded(x, y, w), cp(x, y, w))
    assert float(loaded.fit_error) == float(cp.fit_error)


def test_cp_conv_matches_a_loop(gen):
    cp = so3.CPTensorProductConv(1, 3, rank=8)
    V, E = 7, 30
    x = torch.randn(V, 3, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(E, 4, generator=gen, dtype=torch.float64)
    w = torch.randn(E, 3, generator=gen, dtype=torch.float64)
    s = torch.randint(0, V, (E,), generator=gen)
    r = torch.randint(0, V - 2, (E,), generator=gen)
    out = cp(x, y, w, s, r)
    expect = torch.zeros(V, 3, 4, dtype=torch.float64)
    for e in range(E):
        expect[r[e]] += ref.cp_tp(x[s[e]][None], y[e][None], w[e][None], cp.f1, cp.f2, cp.f3)[0]
    assert _rel(out, expect) <= 1e-12
    with pytest.raises(ValueError, match=r"senders has entries outside \[0, 7\)"):
        cp(x, y, w, s + V, r)
    with pytest.raises(ValueError, match=r"receivers has entries outside \[0, 7\)"):
        cp(x, y, w, s, r - V)


def test_cp_bad_input():
    with pytest.raises(ValueError, match="channels"):
        so3.CPTensorProduct(1, 0)
    with pytest.raises(ValueError, match="factors"):
        so3.CPTensorProduct(1, 2, rank=8, factors=(torch.zeros(4, 7),) * 3)
    cp = so3.CPTensorProduct(1, 2, rank=8)
    with pytest.raises(ValueError, match=r"x must have shape \[..., 2, 4\]"):
        cp(torch.randn(3, 2, 9), torch.randn(3, 4), torch.randn(3, 2))
    with pytest.raises(ValueError, match="weight must have shape"):
        cp(torch.randn(3, 2, 4), torch.randn(3, 4), torch.randn(3, 3))
    with pytest.raises(TypeError, match="dtype"):
        cp(torch.randn(3, 2, 4), torch.randn(3, 4).double(), torch.randn(3, 2))


# --------------------------------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype, gen):
    for method in METHODS:
        for l1, l2, l3 in [(2, 2, 4), (4, 3, 5), (8, 8, 16)]:
            tp = so3.GauntTensorProduct(l1, l2, l3, method=method)
            x = torch.randn(301, 2, (l1 + 1) ** 2, generator=gen, dtype=dtype)
            y = torch.randn(301, 2, (l2 + 1) ** 2, generator=gen, dtype=dtype)
            g = torch.randn(301, 2, (l3 + 1) ** 2, generator=gen, dtype=dtype)
            outs = []
            for dev in ("cpu", "cuda"):
                a, b = x.to(dev).requires_grad_(), y.to(dev).requires_grad_()
                out = tp(a, b)
                outs.append([out] + list(torch.autograd.grad((out * g.to(dev)).sum(), (a, b))))
            for c, d in zip(*outs):
                assert _rel(d.cpu(), c) <= TOL[dtype] * 5
    cp = so3.CPTensorProduct(2, 33, rank=40)
    x = torch.randn(70, 33, 9, generator=gen, dtype=dtype)
    y = torch.randn(70, 9, generator=gen, dtype=dtype)
    w = torch.randn(70, 33, generator=gen, dtype=dtype)
    assert _rel(cp(x.cuda(), y.cuda(), w.cuda()).cpu(), cp(x, y, w)) <= TOL[dtype] * 5


def test_cuda_index_math_on_the_cpu():
    """The CUDA kernels' index math (gaunt_cuda_layout.h), emulated thread by thread on the CPU."""
    failures, report = _C._gaunt_cuda_layout_selftest()
    assert failures == 0, report
