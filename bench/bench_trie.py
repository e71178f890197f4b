"""fastops.trie (CSR-trie constrained decoding) against what users run today: HuggingFace's
PrefixConstrainedLogitsProcessor over a nested-dict trie (prefix_allowed_tokens_fn, "hf_prefix_fn"),
and STATIC's step in plain torch (bench/static_torch.py): its sparse K_t-slot candidates
("static_sparse") and the dense mask of the same formulation ("static_dense").

Items: random semantic IDs of L = 8 codes from a 2048-code book, unsorted, |items| = 1e5, 1e6 (1e7 in
full mode). Vocabularies: V = 2048 (codes are tokens), and V = 32000 / 151936 with the 8 code levels
placed at per-level offsets near the top of the vocabulary (OneRec-style). Rows: STATIC's serving
config (batch 2 x beam 70 = 140) and a wide-serving one (batch 256 x beam 10 = 2560); every row sits
at the node of a random item's prefix of `depth` tokens (depth 1: ~|items|/2048 children per row).

Ops (op name: what one call does; bytes = what it must move at least):
  trie_build       build_trie from an unsorted int64 [N, 8] tensor (bytes: the input); rows_per_s = items/s
  trie_mask        -inf on disallowed logits in place (bytes: the [R, V] logits write); fastops_processor =
                   TrieLogitsProcessor (walk from input_ids + mask), the drop-in for hf_prefix_fn
  trie_bitmask     int32 [R, ceil(V/32)] allowed-token bitmask (bytes: its write)
  trie_candidates  full-vocab log-softmax + top-k children, k = beam width (bytes: the logits read)
  trie_advance     next node along one token per row (bytes: node ids, tokens, next ids)
Counters: bytes/s, rows_per_s, write_frac (time of `bytes` at the measured fill_ bandwidth / time) and
the harness's read-roofline fractions. Usually run through bench/run.py.
"""

from __future__ import annotations

import functools
import itertools

import torch

import harness
import static_torch
from harness import Case, Prepared, Rotation, memo

LEVELS, CODES = 8, 2048
ROW_CONFIGS = {"static": (2, 70), "serving": (256, 10)}  # (batch, beams)
# The harness labels a case by the dtype of its data; build, bitmask and advance work on integer ids.


def _plan(device: str, quick: bool) -> dict:
    if quick:
        return {"vocabs": [2048, 32000], "items": [10**5, 10**6], "rows": ["serving"], "depths": [1],
                "dict_items": [10**5]}
    return {"vocabs": [2048, 32000, 151936], "items": [10**5, 10**6, 10**7], "rows": ["static", "serving"],
            "depths": [0, 1, 2], "dict_items": [10**5, 10**6]}


def _dtypes(device: str) -> list[torch.dtype]:
    return [torch.float32] if device == "cpu" else [torch.bfloat16, torch.float32]


def level_offsets(vocab: int) -> list[int] | None:
    """None when the codes are the tokens; else 8 consecutive 2048-code blocks ending 64 below V."""
    if vocab == CODES:
        return None
    base = vocab - LEVELS * CODES - 64
    return [base + level * CODES for level in range(LEVELS)]


@functools.lru_cache(maxsize=1)
def _items(n: int) -> torch.Tensor:
    """Unsorted random codes int64 [n, 8]; duplicates are rare (2048^8 combinations) and deduped."""
    return torch.randint(0, CODES, (n, LEVELS), generator=torch.Generator().manual_seed(n))


def _model_tokens(codes: torch.Tensor, vocab: int) -> torch.Tensor:
    offsets = level_offsets(vocab)
    return codes if offsets is None else codes + torch.tensor(offsets[: codes.shape[1]])


@functools.lru_cache(maxsize=2)
def _trie(n: int, vocab: int, device: str):
    import fastops.trie  # here, not at import: the peers still run while fastops is missing

    return fastops.trie.build_trie(_items(n), CODES, level_offsets=level_offsets(vocab), model_vocab_size=vocab,
                                   device=device)


@functools.lru_cache(maxsize=2)
def _static_index(n: int, vocab: int, device: str) -> static_torch.StaticIndex:
    trie = _trie(n, vocab, "cpu")
    return static_torch.to_device(static_torch.from_csr(trie.indptr, trie.tokens, vocab), device)


