"""Reference for fastops.trie: a nested-dict prefix tree built from the definitions, and per-row
answers computed by walking it. Node ids are not known to a dict trie, so the oracle works on
prefixes (token tuples): tests map kernel node ids to prefixes by walking the CSR arrays."""
from __future__ import annotations

import math

END = None  # key marking "an item ends here"


def model_items(sequences, level_offsets=None, eos_token_id=None) -> list[tuple]:
    """Each input row as a tuple of model tokens (offsets added per level, EOS appended)."""
    items = []
    for row in sequences:
        row = [int(t) for t in row]
        toks = [t + (0 if level_offsets is None else int(level_offsets[i])) for i, t in enumerate(row)]
        items.append(tuple(toks) + (() if eos_token_id is None else (eos_token_id,)))
    return items


def node_prefixes(indptr, tokens) -> list[tuple]:
    """prefix[u] for every node u of a CSR trie, read from its arrays by following edges (csrc/trie/trie.h:
    the edges of u are indptr[u] .. indptr[u + 1] and edge e leads to node e + 1)."""
    indptr, tokens = [int(v) for v in indptr], [int(v) for v in tokens]
    prefix = [()] * (len(indptr) - 1)
    for u in range(len(prefix)):
        for e in range(indptr[u], indptr[u + 1]):
            prefix[e + 1] = prefix[u] + (tokens[e],)
    return prefix


class DictTrie:
    def __init__(self, items):
        self.root = {}
        for item in items:
            node = self.root
            for t in item:
                node = node.setdefault(t, {})
            node[END] = True

    def node(self, prefix):
        """The dict at `prefix`, or None when the prefix is off the trie."""
        node = self.root
        for t in prefix:
            if t not in node:
                return None
            node = node[t]
        return node

    def allowed(self, prefix, valid_items=None) -> list[int]:
        """Sorted tokens that extend `prefix` (towards at least one item of valid_items when given)."""
        node = self.node(prefix)
        if node is None:
            return []
        tokens = sorted(t for t in node if t is not END)
        if valid_items is None:
            return tokens
        return [t for t in tokens if any(item[:len(prefix) + 1] == tuple(prefix) + (t,) for item in valid_items)]


def candidates(allowed_tokens, logits_row, k, log_softmax=False):
    """(scores, tokens) of the k best allowed tokens, descending, ties to the smaller token, padded."""
    row = [float(v) for v in logits_row]
    shift = 0.0
    if log_softmax:
        top = max(row)
        shift = top + math.log(sum(math.exp(v - top) for v in row)) if math.isfinite(top) else top
    scored = [(row[t] - shift, t) for t in allowed_tokens]
    rank = [(-(s if not math.isnan(s) else -math.inf), t, s) for s, t in scored]
    rank.sort()
    best = rank[:k]
    scores = [s for _, _, s in best] + [-math.inf] * (k - len(best))
    tokens = [t for _, t, _ in best] + [-1] * (k - len(best))
    return scores, tokens
