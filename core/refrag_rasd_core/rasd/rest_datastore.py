"""REST datastore: a suffix index over many token sequences, built once, saved and shared.

A suffix array over the *reversed* concatenation (sequences joined by :data:`SEPARATOR`), sorted on the first
``sort_depth`` tokens, so that the candidate ranges of the suffixes of length 1, 2, 3, ... of the query are
nested: one narrowing binary search per extra token finds the longest match. Build: libdivsufsort (``pydivsufsort``,
O(n log n), millions of tokens a second), or numpy prefix doubling to depth d (O(n log n log d)) without it.
Saved as ``.npy`` files that :meth:`RestDatastore.load` can memory-map. Lookup: O(m log n) scalar steps
(m = matched length) plus O(k log n + k * max_len) for the k occurrences read, sampled evenly over the
suffix-array range. See :mod:`refrag_rasd_core.rasd.datastore` for what both stores answer.

Example:
    >>> store = RestDatastore.build([[1, 2, 3, 4], [9, 2, 3, 5]])
    >>> store.candidates([7, 2, 3], max_len=1).continuations
    [((4,), 1), ((5,), 1)]
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, InvalidInputError
from .retrieval import Retrieval, TokenSeq, TreeLookup, check_params, count_continuations, token_tail
from .token_tree import SOURCE_DATASTORE

__all__ = ["BACKENDS", "SEPARATOR", "RestDatastore"]

SEPARATOR = -1
"""Placed between sequences in the concatenated token array; no token id equals it."""
_END = -2  # what "past the end of the array" compares as (below the separator)



BACKENDS = ("auto", "divsufsort", "numpy")
"""Suffix-array builders: ``divsufsort`` (libdivsufsort through ``pydivsufsort``: the full suffix order, 6-9x
faster here than numpy, see docs/benchmarks.md), ``numpy`` (prefix doubling, sorted to the lookup depth only;
no extra dependency), ``auto`` (``divsufsort`` when importable)."""


def _suffix_array_divsufsort(r: np.ndarray) -> np.ndarray:
    """The full suffix array of ``r`` (tokens >= 0 and :data:`SEPARATOR`) by libdivsufsort.

    Tokens are shifted by one (the separator becomes 0, below every token) and written big-endian in the
    fewest bytes, so byte order is token order; the byte suffix array keeps the suffixes that start on a
    token. A suffix that ends first sorts first, as ``_END`` compares in the lookups."""
    from pydivsufsort import divsufsort

    n = len(r)
    if n == 0:
        return np.zeros(0, np.int64)
    top = int(r.max()) + 1
    width = 1 if top < 2**8 else 2 if top < 2**16 else 4 if top < 2**32 else 8
    if width == 1:
        return np.asarray(divsufsort((r + 1).astype(np.uint8)), dtype=np.int64)
    b = (r + 1).astype(f">u{width}").view(np.uint8)  # r + 1 fits r's dtype: the top id is below its max
    sa = np.asarray(divsufsort(b))
    shift = width.bit_length() - 1
    return (sa[(sa & (width - 1)) == 0] >> shift).astype(np.int64)


def _suffix_array(r: np.ndarray, depth: int, backend: str = "auto") -> tuple[np.ndarray, int]:
    """Suffix array of ``r`` sorted on at least its first ``depth`` tokens, and the depth it is sorted to
    (the full order counts as ``depth``: lookups never read further)."""
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "numpy":
        try:
            return _suffix_array_divsufsort(r), depth
        except ImportError:
            if backend == "divsufsort":
                raise InvalidInputError("backend='divsufsort' needs pydivsufsort: pip install pydivsufsort") from None
    return _prefix_doubling(r, depth)


def _prefix_doubling(r: np.ndarray, depth: int) -> tuple[np.ndarray, int]:
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


class RestDatastore(TreeLookup):
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
    VERSION = 2

    def __init__(self, tokens: np.ndarray, suffix_array: np.ndarray, sort_depth: int, n_sequences: int, *,
                 reversed_tokens: np.ndarray | None = None, derived: dict[str, np.ndarray] | None = None):
        """Internal: use :meth:`build` or :meth:`load`. ``tokens`` is the forward concatenation (or give
        ``reversed_tokens``, e.g. memory-mapped, and ``derived``: the lookup arrays :meth:`save` wrote)."""
        self._r = np.ascontiguousarray(tokens[::-1]) if reversed_tokens is None else reversed_tokens
        self._sa = suffix_array
        self.sort_depth = int(sort_depth)
        self.n_sequences = int(n_sequences)
        n = len(self._r)
        self._n = n
        if derived is None:
            derived = self._derive()
        self._cumvalid = derived["valid_cumsum"]
        self._first_vals = derived["first_vals"]
        self._first_starts = derived["first_starts"]
        self._mv_r = memoryview(self._r) if n else None
        self._mv_sa = memoryview(self._sa) if n else None

    def _derive(self) -> dict[str, np.ndarray]:
        """The lookup arrays: ``valid_cumsum`` (slots whose occurrence is followed by a token, in forward
        order, counted) and the first-token buckets (slots ``[first_starts[i], first_starts[i+1])`` begin
        with token ``first_vals[i]``)."""
        n = self._n
        q = self._sa  # int32 / int64 indices as they are (no int64 copy)
        valid = self._r[q - 1] != SEPARATOR  # q == 0 wraps to the last token: masked just below
        if n:
            valid[np.flatnonzero(q == 0)] = False
        cumvalid = np.zeros(n + 1, np.int32 if n < 2**31 - 1 else np.int64)
        np.cumsum(valid, out=cumvalid[1:])
        first = self._r[q] if n else np.zeros(0, self._r.dtype)
        cut = np.flatnonzero(first[1:] != first[:-1]) + 1
        first_vals = first[np.concatenate(([0], cut))] if n else first
        first_starts = np.concatenate(([0], cut, [n])).astype(np.int64)
        return {"valid_cumsum": cumvalid, "first_vals": first_vals, "first_starts": first_starts}

    # ---------------------------------------------------------------- construction

    @classmethod
    def build(cls, sequences: Iterable[TokenSeq], *, max_suffix: int = 16, backend: str = "auto") -> RestDatastore:
        """Index ``sequences`` (each a 1-D run of token ids >= 0) for suffixes up to ``max_suffix`` tokens;
        ``backend``: the suffix-array builder (:data:`BACKENDS`)."""
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
        sa, depth = _suffix_array(t[::-1], max_suffix, backend)
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
        check_params(max_len, min_suffix, max_occurrences)
        cap = self.sort_depth if max_suffix is None else min(max_suffix, self.sort_depth)
        s = token_tail(suffix, min(cap, len(suffix)))
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
        return Retrieval(length, nvalid, count_continuations([row[:m] for row, m in zip(rows, lens, strict=True)]))

    # ---------------------------------------------------------------- persistence

    _ARRAYS = ("reversed_tokens", "suffix_array", "valid_cumsum", "first_vals", "first_starts")

    def save(self, path: str | Path) -> Path:
        """Write the index to the directory ``path``: ``header.json`` and one ``.npy`` per array (the reversed
        tokens, the suffix array and the lookup arrays), so :meth:`load` can memory-map them all."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays = dict(zip(self._ARRAYS, (self._r, self._sa, self._cumvalid, self._first_vals, self._first_starts),
                          strict=True))
        header: dict[str, object] = {"format": self.FORMAT, "version": self.VERSION, "n_entries": self._n,
                                     "n_sequences": self.n_sequences, "sort_depth": self.sort_depth}
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            np.save(path / f"{name}.npy", a, allow_pickle=False)
            header[f"{name}_shape"] = len(a)
            header[f"{name}_dtype"] = str(a.dtype)
            header[f"{name}_crc32"] = zlib.crc32(a.tobytes())
        (path / "header.json").write_text(json.dumps(header, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = False, verify: bool | None = None) -> RestDatastore:
        """Read an index written by :meth:`save`; raise :class:`CheckpointError` if anything is off.

        ``mmap``: map the arrays read-only instead of reading them (processes that map the same files share
        their pages; opening costs no read). ``verify``: check the CRC32s (default: when not mapped; a check
        reads every byte)."""
        path = Path(path)
        try:
            header = json.loads((path / "header.json").read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"no readable datastore header in {path}: {e}") from e
        if not isinstance(header, dict) or header.get("format") != cls.FORMAT:
            raise CheckpointError(f"{path} does not hold a {cls.FORMAT} (header: {str(header)[:200]})")
        version = header.get("version")
        if version not in (1, cls.VERSION):
            raise CheckpointError(f"{path} holds datastore format version {version}, this code reads 1 and "
                                  f"{cls.VERSION}")
        names = ("tokens", "suffix_array") if version == 1 else cls._ARRAYS
        verify = not mmap if verify is None else verify
        arrays = {}
        for name in names:
            f = path / f"{name}.npy"
            try:
                a = np.load(f, allow_pickle=False, mmap_mode="r" if mmap else None)
            except (OSError, ValueError, EOFError) as e:
                raise CheckpointError(f"cannot read {f}: {e}") from e
            n = header.get(f"{name}_shape", header.get("n_entries"))
            if a.ndim != 1 or len(a) != n or str(a.dtype) != header.get(f"{name}_dtype"):
                raise CheckpointError(f"{f} has shape {a.shape} {a.dtype}, header says ({n},) "
                                      f"{header.get(name + '_dtype')}")
            if verify and zlib.crc32(np.ascontiguousarray(a).tobytes()) != header.get(f"{name}_crc32"):
                raise CheckpointError(f"{f} is corrupt (CRC32 mismatch)")
            arrays[name] = a
        depth, n_seq = header["sort_depth"], header["n_sequences"]
        if version == 1:
            return cls(arrays["tokens"], arrays["suffix_array"], depth, n_seq)
        derived = {k: arrays[k] for k in cls._ARRAYS[2:]}
        return cls(arrays["reversed_tokens"][:0], arrays["suffix_array"], depth, n_seq,
                   reversed_tokens=arrays["reversed_tokens"], derived=derived)
