"""Constrained decoding over a trie of valid token sequences flattened into CSR arrays (STATIC).

    trie = fastops.trie.build_trie(semantic_ids, vocab_size=2048)     # [N, L] codes -> CSRTrie
    nodes = torch.zeros(R, dtype=torch.int32)                          # every row at the root
    trie.step(nodes, logits)                                           # in place: -inf off the trie
    scores, tokens, nodes = trie.step(nodes, logits, "candidates", k=beam)

Layout ("csr-bfs", csrc/trie/trie.h): nodes numbered breadth-first, root 0, edge e leads to node e + 1,
children of node u are tokens[indptr[u]:indptr[u+1]] (ascending). Node id -1 is a dead row (an illegal
token was taken): it allows nothing, and advance keeps it at -1.

Node ids are int32 tensors (int64 is a TypeError rather than a silent copy: call `.int()`), and so are
the tokens given to `advance` / `walk`. On the CPU every node id is checked (ValueError when outside
[-1, num_nodes)); on CUDA that check would need a host synchronization, so the kernels instead treat an
out-of-range id as -1. Under torch.compile the data-dependent checks are skipped as well.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch

from . import _C
from ._core import (FLOAT_DTYPES, call_c, check_device_usable, check_dtype, check_int, check_same_device, check_tensor,
                    cuda_stream, custom_op, num_threads)

__all__ = ["CSRTrie", "build_trie", "beam_search", "TrieLogitsProcessor", "MODES", "LAYOUT"]

LAYOUT = ("csr-bfs", 1)  # (name, version) of the index layout in csrc/trie/trie.h, stored by save()
MODES = ("mask", "bitmask", "candidates")
_INT32_MAX = 2**31 - 1


# ---------------------------------------------------------------------------------------------------
# Custom ops: thin wrappers over fastops._C on the tensors' device (torch's current CUDA stream)
# ---------------------------------------------------------------------------------------------------
def _backend(t: torch.Tensor) -> dict:
    if t.device.type == "cuda":
        return {"stream": cuda_stream(t.device)}
    return {"nthreads": num_threads()}


def _on_device(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


@custom_op("fastops::trie_mask_", mutates_args=("logits",))
def _mask_op(indptr: torch.Tensor, tokens: torch.Tensor, alive: Optional[torch.Tensor], rows_per_mask: int,
             node_ids: torch.Tensor, logits: torch.Tensor) -> None:
    with _on_device(logits):
        call_c(_C.trie_mask_, indptr, tokens, alive, rows_per_mask, node_ids, logits, **_backend(logits))


@_mask_op.register_fake
def _(indptr, tokens, alive, rows_per_mask, node_ids, logits):
    return None


@custom_op("fastops::trie_bitmask")
def _bitmask_op(indptr: torch.Tensor, tokens: torch.Tensor, alive: Optional[torch.Tensor], rows_per_mask: int,
                node_ids: torch.Tensor, vocab: int) -> torch.Tensor:
    out = torch.empty((node_ids.shape[0], (vocab + 31) // 32), dtype=torch.int32, device=node_ids.device)
    with _on_device(out):
        call_c(_C.trie_bitmask, indptr, tokens, alive, rows_per_mask, node_ids, out, vocab, **_backend(out))
    return out


@_bitmask_op.register_fake
def _(indptr, tokens, alive, rows_per_mask, node_ids, vocab):
    return node_ids.new_empty((node_ids.shape[0], (vocab + 31) // 32), dtype=torch.int32)


@custom_op("fastops::trie_candidates")
def _candidates_op(indptr: torch.Tensor, tokens: torch.Tensor, alive: Optional[torch.Tensor], rows_per_mask: int,
                   node_ids: torch.Tensor, logits: torch.Tensor, k: int,
                   log_softmax: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, device = node_ids.shape[0], node_ids.device
    scores = torch.empty((rows, k), dtype=torch.float32, device=device)
    out_tokens = torch.empty((rows, k), dtype=torch.int32, device=device)
    next_nodes = torch.empty((rows, k), dtype=torch.int32, device=device)
    with _on_device(logits):
        call_c(_C.trie_candidates, indptr, tokens, alive, rows_per_mask, node_ids, logits, log_softmax, scores,
               out_tokens, next_nodes, **_backend(logits))
    return scores, out_tokens, next_nodes


@_candidates_op.register_fake
def _(indptr, tokens, alive, rows_per_mask, node_ids, logits, k, log_softmax):
    rows = node_ids.shape[0]
    return (logits.new_empty((rows, k), dtype=torch.float32), node_ids.new_empty((rows, k)),
            node_ids.new_empty((rows, k)))


@custom_op("fastops::trie_advance")
def _advance_op(indptr: torch.Tensor, tokens: torch.Tensor, alive: Optional[torch.Tensor], rows_per_mask: int,
                node_ids: torch.Tensor, step_tokens: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(node_ids)
    with _on_device(out):
        call_c(_C.trie_advance, indptr, tokens, alive, rows_per_mask, node_ids, step_tokens, out, **_backend(out))
    return out


@_advance_op.register_fake
def _(indptr, tokens, alive, rows_per_mask, node_ids, step_tokens):
    return torch.empty_like(node_ids)


# ---------------------------------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CSRTrie:
    """A prefix tree of token sequences in CSR form (layout: module docstring, csrc/trie/trie.h).

    indptr: int32 [num_nodes + 1]; tokens: int32 [num_nodes - 1] (model tokens, ascending per node);
    perm: int64 [N_input], sorted position of each input row (-1 for a dropped duplicate);
    depth_starts: nodes of depth d are depth_starts[d] .. depth_starts[d + 1];
    vocab_size: the model vocabulary V (width of the logits rows); num_items: distinct sequences;
    max_degree: the largest number of children of a node; eos_token_id: appended to every item, or None.
    """

    indptr: torch.Tensor
    tokens: torch.Tensor
    perm: torch.Tensor
    depth_starts: tuple
    vocab_size: int
    num_items: int
    max_degree: int
    eos_token_id: Optional[int] = None
    _ranges: list = field(default_factory=list, repr=False, compare=False)  # item_ranges() cache

    def __post_init__(self):
        op = "CSRTrie"
        check_dtype(op, "indptr", self.indptr, (torch.int32,))
        check_dtype(op, "tokens", self.tokens, (torch.int32,))
        check_dtype(op, "perm", self.perm, (torch.int64,))
        if self.indptr.dim() != 1 or self.tokens.shape != (self.indptr.shape[0] - 2,):
            raise ValueError(f"{op}: indptr must be [num_nodes + 1] and tokens [num_nodes - 1]; got "
                             f"{list(self.indptr.shape)} and {list(self.tokens.shape)}")
        if self.depth_starts[-1] != self.num_nodes:
            raise ValueError(f"{op}: depth_starts must end at num_nodes ({self.num_nodes})")
        check_same_device(op, "indptr", self.indptr, tokens=self.tokens, perm=self.perm)

    # --- structure --------------------------------------------------------------------------------
    @property
    def root(self) -> int:
        return 0

    @property
    def num_nodes(self) -> int:
        return self.indptr.shape[0] - 1

    @property
    def depth(self) -> int:
        """Length of the longest item (EOS included)."""
        return len(self.depth_starts) - 2

    @property
    def children(self) -> torch.Tensor:
        """int32 [num_nodes - 1]: the node edge e leads to (always e + 1 in this layout)."""
        return torch.arange(1, self.num_nodes, dtype=torch.int32, device=self.device)

    @property
    def device(self) -> torch.device:
        return self.indptr.device

    @property
    def nbytes(self) -> int:
        """Bytes the per-step operations read from (indptr + tokens): 8 per node."""
        return self.indptr.numel() * 4 + self.tokens.numel() * 4

    def to(self, device) -> "CSRTrie":
        return dataclasses.replace(self, indptr=self.indptr.to(device), tokens=self.tokens.to(device),
                                   perm=self.perm.to(device), _ranges=[])

    def cpu(self) -> "CSRTrie":
        return self.to("cpu")

    def cuda(self, device=None) -> "CSRTrie":
        return self.to(torch.device("cuda") if device is None else device)

    # --- persistence ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        meta = [LAYOUT[1], self.vocab_size, self.num_items, self.max_degree,
                -1 if self.eos_token_id is None else self.eos_token_id]
        return {"layout": LAYOUT[0], "meta": torch.tensor(meta, dtype=torch.int64),
                "depth_starts": torch.tensor(self.depth_starts, dtype=torch.int64),
                "indptr": self.indptr, "tokens": self.tokens, "perm": self.perm}

    @classmethod
    def from_state_dict(cls, state: dict) -> "CSRTrie":
        version, vocab_size, num_items, max_degree, eos = (int(v) for v in state["meta"].tolist())
        if state.get("layout") != LAYOUT[0] or version != LAYOUT[1]:
            raise ValueError(f"CSRTrie: unsupported index layout {state.get('layout')!r} version {version}; "
                             f"this fastops reads {LAYOUT[0]!r} version {LAYOUT[1]}")
        return cls(indptr=state["indptr"], tokens=state["tokens"], perm=state["perm"],
                   depth_starts=tuple(int(v) for v in state["depth_starts"].tolist()), vocab_size=vocab_size,
                   num_items=num_items, max_degree=max_degree, eos_token_id=None if eos < 0 else eos)

    def save(self, path) -> None:
        """One flat torch.save file (tensors + small metadata); CSRTrie.load(path, mmap=True) maps it."""
        torch.save({k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in self.state_dict().items()}, path)

    @classmethod
    def load(cls, path, mmap: bool = True, device=None) -> "CSRTrie":
        """Load a saved trie; with mmap the arrays stay in the page cache until touched."""
        state = torch.load(path, mmap=mmap, weights_only=True, map_location="cpu")
        trie = cls.from_state_dict(state)
        return trie if device is None else trie.to(device)

    def __getstate__(self):
        return self.state_dict()

    def __setstate__(self, state):
        other = CSRTrie.from_state_dict(state)
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, getattr(other, f.name))

    # --- subsets ----------------------------------------------------------------------------------
    def item_ranges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi) int64 [num_nodes]: node u is on the path of sorted items lo[u] .. hi[u] - 1.

        Computed once with torch ops on the trie's device (one pass per depth), then cached.
        """
        if not self._ranges:
            self._ranges.extend(_item_ranges(self.indptr, self.depth_starts))
        return self._ranges[0], self._ranges[1]

    def alive_mask(self, valid: torch.Tensor) -> torch.Tensor:
        """uint8 [num_nodes] (or [B, num_nodes]): 1 where a valid item lies below the node.

        valid: bool [N_input] or [B, N_input], in the original order of the sequences given to
        build_trie. A dropped duplicate row's flag is ignored (its first occurrence decides).
        Torch ops on the trie's device; no host synchronization.
        """
        op = "CSRTrie.alive_mask"
        n_input = self.perm.shape[0]
        check_dtype(op, "valid", valid, (torch.bool,))
        if valid.dim() not in (1, 2) or valid.shape[-1] != n_input:
            raise ValueError(f"{op}: valid must have shape [{n_input}] or [B, {n_input}]; got {list(valid.shape)}")
        check_same_device(op, "trie", self.indptr, valid=valid)
        lo, hi = self.item_ranges()
        batch = valid.reshape(-1, n_input)
        # Sorted order, with one spare column that collects the dropped duplicates.
        slot = torch.where(self.perm >= 0, self.perm, self.num_items).expand(batch.shape[0], -1)
        in_sorted = batch.new_zeros((batch.shape[0], self.num_items + 1), dtype=torch.int32)
        in_sorted.scatter_(1, slot, batch.to(torch.int32))
        prefix = torch.nn.functional.pad(in_sorted[:, :-1].cumsum(1), (1, 0))
        alive = (prefix[:, hi] > prefix[:, lo]).to(torch.uint8)
        return alive if valid.dim() == 2 else alive[0]

    # --- per-step operations ----------------------------------------------------------------------
    def step(self, node_ids: torch.Tensor, logits: Optional[torch.Tensor] = None, mode: str = "mask", *,
             valid: Optional[torch.Tensor] = None, k: Optional[int] = None, log_softmax: bool = False):
        """One decoding step for rows at node_ids[R] (int32; -1 = dead row).

        mode "mask": logits[R, V] (float32/float16/bfloat16, unit stride along V, V >= vocab_size) is
            set to -inf in place wherever the token is not a child of the row's node; returns logits.
        mode "bitmask": int32 [R, ceil(V / 32)], bit b of word w set when token 32 w + b is allowed
            (V = logits.shape[1], or vocab_size when logits is None).
        mode "candidates": the k best allowed children per row by score, descending, ties to the smaller
            token: (scores float32 [R, k], tokens int32 [R, k], next_nodes int32 [R, k]), padded with
            -inf / -1 / -1. score = logits[r, t], or log_softmax(logits[r])[t] over the full row.
            k (the beam width) is required.
        valid: restricts the trie to a subset of items: bool [N_input] or [B, N_input] (as in
            alive_mask), or a precomputed uint8 alive mask [num_nodes] or [B, num_nodes]; with B masks,
            row r uses mask r // (R // B), so B must divide R.
        """
        op = f"CSRTrie.step[{mode}]"
        if mode not in MODES:
            raise ValueError(f"CSRTrie.step: mode must be one of {MODES}, got {mode!r}")
        rows = self._check_node_ids(op, node_ids)
        if logits is None and mode != "bitmask":
            raise ValueError(f"{op}: logits are required")
        if logits is not None:
            self._check_logits(op, node_ids, logits, in_place=mode == "mask")
        alive, rows_per_mask = self._subset(op, valid, rows)
        if mode == "mask":
            _mask_op(self.indptr, self.tokens, alive, rows_per_mask, node_ids, logits)
            return logits
        if mode == "bitmask":
            vocab = self.vocab_size if logits is None else logits.shape[1]
            return _bitmask_op(self.indptr, self.tokens, alive, rows_per_mask, node_ids, vocab)
        if k is None:
            raise ValueError(f"{op}: k (the beam width) is required")
        check_int(op, "k", k, 1)
        if not isinstance(log_softmax, bool):
            raise TypeError(f"{op}: log_softmax must be a bool, got {type(log_softmax).__name__}")
        return _candidates_op(self.indptr, self.tokens, alive, rows_per_mask, node_ids, logits, k, log_softmax)

    def advance(self, node_ids: torch.Tensor, tokens: torch.Tensor, *,
                valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """int32 [R]: the child of node_ids[r] along tokens[r] (int32 [R]), or -1 when illegal or dead."""
        op = "CSRTrie.advance"
        rows = self._check_node_ids(op, node_ids)
        check_dtype(op, "tokens", tokens, (torch.int32,))
        if tokens.shape != (rows,):
            raise ValueError(f"{op}: tokens must have shape [{rows}] (one per row); got {list(tokens.shape)}")
        check_same_device(op, "node_ids", node_ids, tokens=tokens)
        alive, rows_per_mask = self._subset(op, valid, rows)
        return _advance_op(self.indptr, self.tokens, alive, rows_per_mask, node_ids, tokens.contiguous())

    def walk(self, prefixes: torch.Tensor, *, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """int32 [R]: the node reached from the root along prefixes[R, t] (int32), -1 if off the trie.

        Stateless: recomputes node ids from the generated tokens (e.g. after beams were reordered).
        """
        op = "CSRTrie.walk"
        check_dtype(op, "prefixes", prefixes, (torch.int32,))
        if prefixes.dim() != 2:
            raise ValueError(f"{op}: prefixes must have shape [R, t]; got {list(prefixes.shape)}")
        check_same_device(op, "trie", self.indptr, prefixes=prefixes)
        nodes = torch.zeros(prefixes.shape[0], dtype=torch.int32, device=prefixes.device)
        for t in range(prefixes.shape[1]):
            nodes = self.advance(nodes, prefixes[:, t].contiguous(), valid=valid)
        return nodes

    def allowed(self, node_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens int32 [R, max_degree], next_nodes int32 [R, max_degree], counts int32 [R]): the children
        of every row's node in token order, padded with -1 (a dead row has count 0)."""
        op = "CSRTrie.allowed"
        self._check_node_ids(op, node_ids)
        live = node_ids >= 0
        node = torch.where(live, node_ids, 0).long()
        first = self.indptr[node]
        counts = torch.where(live, self.indptr[node + 1] - first, 0)
        slot = torch.arange(self.max_degree, dtype=torch.int32, device=node_ids.device)
        edge = first[:, None] + slot
        present = slot < counts[:, None]
        edge = torch.where(present, edge, 0).long()
        tokens = torch.where(present, self.tokens[edge], -1)
        next_nodes = torch.where(present, (edge + 1).int(), -1)
        return tokens, next_nodes, counts

    # --- validation -------------------------------------------------------------------------------
    def _check_node_ids(self, op: str, node_ids) -> int:
        check_dtype(op, "node_ids", node_ids, (torch.int32,))
        if node_ids.dim() != 1:
            raise ValueError(f"{op}: node_ids must have shape [R]; got {list(node_ids.shape)}")
        check_same_device(op, "trie", self.indptr, node_ids=node_ids)
        check_device_usable(op, node_ids)
        if not node_ids.is_contiguous():
            raise ValueError(f"{op}: node_ids must be contiguous")
        if node_ids.device.type == "cpu" and node_ids.numel() and not torch.compiler.is_compiling():
            lo, hi = int(node_ids.min()), int(node_ids.max())
            if lo < -1 or hi >= self.num_nodes:
                raise ValueError(f"{op}: node_ids must lie in [-1, {self.num_nodes}) (num_nodes, -1 = dead row); "
                                 f"got values in [{lo}, {hi}]")
        return node_ids.shape[0]

    def _check_logits(self, op: str, node_ids: torch.Tensor, logits, in_place: bool) -> None:
        check_dtype(op, "logits", logits, FLOAT_DTYPES)
        rows = node_ids.shape[0]
        if logits.dim() != 2 or logits.shape[0] != rows:
            raise ValueError(f"{op}: logits must have shape [{rows}, V] (one row per node id); "
                             f"got {list(logits.shape)}")
        if logits.shape[1] < self.vocab_size:
            raise ValueError(f"{op}: logits have {logits.shape[1]} columns, fewer than the trie's vocabulary "
                             f"({self.vocab_size})")
        if logits.shape[1] > 1 and logits.stride(1) != 1:
            raise ValueError(f"{op}: logits must have unit stride along V (rows may be strided)")
        if in_place and rows > 1 and logits.stride(0) < logits.shape[1]:
            raise ValueError(f"{op}: logits rows overlap (row stride {logits.stride(0)} < V = {logits.shape[1]}, "
                             "e.g. an expanded row); the in-place mask needs distinct rows")
        check_same_device(op, "node_ids", node_ids, logits=logits)

    def _subset(self, op: str, valid, rows: int) -> tuple[Optional[torch.Tensor], int]:
        """(alive uint8 [B * num_nodes] or None, rows per mask)."""
        if valid is None:
            return None, 1
        check_tensor(op, "valid", valid)
        if valid.dtype == torch.bool:
            alive = self.alive_mask(valid)
        elif valid.dtype == torch.uint8:
            if valid.dim() not in (1, 2) or valid.shape[-1] != self.num_nodes:
                raise ValueError(f"{op}: an alive mask (uint8) must have shape [{self.num_nodes}] or "
                                 f"[B, {self.num_nodes}]; got {list(valid.shape)}")
            check_same_device(op, "trie", self.indptr, valid=valid)
            alive = valid
        else:
            raise TypeError(f"{op}: valid must be a bool item mask or a uint8 alive mask; "
                            f"got {str(valid.dtype).replace('torch.', '')}")
        masks = 1 if alive.dim() == 1 else alive.shape[0]
        if rows % masks:
            raise ValueError(f"{op}: valid has {masks} masks, which must divide the {rows} rows")
        return alive.contiguous().reshape(-1), max(1, rows // masks)


def _item_ranges(indptr: torch.Tensor, depth_starts: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    ptr = indptr.long()
    degree = ptr[1:] - ptr[:-1]
    count = (degree == 0).long()  # items below each node: leaves end one item each
    depth = len(depth_starts) - 2
    # Children of the depth-d nodes a..b are the nodes c0..c1 of depth d + 1 (edges c0 - 1 .. c1 - 1).
    levels = [(depth_starts[d], depth_starts[d + 1], depth_starts[d + 2] if d + 2 < len(depth_starts)
               else depth_starts[-1]) for d in range(depth)]
    for a, b, c1 in reversed(levels):
        c0 = b
        below = torch.nn.functional.pad(count[c0:c1].cumsum(0), (1, 0))
        edges = ptr[a:b + 1] - (c0 - 1)
        count[a:b] += below[edges[1:]] - below[edges[:-1]]
    lo = torch.zeros_like(count)
    for a, b, c1 in levels:
        c0 = b
        if c1 == c0:
            continue
        before = torch.nn.functional.pad(count[c0:c1].cumsum(0), (1, 0))[:-1]  # items under earlier siblings
        parent = torch.repeat_interleave(torch.arange(a, b, device=indptr.device), degree[a:b], output_size=c1 - c0)
        first_sibling = ptr[parent] - (c0 - 1)
        lo[c0:c1] = lo[parent] + before - before[first_sibling]
    return lo, lo + count


# ---------------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------------
def _as_rows(op: str, sequences) -> tuple[np.ndarray, np.ndarray]:
    """(flat int32 or int64 tokens, offsets int64 [N + 1]) of a [N, L] tensor/array or a ragged list.

    Tokens are not range-checked here; an int32/int64 [N, L] input is passed through without a copy.
    """
    if isinstance(sequences, torch.Tensor):
        sequences = sequences.detach().cpu().numpy()
    if isinstance(sequences, np.ndarray):
        if sequences.dtype == np.bool_ or not np.issubdtype(sequences.dtype, np.integer):
            raise TypeError(f"{op}: sequences must hold integers, got {sequences.dtype}")
        if sequences.ndim != 2:
            raise ValueError(f"{op}: sequences must have shape [N, L] (or be a list of lists); "
                             f"got {list(sequences.shape)}")
        n, length = sequences.shape
        flat = sequences.reshape(-1)
        if flat.dtype == np.uint64:
            flat = np.minimum(flat, _INT32_MAX + 1)  # out of any vocabulary either way; must not wrap negative
        if flat.dtype not in (np.int32, np.int64):
            flat = flat.astype(np.int64)
        return flat, np.arange(n + 1, dtype=np.int64) * length
    if not isinstance(sequences, (list, tuple)):
        raise TypeError(f"{op}: sequences must be a tensor, an ndarray or a list of lists, "
                        f"got {type(sequences).__name__}")
    rows = [np.asarray(s) for s in sequences]
    for i, r in enumerate(rows):
        if r.ndim != 1 or (r.size and (r.dtype == np.bool_ or not np.issubdtype(r.dtype, np.integer))):
            raise TypeError(f"{op}: sequences[{i}] must be a list of ints")
    lengths = np.array([r.size for r in rows], dtype=np.int64)
    flat = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
    return flat, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _locate(offsets: np.ndarray, flat_index: int) -> tuple[int, int]:
    row = int(np.searchsorted(offsets, flat_index, side="right")) - 1
    return row, flat_index - int(offsets[row])


def build_trie(sequences, vocab_size: int, *, level_offsets: Optional[Sequence[int]] = None, dedupe: bool = True,
               eos_token_id: Optional[int] = None, model_vocab_size: Optional[int] = None,
               device: Union[str, torch.device] = "cpu") -> CSRTrie:
    """Build the CSR trie of `sequences` (multi-threaded, on the CPU; then moved to `device`).

    sequences: int tensor / ndarray [N, L], or a ragged list of lists, of codebook tokens in
        [0, vocab_size). Input order is free: the build sorts; `trie.perm[i]` is row i's sorted position.
    level_offsets: level l's token t becomes model token level_offsets[l] + t (OneRec-style SIDs inside
        an LLM vocabulary); the model vocabulary is then max(level_offsets) + vocab_size, unless
        model_vocab_size says otherwise. Without it, model tokens are the codebook tokens.
    eos_token_id: a model token appended to every item, so ragged sequences that are prefixes of others
        become valid items; without it a proper prefix is a ValueError naming both rows.
    dedupe: drop repeated rows (perm = -1 for all but the first); False makes duplicates a ValueError.
    """
    op = "build_trie"
    check_int(op, "vocab_size", vocab_size, 1, _INT32_MAX)
    if not isinstance(dedupe, bool):
        raise TypeError(f"{op}: dedupe must be a bool, got {type(dedupe).__name__}")
    flat, offsets = _as_rows(op, sequences)
    n = offsets.shape[0] - 1
    if n == 0:
        raise ValueError(f"{op}: sequences must not be empty")
    lengths = np.diff(offsets)
    max_len = int(lengths.max())
    if level_offsets is None:
        offsets_per_level = np.zeros(max_len, dtype=np.int64)
    else:
        offsets_per_level = np.asarray(level_offsets)
        if offsets_per_level.ndim != 1 or not np.issubdtype(offsets_per_level.dtype, np.integer):
            raise TypeError(f"{op}: level_offsets must be a sequence of ints")
        if offsets_per_level.shape[0] < max_len:
            raise ValueError(f"{op}: level_offsets has {offsets_per_level.shape[0]} entries, but sequences have "
                             f"up to {max_len} levels")
        if (offsets_per_level < 0).any():
            raise ValueError(f"{op}: level_offsets must be >= 0")
        offsets_per_level = offsets_per_level.astype(np.int64)
    needed = int(offsets_per_level.max(initial=0)) + vocab_size
    if eos_token_id is not None:
        check_int(op, "eos_token_id", eos_token_id, 0)
        needed = max(needed, eos_token_id + 1)
    if model_vocab_size is not None:
        check_int(op, "model_vocab_size", model_vocab_size, 1)
        if model_vocab_size < needed:
            raise ValueError(f"{op}: model_vocab_size = {model_vocab_size} is too small: the trie uses tokens up "
                             f"to {needed - 1}")
    vocab = needed if model_vocab_size is None else model_vocab_size
    if vocab > _INT32_MAX:
        raise ValueError(f"{op}: model tokens must fit int32; the vocabulary would be {vocab}")

    tokens, token_limit = flat, vocab_size  # the build range-checks tokens in one parallel pass
    if offsets_per_level.any() or eos_token_id is not None:
        # Model tokens differ from codebook tokens: check the codebook range before mapping them.
        bad = np.flatnonzero((flat < 0) | (flat >= vocab_size))
        if bad.size:
            row, col = _locate(offsets, int(bad[0]))
            raise ValueError(f"{op}: sequences[{row}][{col}] = {int(flat[bad[0]])} is outside [0, {vocab_size})")
        token_limit = vocab
    if offsets_per_level.any():
        level = np.arange(flat.shape[0], dtype=np.int64) - np.repeat(offsets[:-1], lengths)
        tokens = (flat + offsets_per_level[level]).astype(np.int32)
    if eos_token_id is not None:
        hit = np.flatnonzero(tokens == eos_token_id)
        if hit.size:
            row, col = _locate(offsets, int(hit[0]))
            raise ValueError(f"{op}: sequences[{row}][{col}] maps to model token {eos_token_id}, the eos_token_id; "
                             f"EOS must only end items")
        ends = offsets[1:] + np.arange(n, dtype=np.int64)  # where each row's EOS lands after insertion
        tokens = np.insert(tokens, offsets[1:], eos_token_id)
        offsets = np.concatenate([[0], ends + 1])
    elif (lengths == 0).any():
        row = int(np.flatnonzero(lengths == 0)[0])
        raise ValueError(f"{op}: sequences[{row}] is empty (an empty item needs eos_token_id)")

    try:
        built = call_c(_C.trie_build, tokens, offsets, dedupe, num_threads(), token_limit=token_limit)
    except ValueError as e:  # the build's messages name the input ("sequences..."), not the op
        raise ValueError(f"{op}: {e}") from None
    trie = CSRTrie(indptr=torch.from_numpy(built["indptr"]), tokens=torch.from_numpy(built["tokens"]),
                   perm=torch.from_numpy(built["perm"]),
                   depth_starts=tuple(int(v) for v in built["depth_starts"]), vocab_size=vocab,
                   num_items=int(built["num_items"]), max_degree=int(built["max_degree"]),
                   eos_token_id=eos_token_id)
    return trie if torch.device(device).type == "cpu" else trie.to(device)


# Decoding on top of the per-step ops (imported last: it uses CSRTrie).
from ._trie_decoding import TrieLogitsProcessor, beam_search  # noqa: E402
