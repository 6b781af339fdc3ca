"""Cut passages into k-token chunks of the DECODER's tokenizer (REFRAG's unit of compression).

A passage of ``n`` tokens gives ``ceil(n / k)`` chunks in order; the last one may be shorter than ``k``;
an empty passage gives none. The encoder reads each chunk as text (its own tokenizer re-tokenizes it), so
:func:`chunk_texts` decodes each chunk separately; a multi-byte character split by a chunk boundary
decodes to a replacement character on both sides, which is harmless for an encoder.

Example:
    >>> chunk_token_ids([1, 2, 3, 4, 5], k=2)
    [[1, 2], [3, 4], [5]]
    >>> num_chunks(0, 16), num_chunks(17, 16)
    (0, 2)
    >>> answer_chunks(["The first prize went to ", "Wilhelm Röntgen of", " Germany."], ["röntgen"])
    [1]
    >>> answer_chunks(["went to Wil", "helm Röntgen"], ["Wilhelm"])
    [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import InvalidInputError

SUPPORTED_K = (2, 4, 8, 16, 32, 64)


def check_k(k: int) -> int:
    """Validate a chunk size (REFRAG uses 8, 16 or 32; tests use smaller)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInputError(f"chunk size k must be a positive integer, got {k!r}")
    return k


def num_chunks(n_tokens: int, k: int) -> int:
    """How many k-token chunks ``n_tokens`` make (the last one may be partial)."""
    return -(-int(n_tokens) // check_k(k))


def chunk_token_ids(token_ids: Sequence[int], k: int) -> list[list[int]]:
    """Split ``token_ids`` into consecutive chunks of ``k`` tokens (last one partial, none when empty)."""
    check_k(k)
    ids = [int(t) for t in token_ids]
    return [ids[i:i + k] for i in range(0, len(ids), k)]


def chunk_texts(tokenizer: Any, token_ids: Sequence[int], k: int) -> list[str]:
    """The text of each chunk, decoded separately (what the encoder reads)."""
    return [tokenizer.decode(c, skip_special_tokens=True) for c in chunk_token_ids(token_ids, k)]


def answer_chunks(texts: Sequence[str], answers: Sequence[str]) -> list[int]:
    """Indices of the chunk ``texts`` (consecutive pieces of one text) that hold any of ``answers``
    (case-insensitive; an answer across a chunk boundary marks every chunk it touches)."""
    joined = "".join(texts).lower()
    ends, pos = [], 0
    for t in texts:
        pos += len(t)
        ends.append(pos)
    hit: set[int] = set()
    for a in answers:
        a = str(a).strip().lower()
        if not a:
            continue
        start = joined.find(a)
        while start >= 0:
            stop = start + len(a)
            first = next(i for i, e in enumerate(ends) if e > start)
            last = next(i for i, e in enumerate(ends) if e >= stop)
            hit.update(range(first, last + 1))
            start = joined.find(a, start + 1)
    return sorted(hit)
