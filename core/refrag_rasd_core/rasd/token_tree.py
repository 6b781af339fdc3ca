"""Token trees: the candidate continuations one verify forward scores at once.

Convention (used by every function of ``rasd``):

* Node 0 is the **root**: the last committed token, which is not yet in the target's KV cache. It has
  parent -1, depth 0 and score 1.0. Every other node is a candidate continuation.
* A node's parent always precedes it (the trees built here are in BFS order: by depth, then by score
  descending), so a verify pass can walk nodes in index order.
* ``score`` is an estimated probability that the path from the root to the node is right, in [0, 1]
  and non-increasing from parent to child: the empirical frequency for retrieved candidates (count /
  occurrences read), ``exp(cumulative log-prob)`` for draft-model candidates. Trees from different
  sources are therefore comparable when fused.
* ``source`` is a bitmask per node: :data:`SOURCE_PROMPT` (PLD), :data:`SOURCE_DATASTORE` (REST),
  :data:`SOURCE_DRAFT` (a draft model), :data:`SOURCE_GRAMMAR` (a span a grammar forces); the root has 0.
  :data:`SOURCE_RETRIEVAL` masks both retrieval bits.
* Every size limit (``max_nodes``) counts the root: ``len(tree)`` is the width of the verify forward.

The verify forward feeds ``tree.tokens`` (root first) at positions ``context_len + depth`` with
:meth:`TokenTree.attention_mask`: every node sees the whole cached context, its ancestors and itself.

Example:
    >>> t = TokenTree.from_sequences(5, [(1, 2), (1, 3), (4,)], weights=[2, 1, 1])
    >>> t.tokens, t.parents, t.depths
    ([5, 1, 4, 2, 3], [-1, 0, 0, 1, 1], [0, 1, 1, 2, 2])
    >>> t.paths()
    [[0, 2], [0, 1, 3], [0, 1, 4]]
    >>> t.position_ids(10).tolist()
    [[10, 11, 11, 12, 12]]
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Collection, Iterable, Sequence

import numpy as np
import torch

from ..errors import InvalidInputError

__all__ = [
    "SOURCE_DATASTORE",
    "SOURCE_DRAFT",
    "SOURCE_GRAMMAR",
    "SOURCE_PROMPT",
    "SOURCE_RETRIEVAL",
    "TokenTree",
    "tree_attention_mask",
]

SOURCE_PROMPT = 1
"""The node came from prompt lookup (PLD) over the prompt and generated text."""
SOURCE_DATASTORE = 2
"""The node came from a REST datastore (the retrieved passages)."""
SOURCE_RETRIEVAL = SOURCE_PROMPT | SOURCE_DATASTORE
"""Mask of both retrieval sources."""
SOURCE_DRAFT = 4
"""The node came from a draft model (EAGLE head or small causal LM)."""
SOURCE_GRAMMAR = 8
"""The node is part of a span the request's grammar forces (structured output's jump-forward)."""


def tree_attention_mask(
    ancestors: np.ndarray,
    context_len: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Additive float mask [1, 1, m, context_len + n] from a bool ancestor-or-self matrix [m, n].

    Row i may attend to every cached position and to the columns ``ancestors[i]`` marks (0); every other
    entry is ``torch.finfo(dtype).min``. Built in numpy (single-threaded, ~0.1 ms for 64 x 2,000): small
    multi-threaded torch fills are slow and erratic on a busy 2-core CPU.
    """
    m, n = ancestors.shape
    np_dtype = {torch.float16: np.float16, torch.float64: np.float64}.get(dtype, np.float32)
    mask = np.zeros((1, 1, m, context_len + n), dtype=np_dtype)
    mask[0, 0, :, context_len:][~ancestors] = torch.finfo(dtype).min
    out = torch.from_numpy(mask)
    if out.dtype != dtype:
        out = out.to(dtype)
    return out if device is None else out.to(device)


