"""fastops.so3 Clebsch-Gordan tensor products against e3nn 0.6, the implementation users would otherwise run
(and the only one of the anchors with a CPU path).

so3_conv: the fused message-passing form out[i] = sum_{edges j->i} TP(x[j], Y[edge], w[edge]) with per-edge
weights (MACE's interaction). fastops runs TensorProductConv (receiver and sender orders precomputed,
as a model reuses them across layers); e3nn gathers, runs o3.TensorProduct on every edge and index_adds
the [E, out] messages. `pass`: fwd, or fwd_bwd (forward plus gradients of every input, what force
training needs per step). The e3nn peer runs on a graph of 1e4 edges (its time grows linearly with E;
1e5 edges would take minutes and ~10 GB); fastops also runs the issue's 1e5 edges over 5e3 nodes.
so3_tp: the unfused batched TensorProduct (per-sample weights for MACE, shared for the fully connected one).
gaunt: the weightless Gaunt product of two single-channel functions of degrees <= L into degrees <= 2L
(PriceofFreedom's "MIMO" microbenchmark), batch 1e4: fastops (method='auto') and each method as a column
(fastops-grid / -fft / -direct); peers e3nn FullTensorProduct
(all paths, odd ones too: what users run today) and e3nn 'uuu' with kappa^2 path weights (the same math).
FLOPs: the grid program's count at the minimal grid (one problem count for every implementation).
cp_tp: TDN's CP product, lmax 2 and 3, 128 channels, 1e4 edges at the default rank 7 L^2; peers the same
factors through three torch matmuls, and e3nn's exact uvu TensorProduct that CP approximates.

Problems (fp32): mace-24p = 128x0e+128x1o+128x2e x Y(l<=3) -> every irrep l<=3 (24 uvu paths, the issue's
e3nn baseline); mace-large-17p = OpenEquivariance's mace-large (outputs 0e+1o+2e+3o, 17 paths);
fc-32ch = 32x0e+32x1o+32x2e x itself -> itself, fully connected (uvw, shared weights). FLOPs: the
OpenEquivariance count (benchmark/metrics.py: forward sum 3 nnz mul1 mul2 + (2l3+1)|w|, backward 9 nnz
mul1 mul2). Bytes: the fused minimum (x, Y, w and out once; fwd_bwd adds grad_out and the three gradients).
"""

from __future__ import annotations

import torch

import harness
from harness import Case, Prepared, Rotation, memo

PROBLEMS = {
    "mace-24p": ("128x0e+128x1o+128x2e", "0e+1o+2e+3o", "0e+0o+1e+1o+2e+2o+3e+3o"),
    "mace-large-17p": ("128x0e+128x1o+128x2e", "0e+1o+2e+3o", "0e+1o+2e+3o"),
}
FC = ("32x0e+32x1o+32x2e", "32x0e+32x1o+32x2e", "32x0e+32x1o+32x2e")


def _plan(device: str, quick: bool) -> dict:
    if quick:
        return {"graphs": [(100, 2000)], "problems": ["mace-24p"], "passes": ["fwd", "fwd_bwd"], "tp": []}
    return {"graphs": [(500, 10_000), (5000, 100_000)], "problems": list(PROBLEMS),
            "passes": ["fwd", "fwd_bwd"], "tp": [("mace-24p", 2000), ("fc-32ch", 1000)]}


def _channelwise(problem: str, conv: bool):
    import fastops.so3 as so3

    node, sh, target = PROBLEMS[problem]
    return so3.channelwise_tp(node, sh, target, conv=conv)


def _e3nn_tp(ours):
    from e3nn import o3

    return o3.TensorProduct(ours.irreps_in1, ours.irreps_in2, ours.irreps_out,
                            [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight, i.path_weight)
                             for i in ours.instructions],
                            shared_weights=ours.shared_weights, internal_weights=False)


def _graph(nodes: int, edges: int, d1: int, d2: int, weight_numel: int):
    gen = torch.Generator().manual_seed(edges)
    x = torch.randn(nodes, d1, generator=gen)
    y = torch.randn(edges, d2, generator=gen)
    w = torch.randn(edges, weight_numel, generator=gen)
    senders = torch.randint(0, nodes, (edges,), generator=gen)
    receivers = torch.randint(0, nodes, (edges,), generator=gen)
    return x, y, w, senders, receivers


def _pass_runner(pass_: str, forward, operands: tuple, grad: torch.Tensor):
    """(run, operands) for pass "fwd" (no autograd) or "fwd_bwd" (every operand's gradient against grad)."""
    if pass_ == "fwd":
        def run(ops):
            with torch.no_grad():
                return forward(*ops)
        return run, operands

    def run(ops):
        return torch.autograd.grad(forward(*ops), ops, grad)
    return run, tuple(t.detach().requires_grad_() for t in operands)


