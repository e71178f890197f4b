"""`python -m fastops check`: every operator on random inputs against its reference, on every usable
device, as a pass/fail table. The first thing to run on a new machine."""
from __future__ import annotations

import time

import torch

import warnings

from . import _C, bitgemm, cuda_available, lut, so3, sparse, trie
from .reference import bitgemm as bitgemm_ref
from .reference import lut as lut_ref
from .reference import so3 as so3_ref
from .reference import sparse as sparse_ref
from .reference import trie as trie_ref


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.detach().cpu().double(), ref.double()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-30))


def _lut_cases():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(67, 200, generator=gen)
    x = torch.randn(5, 200, generator=gen)
    # (name, dtype, precise, bound): bounds are the documented ones (README, fastops.lut_gemm).
    for bits in (1, 2, 3, 4):
        for scheme in ("asym", "bcq"):
            yield f"lut_gemm q={bits} {scheme}", lut.quantize(w, bits, 64, scheme), x, torch.float32, False, 1e-2
    packed = lut.quantize(w, 4, 64, "asym")
    yield "lut_gemm q=4 precise fp32", packed, x, torch.float32, True, 1e-5
    yield "lut_gemm q=4 bf16", packed, x, torch.bfloat16, False, 2e-2
    yield "lut_gemm q=4 fp16", packed, x, torch.float16, False, 1e-2


def _lut_check(device, w, x, dtype, precise, bound) -> tuple[bool, str]:
    xd = x.to(device=device, dtype=dtype)
    y = lut.lut_gemm(xd, w.to(device), precise=precise)
    err = _rel_err(y, lut_ref.lut_gemm(xd, w))
    ok = bool(err <= bound) and y.dtype == dtype and y.device.type == device
    return ok, f"rel err {err:.2e} (bound {bound:.0e})"


def _bitgemm_cases():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 300, generator=gen)
    w = torch.randn(70, 300, generator=gen)
    for bits_a, bits_w, fmt_a, fmt_w in ((1, 1, "bipolar", "bipolar"), (8, 2, "signed", "signed"),
                                         (4, 4, "unsigned", "bipolar"), (3, 5, "signed", "unsigned")):
        yield f"bitgemm W{bits_w}A{bits_a} {fmt_w}/{fmt_a}", x, w, bits_a, bits_w, fmt_a, fmt_w


def _bitgemm_check(device, x, w, bits_a, bits_w, fmt_a, fmt_w) -> tuple[bool, str]:
    """quantize_pack (bit-exact), gemm (exact) and gemm_scaled (float64) against the reference."""
    a, sa = bitgemm.quantize_pack(x.to(device), bits_a, fmt_a)
    wp, sw = bitgemm.quantize_pack(w.to(device), bits_w, fmt_w)
    qa, ref_sa = bitgemm_ref.quantize(x, bits_a, fmt_a, False)
    qw, _ = bitgemm_ref.quantize(w, bits_w, fmt_w, False)
    packed_ok = (bitgemm_ref.values(a.to("cpu")) == qa).all() and (sa.cpu().numpy() == ref_sa).all()
    exact_ok = (bitgemm.gemm(a, wp).cpu().numpy() == bitgemm_ref.gemm(qa, qw)).all()
    y = bitgemm.gemm_scaled(a, wp, sa, sw)
    err = _rel_err(y, torch.from_numpy(bitgemm_ref.gemm_scaled(qa, qw, sa, sw)))
    ok = bool(packed_ok and exact_ok and err <= 1e-6)
    return ok, f"quantize_pack {'ok' if packed_ok else 'MISMATCH'}, gemm {'exact' if exact_ok else 'MISMATCH'}, " \
               f"scaled rel err {err:.1e}"


def _trie_cases():
    gen = torch.Generator().manual_seed(0)
    fixed = torch.randint(0, 64, (200, 4), generator=gen).tolist()
    ragged = [row[: 1 + i % 4] for i, row in enumerate(torch.randint(0, 64, (200, 4), generator=gen).tolist())]
    yield "trie steps fixed-length", fixed, None, gen
    yield "trie steps ragged + eos", ragged, 64, gen


def _trie_check(device, sequences, eos, gen) -> tuple[bool, str]:
    """Every step mode on random rows (including dead rows, id -1) against the dict-trie oracle."""
    t = trie.build_trie(sequences, 64, eos_token_id=eos, model_vocab_size=65).to(device)
    oracle = trie_ref.DictTrie(trie_ref.model_items(sequences, eos_token_id=eos))
    prefix = trie_ref.node_prefixes(t.indptr.tolist(), t.tokens.tolist())
    nodes = torch.randint(-1, t.num_nodes, (48,), generator=gen, dtype=torch.int32)
    logits = torch.randn(48, t.vocab_size, generator=gen)
    allowed = [oracle.allowed(prefix[u]) if u >= 0 else [] for u in nodes.tolist()]
    masked = t.step(nodes.to(device), logits.clone().to(device), mode="mask").cpu()
    bits = t.step(nodes.to(device), logits.to(device), mode="bitmask").cpu()
    scores, tokens, nxt = (a.cpu() for a in t.step(nodes.to(device), logits.to(device), mode="candidates", k=4,
                                                      log_softmax=True))
    moved = t.advance(nodes.to(device), tokens[:, 0].contiguous().to(device)).cpu()
    bad = 0
    for r, ok_tokens in enumerate(allowed):
        finite = torch.isfinite(masked[r]).nonzero().flatten().tolist()
        set_bits = [w * 32 + b for w in range(bits.shape[1]) for b in range(32) if (int(bits[r, w]) >> b) & 1]
        want_scores, want_tokens = trie_ref.candidates(ok_tokens, logits[r].tolist(), 4, log_softmax=True)
        bad += finite != ok_tokens or set_bits != ok_tokens or tokens[r].tolist() != want_tokens
        bad += not torch.allclose(scores[r], torch.tensor(want_scores), rtol=1e-5, atol=1e-5)
        step_ok = all(prefix[int(n)] == prefix[int(nodes[r])] + (int(tok),) for tok, n in zip(tokens[r], nxt[r]) if tok >= 0)
        adv_ok = (int(moved[r]) == -1) if not ok_tokens else prefix[int(moved[r])][-1] == int(tokens[r, 0])
        bad += not step_ok or not adv_ok
    return bad == 0, f"{len(allowed)} rows, {bad} mismatching (mask, bitmask, candidates, advance)"


