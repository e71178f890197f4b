"""fastops.trie: build against a dict trie, every step mode / dtype / device / subset, errors, persistence,
torch integration."""
from __future__ import annotations

import io
import math
import pickle

import numpy as np
import pytest
import torch

from fastops import _C, trie
from fastops._core import cuda_stream
from fastops.reference import trie as ref
from conftest import DEVICES

FLOATS = [torch.float32, torch.float16, torch.bfloat16]
NEG_INF = float("-inf")


def _items(rng, n, length, vocab, skew=False, ragged=False):
    """n rows of codebook tokens; skew draws from a Zipf-like law so a few tokens branch widely."""
    rows = []
    for _ in range(n):
        size = int(rng.integers(1, length + 1)) if ragged else length
        if skew:
            row = np.minimum(rng.zipf(1.5, size) - 1, vocab - 1)
        else:
            row = rng.integers(0, vocab, size)
        rows.append([int(t) for t in row])
    return rows


def _prefixes(t: trie.CSRTrie) -> list[tuple]:
    return ref.node_prefixes(t.indptr.cpu().tolist(), t.tokens.cpu().tolist())


def _check_structure(t: trie.CSRTrie, items: list[tuple], dedupe=True):
    distinct = sorted(set(items))
    oracle = ref.DictTrie(items)
    prefix = _prefixes(t)
    # BFS numbering, lexicographic within a depth; every prefix of every item exactly once
    assert prefix == sorted(set(p[:d] for p in distinct for d in range(len(p) + 1)), key=lambda p: (len(p), p))
    indptr = t.indptr.tolist()
    for u, p in enumerate(prefix):
        assert t.tokens[indptr[u]:indptr[u + 1]].tolist() == oracle.allowed(p)
    assert t.num_items == len(distinct) and t.num_nodes == len(prefix)
    assert t.max_degree == max(len(oracle.allowed(p)) for p in prefix)
    assert t.depth == max(len(p) for p in distinct)
    assert list(t.depth_starts) == [sum(len(p) < d for p in prefix) for d in range(t.depth + 2)]
    position = {item: i for i, item in enumerate(distinct)}
    seen = set()
    for row, item in enumerate(items):
        expect = -1 if item in seen else position[item]
        seen.add(item)
        assert int(t.perm[row]) == expect
    lo, hi = t.item_ranges()
    for u, p in enumerate(prefix):
        under = [i for i, item in enumerate(distinct) if item[:len(p)] == p]
        assert (int(lo[u]), int(hi[u])) == (under[0], under[-1] + 1)


BUILD_CASES = [  # (n, L, V, skew, ragged)
    (1, 1, 2, False, False), (5, 1, 2, False, False), (40, 3, 2, False, False), (200, 4, 7, False, False),
    (300, 8, 3, False, False), (150, 2, 65536, False, False), (200, 6, 50, True, False),
    (120, 5, 9, True, True), (250, 8, 4, False, True),
]


@pytest.mark.parametrize("n,length,vocab,skew,ragged", BUILD_CASES)
def test_build_matches_dict_trie(n, length, vocab, skew, ragged):
    rng = np.random.default_rng(n * 7 + length)
    rows = _items(rng, n, length, vocab, skew, ragged)
    eos = vocab + 3 if ragged else None
    t = trie.build_trie(rows if ragged else torch.tensor(rows), vocab, eos_token_id=eos)
    _check_structure(t, ref.model_items(rows, eos_token_id=eos))
    assert t.vocab_size == (eos + 1 if ragged else vocab)


def test_build_level_offsets_and_model_vocab():
    rng = np.random.default_rng(3)
    rows = np.array(_items(rng, 100, 3, 16))
    offsets = [100, 116, 132]
    t = trie.build_trie(rows, 16, level_offsets=offsets, model_vocab_size=200)
    _check_structure(t, ref.model_items(rows, offsets))
    assert t.vocab_size == 200
    assert trie.build_trie(rows, 16, level_offsets=offsets).vocab_size == 148


