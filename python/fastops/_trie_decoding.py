"""Decoding on top of the trie ops: exact constrained beam search (`beam_search`) and a stateless
HuggingFace logits processor (`TrieLogitsProcessor`). Re-exported by fastops.trie.

Both only call the public trie operations (`step`, `walk`) and read `indptr` for node degrees, so they
run wherever the trie and the logits live (CPU or CUDA) without host-side trie state.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ._core import check_int

__all__ = ["beam_search", "TrieLogitsProcessor"]


def _ended(trie, node_ids: torch.Tensor) -> torch.Tensor:
    """True where a row has nothing left to generate: its node has no children (the item is complete)
    or it is -1 (it left the trie: a dead filler beam, or a token chosen outside the constraint)."""
    safe = node_ids.clamp(min=0).long()
    degree = trie.indptr[safe + 1] - trie.indptr[safe]
    return (node_ids < 0) | (degree == 0)


def _alive(trie, valid: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A bool item subset as the node mask trie.step takes, computed once instead of at every step."""
    return trie.alive_mask(valid) if isinstance(valid, torch.Tensor) and valid.dtype == torch.bool else valid


def beam_search(
    logits_fn: Callable[[torch.Tensor, int], torch.Tensor],
    trie,
    batch_size: int,
    num_beams: int,
    *,
    max_length: Optional[int] = None,
    valid: Optional[torch.Tensor] = None,
    log_softmax: bool = True,
    pad_token_id: int = -1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact constrained beam search over the items of `trie` (STATIC's beam search, with ragged items).

    logits_fn(history, step) -> logits [batch_size * num_beams, V]: `history` is int64
      [batch_size * num_beams, step], the tokens chosen so far by each beam (rows of one query are
      consecutive; `pad_token_id` after a beam's item has ended). V = trie.vocab_size.
    Each step scores every child of every beam by the full-vocabulary log-softmax (the raw logits when
    `log_softmax=False`) plus the beam's cumulative score, and keeps the best `num_beams` per query.
    Only each beam's top `num_beams` children are gathered (trie step, mode="candidates"): the global
    top num_beams of a query can hold at most num_beams children of any one beam, so this equals the
    dense search over all children. At step 0 only the first beam of a query is live, so no
    hypothesis appears twice. A beam whose item is complete (its node has no children: fixed-length
    items at depth L, EOS-terminated ragged items after EOS) stays in the beam with its score and
    competes with the others unchanged; the search stops when every beam has ended, or after
    `max_length` steps (then unfinished beams are returned as they are). That stop test is the one host
    synchronization per step.
    `valid` restricts the items as in trie.step: bool [N_input] for every query, or [batch_size, N_input]
    one subset per query (or the uint8 alive masks of trie.alive_mask).

    Returns (sequences int64 [batch_size, num_beams, T] padded with `pad_token_id`,
    scores float32 [batch_size, num_beams]), best first. Fewer than num_beams reachable items leave
    filler beams with score -inf.
    """
    op = "fastops.trie.beam_search"
    if not callable(logits_fn):
        raise TypeError(f"{op}: logits_fn must be callable, got {type(logits_fn).__name__}")
    batch_size = check_int(op, "batch_size", batch_size, lo=1)
    num_beams = check_int(op, "num_beams", num_beams, lo=1)
    if max_length is not None:
        check_int(op, "max_length", max_length, lo=0)
    check_int(op, "pad_token_id", pad_token_id)

    valid = _alive(trie, valid)
    device = trie.indptr.device
    rows = batch_size * num_beams
    node_ids = torch.full((rows,), trie.root, dtype=torch.int32, device=device)
    cumulative = torch.full((batch_size, num_beams), float("-inf"), device=device)
    cumulative[:, 0] = 0.0
    history = torch.empty(rows, 0, dtype=torch.int64, device=device)
    # An ended beam's only candidate is itself with +0: column 0 scores 0, the other columns -inf.
    keep_self = torch.full((1, num_beams), float("-inf"), device=device)
    keep_self[0, 0] = 0.0
    query_base = torch.arange(batch_size, device=device)[:, None] * num_beams

    step = 0
    while step != max_length:
        ended = _ended(trie, node_ids)
        if bool(ended.all()):
            break
        logits = logits_fn(history, step)
        scores, tokens, next_nodes = trie.step(node_ids, logits, mode="candidates", k=num_beams,
                                               log_softmax=log_softmax, valid=valid)
        scores = torch.where(ended[:, None], keep_self, scores)
        tokens = torch.where(ended[:, None] | (tokens < 0), pad_token_id, tokens)
        next_nodes = torch.where(ended[:, None], node_ids[:, None], next_nodes)

        total = (cumulative.reshape(rows, 1) + scores).view(batch_size, num_beams * num_beams)
        cumulative, picked = total.topk(num_beams, dim=1)  # sorted: best first
        parents = (query_base + picked // num_beams).view(rows)
        chosen_tokens = tokens.view(batch_size, -1).gather(1, picked).view(rows, 1)
        node_ids = next_nodes.view(batch_size, -1).gather(1, picked).view(rows)
        history = torch.cat([history[parents], chosen_tokens.long()], dim=1)
        step += 1
    return history.view(batch_size, num_beams, history.shape[1]), cumulative


class TrieLogitsProcessor:
    """HuggingFace `LogitsProcessor` that keeps `model.generate` inside the items of `trie`.

        processor = TrieLogitsProcessor(trie, prompt_length=inputs.input_ids.shape[1], eos_token_id=eos)
        model.generate(**inputs, logits_processor=LogitsProcessorList([processor]), ...)

    Stateless: each call recomputes every row's node from its generated suffix
    `input_ids[:, prompt_length:]` (trie.walk), so beam reordering, num_return_sequences, sampling and
    greedy search all work without bookkeeping. `prompt_length` is the (padded) prompt width of
    decoder-only models, or 1 (the decoder start token) for encoder-decoder models.
    The scores are masked in place (disallowed tokens -inf, allowed ones keep their value) and returned.

    Rows with nothing left to generate (the suffix is already a complete item, or it left the trie
    because generate padded a finished sequence) allow only `eos_token_id`, at the model's own score,
    so generation can stop and samplers never see an all -inf row. Without `eos_token_id` such a row
    raises ValueError: generate exactly the item length (max_new_tokens = L) or build the trie with
    an EOS. `valid` restricts the items as in trie.step (one subset per prompt: [batch, N_input]; generate
    keeps the num_beams / num_return_sequences rows of a prompt together).

    Duck-typed rather than a subclass, so transformers stays an optional dependency: generate only
    calls `processor(input_ids, scores)`.
    """

    supports_continuous_batching = False  # it relies on each row holding its own whole suffix

    def __init__(self, trie, prompt_length: int, *, eos_token_id: Optional[int] = None,
                 valid: Optional[torch.Tensor] = None):
        op = "fastops.trie.TrieLogitsProcessor"
        self.prompt_length = check_int(op, "prompt_length", prompt_length, lo=0)
        if eos_token_id is not None:
            check_int(op, "eos_token_id", eos_token_id, lo=0)
        self.trie = trie
        self.eos_token_id = eos_token_id
        self.valid = _alive(trie, valid)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        op = "fastops.trie.TrieLogitsProcessor"
        if input_ids.shape[1] < self.prompt_length:
            raise ValueError(f"{op}: input_ids has {input_ids.shape[1]} columns, fewer than "
                             f"prompt_length={self.prompt_length}")
        if self.eos_token_id is not None and self.eos_token_id >= scores.shape[1]:
            raise ValueError(f"{op}: eos_token_id={self.eos_token_id} is outside the {scores.shape[1]} scores columns")
        node_ids = self.trie.walk(input_ids[:, self.prompt_length:].to(torch.int32))
        ended = _ended(self.trie, node_ids)
        eos = self.eos_token_id
        eos_scores = scores[:, eos].clone() if eos is not None else None
        self.trie.step(node_ids, scores, mode="mask", valid=self.valid)
        if eos is not None:
            scores[:, eos] = torch.where(ended, eos_scores, scores[:, eos])
        elif bool(ended.any()):
            rows = ended.nonzero().flatten()[:5].tolist()
            raise ValueError(f"{op}: rows {rows} already hold a complete item (or "
                             f"left the trie) and no eos_token_id was given to end them; generate exactly the "
                             f"item length (max_new_tokens) or pass eos_token_id")
        return scores