def dict_trie(sequences: list[list[int]]) -> dict:
    """Nested dict token -> subtree (GENRE's Trie, the usual prefix_allowed_tokens_fn backend)."""
    root: dict = {}
    for sequence in sequences:
        node = root
        for token in sequence:
            node = node.setdefault(token, {})
    return root


@functools.lru_cache(maxsize=1)
def _dict_trie(n: int, vocab: int) -> dict:
    return dict_trie(_model_tokens(_items(n), vocab).tolist())


def _prefixes(n: int, vocab: int, rows: int, depth: int) -> torch.Tensor:
    """Model tokens [rows, depth + 1]: the first depth + 1 tokens of random items. Rows sit at the node
    of the first `depth` tokens; the last column is a legal next token (for advance)."""
    pick = torch.randint(0, n, (rows,), generator=torch.Generator().manual_seed(rows + depth))
    return _model_tokens(_items(n)[pick, : depth + 1], vocab)


def _node_ids(n: int, vocab: int, rows: int, depth: int, device: str) -> torch.Tensor:
    return memo(("nodes", n, rows, depth), lambda: _trie(n, vocab, device).walk(
        _prefixes(n, vocab, rows, depth)[:, :depth].to(device, torch.int32)))


def _logits(rows: int, vocab: int, device: str, dtype: torch.dtype) -> Rotation:
    """Enough copies to exceed 2x the last-level cache (one when a single copy already does)."""
    return memo(("logits", dtype), lambda: Rotation(
        harness.seeded_randn(rows, vocab, seed=vocab).to(device, dtype), device, min_copies=1))


def _hf_processor(n: int, vocab: int, beams: int):
    """PrefixConstrainedLogitsProcessor as users set it up: a callback per row walking a dict trie
    from the generated suffix (input_ids[1:] here: one prompt token)."""
    from transformers import PrefixConstrainedLogitsProcessor

    root = _dict_trie(n, vocab)

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        node = root
        for token in sent[1:].tolist():
            node = node[token]
        return list(node)

    return PrefixConstrainedLogitsProcessor(allowed, beams)


def _input_ids(n: int, vocab: int, rows: int, depth: int, device: str) -> torch.Tensor:
    prompt = torch.zeros(rows, 1, dtype=torch.int64)
    return torch.cat([prompt, _prefixes(n, vocab, rows, depth)[:, :depth]], dim=1).to(device)


def _mask_runner(impl: str, n: int, vocab: int, rows: int, beams: int, depth: int, device: str):
    if impl == "fastops":
        trie, nodes = _trie(n, vocab, device), _node_ids(n, vocab, rows, depth, device)
        return lambda logits: trie.step(nodes, logits, mode="mask")
    if impl == "static_dense":
        index, nodes = _static_index(n, vocab, device), _node_ids(n, vocab, rows, depth, device)
        return lambda logits: static_torch.dense_mask(index, nodes, logits, depth)
    input_ids = _input_ids(n, vocab, rows, depth, device)
    if impl == "fastops_processor":
        import fastops.trie

        processor = fastops.trie.TrieLogitsProcessor(_trie(n, vocab, device), prompt_length=1)
    else:
        processor = _hf_processor(n, vocab, beams)
    return lambda logits: processor(input_ids, logits)


def _mask_case(device, n, vocab, batch, beams, depth, dtype, impl) -> Case:
    rows = batch * beams

    def prepare() -> Prepared:
        logits = _logits(rows, vocab, device, dtype)
        run = _mask_runner(impl, n, vocab, rows, beams, depth, device)
        return Prepared(run, logits, rows * vocab * dtype.itemsize, 0, dtype)

    params = {"items": f"{n:.0e}", "depth": depth, "dtype": harness.DTYPE_NAMES[dtype]}
    return Case("trie_mask", device, f"R{rows}xV{vocab}", params, impl, prepare, rows=rows)