def test_build_large_unsorted_matches_numpy_and_threads():
    rng = np.random.default_rng(5)
    rows = rng.integers(0, 300, (30000, 6)).astype(np.int32)
    rows[1000:1100] = rows[:100]  # duplicates
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = trie.build_trie(rows, 300)
        torch.set_num_threads(2)
        two = trie.build_trie(rows, 300)
    finally:
        torch.set_num_threads(old)
    for a, b in ((one.indptr, two.indptr), (one.tokens, two.tokens), (one.perm, two.perm)):
        assert torch.equal(a, b)
    distinct = np.unique(rows, axis=0)
    assert one.num_items == distinct.shape[0]
    kept = one.perm >= 0
    np.testing.assert_array_equal(distinct[one.perm[kept].numpy()], rows[kept.numpy()])
    assert (one.perm[1000:1100] == -1).all()
    # the last level's tokens in BFS order are the sorted items' last tokens
    np.testing.assert_array_equal(one.tokens[one.depth_starts[6] - 1:].numpy(), distinct[:, -1])


# ---------------------------------------------------------------------------------------------------
# Per-step operations against the oracle
# ---------------------------------------------------------------------------------------------------
def _setup(seed=0, n=60, length=4, vocab=37, ragged=True):
    rng = np.random.default_rng(seed)
    rows = _items(rng, n, length, vocab, skew=True, ragged=ragged)
    eos = vocab if ragged else None
    t = trie.build_trie(rows, vocab, eos_token_id=eos)
    return rng, rows, ref.model_items(rows, eos_token_id=eos), t


def _node_ids(rng, t, rows_count):
    ids = rng.integers(-1, t.num_nodes, rows_count).astype(np.int32)
    ids[:2] = [0, -1]
    return torch.from_numpy(ids)


def _valid_items(items, valid_row):
    """Items whose flag counts: a dropped duplicate's flag is ignored (its first occurrence decides)."""
    first = {}
    for row, item in enumerate(items):
        first.setdefault(item, row)
    return [item for row, (item, ok) in enumerate(zip(items, valid_row)) if ok and first[item] == row]


