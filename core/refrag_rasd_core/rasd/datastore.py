"""Retrieval of candidate continuations by suffix match: a REST datastore and PLD prompt lookup.

Both stores answer the same question: given the current context (its last tokens, the *suffix*), find
the longest suffix of at most ``max_suffix`` tokens (at least ``min_suffix``) that occurs in the store
**followed by at least one token**, read up to ``max_occurrences`` of its occurrences, and count the
continuations (the up to ``max_len`` tokens after each occurrence). Sequences never run into each other:
matches and continuations stop at sequence boundaries.

* :class:`RestDatastore` (REST): built once from many sequences (the retrieved passages, a corpus),
  persistent (:meth:`RestDatastore.save` / :meth:`RestDatastore.load`). A suffix array over the
  *reversed* concatenation, sorted on the first ``sort_depth`` tokens, so that the candidate ranges of
  the suffixes of length 1, 2, 3, ... of the query are nested: one narrowing binary search per extra
  token finds the longest match. Build: prefix doubling with numpy argsort, O(n log n log d)
  (d = sort depth), no per-position Python loop. Lookup: O(m log n) scalar steps (m = matched length)
  plus O(k log n + k * max_len) for the k occurrences read, sampled evenly over the suffix-array range.
* :class:`PromptLookup` (PLD): one growing sequence (prompt + generated tokens), a dict from every
  n-gram (n <= ``max_suffix``) to its end positions; :meth:`PromptLookup.extend` costs
  O(max_suffix^2) per token, a lookup O(max_suffix^2 + k * max_len). Reads the ``max_occurrences``
  most recent occurrences.

Both return a :class:`Retrieval` (the matched suffix length and the ``(continuation, count)`` list) from
``candidates(...)``, or directly a :class:`~refrag_rasd_core.rasd.token_tree.TokenTree` from
``lookup(...)``; :func:`retrieval_tree` merges several stores into one trie (RASD: prompt + passages).

Example:
    >>> store = RestDatastore.build([[1, 2, 3, 4], [9, 2, 3, 5], [2, 3]])
    >>> r = store.candidates([7, 2, 3], max_len=2)
    >>> r.suffix_len, r.occurrences, r.continuations
    (2, 2, [((4,), 1), ((5,), 1)])
    >>> pld = PromptLookup([5, 6, 7, 8, 5, 6])
    >>> pld.candidates(max_len=3).continuations
    [((7, 8, 5), 1)]
    >>> pld.extend([7]); pld.lookup(max_len=2).tokens
    [7, 8, 5]
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import CheckpointError, InvalidInputError
from .token_tree import SOURCE_DATASTORE, SOURCE_PROMPT, TokenTree

__all__ = [
    "SEPARATOR",
    "PromptLookup",
    "RestDatastore",
    "Retrieval",
    "TokenStore",
    "merge_retrievals",
    "retrieval_tree",
]

SEPARATOR = -1
"""Placed between sequences in the concatenated token array; no token id equals it."""
_END = -2  # what "past the end of the array" compares as (below the separator)

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


def _check_params(max_len: int, min_suffix: int, max_occurrences: int) -> None:
    if max_len < 1:
        raise InvalidInputError(f"max_len must be >= 1, got {max_len}")
    if min_suffix < 1:
        raise InvalidInputError(f"min_suffix must be >= 1, got {min_suffix}")
    if max_occurrences < 1:
        raise InvalidInputError(f"max_occurrences must be >= 1, got {max_occurrences}")


def _tail(suffix: TokenSeq, n: int) -> list[int]:
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


def _count(conts: list[list[int]]) -> list[tuple[tuple[int, ...], int]]:
    counts = Counter(tuple(c) for c in conts if c)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


# ---------------------------------------------------------------------------------------- REST


def _suffix_array(r: np.ndarray, depth: int) -> tuple[np.ndarray, int]:
    """Suffix array of ``r`` sorted on the first ``sorted_depth >= depth`` tokens (ties by position).

    Prefix doubling: ranks of the first k tokens -> ranks of the first 2k tokens by one stable argsort
    of ``rank[i] * R + rank[i + k]``. Stops early when every rank is distinct (then the order is the full
    suffix order). Past the end of the array ranks 0, below every value (the separator included).
    """
    n = len(r)
    if n == 0:
        return np.zeros(0, np.int64), depth
    _, rank = np.unique(r, return_inverse=True)
    rank = rank.astype(np.int64).reshape(-1) + 1
    sa = np.argsort(rank, kind="stable")
    k = 1
    while k < depth and int(rank.max()) < n:
        second = np.zeros(n, np.int64)
        second[: n - k] = rank[k:]
        key = rank * (int(rank.max()) + 1) + second
        del second
        sa = np.argsort(key, kind="stable")
        sk = key[sa]
        del key
        step = np.empty(n, np.int64)
        step[0] = 1
        np.not_equal(sk[1:], sk[:-1], out=step[1:])
        del sk
        rank = np.empty(n, np.int64)
        rank[sa] = np.cumsum(step)
        del step
        k *= 2
    return sa, max(k, depth)  # stopped early: every suffix distinct, so the order holds at any depth


class _TreeLookup:
    """``lookup``: a store's :meth:`candidates` as a trie rooted at the suffix's last token."""

    source: int
    tokens: list[int]

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
        a :class:`PromptLookup` defaults to its own last tokens."""
        src = suffix if suffix is not None else (self.tokens if isinstance(self, PromptLookup) else ())
        if len(src) == 0:
            raise InvalidInputError("lookup needs a non-empty suffix (its last token is the tree's root)")
        r = self.candidates(  # type: ignore[attr-defined]
            suffix,
            max_len=max_len,
            min_suffix=min_suffix,
            max_suffix=max_suffix,
            max_occurrences=max_occurrences,
        )
        return r.tree(_tail(src, 1)[0], max_nodes=max_nodes, max_depth=max_depth, source=self.source)