class TokenTree:
    """A tree of candidate tokens rooted at the last committed token (node 0).

    Plain Python lists (``tokens``, ``parents``, ``depths``, ``scores``, ``sources``), cheap to build for
    the few dozen nodes a step uses; :meth:`as_tensors`, :meth:`attention_mask` and
    :meth:`position_ids` give the tensors of the verify forward.

    Example:
        >>> t = TokenTree(7)
        >>> a = t.add(0, 11, score=0.5, source=SOURCE_DRAFT)
        >>> b = t.add(a, 12, score=0.25, source=SOURCE_DRAFT)
        >>> t.children(0), t.child(a, 12), len(t)
        ([1], 2, 3)
    """

    __slots__ = ("tokens", "parents", "depths", "scores", "sources", "_kids")

    def __init__(self, root_token: int) -> None:
        root_token = int(root_token)
        if root_token < 0:
            raise InvalidInputError(f"token ids must be >= 0, got root token {root_token}")
        self.tokens: list[int] = [root_token]
        self.parents: list[int] = [-1]
        self.depths: list[int] = [0]
        self.scores: list[float] = [1.0]
        self.sources: list[int] = [0]
        self._kids: list[dict[int, int]] = [{}]

    # ------------------------------------------------------------------ basic access

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"TokenTree(n={len(self)}, root={self.tokens[0]}, depth={self.max_depth})"

    @property
    def root_token(self) -> int:
        return self.tokens[0]

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    def children(self, node: int) -> list[int]:
        """Indices of ``node``'s children, in insertion order."""
        return list(self._kids[node].values())

    def child(self, node: int, token: int) -> int:
        """Index of ``node``'s child carrying ``token``, or -1."""
        return self._kids[node].get(token, -1)

    def add(self, parent: int, token: int, score: float = 0.0, source: int = 0) -> int:
        """Append a child of ``parent`` (or merge into the existing one: score max, sources or-ed).

        Returns the child's index. Appending keeps parents before children.
        """
        kids = self._kids[parent]
        i = kids.get(token, -1)
        if i >= 0:
            if score > self.scores[i]:
                self.scores[i] = score
            self.sources[i] |= source
            return i
        if token < 0:
            raise InvalidInputError(f"token ids must be >= 0, got {token}")
        i = len(self.tokens)
        kids[token] = i
        self.tokens.append(token)
        self.parents.append(parent)
        self.depths.append(self.depths[parent] + 1)
        self.scores.append(float(score))
        self.sources.append(source)
        self._kids.append({})
        return i

    def path_tokens(self, node: int) -> list[int]:
        """Tokens from the root's first child down to ``node`` (the root token excluded)."""
        out = []
        while node > 0:
            out.append(self.tokens[node])
            node = self.parents[node]
        return out[::-1]

    def paths(self) -> list[list[int]]:
        """Root-to-leaf lists of node indices (each starts with 0), in node order of their leaves."""
        out = []
        for i in range(len(self.tokens)):
            if not self._kids[i]:
                path = [i]
                while path[-1] > 0:
                    path.append(self.parents[path[-1]])
                out.append(path[::-1])
        return out

    # ------------------------------------------------------------------ building

    @classmethod
    def from_sequences(
        cls,
        root_token: int,
        sequences: Iterable[Sequence[int]],
        weights: Sequence[float] | None = None,
        *,
        sources: int | Sequence[int] = SOURCE_DATASTORE,
        max_nodes: int | None = None,
        max_depth: int | None = None,
    ) -> TokenTree:
        """Trie of candidate continuations of ``root_token``.

        A node's score is the sum of the weights of the sequences through it (so with weights = counts
        / occurrences it is the empirical probability of that prefix). With ``max_nodes`` / ``max_depth``
        the best-scoring ancestor-closed nodes are kept (see :meth:`top`).

        Example:
            >>> TokenTree.from_sequences(0, [(1, 2, 3), (1, 2, 4)], [3, 1], max_nodes=3).tokens
            [0, 1, 2]
        """
        seqs = list(sequences)
        if weights is None:
            weights = [1.0] * len(seqs)
        elif len(weights) != len(seqs):
            raise InvalidInputError(f"{len(weights)} weights for {len(seqs)} sequences")
        srcs = [sources] * len(seqs) if isinstance(sources, int) else list(sources)
        if len(srcs) != len(seqs):
            raise InvalidInputError(f"{len(srcs)} sources for {len(seqs)} sequences")
        t = cls(root_token)
        kids, scores, srcl = t._kids, t.scores, t.sources
        for seq, w, s in zip(seqs, weights, srcs, strict=True):
            node = 0
            for d, tok in enumerate(seq):
                if max_depth is not None and d >= max_depth:
                    break
                i = kids[node].get(tok, -1)
                if i < 0:
                    i = t.add(node, int(tok), 0.0, s)
                else:
                    srcl[i] |= s
                scores[i] += w
                node = i
        return t.top(max_nodes)

    def top(self, max_nodes: int | None = None, max_depth: int | None = None) -> TokenTree:
        """The best ``max_nodes`` nodes (root included), ancestor-closed, as a new tree in BFS order.

        Best-first from the root: a node can only be taken after its parent, the highest score first
        (ties: shallower, then earlier). With scores non-increasing along paths (the convention) this is
        exactly the global top-``max_nodes`` by score. Siblings are ordered by score descending.
        """
        if max_nodes is not None and max_nodes < 1:
            raise InvalidInputError(f"max_nodes must be >= 1, got {max_nodes}")
        n = len(self.tokens)
        limit = n if max_nodes is None else min(max_nodes, n)
        depths, scores, kids = self.depths, self.scores, self._kids
        if limit == n and (max_depth is None or max_depth >= max(depths)):
            keep = range(n)
        else:
            keep = [0]
            heap = [(-scores[c], depths[c], c) for c in kids[0].values()]
            heapq.heapify(heap)
            while heap and len(keep) < limit:
                _, d, i = heapq.heappop(heap)
                if max_depth is not None and d > max_depth:
                    continue
                keep.append(i)
                for c in kids[i].values():
                    heapq.heappush(heap, (-scores[c], d + 1, c))
        return self._subset(keep)

    def _subset(self, keep: Iterable[int]) -> TokenTree:
        """A new tree of the ancestor-closed node set ``keep`` (must contain 0), in BFS order."""
        scores, depths = self.scores, self.depths
        order = sorted(keep, key=lambda i: (depths[i], -scores[i], i))
        t = TokenTree.__new__(TokenTree)
        remap = {-1: -1}
        t.tokens, t.parents, t.depths, t.scores, t.sources, t._kids = [], [], [], [], [], []
        for j, i in enumerate(order):
            remap[i] = j
            p = remap[self.parents[i]]  # KeyError here means ``keep`` was not ancestor-closed
            tok = self.tokens[i]
            t.tokens.append(tok)
            t.parents.append(p)
            t.depths.append(depths[i])
            t.scores.append(scores[i])
            t.sources.append(self.sources[i])
            t._kids.append({})
            if p >= 0:
                t._kids[p][tok] = j
        return t

    def subtree(self, keep: Iterable[int]) -> TokenTree:
        """A new tree of the nodes ``keep`` (ancestor-closed, the root included), in BFS order."""
        return self._subset(keep)

    def copy(self) -> TokenTree:
        return self._subset(range(len(self.tokens)))

    # ------------------------------------------------------------------ RASD operations

    def prune(self, keep_first: Callable[[int], bool] | Collection[int]) -> TokenTree:
        """Keep only the branches whose first token (a child of the root) passes ``keep_first``.

        ``keep_first`` is a predicate on token ids or a collection of allowed token ids.
        """
        ok = keep_first if callable(keep_first) else keep_first.__contains__
        keep = [0]
        stack = [c for c in self._kids[0].values() if ok(self.tokens[c])]
        while stack:
            i = stack.pop()
            keep.append(i)
            stack.extend(self._kids[i].values())
        return self._subset(keep)

    def prune_by_draft(
        self,
        log_probs: torch.Tensor | Sequence[float],
        token_ids: torch.Tensor | Sequence[int],
        *,
        top_k: int | None = None,
        min_prob: float | None = None,
    ) -> TokenTree:
        """RASD's retrieval-tree pruning by the draft model's confidence in each branch's first token.

        ``log_probs`` / ``token_ids``: the draft's distribution over the root's children, sorted
        descending, in the order :func:`refrag_rasd_core.rasd.draft_tree.draft_probe` returns them (so
        ``tree.prune_by_draft(*draft_probe(drafter, 8), min_prob=0.05)`` works). A branch is kept
        iff its first token is among the first ``top_k`` of ``token_ids`` (all given ids when None) AND
        its draft probability is >= ``min_prob`` (no threshold when None).

        Example:
            >>> t = TokenTree.from_sequences(0, [(1, 2), (3,), (4,)])
            >>> t.prune_by_draft([-0.1, -2.0, -3.0], [3, 1, 9], top_k=2, min_prob=0.2).tokens
            [0, 3]
        """
        ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
        lps = log_probs.tolist() if isinstance(log_probs, torch.Tensor) else list(log_probs)
        if len(ids) != len(lps):
            raise InvalidInputError(f"{len(ids)} token ids but {len(lps)} log-probs")
        if top_k is not None:
            if top_k < 0:
                raise InvalidInputError(f"top_k must be >= 0, got {top_k}")
            ids, lps = ids[:top_k], lps[:top_k]
        if min_prob is not None:
            min_lp = math.log(min_prob) if min_prob > 0 else -math.inf
            allowed = {t for t, lp in zip(ids, lps, strict=True) if lp >= min_lp - 1e-12}  # fp tolerance
        else:
            allowed = set(ids)
        return self.prune(allowed)

    def fuse(self, other: TokenTree, max_nodes: int | None = None) -> TokenTree:
        """Merge two trees with the same root by longest-prefix matching.

        Shared prefixes become one path (score: the max of both, sources or-ed), so no token is
        verified twice; then the best ``max_nodes`` nodes are kept, ancestor-closed (see :meth:`top`).

        Example:
            >>> a = TokenTree.from_sequences(0, [(1, 2)], sources=SOURCE_PROMPT)
            >>> b = TokenTree.from_sequences(0, [(1, 3)], sources=SOURCE_DRAFT)
            >>> f = a.fuse(b)
            >>> f.tokens, f.sources
            ([0, 1, 2, 3], [0, 5, 1, 4])
        """
        if other.tokens[0] != self.tokens[0]:
            raise InvalidInputError(
                f"cannot fuse trees with different roots ({self.tokens[0]} and {other.tokens[0]})"
            )
        t = self.copy()
        remap = [0] * len(other.tokens)
        ot, op, osc, osr = other.tokens, other.parents, other.scores, other.sources
        for i in range(1, len(ot)):
            remap[i] = t.add(remap[op[i]], ot[i], osc[i], osr[i])
        return t.top(max_nodes)

    # ------------------------------------------------------------------ tensors for the verify forward

    def ancestor_matrix(self) -> np.ndarray:
        """Bool [n, n]: ``a[i, j]`` is True iff node j is node i or one of its ancestors."""
        n = len(self.tokens)
        par = np.asarray(self.parents, dtype=np.int64)
        a = np.eye(n, dtype=bool)
        rows = np.arange(n)
        cur = par.copy()
        while True:
            live = cur >= 0
            if not live.any():
                return a
            rows, cur = rows[live], cur[live]
            a[rows, cur] = True
            cur = par[cur]

    def attention_mask(
        self,
        context_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Additive float mask [1, 1, n, context_len + n] for the verify forward.

        0 where node i may attend (all ``context_len`` cached positions, its ancestors and itself) and
        ``torch.finfo(dtype).min`` elsewhere (a finite minimum, as transformers uses, never NaN; no row is
        fully masked). Float, never bool: an eager bool 4D mask is silently wrong in transformers 5.
        """
        if context_len < 0:
            raise InvalidInputError(f"context_len must be >= 0, got {context_len}")
        return tree_attention_mask(self.ancestor_matrix(), context_len, dtype, device)

    def position_ids(self, context_len: int, device: torch.device | str | None = None) -> torch.Tensor:
        """LongTensor [1, n]: ``context_len + depth`` (the root sits right after the cached context)."""
        return torch.tensor([[context_len + d for d in self.depths]], dtype=torch.long, device=device)

    def as_tensors(
        self, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(tokens, parents, depths)`` as 1-D LongTensors of length n (parents[0] == -1)."""
        return (
            torch.tensor(self.tokens, dtype=torch.long, device=device),
            torch.tensor(self.parents, dtype=torch.long, device=device),
            torch.tensor(self.depths, dtype=torch.long, device=device),
        )

    # ------------------------------------------------------------------ inspection

    def count_sources(self) -> dict[str, int]:
        """Node counts by source (root excluded): prompt / datastore / draft / retrieval+draft."""
        src = self.sources[1:]
        return {
            "prompt": sum(1 for s in src if s & SOURCE_PROMPT),
            "datastore": sum(1 for s in src if s & SOURCE_DATASTORE),
            "draft": sum(1 for s in src if s & SOURCE_DRAFT),
            "both": sum(1 for s in src if s & SOURCE_DRAFT and s & SOURCE_RETRIEVAL),
        }

    def format(self, decode: Callable[[int], str] = str) -> str:
        """Indented text picture of the tree (one node per line: token, score, source bits)."""
        lines: list[str] = []

        def walk(i: int, indent: int) -> None:
            s = self.sources[i]
            tag = "".join(
                c for c, b in (("P", SOURCE_PROMPT), ("R", SOURCE_DATASTORE), ("D", SOURCE_DRAFT)) if s & b
            )
            lines.append(f"{'  ' * indent}{decode(self.tokens[i])!r} {self.scores[i]:.3g} {tag}".rstrip())
            for c in self._kids[i].values():
                walk(c, indent + 1)

        walk(0, 0)
        return "\n".join(lines)