def _valid_cases(rng, n, rows_count):
    single = torch.from_numpy(rng.random(n) < 0.5)
    per_request = torch.from_numpy(rng.random((rows_count // 3, n)) < 0.4)
    return [("none", None), ("single", single), ("per_request", per_request)]


def _oracle_allowed(oracle, prefixes, items, ids, valid, r):
    u = int(ids[r])
    if u < 0:
        return []
    if valid is None:
        return oracle.allowed(prefixes[u])
    mask = valid if valid.dim() == 1 else valid[r // (ids.shape[0] // valid.shape[0])]
    return oracle.allowed(prefixes[u], _valid_items(items, mask.tolist()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_mask_and_bitmask(device, dtype):
    rng, rows, items, t = _setup()
    oracle, prefixes = ref.DictTrie(items), _prefixes(t)
    rows_count, width = 12, t.vocab_size + 5
    ids = _node_ids(rng, t, rows_count)
    td = t.to(device)
    for name, valid in _valid_cases(rng, len(rows), rows_count):
        base = torch.randn(rows_count, width + 7).to(dtype)
        logits = base[:, 3:3 + width].clone() if name == "none" else base[:, 3:3 + width]  # strided rows
        before = logits.clone()
        vd = None if valid is None else valid.to(device)
        out_logits = logits.to(device)
        got = td.step(ids.to(device), out_logits, valid=vd)
        assert got is out_logits
        bits = td.step(ids.to(device), logits.to(device), "bitmask", valid=vd).cpu()
        assert bits.shape == (rows_count, (width + 31) // 32) and bits.dtype == torch.int32
        got = got.cpu()
        for r in range(rows_count):
            allowed = _oracle_allowed(oracle, prefixes, items, ids, valid, r)
            expect = torch.full((width,), NEG_INF, dtype=dtype)
            expect[allowed] = before[r, allowed]
            assert torch.equal(got[r], expect), (name, r)
            words = bits[r].numpy().view(np.uint32)
            on = [w * 32 + b for w in range(words.shape[0]) for b in range(32) if (int(words[w]) >> b) & 1]
            assert on == allowed, (name, r)


def test_mask_strided_in_place_and_large_rows():
    """Rows strided inside a wider buffer; the columns outside stay untouched. Large enough for the
    streaming-store path."""
    rng, rows, items, t = _setup(seed=1, vocab=40000, n=30, length=3, ragged=False)
    buf = torch.randn(70, 40100)
    view = buf[:, 50:40050]
    before = buf.clone()
    ids = _node_ids(rng, t, 70)
    t.step(ids, view)
    assert torch.equal(buf[:, :50], before[:, :50]) and torch.equal(buf[:, 40050:], before[:, 40050:])
    oracle, prefixes = ref.DictTrie(items), _prefixes(t)
    for r in range(70):
        allowed = oracle.allowed(prefixes[int(ids[r])]) if ids[r] >= 0 else []
        keep = torch.zeros(40000, dtype=torch.bool)
        keep[allowed] = True
        assert torch.equal(view[r][keep], before[r, 50:40050][keep])
        assert torch.isneginf(view[r][~keep]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_mask_rejects_overlapping_rows(device):
    """Rows that share memory (an expanded row, row stride < V) would race in the in-place mask: refused,
    by the Python layer and by the binding; read-only modes take them."""
    rng, rows, items, t = _setup(seed=1)
    td = t.to(device)
    ids = _node_ids(rng, t, 4).to(device)
    row = torch.randn(1, t.vocab_size, device=device)
    for logits in (row.expand(4, -1), torch.randn(4 * t.vocab_size, device=device).as_strided(
            (4, t.vocab_size), (t.vocab_size // 2, 1))):
        before = logits.clone()
        with pytest.raises(ValueError, match="rows overlap"):
            td.step(ids, logits)
        with pytest.raises(ValueError, match="rows overlap"):
            _C.trie_mask_(td.indptr, td.tokens, None, 1, ids, logits, nthreads=1,
                          stream=cuda_stream(logits.device))
        assert torch.equal(logits, before)
        scores, _, _ = td.step(ids, logits, "candidates", k=2)
        assert scores.shape == (4, 2)
    one = torch.randn(1, t.vocab_size, device=device).expand(1, -1)
    td.step(ids[:1], one)  # a single row cannot overlap another


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("log_softmax", [False, True])
def test_candidates(device, dtype, log_softmax):
    rng, rows, items, t = _setup(seed=2)
    oracle, prefixes = ref.DictTrie(items), _prefixes(t)
    rows_count, k = 12, 3
    ids = _node_ids(rng, t, rows_count)
    td = t.to(device)
    for name, valid in _valid_cases(rng, len(rows), rows_count):
        logits = torch.randint(-3, 3, (rows_count, t.vocab_size)).to(dtype)  # integers: many ties
        vd = None if valid is None else valid.to(device)
        scores, tokens, nxt = td.step(ids.to(device), logits.to(device), "candidates", k=k, valid=vd,
                                      log_softmax=log_softmax)
        assert scores.dtype == torch.float32 and tokens.dtype == nxt.dtype == torch.int32
        for r in range(rows_count):
            allowed = _oracle_allowed(oracle, prefixes, items, ids, valid, r)
            want_s, want_t = ref.candidates(allowed, logits[r].float().tolist(), k, log_softmax)
            assert tokens[r].tolist() == want_t, (name, r)
            torch.testing.assert_close(scores[r].cpu(), torch.tensor(want_s), rtol=1e-5, atol=1e-5)
            for j, tok in enumerate(want_t):
                expect_next = -1 if tok < 0 else prefixes.index(prefixes[int(ids[r])] + (tok,))
                assert int(nxt[r, j]) == expect_next


@pytest.mark.parametrize("device", DEVICES)
def test_candidates_rank_nan_like_neg_inf(device):
    """NaN scores rank like -inf (ties to the smaller token) and are reported as NaN, -0 ties with +0, on
    every device."""
    rng, rows, items, t = _setup(seed=5)
    oracle, prefixes = ref.DictTrie(items), _prefixes(t)
    ids = _node_ids(rng, t, 16)
    logits = torch.randint(-2, 2, (16, t.vocab_size)).float()
    special = torch.rand(16, t.vocab_size, generator=torch.Generator().manual_seed(5))
    logits[special < 0.3] = float("nan")
    logits[special > 0.7] = NEG_INF
    logits[(special > 0.4) & (special < 0.45)] = -0.0  # ties with +0 (from randint): smaller token first
    logits[(special > 0.5) & (special < 0.55)] = float("inf")
    scores, tokens, _ = t.to(device).step(ids.to(device), logits.to(device), "candidates", k=6)
    for r in range(16):
        allowed = oracle.allowed(prefixes[int(ids[r])]) if ids[r] >= 0 else []
        want_s, want_t = ref.candidates(allowed, logits[r].tolist(), 6)
        assert tokens[r].tolist() == want_t, r
        torch.testing.assert_close(scores[r].cpu(), torch.tensor(want_s), equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
def test_advance_walk_allowed(device):
    rng, rows, items, t = _setup(seed=4)
    prefixes = _prefixes(t)
    td = t.to(device)
    ids = _node_ids(rng, t, 40)
    step_tokens = torch.from_numpy(rng.integers(-1, t.vocab_size + 2, 40).astype(np.int32))
    got = td.advance(ids.to(device), step_tokens.to(device)).cpu()
    for r in range(40):
        p = prefixes[int(ids[r])] + (int(step_tokens[r]),) if ids[r] >= 0 else None
        assert int(got[r]) == (prefixes.index(p) if p in prefixes else -1)
    # walk: real items, an illegal step, the empty prefix
    paths = torch.tensor([list(item[:3]) for item in items[:6] if len(item) >= 3], dtype=torch.int32)
    nodes = td.walk(paths.to(device)).cpu()
    assert [prefixes[u] for u in nodes.tolist()] == [tuple(p) for p in paths.tolist()]
    bad = paths.clone()
    bad[:, 1] = t.vocab_size + 1
    assert (td.walk(bad.to(device)) == -1).all()
    assert (td.walk(torch.zeros(4, 0, dtype=torch.int32, device=device)) == 0).all()
    toks, nxt, counts = td.allowed(ids.to(device))
    assert toks.shape == (40, t.max_degree)
    for r in range(40):
        u = int(ids[r])
        children = [] if u < 0 else [i for i, p in enumerate(prefixes) if p[:-1] == prefixes[u] and len(p) == len(prefixes[u]) + 1]
        assert int(counts[r]) == len(children)
        assert nxt[r].tolist() == children + [-1] * (t.max_degree - len(children))
        assert toks[r].tolist() == [prefixes[c][-1] for c in children] + [-1] * (t.max_degree - len(children))
    # a subset: advance refuses children without valid items below
    valid = torch.zeros(len(rows), dtype=torch.bool)
    valid[0] = True
    first = torch.tensor([items[0][0], items[1][0]], dtype=torch.int32, device=device)
    expect_alive = [True, items[1][0] == items[0][0]]
    got = td.advance(torch.zeros(2, dtype=torch.int32, device=device), first, valid=valid.to(device))
    assert [bool(v >= 0) for v in got.tolist()] == expect_alive


def test_alive_mask_batched_and_dropped_duplicates():
    rows = [[0, 1], [0, 2], [1, 0], [0, 1]]
    t = trie.build_trie(rows, 3)
    prefixes = _prefixes(t)
    valid = torch.tensor([[True, False, False, False], [False, False, False, True], [False, True, True, False]])
    alive = t.alive_mask(valid)
    assert alive.shape == (3, t.num_nodes) and alive.dtype == torch.uint8
    expect_rows = [[(0, 1)], [], [(0, 2), (1, 0)]]  # row 3 is a dropped duplicate of row 0: ignored
    for b in range(3):
        live = {p for p in prefixes if any(item[:len(p)] == p for item in expect_rows[b])}
        assert [prefixes[u] in live for u in range(t.num_nodes)] == alive[b].bool().tolist()
    assert torch.equal(t.alive_mask(valid[2]), alive[2])


def test_kernels_write_every_output():
    """Destination-passing calls with poisoned outputs: every element must be written."""
    rng, rows, items, t = _setup(seed=6)
    ids = _node_ids(rng, t, 9)
    logits = torch.randn(9, t.vocab_size)
    scores = torch.full((9, 5), float("nan"))
    toks = torch.full((9, 5), 12345, dtype=torch.int32)
    nxt = torch.full((9, 5), 12345, dtype=torch.int32)
    _C.trie_candidates(t.indptr, t.tokens, None, 1, ids, logits, False, scores, toks, nxt, nthreads=2)
    want = t.step(ids, logits, "candidates", k=5)
    assert torch.equal(scores, want[0]) and torch.equal(toks, want[1]) and torch.equal(nxt, want[2])
    bits = torch.full((9, (t.vocab_size + 31) // 32), -7, dtype=torch.int32)
    _C.trie_bitmask(t.indptr, t.tokens, None, 1, ids, bits, t.vocab_size, nthreads=2)
    assert torch.equal(bits, t.step(ids, None, "bitmask"))
    out = torch.full((9,), 12345, dtype=torch.int32)
    _C.trie_advance(t.indptr, t.tokens, None, 1, ids, torch.zeros(9, dtype=torch.int32), out, nthreads=2)
    assert torch.equal(out, t.advance(ids, torch.zeros(9, dtype=torch.int32)))


def test_empty_batch():
    _, _, _, t = _setup()
    ids = torch.zeros(0, dtype=torch.int32)
    assert t.step(ids, torch.zeros(0, t.vocab_size)).shape == (0, t.vocab_size)
    assert t.step(ids, None, "bitmask", valid=torch.ones(60, dtype=torch.bool)).shape == (0, (t.vocab_size + 31) // 32)
    assert t.step(ids, torch.zeros(0, t.vocab_size), "candidates", k=2)[0].shape == (0, 2)
    assert t.advance(ids, ids).shape == (0,)


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------
def test_build_errors():
    with pytest.raises(ValueError, match=r"build_trie: sequences\[1\]\[2\] = 5 is outside \[0, 5\)"):
        trie.build_trie([[0, 1, 2], [0, 1, 5]], 5)
    with pytest.raises(ValueError, match=r"sequences\[0\]\[0\] = -1"):
        trie.build_trie(torch.tensor([[-1, 0]]), 5)
    with pytest.raises(ValueError, match="sequences must not be empty"):
        trie.build_trie([], 5)
    with pytest.raises(ValueError, match="sequences must not be empty"):
        trie.build_trie(np.zeros((0, 3), dtype=np.int64), 5)
    with pytest.raises(ValueError, match="rows 1 and 3 are duplicates"):
        trie.build_trie([[0, 1], [2, 2], [0, 2], [2, 2]], 3, dedupe=False)
    with pytest.raises(ValueError, match="row 2 is a proper prefix of row 0.*eos_token_id"):
        trie.build_trie([[0, 1, 2], [1], [0, 1]], 3)
    with pytest.raises(ValueError, match=r"sequences\[1\] is empty"):
        trie.build_trie([[0], []], 3)
    with pytest.raises(ValueError, match=r"sequences\[0\]\[1\] maps to model token 2, the eos_token_id"):
        trie.build_trie([[0, 2]], 3, eos_token_id=2)
    with pytest.raises(ValueError, match="level_offsets has 1 entries"):
        trie.build_trie([[0, 1]], 3, level_offsets=[0])
    with pytest.raises(ValueError, match="model_vocab_size = 4 is too small"):
        trie.build_trie([[0, 1]], 3, level_offsets=[0, 3], model_vocab_size=4)
    with pytest.raises(TypeError, match="sequences must hold integers"):
        trie.build_trie(torch.zeros(2, 2), 3)
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        trie.build_trie([[0]], 3.0)
    with pytest.raises(ValueError, match="would have 6 nodes, more than the 5"):  # int32 overflow path
        _C.trie_build(np.array([0, 1, 0, 2, 1, 1], np.int32), np.array([0, 2, 4, 6]), True, 1, 5)


def test_step_errors():
    _, _, _, t = _setup()
    ids = torch.zeros(3, dtype=torch.int32)
    logits = torch.randn(3, t.vocab_size)
    with pytest.raises(TypeError, match="node_ids must have dtype int32; got int64"):
        t.step(ids.long(), logits)
    with pytest.raises(ValueError, match=rf"node_ids must lie in \[-1, {t.num_nodes}\)"):
        t.step(torch.tensor([0, t.num_nodes, 1], dtype=torch.int32), logits)
    with pytest.raises(ValueError, match=r"node_ids must lie in"):
        t.advance(torch.tensor([-2, 0, 0], dtype=torch.int32), ids)
    with pytest.raises(ValueError, match="fewer than the trie's vocabulary"):
        t.step(ids, logits[:, :-1])
    with pytest.raises(ValueError, match=r"logits must have shape \[3, V\]"):
        t.step(ids, torch.randn(4, t.vocab_size))
    with pytest.raises(ValueError, match="unit stride along V"):
        t.step(ids, torch.randn(t.vocab_size, 3).t())
    with pytest.raises(TypeError, match="logits must have dtype"):
        t.step(ids, logits.double())
    with pytest.raises(ValueError, match="mode must be one of"):
        t.step(ids, logits, "topk")
    with pytest.raises(ValueError, match="k \\(the beam width\\) is required"):
        t.step(ids, logits, "candidates")
    with pytest.raises(ValueError, match="k must be in"):
        t.step(ids, logits, "candidates", k=0)
    with pytest.raises(ValueError, match="valid has 2 masks, which must divide the 3 rows"):
        t.step(ids, logits, valid=torch.ones(2, 60, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"valid must have shape \[60\]"):
        t.step(ids, logits, valid=torch.ones(59, dtype=torch.bool))
    with pytest.raises(TypeError, match="valid must be a bool item mask or a uint8 alive mask"):
        t.step(ids, logits, valid=torch.ones(60))
    with pytest.raises(TypeError, match="tokens must have dtype int32"):
        t.advance(ids, ids.long())
    with pytest.raises(ValueError, match="same device|is on meta"):
        t.step(ids, logits.to("meta"))


def test_binding_errors_map_to_python_types():
    _, _, _, t = _setup()
    ids, logits = torch.zeros(3, dtype=torch.int32), torch.randn(3, t.vocab_size)
    with pytest.raises(TypeError, match="node_ids must be int32"):
        _C.trie_mask_(t.indptr, t.tokens, None, 1, ids.long(), logits)
    with pytest.raises(ValueError, match="tokens must have shape"):
        _C.trie_mask_(t.indptr, t.tokens[:-1], None, 1, ids, logits)
    with pytest.raises(ValueError, match="alive must hold"):
        _C.trie_mask_(t.indptr, t.tokens, torch.ones(5, dtype=torch.uint8), 1, ids, logits)
    with pytest.raises(ValueError, match=r"out must have shape \[3, "):
        _C.trie_bitmask(t.indptr, t.tokens, None, 1, ids, torch.empty(3, 1, dtype=torch.int32), t.vocab_size)
    with pytest.raises(TypeError):  # .noconvert(): no silent copy of a non-tensor
        _C.trie_advance(t.indptr, t.tokens, None, 1, ids.tolist(), ids, ids)


# ---------------------------------------------------------------------------------------------------
# Persistence and torch integration
# ---------------------------------------------------------------------------------------------------
def _same(a: trie.CSRTrie, b: trie.CSRTrie):
    assert torch.equal(a.indptr, b.indptr) and torch.equal(a.tokens, b.tokens) and torch.equal(a.perm, b.perm)
    assert (a.depth_starts, a.vocab_size, a.num_items, a.max_degree, a.eos_token_id) == \
        (b.depth_starts, b.vocab_size, b.num_items, b.max_degree, b.eos_token_id)


def test_save_load_mmap_and_pickle(tmp_path):
    _, _, _, t = _setup()
    path = tmp_path / "trie.pt"
    t.save(path)
    for mmap in (True, False):
        _same(trie.CSRTrie.load(path, mmap=mmap), t)
    _same(pickle.loads(pickle.dumps(t)), t)
    buf = io.BytesIO()
    torch.save(t, buf)
    buf.seek(0)
    _same(torch.load(buf, weights_only=False), t)
    assert t.nbytes == 8 * t.num_nodes
    assert torch.equal(t.children, torch.arange(1, t.num_nodes, dtype=torch.int32))
    state = t.state_dict()
    state["meta"][0] = 99
    with pytest.raises(ValueError, match="unsupported index layout"):
        trie.CSRTrie.from_state_dict(state)


def test_opcheck():
    rng, rows, items, t = _setup(seed=8)
    ids = _node_ids(rng, t, 6)
    alive = t.alive_mask(torch.from_numpy(rng.random((2, len(rows))) < 0.5)).reshape(-1)
    logits = torch.randn(6, t.vocab_size + 3)
    for a, rpm in ((None, 1), (alive, 3)):
        args = (t.indptr, t.tokens, a, rpm, ids)
        torch.library.opcheck(torch.ops.fastops.trie_mask_.default, args + (logits.clone(),))
        torch.library.opcheck(torch.ops.fastops.trie_bitmask.default, args + (t.vocab_size + 3,))
        torch.library.opcheck(torch.ops.fastops.trie_candidates.default, args + (logits, 4, True))
        torch.library.opcheck(torch.ops.fastops.trie_advance.default, args + (ids.clone(),))


def test_torch_compile_fullgraph():
    rng, rows, items, t = _setup(seed=9)
    ids = _node_ids(rng, t, 5)
    logits = torch.randn(5, t.vocab_size)

    def beam_step(nodes, scores):
        s, tok, nxt = t.step(nodes, scores.clone(), "candidates", k=2, log_softmax=True)
        masked = t.step(nodes, scores.clone())
        return s, t.advance(nodes, tok[:, 0].contiguous()), nxt, masked

    compiled = torch.compile(beam_step, fullgraph=True)
    for got, want in zip(compiled(ids, logits), beam_step(ids, logits)):
        torch.testing.assert_close(got, want)