def _bitmask_case(device, n, vocab, rows, depth) -> Case:
    def prepare() -> Prepared:
        trie, nodes = _trie(n, vocab, device), _node_ids(n, vocab, rows, depth, device)
        return Prepared(lambda nodes: trie.step(nodes, None, mode="bitmask"), Rotation(nodes, device, min_copies=1),
                        rows * -(-vocab // 32) * 4, 0, torch.int32)

    params = {"items": f"{n:.0e}", "depth": depth}
    return Case("trie_bitmask", device, f"R{rows}xV{vocab}", params, "fastops", prepare, rows=rows)


def _candidates_case(device, n, vocab, batch, beams, depth, dtype, impl) -> Case:
    rows = batch * beams

    def prepare() -> Prepared:
        logits = _logits(rows, vocab, device, dtype)
        nodes = _node_ids(n, vocab, rows, depth, device)
        if impl == "fastops":
            trie = _trie(n, vocab, device)
            run = lambda x: trie.step(nodes, x, mode="candidates", k=beams, log_softmax=True)  # noqa: E731
        else:
            index = _static_index(n, vocab, device)
            run = lambda x: static_torch.candidates(index, nodes, x, depth, beams)  # noqa: E731
        return Prepared(run, logits, rows * (vocab * dtype.itemsize + beams * 12), 0, dtype)

    params = {"items": f"{n:.0e}", "depth": depth, "k": beams, "dtype": harness.DTYPE_NAMES[dtype]}
    return Case("trie_candidates", device, f"R{rows}xV{vocab}", params, impl, prepare, rows=rows)


def _advance_case(device, n, vocab, rows, depth, impl) -> Case:
    def prepare() -> Prepared:
        nodes = _node_ids(n, vocab, rows, depth, device)
        tokens = _prefixes(n, vocab, rows, depth)[:, depth].to(device, torch.int32)
        if impl == "fastops":
            trie = _trie(n, vocab, device)
            run = lambda t: trie.advance(nodes, t)  # noqa: E731
        else:
            index = _static_index(n, vocab, device)
            run = lambda t: static_torch.advance(index, nodes, t, depth)  # noqa: E731
        return Prepared(run, Rotation(tokens, device, min_copies=1), rows * 12, 0, torch.int32)

    params = {"items": f"{n:.0e}", "depth": depth}
    return Case("trie_advance", device, f"R{rows}", params, impl, prepare, rows=rows)


def _build_case(device, n, impl) -> Case:
    def prepare() -> Prepared:
        items = _items(n)
        if impl == "fastops":
            import fastops.trie

            run = lambda x: fastops.trie.build_trie(x, CODES)  # noqa: E731
        else:
            run = lambda x: dict_trie(x.tolist())  # noqa: E731
        return Prepared(run, Rotation(items, "cpu", min_copies=1), items.nbytes, 0, torch.int64)

    return Case("trie_build", device, f"{n:.0e}x{LEVELS}", {}, impl, prepare, rows=n)


def build_cases(device: str, quick: bool) -> list[Case]:
    """The cases in run order: one (vocab, |items|) trie at a time."""
    plan = _plan(device, quick)
    cases = []
    if device == "cpu":  # build runs on the host whatever the device of the trie
        for n in plan["items"]:
            cases += [_build_case(device, n, "fastops")]
            cases += [_build_case(device, n, "dict_trie")] if n in plan["dict_items"] else []
    for vocab, n in itertools.product(plan["vocabs"], plan["items"]):
        for config, depth in itertools.product(plan["rows"], plan["depths"]):
            batch, beams = ROW_CONFIGS[config]
            rows = batch * beams
            for dtype in _dtypes(device):
                mask_impls = ["fastops", "fastops_processor", "static_dense"]
                mask_impls += ["hf_prefix_fn"] if n in plan["dict_items"] else []
                cases += [_mask_case(device, n, vocab, batch, beams, depth, dtype, impl) for impl in mask_impls]
                cases += [_candidates_case(device, n, vocab, batch, beams, depth, dtype, impl)
                          for impl in ("fastops", "static_sparse")]
            cases += [_bitmask_case(device, n, vocab, rows, depth)]
            if vocab == plan["vocabs"][0]:  # advance does not read logits: once per trie size
                cases += [_advance_case(device, n, vocab, rows, depth, impl) for impl in ("fastops", "static_slots")]
    return cases


if __name__ == "__main__":
    harness.main(build_cases)
