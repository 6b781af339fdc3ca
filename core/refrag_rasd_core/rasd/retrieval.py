"""What a suffix lookup returns and how stores' results become a token tree: :class:`Retrieval`, the
:class:`TokenStore` protocol, the :meth:`~TreeLookup.lookup` shared by the stores, and
:func:`retrieval_tree` / :func:`merge_retrievals` (RASD: prompt + passages in one trie).

The stores themselves are :class:`~refrag_rasd_core.rasd.rest_datastore.RestDatastore` (REST) and
:class:`~refrag_rasd_core.rasd.prompt_lookup.PromptLookup` (PLD); :mod:`refrag_rasd_core.rasd.datastore`
gathers all of it.

Example:
    >>> r = Retrieval(suffix_len=2, occurrences=3, continuations=[((4, 5), 2), ((6,), 1)])
    >>> r.n_read, r.tree(3).tokens
    (3, [3, 4, 6, 5])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from ..errors import InvalidInputError
from .token_tree import SOURCE_DATASTORE, TokenTree

__all__ = [
    "Retrieval",
    "TokenSeq",
    "TokenStore",
    "TreeLookup",
    "check_params",
    "count_continuations",
    "merge_retrievals",
    "retrieval_tree",
    "token_tail",
]

TokenSeq = Sequence[int] | np.ndarray | torch.Tensor


@dataclass(frozen=True)

class Retrieval:
    """The result of one suffix lookup.

    Attributes:
        suffix_len: length of the longest matched suffix (0: nothing matched).
        occurrences: how many times that suffix occurs followed by at least one token (all of them,
            not only the ones read).
        continuations: distinct continuations (tuples of token ids, 1 to ``max_len`` long) with the
            number of occurrences read that they follow, most frequent first (ties: by tokens).
    """

    suffix_len: int = 0
    occurrences: int = 0
    continuations: list[tuple[tuple[int, ...], int]] = field(default_factory=list)

    @property
    def n_read(self) -> int:
        """Occurrences read (the sum of the counts)."""
        return sum(c for _, c in self.continuations)

    def tree(
        self,
        root_token: int,
        *,
        max_nodes: int | None = None,
        max_depth: int | None = None,
        source: int = SOURCE_DATASTORE,
    ) -> TokenTree:
        """Trie of the continuations under ``root_token``; node score = count / occurrences read."""
        total = self.n_read or 1
        return TokenTree.from_sequences(
            root_token,
            [s for s, _ in self.continuations],
            [c / total for _, c in self.continuations],
            sources=source,
            max_nodes=max_nodes,
            max_depth=max_depth,
        )


class TokenStore(Protocol):
    """What :func:`retrieval_tree` needs from a store."""

    source: int

    def candidates(
        self,
        suffix: TokenSeq,
        *,
        max_len: int = 8,
        min_suffix: int = 1,
        max_suffix: int | None = None,
        max_occurrences: int = 64,
    ) -> Retrieval: ...


def check_params(max_len: int, min_suffix: int, max_occurrences: int) -> None:
    """Raise :class:`InvalidInputError` unless ``max_len``, ``min_suffix`` and ``max_occurrences`` are >= 1."""
    if max_len < 1:
        raise InvalidInputError(f"max_len must be >= 1, got {max_len}")
    if min_suffix < 1:
        raise InvalidInputError(f"min_suffix must be >= 1, got {min_suffix}")
    if max_occurrences < 1:
        raise InvalidInputError(f"max_occurrences must be >= 1, got {max_occurrences}")


def token_tail(suffix: TokenSeq, n: int) -> list[int]:
    """The last ``n`` tokens of ``suffix`` as Python ints, validated (1-D, ints >= 0)."""
    if isinstance(suffix, torch.Tensor | np.ndarray):
        if suffix.ndim != 1:
            raise InvalidInputError(f"suffix must be 1-D, got shape {tuple(suffix.shape)}")
        if isinstance(suffix, torch.Tensor) and suffix.is_floating_point():
            raise InvalidInputError(f"suffix must hold integer token ids, got {suffix.dtype}")
        if isinstance(suffix, np.ndarray) and suffix.dtype.kind not in "iu":
            raise InvalidInputError(f"suffix must hold integer token ids, got {suffix.dtype}")
        out = suffix[len(suffix) - n :].tolist() if n > 0 else []
    else:
        out = list(suffix[len(suffix) - n :]) if n > 0 else []
        if not all(isinstance(t, int | np.integer) for t in out):
            raise InvalidInputError("suffix must hold integer token ids")
        out = [int(t) for t in out]
    if out and min(out) < 0:
        raise InvalidInputError(f"token ids must be >= 0, got {min(out)}")
    return out


def count_continuations(conts: list[list[int]]) -> list[tuple[tuple[int, ...], int]]:
    """Distinct non-empty continuations with their counts, most frequent first (ties: by tokens)."""
    counts = Counter(tuple(c) for c in conts if c)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


class TreeLookup:
    """``lookup``: a store's :meth:`candidates` as a trie rooted at the suffix's last token."""

    source: int

    def _default_suffix(self) -> TokenSeq:
        """What :meth:`lookup` matches when no suffix is given (a :class:`PromptLookup`: its own tokens)."""
        return ()

    def lookup(
        self,
        suffix: TokenSeq | None = None,
        *,
        max_len: int = 8,
        max_nodes: int | None = 32,
        max_depth: int | None = None,
        min_suffix: int = 1,
        max_suffix: int | None = None,
        max_occurrences: int = 64,
    ) -> TokenTree:
        """:meth:`candidates` as a trie rooted at ``suffix[-1]`` (at most ``max_nodes`` nodes, root included);
        a :class:`~refrag_rasd_core.rasd.prompt_lookup.PromptLookup` defaults to its own last tokens."""
        src = suffix if suffix is not None else self._default_suffix()
        if len(src) == 0:
            raise InvalidInputError("lookup needs a non-empty suffix (its last token is the tree's root)")
        r = self.candidates(  # type: ignore[attr-defined]
            suffix,
            max_len=max_len,
            min_suffix=min_suffix,
            max_suffix=max_suffix,
            max_occurrences=max_occurrences,
        )
        return r.tree(token_tail(src, 1)[0], max_nodes=max_nodes, max_depth=max_depth, source=self.source)


def retrieval_tree(
    suffix: TokenSeq,
    stores: Sequence[TokenStore],
    *,
    max_len: int = 8,
    max_nodes: int | None = 32,
    max_depth: int | None = None,
    min_suffix: int = 1,
    max_occurrences: int = 64,
) -> TokenTree:
    """One trie of the candidates of several stores (RASD: the prompt's PLD + the passages' datastore).

    Each store that matched contributes its empirical continuation distribution with equal weight (a
    node's score is the mixture probability of its prefix); a node's ``source`` or-s the stores' bits.

    Example:
        >>> from refrag_rasd_core.rasd.datastore import PromptLookup, RestDatastore
        >>> pld, rest = PromptLookup([4, 5, 6]), RestDatastore.build([[4, 5, 7]])
        >>> t = retrieval_tree([3, 4, 5], [pld, rest], max_len=1)
        >>> t.tokens, t.scores, t.sources
        ([5, 6, 7], [1.0, 0.5, 0.5], [0, 1, 2])
    """
    if len(suffix) == 0:
        raise InvalidInputError("retrieval_tree needs a non-empty suffix (its last token is the tree's root)")
    results = [
        (st.source, st.candidates(suffix, max_len=max_len, min_suffix=min_suffix, max_occurrences=max_occurrences))
        for st in stores
    ]
    return merge_retrievals(token_tail(suffix, 1)[0], results, max_nodes=max_nodes, max_depth=max_depth)


def merge_retrievals(
    root_token: int,
    results: Sequence[tuple[int, Retrieval]],
    *,
    max_nodes: int | None = 32,
    max_depth: int | None = None,
) -> TokenTree:
    """One trie of several stores' ``(source, Retrieval)`` results (see :func:`retrieval_tree`).

    Example:
        >>> from refrag_rasd_core.rasd.datastore import PromptLookup
        >>> from refrag_rasd_core.rasd.token_tree import SOURCE_PROMPT
        >>> r = PromptLookup([4, 5, 6]).candidates([4, 5], max_len=1)
        >>> merge_retrievals(5, [(SOURCE_PROMPT, r)]).tokens
        [5, 6]
    """
    results = [(src, r) for src, r in results if r.continuations]
    seqs: list[tuple[int, ...]] = []
    weights: list[float] = []
    sources: list[int] = []
    for src, r in results:
        total = r.n_read * len(results)
        for seq, c in r.continuations:
            seqs.append(seq)
            weights.append(c / total)
            sources.append(src)
    return TokenTree.from_sequences(
        root_token, seqs, weights, sources=sources, max_nodes=max_nodes, max_depth=max_depth
    )
