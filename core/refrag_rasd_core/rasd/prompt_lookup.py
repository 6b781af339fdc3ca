"""PLD (prompt lookup decoding): suffix lookup over one growing sequence, the prompt and then every generated
token.

A dict from every n-gram (n <= ``max_suffix``) to its end positions; :meth:`PromptLookup.extend` costs
O(max_suffix^2) per token, a lookup O(max_suffix^2 + k * max_len). Reads the ``max_occurrences`` most recent
occurrences. See :mod:`refrag_rasd_core.rasd.datastore` for what both stores answer.

Example:
    >>> pld = PromptLookup([5, 6, 7, 8, 5, 6])
    >>> pld.candidates(max_len=3).continuations
    [((7, 8, 5), 1)]
"""

from __future__ import annotations

from ..errors import InvalidInputError
from .retrieval import Retrieval, TokenSeq, TreeLookup, check_params, count_continuations, token_tail
from .token_tree import SOURCE_PROMPT

__all__ = ["PromptLookup"]


class PromptLookup(TreeLookup):
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

    def _default_suffix(self) -> TokenSeq:
        return self.tokens

    def __repr__(self) -> str:
        return f"PromptLookup(n_tokens={len(self.tokens)}, max_suffix={self.max_suffix})"

    def extend(self, new_tokens: TokenSeq) -> None:
        """Append tokens (and index every n-gram that ends in them)."""
        new = token_tail(new_tokens, len(new_tokens))
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
        check_params(max_len, min_suffix, max_occurrences)
        cap = self.max_suffix if max_suffix is None else min(max_suffix, self.max_suffix)
        if suffix is None:
            s = self.tokens[max(len(self.tokens) - cap, 0) :]
        else:
            s = token_tail(suffix, min(cap, len(suffix)))
        toks, n = self.tokens, len(self.tokens)
        for length in range(len(s), min_suffix - 1, -1):
            ends = self._ends.get(tuple(s[len(s) - length :]))
            if not ends:
                continue
            nvalid = len(ends) - (ends[-1] >= n)
            if nvalid == 0:
                continue
            recent = ends[max(nvalid - max_occurrences, 0) : nvalid]
            return Retrieval(length, nvalid, count_continuations([toks[e : e + max_len] for e in recent]))
        return Retrieval()