class RestDatastore(_TreeLookup):
    """REST datastore: a suffix index over many token sequences, built once, saved and shared.

    Build with :meth:`build`, query with :meth:`candidates` / :meth:`lookup`, persist with :meth:`save` /
    :meth:`load`. Token ids may be any int >= 0 (int32 storage below 2**31, else int64).

    Example:
        >>> store = RestDatastore.build([[1, 2, 3, 4, 1, 2, 3, 5]])
        >>> store.lookup([0, 2, 3], max_len=1).tokens
        [3, 4, 5]
    """

    source = SOURCE_DATASTORE
    FORMAT = "refrag-rasd-rest-datastore"
    VERSION = 1

    def __init__(self, tokens: np.ndarray, suffix_array: np.ndarray, sort_depth: int, n_sequences: int):
        """Internal: use :meth:`build` or :meth:`load`. ``tokens`` is the forward concatenation."""
        self._r = np.ascontiguousarray(tokens[::-1])  # only the reversed copy is kept
        self._sa = suffix_array
        self.sort_depth = int(sort_depth)
        self.n_sequences = int(n_sequences)
        n = len(tokens)
        self._n = n
        # valid[x]: the occurrence at suffix-array slot x is followed by a token (in forward order).
        q = self._sa.astype(np.int64)
        valid = (q >= 1) & (self._r[np.maximum(q - 1, 0)] != SEPARATOR)
        self._cumvalid = np.zeros(n + 1, np.int32 if n < 2**31 - 1 else np.int64)
        np.cumsum(valid, out=self._cumvalid[1:])
        # first-token buckets: slots [starts[i], starts[i+1]) begin with token first_vals[i]
        first = self._r[q] if n else np.zeros(0, self._r.dtype)
        cut = np.flatnonzero(first[1:] != first[:-1]) + 1
        self._first_vals = first[np.concatenate(([0], cut))] if n else first
        self._first_starts = np.concatenate(([0], cut, [n])).astype(np.int64)
        self._mv_r = memoryview(self._r) if n else None
        self._mv_sa = memoryview(self._sa) if n else None

    # ---------------------------------------------------------------- construction

    @classmethod
    def build(cls, sequences: Iterable[TokenSeq], *, max_suffix: int = 16) -> RestDatastore:
        """Index ``sequences`` (each a 1-D run of token ids >= 0) for suffixes up to ``max_suffix`` tokens."""
        if max_suffix < 1:
            raise InvalidInputError(f"max_suffix must be >= 1, got {max_suffix}")
        parts: list[np.ndarray] = []
        n_seq = 0
        for s in sequences:
            a = s.detach().cpu().numpy() if isinstance(s, torch.Tensor) else np.asarray(s)
            if a.ndim != 1 or (a.size and a.dtype.kind not in "iu"):
                raise InvalidInputError(f"each sequence must be a 1-D run of ints, got {a.dtype} {a.shape}")
            if a.size and int(a.min()) < 0:
                raise InvalidInputError(f"token ids must be >= 0, got {int(a.min())}")
            if n_seq:
                parts.append(np.array([SEPARATOR], np.int64))
            parts.append(a.astype(np.int64, copy=False))
            n_seq += 1
        t = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if t.size and int(t.max()) < 2**31 - 1:
            t = t.astype(np.int32)
        sa, depth = _suffix_array(t[::-1], max_suffix)
        sa = sa.astype(np.int32 if len(t) < 2**31 - 1 else np.int64)
        return cls(t, sa, depth, n_seq)

    @property
    def n_tokens(self) -> int:
        """Tokens stored (separators excluded)."""
        return self._n - max(self.n_sequences - 1, 0)

    @property
    def nbytes(self) -> int:
        """Memory held by the index arrays."""
        return sum(
            a.nbytes for a in (self._r, self._sa, self._cumvalid, self._first_starts, self._first_vals)
        )

    def __repr__(self) -> str:
        return f"RestDatastore(n_tokens={self.n_tokens}, n_sequences={self.n_sequences})"

    # ---------------------------------------------------------------- queries

    def _narrow(self, lo: int, hi: int, j: int, c: int) -> tuple[int, int]:
        """Sub-range of slots [lo, hi) whose token at offset ``j`` (in reversed order) equals ``c``."""
        r, sa, n = self._mv_r, self._mv_sa, self._n
        a, b = lo, hi
        while a < b:
            m = (a + b) >> 1
            q = sa[m] + j
            if (r[q] if q < n else _END) < c:
                a = m + 1
            else:
                b = m
        first = a
        b = hi
        while a < b:
            m = (a + b) >> 1
            q = sa[m] + j
            if (r[q] if q < n else _END) <= c:
                a = m + 1
            else:
                b = m
        return first, a

    def candidates(
        self,
        suffix: TokenSeq,
        *,
        max_len: int = 8,
        min_suffix: int = 1,
        max_suffix: int | None = None,
        max_occurrences: int = 64,
    ) -> Retrieval:
        """Continuations of the longest matching suffix (see the module docstring).

        ``max_suffix`` defaults to (and is capped by) :attr:`sort_depth`. When the suffix occurs more
        than ``max_occurrences`` times, that many occurrences are read, evenly spaced over its
        suffix-array range.
        """
        _check_params(max_len, min_suffix, max_occurrences)
        cap = self.sort_depth if max_suffix is None else min(max_suffix, self.sort_depth)
        s = _tail(suffix, min(cap, len(suffix)))
        if not s or self._n == 0:
            return Retrieval()
        cv = self._cumvalid
        best = None
        lo = hi = 0
        for j in range(len(s)):
            c = s[-1 - j]
            if j == 0:
                i = int(np.searchsorted(self._first_vals, c))
                if i == len(self._first_vals) or int(self._first_vals[i]) != c:
                    break
                lo, hi = int(self._first_starts[i]), int(self._first_starts[i + 1])
            else:
                lo, hi = self._narrow(lo, hi, j, c)
            nvalid = int(cv[hi] - cv[lo])
            if nvalid == 0:
                break
            if j + 1 >= min_suffix:
                best = (j + 1, lo, nvalid)
        if best is None:
            return Retrieval()
        length, lo, nvalid = best
        k = min(nvalid, max_occurrences)
        picks = int(cv[lo]) + (np.arange(k, dtype=np.int64) * nvalid) // k + 1
        # same dtype as ``cv``: a mixed-dtype searchsorted would copy (cast) the whole array per lookup
        slots = np.searchsorted(cv, picks.astype(cv.dtype), side="left") - 1
        q = self._sa[slots].astype(np.int64)
        # forward continuation of the occurrence at reversed slot q: r[q-1], r[q-2], ...
        idx = q[:, None] - 1 - np.arange(max_len)[None, :]
        vals = np.where(idx >= 0, self._r[np.maximum(idx, 0)], SEPARATOR)
        lens = np.cumprod(vals != SEPARATOR, axis=1).sum(axis=1).tolist()
        rows = vals.tolist()
        return Retrieval(length, nvalid, _count([row[:m] for row, m in zip(rows, lens, strict=True)]))

    # ---------------------------------------------------------------- persistence

    def save(self, path: str | Path) -> Path:
        """Write the index to the directory ``path`` (header.json, tokens.npy, suffix_array.npy)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tokens = np.ascontiguousarray(self._r[::-1])
        np.save(path / "tokens.npy", tokens, allow_pickle=False)
        np.save(path / "suffix_array.npy", self._sa, allow_pickle=False)
        header = {
            "format": self.FORMAT,
            "version": self.VERSION,
            "n_entries": self._n,
            "n_sequences": self.n_sequences,
            "sort_depth": self.sort_depth,
            "tokens_dtype": str(tokens.dtype),
            "suffix_array_dtype": str(self._sa.dtype),
            "tokens_crc32": zlib.crc32(tokens.tobytes()),
            "suffix_array_crc32": zlib.crc32(self._sa.tobytes()),
        }
        (path / "header.json").write_text(json.dumps(header, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> RestDatastore:
        """Read an index written by :meth:`save`; raise :class:`CheckpointError` if anything is off."""
        path = Path(path)
        try:
            header = json.loads((path / "header.json").read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"no readable datastore header in {path}: {e}") from e
        if not isinstance(header, dict) or header.get("format") != cls.FORMAT:
            raise CheckpointError(f"{path} does not hold a {cls.FORMAT} (header: {str(header)[:200]})")
        if header.get("version") != cls.VERSION:
            raise CheckpointError(
                f"{path} holds datastore format version {header.get('version')}, this code reads {cls.VERSION}"
            )
        arrays = {}
        for name in ("tokens", "suffix_array"):
            try:
                a = np.load(path / f"{name}.npy", allow_pickle=False)
            except (OSError, ValueError, EOFError) as e:
                raise CheckpointError(f"cannot read {path / (name + '.npy')}: {e}") from e
            n = header.get("n_entries")
            if a.ndim != 1 or len(a) != n or str(a.dtype) != header.get(f"{name}_dtype"):
                raise CheckpointError(
                    f"{path / (name + '.npy')} has shape {a.shape} {a.dtype}, header says ({n},) "
                    f"{header.get(name + '_dtype')}"
                )
            if zlib.crc32(a.tobytes()) != header.get(f"{name}_crc32"):
                raise CheckpointError(f"{path / (name + '.npy')} is corrupt (CRC32 mismatch)")
            arrays[name] = a
        return cls(arrays["tokens"], arrays["suffix_array"], header["sort_depth"], header["n_sequences"])


# ---------------------------------------------------------------------------------------- PLD


class PromptLookup(_TreeLookup):
    """PLD: suffix lookup over one growing sequence (the prompt, then every generated token).

    The engine calls :meth:`extend` with the accepted tokens after each step and :meth:`lookup` before
    the next; both take microseconds. A lookup reads the ``max_occurrences`` most recent occurrences.

    Example:
        >>> pld = PromptLookup([1, 2, 3, 1, 2, 4, 1, 2])
        >>> pld.candidates(max_len=1).continuations
        [((3,), 1), ((4,), 1)]
    """

    source = SOURCE_PROMPT

    def __init__(self, tokens: TokenSeq = (), *, max_suffix: int = 8) -> None:
        if max_suffix < 1:
            raise InvalidInputError(f"max_suffix must be >= 1, got {max_suffix}")
        self.max_suffix = max_suffix
        self.tokens: list[int] = []
        self._ends: dict[tuple[int, ...], list[int]] = {}  # n-gram -> end positions (exclusive), ascending
        self.extend(tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"PromptLookup(n_tokens={len(self.tokens)}, max_suffix={self.max_suffix})"

    def extend(self, new_tokens: TokenSeq) -> None:
        """Append tokens (and index every n-gram that ends in them)."""
        new = _tail(new_tokens, len(new_tokens))
        toks, ends, m = self.tokens, self._ends, self.max_suffix
        for tok in new:
            toks.append(tok)
            e = len(toks)
            for n in range(1, min(m, e) + 1):
                key = tuple(toks[e - n : e])
                lst = ends.get(key)
                if lst is None:
                    ends[key] = [e]
                else:
                    lst.append(e)

    def candidates(
        self,
        suffix: TokenSeq | None = None,
        *,
        max_len: int = 8,
        min_suffix: int = 1,
        max_suffix: int | None = None,
        max_occurrences: int = 64,
    ) -> Retrieval:
        """Continuations of the longest matching suffix (default: the store's own last tokens)."""
        _check_params(max_len, min_suffix, max_occurrences)
        cap = self.max_suffix if max_suffix is None else min(max_suffix, self.max_suffix)
        if suffix is None:
            s = self.tokens[max(len(self.tokens) - cap, 0) :]
        else:
            s = _tail(suffix, min(cap, len(suffix)))
        toks, n = self.tokens, len(self.tokens)
        for length in range(len(s), min_suffix - 1, -1):
            ends = self._ends.get(tuple(s[len(s) - length :]))
            if not ends:
                continue
            nvalid = len(ends) - (ends[-1] >= n)
            if nvalid == 0:
                continue
            recent = ends[max(nvalid - max_occurrences, 0) : nvalid]
            return Retrieval(length, nvalid, _count([toks[e : e + max_len] for e in recent]))
        return Retrieval()


# ---------------------------------------------------------------------------------------- merged


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
    return merge_retrievals(_tail(suffix, 1)[0], results, max_nodes=max_nodes, max_depth=max_depth)


def merge_retrievals(
    root_token: int,
    results: Sequence[tuple[int, Retrieval]],
    *,
    max_nodes: int | None = 32,
    max_depth: int | None = None,
) -> TokenTree:
    """One trie of several stores' ``(source, Retrieval)`` results (see :func:`retrieval_tree`).

    Example:
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