def _conv_case(device: str, problem: str, nodes: int, edges: int, pass_: str, impl: str) -> Case:
    def prepare() -> Prepared:
        import fastops.so3 as so3

        conv = memo(("conv", problem), lambda: _channelwise(problem, conv=True))
        plan = conv.plan
        x, y, w, s, r = memo(("graph", problem, nodes, edges),
                             lambda: _graph(nodes, edges, plan.irreps_in1.dim, plan.irreps_in2.dim, plan.weight_numel))
        dout = plan.irreps_out.dim
        grad = memo(("grad", problem, nodes), lambda: torch.randn(nodes, dout, generator=torch.Generator().manual_seed(1)))
        if impl == "fastops":
            r_order, s_order = memo(("orders", nodes, edges), lambda: so3.edge_orders(s, r))

            def forward(x, y, w):
                return conv(x, y, w, s, r, receiver_order=r_order, sender_order=s_order)
        else:
            tp = memo(("e3nn", problem), lambda: _e3nn_tp(conv))

            def forward(x, y, w):
                return torch.zeros(nodes, dout).index_add_(0, r, tp(x[s], y, w))

        run, operands = _pass_runner(pass_, forward, (x, y, w), grad)
        fwd_flops, bwd_flops = plan.flops_per_sample(), plan.flops_per_sample(backward=True)
        nbytes = 4 * (x.numel() + y.numel() + w.numel() + nodes * dout)
        flops = edges * fwd_flops
        if pass_ == "fwd_bwd":
            nbytes *= 2
            flops += edges * bwd_flops
        return Prepared(run, Rotation(operands, device, min_copies=1), nbytes, flops, torch.float32)

    return Case("so3_conv", device, problem, {"V": nodes, "E": edges, "pass": pass_}, impl, prepare, rows=edges)


def _tp_case(device: str, problem: str, batch: int, pass_: str, impl: str) -> Case:
    def prepare() -> Prepared:
        import fastops.so3 as so3

        if problem == "fc-32ch":
            ours = memo(("fc",), lambda: so3.fully_connected_tp(*FC))
        else:
            ours = memo(("tp", problem), lambda: _channelwise(problem, conv=False))
        plan = ours.plan
        gen = torch.Generator().manual_seed(batch)
        x1 = torch.randn(batch, plan.irreps_in1.dim, generator=gen)
        x2 = torch.randn(batch, plan.irreps_in2.dim, generator=gen)
        w = (torch.randn(plan.weight_numel, generator=gen) if ours.shared_weights
             else torch.randn(batch, plan.weight_numel, generator=gen))
        tp = ours if impl == "fastops" else memo(("e3nn_tp", problem), lambda: _e3nn_tp(ours))
        nbytes = 4 * (x1.numel() + x2.numel() + w.numel() + batch * plan.irreps_out.dim)
        flops = batch * plan.flops_per_sample()
        grad = torch.randn(batch, plan.irreps_out.dim, generator=gen)
        run, operands = _pass_runner(pass_, tp, (x1, x2, w), grad)
        if pass_ == "fwd_bwd":
            nbytes *= 2
            flops += batch * plan.flops_per_sample(backward=True)
        return Prepared(run, Rotation(operands, device), nbytes, flops, torch.float32)

    return Case("so3_tp", device, problem, {"Z": batch, "pass": pass_}, impl, prepare, rows=batch)