def _sparse_cases():
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for sparsity in (0.0, 0.7, 0.95):
            w = torch.randn(67, 200, generator=gen)
            w[torch.rand(67, 200, generator=gen) < sparsity] = 0
            x = torch.randn(9, 200, generator=gen)
            yield f"spmm {str(dtype).replace('torch.', '')} {sparsity:.0%} sparse", w.to(dtype), x.to(dtype)


def _sparse_check(device, w, x) -> tuple[bool, str]:
    """pack (exact round trip, offsets consistent) and spmm elementwise against the float64 product."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sparse.SparsityWarning)
        sw = sparse.pack(w.to(device))
    sw.validate()
    exact = torch.equal(sw.to_dense().cpu(), w)
    y = sparse.spmm(x.to(device), sw)
    ref, scale = sparse_ref.spmm(x, w)
    bound = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[w.dtype]
    worst = float(((y.cpu().double() - ref).abs() / (bound * scale + 1e-30)).max())
    ok = exact and worst <= 1 and y.dtype == w.dtype
    return ok, f"pack {'exact' if exact else 'MISMATCH'}, worst error {worst:.2f} x the bound"


def _so3_cases():
    gen = torch.Generator().manual_seed(0)
    irreps_out, ins = so3.channelwise_instructions("5x0e+3x1o+2x2e", "0e+1o+2e+3o", "0e+1o+2e+3o")
    for dtype in (torch.float64, torch.float32):
        yield f"so3 conv (uvu) {str(dtype).replace('torch.', '')}", ("5x0e+3x1o+2x2e", "0e+1o+2e+3o", irreps_out, ins), dtype, gen


def _so3_check(device, problem, dtype, gen) -> tuple[bool, str]:
    """TensorProductConv forward and gradients against gather -> einsum reference -> scatter (float64)."""
    conv = so3.TensorProductConv(*problem)
    nodes, edges = 7, 30
    x = torch.randn(nodes, conv.irreps_in1.dim, generator=gen, dtype=torch.float64)
    y = torch.randn(edges, conv.irreps_in2.dim, generator=gen, dtype=torch.float64)
    w = torch.randn(edges, conv.weight_numel, generator=gen, dtype=torch.float64)
    s, r = torch.randint(0, nodes, (edges,), generator=gen), torch.randint(0, nodes, (edges,), generator=gen)
    irreps = [[(m, ir.l, ir.p) for m, ir in ir_] for ir_ in (conv.irreps_in1, conv.irreps_in2, conv.irreps_out)]
    leaves = [t.clone().requires_grad_() for t in (x, y, w)]
    ref = torch.zeros(nodes, conv.irreps_out.dim, dtype=torch.float64).index_add(
        0, r, so3_ref.tensor_product(*irreps, problem[3], leaves[0][s], leaves[1], leaves[2]))
    ref_grads = torch.autograd.grad(ref.sum(), leaves)
    ours = [t.to(device, dtype).requires_grad_() for t in (x, y, w)]
    out = conv(*ours, s.to(device), r.to(device))
    grads = torch.autograd.grad(out.sum(), ours)
    err = max(_rel_err(a, b) for a, b in zip((out, *grads), (ref, *ref_grads)))
    bound = 1e-12 if dtype == torch.float64 else 1e-5
    return bool(err <= bound), f"rel err {err:.2e} (bound {bound:.0e}), forward and 3 gradients"


def run_checks(devices=None) -> list[tuple[str, str, bool, str]]:
    if devices is None:
        devices = ["cpu"] + (["cuda"] if cuda_available() else [])
    cases = [(name, _lut_check, args) for name, *args in _lut_cases()]
    cases += [(name, _bitgemm_check, args) for name, *args in _bitgemm_cases()]
    cases += [(name, _sparse_check, args) for name, *args in _sparse_cases()]
    cases += [(name, _so3_check, args) for name, *args in _so3_cases()]
    cases += [(name, _trie_check, args) for name, *args in _trie_cases()]
    rows = []
    for device in devices:
        for name, check, args in cases:
            t0 = time.perf_counter()
            try:
                ok, detail = check(device, *args)
                detail += f", {1e3 * (time.perf_counter() - t0):.1f} ms"
            except Exception as e:  # a check table reports failures, it does not stop at the first
                ok, detail = False, f"{type(e).__name__}: {e}"
            rows.append((name, device, ok, detail))
    return rows


def main() -> int:
    print(f"fastops {_C.__version__}: checking every operator against its reference")
    if not cuda_available():
        why = "fastops was built without CUDA" if not _C.built_with_cuda else "no usable CUDA device"
        print(f"  CUDA: skipped ({why}); CPU ISA: {_C.active_isa()}")
    rows = run_checks()
    width = max(len(r[0]) for r in rows)
    for name, device, ok, detail in rows:
        print(f"  {'PASS' if ok else 'FAIL'}  {name:<{width}}  {device:<4}  {detail}")
    failed = sum(not r[2] for r in rows)
    print(f"{len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0
