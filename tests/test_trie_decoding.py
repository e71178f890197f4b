"""fastops.trie decoding: beam_search against a STATIC-style dense beam search over a dict trie, and
TrieLogitsProcessor inside HuggingFace generate (greedy, sampling, beam search) on a tiny random GPT-2."""
from __future__ import annotations

import os

import pytest
import torch

from fastops import trie as trie_ops
from conftest import DEVICES

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the HF tests build models from configs, never download

NEG_INF = float("-inf")
PAD = -1


# ---------------------------------------------------------------------------------------------------
# Items, dict tries and a deterministic "model"
# ---------------------------------------------------------------------------------------------------


def random_items(gen: torch.Generator, n: int, length: int, codes: int) -> torch.Tensor:
    return torch.randint(0, codes, (n, length), generator=gen)


def ragged_items(gen: torch.Generator, n: int, max_length: int, codes: int) -> list[list[int]]:
    lengths = torch.randint(1, max_length + 1, (n,), generator=gen).tolist()
    return [torch.randint(0, codes, (m,), generator=gen).tolist() for m in lengths]


def dict_trie(items) -> dict:
    """Nested dict token -> subtree; {} ends an item (the oracle every test checks against)."""
    root: dict = {}
    for item in items:
        node = root
        for token in item:
            node = node.setdefault(int(token), {})
    return root


def model_items(items, level_offsets=None, eos=None) -> set[tuple[int, ...]]:
    """The items as model-token tuples, as build_trie stores them."""
    out = set()
    for item in (items.tolist() if isinstance(items, torch.Tensor) else items):
        tokens = [t + (level_offsets[l] if level_offsets else 0) for l, t in enumerate(item)]
        out.add(tuple(tokens + ([eos] if eos is not None else [])))
    return out


