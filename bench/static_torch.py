"""STATIC's constrained-decoding step ("Vectorizing the Trie", Su et al.) in plain torch: the peer that
bench_trie.py times fastops' trie ops against. Written from the paper's description of the CSR step:

  - the index is `indptr` plus one packed [E + pad, 2] array of (token, next node) pairs, rows sorted
    by token, followed by `pad` filler pairs (token = V, next = -1) so fixed-width reads stay in bounds;
  - a step on nodes at depth t reads a fixed K_t slots (the largest branching at that depth) starting at
    indptr[node], marks slot i valid when i < degree, gathers the log-probs of the slots' tokens, puts
    -inf on invalid slots, and takes the top-k: sparse candidates, no V-wide mask;
  - the dense equivalent (what a V-wide mask costs in this formulation) fills a [R, V] buffer with
    -inf and scatters the allowed entries back.

The index is taken from a fastops CSRTrie (same indptr; edge e leads to node e + 1), so both sides step
over the same trie; building it is not timed here.
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class StaticIndex:
    indptr: torch.Tensor  # int32 [num_nodes + 1]
    packed: torch.Tensor  # int32 [E + pad, 2]: (token, next node)
    level_max_degree: list[int]  # K_t per depth t = 0 .. depth - 1
    vocab_size: int

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.packed.nbytes


def level_ranges(indptr: torch.Tensor) -> list[tuple[int, int]]:
    """[first, last) node ids per depth of a BFS-numbered trie: the children of the nodes [a, b) of one
    depth are the nodes indptr[a] + 1 .. indptr[b], the next depth."""
    ranges, first, last = [], 0, 1
    while first < last:
        ranges.append((first, last))
        first, last = int(indptr[first]) + 1, int(indptr[last]) + 1
    return ranges


def from_csr(indptr: torch.Tensor, tokens: torch.Tensor, vocab_size: int) -> StaticIndex:
    indptr = indptr.cpu()
    degrees = indptr[1:] - indptr[:-1]
    level_max = [int(degrees[a:b].max()) for a, b in level_ranges(indptr)]
    pad = max(level_max)
    edges = tokens.shape[0]
    packed = torch.empty(edges + pad, 2, dtype=torch.int32)
    packed[:edges, 0] = tokens.cpu()
    packed[:edges, 1] = torch.arange(1, edges + 1, dtype=torch.int32)
    packed[edges:, 0] = vocab_size
    packed[edges:, 1] = -1
    return StaticIndex(indptr, packed, level_max, vocab_size)


def to_device(index: StaticIndex, device: str) -> StaticIndex:
    return dataclasses.replace(index, indptr=index.indptr.to(device), packed=index.packed.to(device))


def _slots(index: StaticIndex, node_ids: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens, next nodes, valid) [R, width]: the fixed-width read of each row's CSR slice."""
    nodes = node_ids.long()
    start = index.indptr[nodes].long()
    degree = index.indptr[nodes + 1].long() - start
    slot = torch.arange(width, device=node_ids.device)
    pairs = index.packed[start[:, None] + slot]
    return pairs[..., 0], pairs[..., 1], slot < degree[:, None]


def candidates(index: StaticIndex, node_ids: torch.Tensor, logits: torch.Tensor, depth: int, k: int):
    """STATIC's sparse step on rows whose nodes sit at `depth`: full-vocab log-softmax, fixed K_t-slot
    gather, -inf on invalid slots, per-row top-k. Returns (scores, tokens, next nodes) [R, k]."""
    width = index.level_max_degree[depth]
    tokens, next_nodes, valid = _slots(index, node_ids, width)
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    scores = logprobs.gather(1, tokens.clamp(max=index.vocab_size - 1).long())
    scores = scores.masked_fill(~valid, float("-inf"))
    top, idx = scores.topk(min(k, width), dim=1)
    return top, tokens.gather(1, idx), next_nodes.gather(1, idx)


def dense_mask(index: StaticIndex, node_ids: torch.Tensor, logits: torch.Tensor, depth: int) -> torch.Tensor:
    """The V-wide masked logits in the same formulation: -inf everywhere, allowed entries scattered back.
    One spare column takes the invalid slots' writes (their token is V)."""
    width = index.level_max_degree[depth]
    tokens, _, valid = _slots(index, node_ids, width)
    tokens = torch.where(valid, tokens, index.vocab_size).long()
    kept = logits.gather(1, tokens.clamp(max=index.vocab_size - 1))
    masked = torch.full((logits.shape[0], index.vocab_size + 1), float("-inf"), dtype=logits.dtype,
                        device=logits.device)
    masked.scatter_(1, tokens, kept)
    return masked[:, :index.vocab_size]


def advance(index: StaticIndex, node_ids: torch.Tensor, tokens: torch.Tensor, depth: int) -> torch.Tensor:
    """Next node along `tokens` (-1 if illegal) by the same fixed-width read: match the token in the slots."""
    slot_tokens, slot_next, valid = _slots(index, node_ids, index.level_max_degree[depth])
    hit = valid & (slot_tokens == tokens[:, None])
    return torch.where(hit, slot_next, -1).amax(dim=1)
