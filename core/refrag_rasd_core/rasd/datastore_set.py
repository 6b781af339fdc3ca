"""Several REST datastores answered as one: a corpus indexed in segments (a big one, then the passages added
since), where each segment is an immutable :class:`~refrag_rasd_core.rasd.rest_datastore.RestDatastore`.

A lookup asks every segment; the longest matched suffix wins, and the segments that matched it pool their
occurrences and continuations (counts summed), as one suffix array over their concatenation would (up to which
occurrences are read when more than ``max_occurrences`` exist: each segment reads its own evenly spaced ones).

Example:
    >>> a, b = RestDatastore.build([[1, 2, 3, 4]]), RestDatastore.build([[2, 3, 5], [7, 2, 3, 5]])
    >>> r = DatastoreSet([a, b]).candidates([2, 3], max_len=1)
    >>> r.suffix_len, r.occurrences, r.continuations
    (2, 3, [((5,), 2), ((4,), 1)])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from .rest_datastore import RestDatastore
from .retrieval import Retrieval, TokenSeq, TreeLookup, check_params
from .token_tree import SOURCE_DATASTORE

__all__ = ["DatastoreSet"]


class DatastoreSet(TreeLookup):
    """REST datastores queried as one store (see the module docstring).

    Example:
        >>> s = DatastoreSet([RestDatastore.build([[5, 6, 7]])])
        >>> s.n_tokens, s.lookup([5, 6], max_len=1).tokens
        (3, [6, 7])
    """

    source = SOURCE_DATASTORE

    def __init__(self, segments: Sequence[RestDatastore]) -> None:
        self.segments = list(segments)

    @property
    def n_tokens(self) -> int:
        """Tokens stored over every segment."""
        return sum(s.n_tokens for s in self.segments)

    @property
    def n_sequences(self) -> int:
        """Sequences (passages) over every segment."""
        return sum(s.n_sequences for s in self.segments)

    @property
    def nbytes(self) -> int:
        """Bytes of the segments' index arrays (mapped or in memory)."""
        return sum(s.nbytes for s in self.segments)

    def __repr__(self) -> str:
        return f"DatastoreSet(segments={len(self.segments)}, n_tokens={self.n_tokens})"

    def candidates(self, suffix: TokenSeq, *, max_len: int = 8, min_suffix: int = 1, max_suffix: int | None = None,
                   max_occurrences: int = 64) -> Retrieval:
        """The continuations of the longest suffix any segment matches, pooled over the segments that match
        it (:meth:`RestDatastore.candidates` for the parameters)."""
        check_params(max_len, min_suffix, max_occurrences)
        results = [s.candidates(suffix, max_len=max_len, min_suffix=min_suffix, max_suffix=max_suffix,
                                max_occurrences=max_occurrences) for s in self.segments]
        best = max((r.suffix_len for r in results), default=0)
        if best == 0:
            return Retrieval()
        if len(results) == 1:
            return results[0]
        counts: Counter[tuple[int, ...]] = Counter()
        occurrences = 0
        for r in results:
            if r.suffix_len == best:
                occurrences += r.occurrences
                for seq, c in r.continuations:
                    counts[seq] += c
        return Retrieval(best, occurrences, sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