def _sh_irreps(lmax: int) -> str:
    return "+".join(f"{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))


def _e3nn_gaunt(lmax: int, kind: str):
    from e3nn import o3

    from fastops import _gaunt_programs as gp

    irreps = o3.Irreps(_sh_irreps(lmax))
    if kind == "full":
        return o3.FullTensorProduct(irreps, irreps)
    out, ins = [], []
    for a in range(lmax + 1):
        for b in range(lmax + 1):
            for c in range(abs(a - b), a + b + 1):
                if (a + b + c) % 2 == 0:
                    ins.append((a, b, len(out), "uuu", False, gp.kappa(a, b, c) ** 2))
                    out.append((1, (c, (-1) ** c)))
    return o3.TensorProduct(irreps, irreps, o3.Irreps(out), ins, irrep_normalization="none",
                            path_normalization="none")


def _gaunt_case(device: str, lmax: int, batch: int, impl: str) -> Case:
    def prepare() -> Prepared:
        import fastops.so3 as so3
        from fastops import _gaunt_programs as gp

        d, dout = (lmax + 1) ** 2, (2 * lmax + 1) ** 2
        gen = torch.Generator().manual_seed(lmax)
        x = torch.randn(batch, 1, d, generator=gen)
        y = torch.randn(batch, 1, d, generator=gen)
        if impl.startswith("fastops"):
            method = impl.split("-")[1] if "-" in impl else "auto"
            tp = memo(("gaunt", lmax, method), lambda: so3.GauntTensorProduct(lmax, lmax, 2 * lmax, method=method))

            def run(operands):
                with torch.no_grad():
                    return tp(*operands)
        else:
            tp = memo(("e3nn_gaunt", lmax, impl), lambda: _e3nn_gaunt(lmax, impl.split("-")[1]))

            def run(operands):
                with torch.no_grad():
                    return tp(operands[0][:, 0], operands[1][:, 0])
        flops = batch * gp.grid_program(lmax, lmax, 2 * lmax, *gp.minimal_grid(lmax, lmax, 2 * lmax)).flops_per_sample()
        operands = (x, y) if device == "cpu" else (x.to(device), y.to(device))
        return Prepared(run, Rotation(operands, device, min_copies=1), 4 * batch * (2 * d + dout), flops, torch.float32)

    return Case("gaunt", device, f"L{lmax}", {"B": batch, "pass": "fwd"}, impl, prepare, rows=batch)


def _cp_case(device: str, lmax: int, channels: int, edges: int, impl: str) -> Case:
    def prepare() -> Prepared:
        import fastops.so3 as so3

        cp = memo(("cp", lmax, channels), lambda: so3.CPTensorProduct(lmax, channels))
        d = (lmax + 1) ** 2
        gen = torch.Generator().manual_seed(edges)
        x = torch.randn(edges, channels, d, generator=gen)
        y = torch.randn(edges, d, generator=gen)
        w = torch.randn(edges, channels, generator=gen)
        f1, f2, f3 = (f.float() for f in (cp.f1, cp.f2, cp.f3))
        if impl == "fastops":
            def forward(x, y, w):
                return cp(x, y, w)
        elif impl == "torch-matmul":
            def forward(x, y, w):
                return ((x @ f1) * (y @ f2)[:, None, :] * w[..., None]) @ f3.T
        else:
            tp = memo(("e3nn_cp", lmax, channels), lambda: _e3nn_cp_exact(lmax, channels))

            def forward(x, y, w):
                return tp(x.transpose(1, 2).reshape(edges, -1), y, w.repeat(1, tp.weight_numel // channels))

        def run(operands):
            with torch.no_grad():
                return forward(*operands)
        flops = edges * channels * (4 * d * cp.rank + 2 * cp.rank) + edges * 2 * d * cp.rank
        nbytes = 4 * (x.numel() + y.numel() + w.numel() + x.numel())
        return Prepared(run, Rotation((x, y, w), device, min_copies=1), nbytes, flops, torch.float32)

    return Case("cp_tp", device, f"l{lmax}-c{channels}", {"E": edges, "pass": "fwd"}, impl, prepare, rows=edges)


def _e3nn_cp_exact(lmax: int, channels: int):
    """e3nn's uvu TensorProduct of the exact tensor CP approximates: all triangle paths (parity-free irreps),
    no normalization. Its input is e3nn's ir_mul-free layout: x rows [C x (0e+1e+...)] in mul_ir order
    (the benchmark's transpose to that order is part of the peer's cost, as a user would pay it)."""
    from e3nn import o3

    irreps1 = o3.Irreps([(channels, (l, 1)) for l in range(lmax + 1)])
    irreps2 = o3.Irreps([(1, (l, 1)) for l in range(lmax + 1)])
    out, ins = [], []
    for a in range(lmax + 1):
        for b in range(lmax + 1):
            for c in range(abs(a - b), min(a + b, lmax) + 1):
                ins.append((a, b, len(out), "uvu", True))
                out.append((channels, (c, 1)))
    return o3.TensorProduct(irreps1, irreps2, o3.Irreps(out), ins, irrep_normalization="none",
                            path_normalization="none", internal_weights=False, shared_weights=False)


def build_cases(device: str, quick: bool) -> list[Case]:
    gaunt_ls = [2, 4] if quick else [2, 4, 6, 8]
    if device != "cpu":
        # CUDA: fastops only (the peers' CUDA paths are not in this suite yet)
        return [_gaunt_case(device, lmax, 10_000, impl) for lmax in gaunt_ls for impl in ("fastops", "fastops-direct")]
    plan = _plan(device, quick)
    cases = []
    for lmax in gaunt_ls:
        # "fastops" is method="auto"; the three methods run as columns of the same row (the trade-off table)
        impls = ["fastops", "fastops-grid", "fastops-fft", "fastops-direct", "e3nn-uuu"] + \
            (["e3nn-full"] if lmax <= 6 else [])
        cases += [_gaunt_case(device, lmax, 10_000, impl) for impl in impls]
    for lmax in ([2] if quick else [2, 3]):
        cases += [_cp_case(device, lmax, 128, 10_000 if not quick else 2000, impl)
                  for impl in ("fastops", "torch-matmul", "e3nn-exact")]
    for problem in plan["problems"]:
        for nodes, edges in plan["graphs"]:
            for pass_ in plan["passes"]:
                impls = ("fastops", "e3nn") if edges <= 10_000 else ("fastops",)
                cases += [_conv_case(device, problem, nodes, edges, pass_, impl) for impl in impls]
    for problem, batch in plan["tp"]:
        cases += [_tp_case(device, problem, batch, pass_, impl) for pass_ in ("fwd", "fwd_bwd")
                  for impl in ("fastops", "e3nn")]
    return cases


if __name__ == "__main__":
    harness.main(build_cases)
