"""fastops._so3_math against e3nn 0.6 (the oracle): irreps bookkeeping, Wigner 3j, spherical harmonics,
rotations and Wigner D matrices, plus the identities that tie them together."""
import math
import pickle
import random

import numpy as np
import pytest
import torch

e3nn = pytest.importorskip("e3nn", reason="e3nn 0.6 is a test dependency: pip install '.[test]'")
o3 = pytest.importorskip("e3nn.o3")

from fastops._so3_math import (Irrep, Irreps, MulIr, angles_to_matrix, matrix_to_angles, rand_matrix,
                               spherical_harmonics, wigner_3j, wigner_D)

assert e3nn.__version__.startswith("0.6"), e3nn.__version__
F64 = torch.float64
SH_TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
BATCH_SHAPES = [(0,), (1,), (7,), (3, 5)]


@pytest.fixture
def f64_default():
    """e3nn builds its so(3) generators (wigner_D, D_from_*) in the default dtype: make it float64."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    yield
    torch.set_default_dtype(before)


def _row_rel(ours: torch.Tensor, ref: torch.Tensor, ls) -> float:
    """Largest per-vector, per-degree relative error ||ours_l - ref_l|| / ||ref_l|| (ref in float64)."""
    ours, ref = ours.detach().double(), ref.detach().double()
    worst, start = 0.0, 0
    for l in ls:
        a, b = ours[..., start:start + 2 * l + 1], ref[..., start:start + 2 * l + 1]
        start += 2 * l + 1
        if b.numel():
            worst = max(worst, float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max()))
    assert start == ref.shape[-1]
    return worst


def _maxabs(t: torch.Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def _random_irreps_text(rng: random.Random) -> str:
    terms = []
    for _ in range(rng.randint(1, 6)):
        mul = rng.choice(["", "0x", "1x", "3x", "16 x ", "128x"])
        terms.append(f"{mul}{rng.randint(0, 4)}{rng.choice('eoy')}")
    return rng.choice(["+", " + ", "+ "]).join(terms)


# ---------------------------------------------------------------------------------------------- irreps

def test_irrep_matches_e3nn():
    all_irreps = [Irrep(l, p) for l in range(4) for p in (1, -1)]
    theirs = [o3.Irrep(l, p) for l in range(4) for p in (1, -1)]
    for ours, ref in zip(all_irreps, theirs):
        assert str(ours) == repr(ours) == str(ref) and ours.dim == ref.dim and ours.is_scalar() == ref.is_scalar()
        assert ours == ref and hash(ours) == hash(ref) and (ours.l, ours.p) == (ref.l, ref.p)
        assert Irrep(str(ours)) == ours == Irrep((ours.l, ours.p)) == Irrep(ref)
        for other, other_ref in zip(all_irreps, theirs):
            assert [str(i) for i in ours * other] == [str(i) for i in ref * other_ref]
            assert (ours < other) == (ref < other_ref)
    assert [str(i) for i in sorted(all_irreps)] == [str(i) for i in sorted(theirs)]
    assert Irrep("1o") * Irrep("1o") == [Irrep("0e"), Irrep("1e"), Irrep("2e")]
    assert Irrep("2y") == Irrep(2, 1) and Irrep(" 3y ") == Irrep(3, -1)
    assert Irrep("0e").is_scalar() and not Irrep("0o").is_scalar()
    assert 3 * Irrep("1e") == "3x1e" and Irrep("1o") + "2e" == "1o+2e"


def test_irreps_match_e3nn():
    rng = random.Random(0)
    texts = ["128x0e+128x1o + 2e", "0e + 1o+ 2x2e", "3x1o+0x2e+3x1o+1e", "", "  ", "4x0o+2x0e+1x3y",
             "0x1e+1e", "1e+0x2e+1e", "0e+0e+0o"] + [_random_irreps_text(rng) for _ in range(40)]
    for text in texts:
        ours, ref = Irreps(text), o3.Irreps(text)
        assert str(ours) == repr(ours) == str(ref), text
        assert ours == ref and ours == str(ref) and hash(ours) == hash(ref) and len(ours) == len(ref)
        assert ours.dim == ref.dim and ours.num_irreps == ref.num_irreps and ours.ls == ref.ls
        assert ours.slices() == ref.slices()
        if len(ref):
            assert ours.lmax == ref.lmax
            assert str(ours[1:]) == str(ref[1:]) and isinstance(ours[1:], Irreps)
            assert ours[0] == ref[0] and ours[0].dim == ref[0].dim and ours[0].ir.l == ref[0].ir.l
        for name in ("simplify", "remove_zero_multiplicities", "regroup"):
            assert str(getattr(ours, name)()) == str(getattr(ref, name)()), (text, name)
        s, s_ref = ours.sort(), ref.sort()
        assert str(s.irreps) == str(s_ref.irreps) and s.p == s_ref.p and s.inv == s_ref.inv, text
        assert s == (s.irreps, s.p, s.inv) and type(s).__name__ == "sort"
        for ir in ("0e", "0o", "1o", "1e", "2e", "3o", "4e"):
            assert ours.count(ir) == ref.count(ir) and (ir in ours) == (ir in ref)
        assert str(ours + "2x1e") == str(ref + o3.Irreps("2x1e"))
        assert str(ours * 3) == str(ref * 3) and str(2 * ours) == str(2 * ref)
        assert Irreps(ref) == ours and Irreps(str(ours)) == ours and Irreps(list(ours)) == ours


def test_irreps_constructors_and_protocol():
    expected = Irreps("2x1o+3x2e+1x0e+1x1e+4x0o")
    built = Irreps([(2, "1o"), (3, (2, 1)), "0e", Irrep("1e"), MulIr(4, Irrep("0o"))])
    assert built == expected and str(built) == "2x1o+3x2e+1x0e+1x1e+4x0o"
    assert Irreps([(2, o3.Irrep("1o")), o3.Irreps("3x2e")[0]]) == "2x1o+3x2e"  # foreign Irrep / MulIr
    assert Irreps(o3.Irreps("2x1o+3e")) == "2x1o+1x3e" and Irreps(o3.Irrep("2o")) == "2o"
    assert Irreps(Irrep("1o")) == "1x1o" and Irreps(expected) == expected
    assert Irreps(Irrep("1o") * Irrep("1e")) == "0o+1o+2o"  # from a generator / iterator
    assert Irreps(iter([(1, "0e")])) == "0e"
    assert Irreps() == Irreps("") == Irreps([]) == "" and Irreps().dim == 0 and str(Irreps()) == ""
    assert Irreps("1o") == "1x1o" and Irreps("1o") != "2x1o" and Irreps("1o") != "not irreps"
    assert not (Irreps("1o") != "1x1o") and Irreps("0e") != 5
    assert hash(Irreps("2x1o")) == hash(Irreps([(2, (1, -1))]))
    assert Irreps.spherical_harmonics(3) == "0e+1o+2e+3o"
    for lmax in range(5):
        for p in (1, -1):
            assert str(Irreps.spherical_harmonics(lmax, p)) == str(o3.Irreps.spherical_harmonics(lmax, p))
    mul_ir = Irreps("16x2e")[0]
    mul, ir = mul_ir
    assert (mul, ir.l, ir.p, mul_ir.mul, mul_ir.dim, str(mul_ir)) == (16, 2, 1, 16, 80, "16x2e")
    assert MulIr(16, Irrep("2e")) in Irreps("16x2e") and Irrep("2e") in Irreps("16x2e")
    with pytest.raises(TypeError):
        expected[0] = (1, Irrep("0e"))  # immutable
    for obj in (expected, Irrep("3o"), expected[0]):
        assert pickle.loads(pickle.dumps(obj)) == obj
    with pytest.raises(ValueError, match="empty"):
        Irreps("").lmax


@pytest.mark.parametrize("text", ["1x", "3q", "-1x0e", "2x1o+", "x1e", "1.5x0e", "0e++1o", "1x-1o", "e", "1x1x1o"])
def test_bad_irreps_strings(text):
    with pytest.raises(ValueError, match=r"Irreps: term .* of '.*' is not of the form '\[mul x\] l p'"):
        Irreps(text)


def test_bad_irreps_and_irrep_values():
    with pytest.raises(ValueError, match="multiplicity must be an integer >= 0"):
        Irreps([(-1, "0e")])
    with pytest.raises(ValueError, match="multiplicity must be an integer >= 0"):
        Irreps([(1.5, "0e")])
    with pytest.raises(ValueError, match="parity p must be"):
        Irreps([(1, (1, 2))])
    with pytest.raises(ValueError, match="Irreps: term"):
        Irreps(5)
    with pytest.raises(ValueError, match="Irrep: '1x1o' is not an irrep"):
        Irrep("1x1o")
    with pytest.raises(ValueError, match="l must be >= 0"):
        Irrep(-1, 1)
    with pytest.raises(ValueError, match="parity p must be"):
        Irrep(1, 0)
    with pytest.raises(TypeError, match="l must be an integer"):
        Irrep(1.0, 1)


# ---------------------------------------------------------------------------------------------- wigner 3j

def _triples(lmax12: int):
    for l1 in range(lmax12 + 1):
        for l2 in range(lmax12 + 1):
            for l3 in range(abs(l1 - l2), l1 + l2 + 1):
                yield l1, l2, l3


def test_wigner_3j_matches_e3nn():
    for l1, l2, l3 in list(_triples(6)) + [(10, 10, 10), (10, 3, 8), (9, 10, 1), (7, 8, 15), (10, 10, 0)]:
        ours = wigner_3j(l1, l2, l3)
        assert ours.dtype == F64 and ours.shape == (2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1)
        err = (ours - o3.wigner_3j(l1, l2, l3, dtype=F64)).abs().max().item()
        assert err <= 1e-14, ((l1, l2, l3), err)


def test_wigner_3j_values_and_invariance(gen):
    eye, eps = torch.eye(3, dtype=F64), torch.zeros(3, 3, 3, dtype=F64)
    for i, j, k in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
        eps[i, j, k], eps[j, i, k] = 1.0, -1.0
    assert torch.allclose(wigner_3j(1, 1, 0)[..., 0], eye / math.sqrt(3), rtol=0, atol=1e-15)
    assert torch.allclose(wigner_3j(1, 1, 1), eps / math.sqrt(6), rtol=0, atol=1e-15)
    R = rand_matrix(dtype=F64, generator=gen)
    for l1, l2, l3 in [(1, 2, 3), (2, 2, 2), (3, 4, 5), (4, 4, 1), (6, 5, 2)]:
        C = wigner_3j(l1, l2, l3)
        assert abs(C.norm().item() - 1) <= 1e-14
        D1, D2, D3 = (wigner_D(l, *matrix_to_angles(R)) for l in (l1, l2, l3))
        assert (torch.einsum("ijk,ia,jb,kc->abc", C, D1, D2, D3) - C).abs().max() <= 1e-13


def test_wigner_3j_dtype_copies_and_errors():
    c32 = wigner_3j(2, 3, 4, dtype=torch.float32, device="cpu")
    assert c32.dtype == torch.float32 and torch.equal(c32, wigner_3j(2, 3, 4).float())
    c = wigner_3j(2, 2, 2)
    c.zero_()  # a copy: the cache is not the caller's
    assert wigner_3j(2, 2, 2).abs().max() > 0
    with pytest.raises(ValueError, match="triangle rule"):
        wigner_3j(1, 1, 3)
    with pytest.raises(ValueError, match="triangle rule"):
        wigner_3j(5, 1, 3)
    with pytest.raises(ValueError, match="l >= 0"):
        wigner_3j(-1, 1, 1)
    with pytest.raises(TypeError, match="l2 must be an integer"):
        wigner_3j(1, 1.0, 1)


# ------------------------------------------------------------------------------------ spherical harmonics

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("normalization", ["integral", "component", "norm"])
def test_spherical_harmonics_match_e3nn(normalization, normalize, dtype):
    gen = torch.Generator().manual_seed(["integral", "component", "norm"].index(normalization) * 2 + normalize)
    for shape in BATCH_SHAPES:
        x = torch.randn(*shape, 3, generator=gen, dtype=F64)
        ref = o3.spherical_harmonics(list(range(13)), x, normalize, normalization=normalization)
        ours = spherical_harmonics(12, x.to(dtype), normalize, normalization)
        assert ours.shape == (*shape, 169) and ours.dtype == dtype
        assert _row_rel(ours, ref, range(13)) <= SH_TOL[dtype]
    x = torch.randn(7, 3, generator=gen, dtype=F64)
    for ls, ref_ls, degrees in [([3, 0, 2, 2], [3, 0, 2, 2], [3, 0, 2, 2]), ([5], 5, [5]),
                                ("0e+2x1o+0x3o+2e", "0e+2x1o+0x3o+2e", [0, 1, 1, 2]),
                                (o3.Irreps("2e+0e"), "2e+0e", [2, 0]), (Irreps("11o"), "11o", [11])]:
        ref = o3.spherical_harmonics(ref_ls, x, normalize, normalization=normalization)
        assert _row_rel(spherical_harmonics(ls, x.to(dtype), normalize, normalization), ref, degrees) <= SH_TOL[dtype]


def test_spherical_harmonics_defaults_and_norms(gen):
    x = torch.randn(9, 3, generator=gen, dtype=F64)
    assert torch.equal(spherical_harmonics(2, x), spherical_harmonics(2, x, True, "component"))
    assert (spherical_harmonics(1, x, False)[:, 1:] - math.sqrt(3) * x).abs().max() <= 1e-15
    scale = torch.rand(9, 1, generator=gen, dtype=F64) + 0.5
    for l in range(0, 21, 4):  # beyond e3nn's l <= 12 too
        unit = spherical_harmonics([l], x)
        assert ((unit ** 2).sum(-1) - (2 * l + 1)).abs().max() <= 1e-11 * (2 * l + 1)
        assert ((spherical_harmonics([l], x, normalization="norm") ** 2).sum(-1) - 1).abs().max() <= 1e-12
        integral = spherical_harmonics([l], x, normalization="integral")
        assert ((integral ** 2).sum(-1) - (2 * l + 1) / (4 * math.pi)).abs().max() <= 1e-12
        # normalize=False: homogeneous polynomials of degree l
        raw = spherical_harmonics([l], x * scale, normalize=False)
        assert _row_rel(raw, unit * (x * scale).norm(dim=-1, keepdim=True) ** l, [l]) <= 1e-12


def test_spherical_harmonics_orthonormal_beyond_e3nn():
    """Gauss-Legendre (in y, the polar axis) x uniform-angle quadrature, exact for degree <= 2 * 16."""
    lmax = 16
    nodes, weights = np.polynomial.legendre.leggauss(lmax + 1)
    phi = torch.arange(2 * lmax + 1, dtype=F64) * (2 * math.pi / (2 * lmax + 1))
    y = torch.from_numpy(nodes)[:, None].expand(-1, phi.numel())
    s = (1 - y ** 2).sqrt()
    pts = torch.stack([s * phi.sin(), y, s * phi.cos()], dim=-1).reshape(-1, 3)
    w = (torch.from_numpy(weights)[:, None] * (2 * math.pi / phi.numel())).expand(-1, phi.numel()).reshape(-1)
    Y = spherical_harmonics(lmax, pts, normalization="integral")
    gram = Y.T @ (w[:, None] * Y)
    assert (gram - torch.eye(Y.shape[-1], dtype=F64)).abs().max() <= 1e-12


def test_spherical_harmonics_gradients(gen):
    axes = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -2]], dtype=F64)
    x = torch.cat([axes, torch.randn(2, 3, generator=gen, dtype=F64)]).requires_grad_()
    for normalize in (True, False):
        assert torch.autograd.gradcheck(lambda v: spherical_harmonics(4, v, normalize), (x,))
        assert torch.autograd.gradgradcheck(lambda v: spherical_harmonics([3, 1], v, normalize), (x,))
    # first and second derivatives match e3nn's polynomials, and are finite on the axes up to l = 12
    g = torch.randn(8, 169, generator=gen, dtype=F64)
    grads = []
    for sh in (lambda v: spherical_harmonics(12, v), lambda v: o3.spherical_harmonics(list(range(13)), v, True, "component")):
        (d,) = torch.autograd.grad((sh(x) * g).sum(), x, create_graph=True)
        (dd,) = torch.autograd.grad(d.square().sum(), x)
        grads.append((d, dd))
    (d, dd), (d_ref, dd_ref) = grads
    assert torch.isfinite(d).all() and torch.isfinite(dd).all()
    assert (d - d_ref).norm() <= 1e-12 * d_ref.norm() and (dd - dd_ref).norm() <= 1e-12 * dd_ref.norm()


def test_spherical_harmonics_zero_vector():
    zero = torch.zeros(2, 3, dtype=F64)
    for normalize in (True, False):
        for normalization in ("integral", "component", "norm"):
            ours = spherical_harmonics(4, zero, normalize, normalization)
            ref = o3.spherical_harmonics(list(range(5)), zero, normalize, normalization=normalization)
            assert torch.isfinite(ours).all() and torch.equal(ours, ref)
    assert torch.equal(spherical_harmonics(2, zero), torch.tensor([[1.0] + [0.0] * 8] * 2, dtype=F64))


def test_spherical_harmonics_compiles(gen):
    x = torch.randn(5, 3, generator=gen, dtype=F64)
    compiled = torch.compile(lambda v: spherical_harmonics(3, v, True, "integral"), fullgraph=True)
    assert (compiled(x) - spherical_harmonics(3, x, True, "integral")).abs().max() <= 1e-14


def test_spherical_harmonics_bad_input():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"vectors must have shape \[\.\.\., 3\], got \[4, 2\]"):
        spherical_harmonics(2, torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"vectors must have shape"):
        spherical_harmonics(2, torch.tensor(1.0))
    with pytest.raises(TypeError, match="vectors must have a floating point dtype"):
        spherical_harmonics(2, torch.zeros(4, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="vectors must be a torch.Tensor"):
        spherical_harmonics(2, [[0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="normalization must be"):
        spherical_harmonics(2, x, normalization="unit")
    with pytest.raises(ValueError, match="ls: lmax must be >= 0"):
        spherical_harmonics(-1, x)
    with pytest.raises(ValueError, match="ls: degrees must be >= 0"):
        spherical_harmonics([0, -2], x)
    with pytest.raises(ValueError, match="ls: no degree"):
        spherical_harmonics([], x)
    for bad in ("1e", "0e+2o", "0o", "0e+1e+2e"):  # e3nn takes all-even parities as a pseudovector; we refuse
        with pytest.raises(ValueError, match="parity"):
            spherical_harmonics(bad, x)
    with pytest.raises(ValueError, match="Irreps: term"):
        spherical_harmonics("2x", x)


# --------------------------------------------------------------------------------------------- rotations

def test_angles_and_matrices_match_e3nn(gen):
    for shape in BATCH_SHAPES + [()]:
        a, b, c = (torch.rand(3, *shape, generator=gen, dtype=F64) * torch.tensor([2 * math.pi, math.pi, 2 * math.pi],
                                                                                  dtype=F64).view(3, *[1] * len(shape)))
        R = angles_to_matrix(a, b, c)
        assert R.shape == (*shape, 3, 3) and _maxabs(R - o3.angles_to_matrix(a, b, c)) <= 1e-15
        for ours, ref in zip(matrix_to_angles(R), o3.matrix_to_angles(R)):
            assert ours.shape == shape and _maxabs(ours - ref) <= 1e-12
        assert _maxabs(angles_to_matrix(*matrix_to_angles(R)) - R) <= 1e-14
    # gimbal lock (beta = 0 or pi): the angles still rebuild the matrix
    t = torch.tensor([0.3, -2.0], dtype=F64)
    for beta in (0.0, math.pi):
        R = angles_to_matrix(t, torch.full_like(t, beta), 2 * t)
        assert (angles_to_matrix(*matrix_to_angles(R)) - R).abs().max() <= 1e-14
    with pytest.raises(ValueError, match=r"R must have shape \[\.\.\., 3, 3\]"):
        matrix_to_angles(torch.eye(2, dtype=F64))


def test_rand_matrix(gen):
    for shape in BATCH_SHAPES + [()]:
        R = rand_matrix(*shape, dtype=F64, generator=gen)
        assert R.shape == (*shape, 3, 3) and R.dtype == F64
        assert _maxabs(R @ R.transpose(-1, -2) - torch.eye(3, dtype=F64)) <= 1e-14
        assert _maxabs(torch.linalg.det(R) - 1) <= 1e-14
    assert rand_matrix(2).dtype == torch.get_default_dtype()
    assert torch.equal(rand_matrix(3, generator=torch.Generator().manual_seed(5)),
                       rand_matrix(3, generator=torch.Generator().manual_seed(5)))
    # Haar moments: E[R] = 0, E[tr R] = 0, E[(tr R)^2] = 1 (tr R = 1 + 2 cos(angle))
    R = rand_matrix(20000, dtype=F64, generator=gen)
    tr = R.diagonal(dim1=-2, dim2=-1).sum(-1)
    assert R.mean(0).abs().max() < 0.03 and tr.mean().abs() < 0.04 and (tr.square().mean() - 1).abs() < 0.06


def test_wigner_D_matches_e3nn(gen, f64_default):
    a, b, c = (torch.rand(3, 3, 5, generator=gen, dtype=F64) * 7 - 0.5)  # angles outside [0, 2pi) too
    for l in range(9):
        D = wigner_D(l, a, b, c)
        assert D.shape == (3, 5, 2 * l + 1, 2 * l + 1) and D.dtype == F64
        assert (D - o3.wigner_D(l, a, b, c)).abs().max() <= 1e-12
    assert wigner_D(2, a.float(), b.float(), c.float()).dtype == torch.float32
    with pytest.raises(ValueError, match="l must be >= 0"):
        wigner_D(-1, a, b, c)


def test_wigner_D_is_a_representation(gen):
    R1, R2 = rand_matrix(2, 4, dtype=F64, generator=gen)
    for l in (2, 5, 14):
        D1, D2 = (wigner_D(l, *matrix_to_angles(R)) for R in (R1, R2))
        D12 = wigner_D(l, *matrix_to_angles(R1 @ R2))
        assert (D12 - D1 @ D2).abs().max() <= 1e-12
        assert (wigner_D(l, *matrix_to_angles(R1.transpose(-1, -2))) - D1.transpose(-1, -2)).abs().max() <= 1e-12
        assert (D1 @ D1.transpose(-1, -2) - torch.eye(2 * l + 1, dtype=F64)).abs().max() <= 1e-13
    assert (wigner_D(1, *matrix_to_angles(R1)) - R1).abs().max() <= 1e-14


def test_irreps_D_match_e3nn(gen, f64_default):
    irreps = "2x0e+0o+1x1o+0x2o+3x2e+1x3o+1e"
    ours, ref = Irreps(irreps), o3.Irreps(irreps)
    R = rand_matrix(3, 5, dtype=F64, generator=gen)
    for M in (R, -R):
        D = ours.D_from_matrix(M)
        assert D.shape == (3, 5, ours.dim, ours.dim)
        assert (D - ref.D_from_matrix(M)).abs().max() <= 1e-12
    a, b, c = matrix_to_angles(R)
    k = torch.randint(0, 3, (3, 5), generator=gen).to(F64)
    assert (ours.D_from_angles(a, b, c, k) - ref.D_from_angles(a, b, c, k)).abs().max() <= 1e-12
    assert (ours.D_from_angles(a, b, c) - ref.D_from_angles(a, b, c)).abs().max() <= 1e-12
    assert (ours.D_from_angles(a, b, c, 1) - ref.D_from_angles(a, b, c, torch.ones_like(a))).abs().max() <= 1e-12
    assert (Irrep("2o").D_from_matrix(-R) - o3.Irrep("2o").D_from_matrix(-R)).abs().max() <= 1e-12
    assert Irreps("").D_from_matrix(R).shape == (3, 5, 0, 0)
    # k broadcasts with the angles, as in e3nn
    k2 = torch.tensor([0.0, 1.0], dtype=F64)
    assert (ours.D_from_angles(a[0, 0], b[0, 0], c[0, 0], k2)
            - ref.D_from_angles(a[0, 0], b[0, 0], c[0, 0], k2)).abs().max() <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equivariance(dtype, gen):
    """Y(x R^T) = Y(x) D(R)^T, i.e. Y(R x) = D(R) Y(x), for rotations and (with parity (-1)^l) inversions."""
    tol = {torch.float64: 1e-11, torch.float32: 2e-5}[dtype]
    x = torch.randn(7, 3, generator=gen, dtype=F64).to(dtype)
    R = rand_matrix(dtype=F64, generator=gen).to(dtype)
    lmax = 14  # beyond e3nn's l <= 12
    irreps = Irreps.spherical_harmonics(lmax)
    for M in (R, -R):
        lhs = spherical_harmonics(irreps, x @ M.T)
        rhs = spherical_harmonics(lmax, x) @ irreps.D_from_matrix(M).T
        assert _row_rel(lhs, rhs, range(lmax + 1)) <= tol
    angles = matrix_to_angles(R)
    for l in (3, 12):
        lhs = spherical_harmonics([l], x @ R.T, normalization="norm")
        assert _row_rel(lhs, spherical_harmonics([l], x, normalization="norm") @ wigner_D(l, *angles).T, [l]) <= tol
