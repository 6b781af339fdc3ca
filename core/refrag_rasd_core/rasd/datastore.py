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

This module gathers them: the stores are :mod:`.rest_datastore` and :mod:`.prompt_lookup`, the result type and
the merging :mod:`.retrieval`; :class:`DatastoreSet` answers several REST datastores (a corpus in segments) as one.

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

from .datastore_set import DatastoreSet
from .prompt_lookup import PromptLookup
from .rest_datastore import SEPARATOR, RestDatastore
from .retrieval import Retrieval, TokenStore, merge_retrievals, retrieval_tree

__all__ = [
    "SEPARATOR",
    "DatastoreSet",
    "PromptLookup",
    "RestDatastore",
    "Retrieval",
    "TokenStore",
    "merge_retrievals",
    "retrieval_tree",
]