def history_logits(vocab: int, max_steps: int, seed: int):
    """logits_fn(history, step) of a fixed random function of the whole history: sum over positions of
    table[position, token] (pad contributes nothing) plus a bias. Deterministic, so the search under
    test and the reference see the same log-probs for the same prefixes."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(max_steps, vocab + 1, vocab, generator=gen)  # row `vocab` = pad
    bias = torch.randn(vocab, generator=gen)

    def logits_fn(history: torch.Tensor, step: int) -> torch.Tensor:
        assert history.shape[1] == step and history.dtype == torch.int64
        tokens = torch.where(history < 0, vocab, history).cpu()
        out = bias.expand(history.shape[0], vocab).clone()
        for pos in range(step):
            out += table[pos, tokens[:, pos]]
        return out.to(history.device)

    return logits_fn


def static_beam_search(logits_fn, root: dict, batch_size: int, num_beams: int, pad: int = PAD):
    """STATIC's beam search written plainly: every step scores *every* child of every beam (one dense
    level, width K = the largest degree among the beams) by full-vocab log-softmax + cumulative score
    and keeps the top num_beams per query over num_beams * K. An ended beam (complete item, or a dead
    filler) offers itself once with +0 so it is carried unchanged; step 0 has one live beam per query."""
    rows = batch_size * num_beams
    nodes = [root] * rows  # None: dead filler beam
    cumulative = torch.full((batch_size, num_beams), NEG_INF)
    cumulative[:, 0] = 0
    history = torch.empty(rows, 0, dtype=torch.int64)
    step = 0
    while any(node for node in nodes):
        logprobs = torch.log_softmax(logits_fn(history, step).double(), dim=-1)
        width = max(max(len(node) for node in nodes if node), 1)
        scores = torch.full((rows, width), NEG_INF, dtype=torch.float64)
        tokens = [[pad] * width for _ in range(rows)]
        children = [[None] * width for _ in range(rows)]
        for r, node in enumerate(nodes):
            if not node:
                scores[r, 0], children[r][0] = 0.0, node
                continue
            for slot, (token, child) in enumerate(sorted(node.items())):
                scores[r, slot], tokens[r][slot], children[r][slot] = logprobs[r, token], token, child
        total = (cumulative.double().view(rows, 1) + scores).view(batch_size, num_beams * width)
        top, picked = total.topk(num_beams, dim=1)
        new_nodes, new_history = [], []
        for q in range(batch_size):
            for flat in picked[q].tolist():
                parent, slot = q * num_beams + flat // width, flat % width
                new_nodes.append(children[parent][slot])
                new_history.append(history[parent].tolist() + [tokens[parent][slot]])
        nodes, history, cumulative = new_nodes, torch.tensor(new_history, dtype=torch.int64), top.float()
        step += 1
    return history.view(batch_size, num_beams, -1), cumulative


def strip(sequence: list[int], pad: int = PAD) -> tuple[int, ...]:
    return tuple(t for t in sequence if t != pad)


def assert_same_beams(got, want):
    (seqs, scores), (ref_seqs, ref_scores) = got, want
    assert seqs.shape == ref_seqs.shape and scores.shape == ref_scores.shape
    live = torch.isfinite(ref_scores)
    assert torch.equal(torch.isfinite(scores.cpu()), live)
    assert torch.equal(seqs.cpu()[live], ref_seqs[live])
    torch.testing.assert_close(scores.cpu()[live], ref_scores[live], rtol=0, atol=1e-4)
    assert (scores[:, :-1] >= scores[:, 1:]).all(), "beams must come best first"


# ---------------------------------------------------------------------------------------------------
# beam_search
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_items,length,codes,batch,beams", [(300, 4, 6, 3, 5), (40, 3, 5, 2, 8), (1, 2, 3, 1, 1)])
def test_beam_search_equals_static_dense(device, num_items, length, codes, batch, beams, gen):
    items = random_items(gen, num_items, length, codes)
    offsets = [l * codes for l in range(length)]  # each level its own token range, as in OneRec
    vocab = length * codes + 3
    trie = trie_ops.build_trie(items, codes, level_offsets=offsets, model_vocab_size=vocab, device=device)
    logits_fn = history_logits(vocab, length, seed=num_items)

    got = trie_ops.beam_search(logits_fn, trie, batch, beams)
    want = static_beam_search(logits_fn, dict_trie(model_items(items, offsets)), batch, beams)
    assert_same_beams(got, want)
    valid = model_items(items, offsets)
    seqs, scores = got
    assert all(tuple(s) in valid for s in seqs.cpu()[torch.isfinite(scores.cpu())].tolist())


@pytest.mark.parametrize("device", DEVICES)
def test_beam_search_more_beams_than_items(device, gen):
    items = torch.tensor([[0, 1], [0, 2], [1, 1]])
    trie = trie_ops.build_trie(items, 4, device=device)
    logits_fn = history_logits(4, 2, seed=7)
    seqs, scores = trie_ops.beam_search(logits_fn, trie, 2, 5)
    assert torch.isfinite(scores).sum(1).tolist() == [3, 3]  # two -inf fillers per query
    assert_same_beams((seqs, scores), static_beam_search(logits_fn, dict_trie(items.tolist()), 2, 5))


@pytest.mark.parametrize("device", DEVICES)
def test_beam_search_ragged_with_eos(device, gen):
    codes, eos = 5, 5
    items = ragged_items(gen, 120, 4, codes)
    trie = trie_ops.build_trie(items, codes, eos_token_id=eos, device=device)
    logits_fn = history_logits(codes + 1, 6, seed=3)
    got = trie_ops.beam_search(logits_fn, trie, 2, 6)
    valid = model_items(items, eos=eos)
    assert_same_beams(got, static_beam_search(logits_fn, dict_trie(valid), 2, 6))
    assert all(strip(s) in valid for s in got[0].cpu().flatten(0, 1).tolist())


@pytest.mark.parametrize("device", DEVICES)
def test_beam_search_item_subsets(device, gen):
    """valid [N] keeps one subset for every query, valid [B, N] one per query: each equals the dense
    search over a dict trie of just that subset."""
    items = random_items(gen, 200, 3, 5).unique(dim=0)  # a duplicate's flag would not count
    items = items[torch.randperm(len(items), generator=gen)]
    trie = trie_ops.build_trie(items, 5, device=device)
    logits_fn = history_logits(5, 3, seed=5)
    subsets = torch.rand(2, len(items), generator=gen) < 0.3
    for valid in (subsets[0], subsets):
        got = trie_ops.beam_search(logits_fn, trie, 2, 4, valid=valid.to(device))
        for q in range(2):
            subset = items[valid if valid.dim() == 1 else valid[q]].tolist()
            want = static_beam_search(logits_fn, dict_trie(subset), 1, 4)
            assert_same_beams((got[0][q:q + 1], got[1][q:q + 1]), want)


def test_beam_search_pad_token_and_max_length(gen):
    items = ragged_items(gen, 50, 3, 4)
    trie = trie_ops.build_trie(items, 4, eos_token_id=4)
    logits_fn = history_logits(5, 4, seed=11)
    seqs, _ = trie_ops.beam_search(logits_fn, trie, 1, 4, pad_token_id=4)
    assert (seqs >= 0).all()  # ended beams padded with EOS, so logits_fn always saw real tokens
    assert all(strip(s, pad=4) + (4,) in model_items(items, eos=4) for s in seqs[0].tolist())
    seqs, scores = trie_ops.beam_search(logits_fn, trie, 1, 4, max_length=2)
    assert seqs.shape == (1, 4, 2) and torch.isfinite(scores).all()
    seqs, scores = trie_ops.beam_search(logits_fn, trie, 1, 4, max_length=0)
    assert seqs.shape == (1, 4, 0) and scores.tolist() == [[0.0] + [NEG_INF] * 3]


def test_beam_search_bad_input(gen):
    trie = trie_ops.build_trie(random_items(gen, 5, 2, 3), 3)
    logits_fn = history_logits(3, 2, seed=0)
    with pytest.raises(TypeError, match="logits_fn must be callable"):
        trie_ops.beam_search(None, trie, 1, 2)
    with pytest.raises(ValueError, match="num_beams"):
        trie_ops.beam_search(logits_fn, trie, 1, 0)
    with pytest.raises(ValueError, match="batch_size"):
        trie_ops.beam_search(logits_fn, trie, 0, 2)


# ---------------------------------------------------------------------------------------------------
# TrieLogitsProcessor in HuggingFace generate
# ---------------------------------------------------------------------------------------------------

HF_VOCAB, CODES, LEVELS = 40, 8, 3
HF_EOS = HF_VOCAB - 1


@pytest.fixture(scope="module")
def tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=32, vocab_size=HF_VOCAB,
                                     bos_token_id=0, eos_token_id=HF_EOS, pad_token_id=HF_EOS)
    return transformers.GPT2LMHeadModel(config).eval()


def _generate(model, trie, prompt, eos=None, valid=None, **kwargs) -> list[list[int]]:
    """The generated suffixes, rows of one prompt consecutive."""
    from transformers import LogitsProcessorList

    processor = trie_ops.TrieLogitsProcessor(trie, prompt_length=prompt.shape[1], eos_token_id=eos, valid=valid)
    torch.manual_seed(1)
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), logits_processor=LogitsProcessorList([processor]),
                         pad_token_id=HF_EOS, eos_token_id=eos, **kwargs)
    return out[:, prompt.shape[1]:].tolist()


GENERATE_MODES = {
    "greedy": {"do_sample": False},
    "sampling": {"do_sample": True, "num_return_sequences": 3, "top_k": 0},
    "beam": {"do_sample": False, "num_beams": 4, "num_return_sequences": 4},
}


@pytest.mark.parametrize("mode", GENERATE_MODES)
def test_generate_fixed_length_items(tiny_gpt2, mode, gen):
    items = random_items(gen, 60, LEVELS, CODES)
    offsets = [1 + l * CODES for l in range(LEVELS)]
    trie = trie_ops.build_trie(items, CODES, level_offsets=offsets, model_vocab_size=HF_VOCAB)
    prompt = torch.randint(0, HF_VOCAB, (2, 5), generator=gen)
    outputs = _generate(tiny_gpt2, trie, prompt, max_new_tokens=LEVELS, **GENERATE_MODES[mode])
    valid = model_items(items, offsets)
    assert len(outputs) == 2 * GENERATE_MODES[mode].get("num_return_sequences", 1)
    assert all(tuple(o) in valid for o in outputs)


@pytest.mark.parametrize("mode", GENERATE_MODES)
def test_generate_ragged_items_with_eos(tiny_gpt2, mode, gen):
    items = ragged_items(gen, 60, LEVELS, CODES)
    trie = trie_ops.build_trie(items, CODES, eos_token_id=HF_EOS, model_vocab_size=HF_VOCAB)
    prompt = torch.randint(0, HF_VOCAB, (2, 4), generator=gen)
    # Two tokens beyond the longest item: rows that finished early are padded, rows at a complete item
    # may only take EOS.
    outputs = _generate(tiny_gpt2, trie, prompt, eos=HF_EOS, max_new_tokens=LEVELS + 2, **GENERATE_MODES[mode])
    valid = model_items(items, eos=HF_EOS)
    for out in outputs:
        assert HF_EOS in out, out
        assert tuple(out[:out.index(HF_EOS) + 1]) in valid


def test_processor_masks_in_place_and_ends_complete_rows(gen):
    trie = trie_ops.build_trie(torch.tensor([[1, 2], [1, 3], [4, 2]]), 5, model_vocab_size=6)
    processor = trie_ops.TrieLogitsProcessor(trie, prompt_length=1, eos_token_id=5)
    input_ids = torch.tensor([[7, 1], [7, 4], [7, 0]])  # suffix [1], [4], and [0] which left the trie
    scores = torch.randn(3, 6, generator=gen)
    before = scores.clone()
    out = processor(input_ids, scores)
    assert out is scores
    allowed = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    torch.testing.assert_close(out, before.masked_fill(~allowed, NEG_INF))

    complete = torch.tensor([[7, 1, 3]])
    no_eos = trie_ops.TrieLogitsProcessor(trie, prompt_length=1)
    with pytest.raises(ValueError, match="complete item"):
        no_eos(complete, torch.randn(1, 6, generator=gen))
    with pytest.raises(ValueError, match="prompt_length"):
        processor(torch.zeros(1, 0, dtype=torch.long), torch.randn(1, 6, generator=gen))


@pytest.mark.parametrize("mode", GENERATE_MODES)
def test_generate_per_prompt_subsets(tiny_gpt2, mode, gen):
    items = random_items(gen, 60, LEVELS, CODES).unique(dim=0)
    trie = trie_ops.build_trie(items, CODES, model_vocab_size=HF_VOCAB)
    subsets = torch.rand(2, len(items), generator=gen) < 0.2
    prompt = torch.randint(0, HF_VOCAB, (2, 3), generator=gen)
    outputs = _generate(tiny_gpt2, trie, prompt, valid=subsets, max_new_tokens=LEVELS, **GENERATE_MODES[mode])
    per_prompt = len(outputs) // 2
    for row, out in enumerate(outputs):
        assert tuple(out) in model_items(items[subsets[row // per_prompt]])
