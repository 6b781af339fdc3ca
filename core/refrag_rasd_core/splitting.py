"""Text into passages of at most ``max_tokens`` decoder tokens: by blank lines, then lines, then sentences, then
words, packing neighbours greedily; a single word still too long is cut by tokens.

The store's splitter (``refrag_rasd_integrations.store.splitting`` re-exports it, with the measurement behind the
choice in ``docs/store.md``); it lives in core so that training (``train-refrag --long-data``) cuts a document
into passages exactly as the store does.

Example:
    >>> split_text("One. Two.\\n\\nThree four five.", len, 16)
    ['One. Two.', 'Three four five.']
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["PassageSplitter", "split_text"]

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_SEPARATORS: tuple[str | re.Pattern[str], ...] = ("\n\n", "\n", _SENTENCE, " ")


def split_text(text: str, count: Callable[[str], int], max_tokens: int,
               hard_split: Callable[[str], list[str]] | None = None) -> list[str]:
    """Split ``text`` into pieces of at most ``max_tokens`` (as measured by ``count``): by blank lines, then
    lines, then sentences, then words, packing neighbours greedily; ``hard_split`` cuts what is still too
    long (a single huge word)."""
    return _split(text.strip(), count, max_tokens, _SEPARATORS, hard_split)


def _split(text: str, count: Callable[[str], int], max_tokens: int, seps: tuple, hard_split: Any) -> list[str]:
    if not text:
        return []
    if count(text) <= max_tokens:
        return [text]
    if not seps:
        return hard_split(text) if hard_split else [text]
    sep, rest = seps[0], seps[1:]
    if isinstance(sep, str):
        pieces, joiner = [p.strip() for p in text.split(sep)], sep
    else:
        pieces, joiner = [p.strip() for p in sep.split(text)], " "
    pieces = [p for p in pieces if p]
    if len(pieces) <= 1:
        return _split(text, count, max_tokens, rest, hard_split)
    out: list[str] = []
    cur = ""
    for p in pieces:
        cand = f"{cur}{joiner}{p}" if cur else p
        if count(cand) <= max_tokens:
            cur = cand
            continue
        if cur:
            out.append(cur)
        if count(p) <= max_tokens:
            cur = p
        else:
            out.extend(_split(p, count, max_tokens, rest, hard_split))
            cur = ""
    if cur:
        out.append(cur)
    return out


class PassageSplitter:
    """:func:`split_text` measured in a Hugging Face tokenizer's tokens (no special tokens).

    Example:
        >>> splitter = PassageSplitter(engine.tokenizer, max_tokens=8)                   # doctest: +REAL_MODEL
        >>> splitter("Paris is the capital of France. Rome is the capital of Italy.")  # doctest: +REAL_MODEL
        ['Paris is the capital of France.', 'Rome is the capital of Italy.']
    """

    def __init__(self, tokenizer: Any, max_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    def count(self, text: str) -> int:
        """How many tokens ``text`` has."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def hard_split(self, text: str) -> list[str]:
        """``text`` cut every ``max_tokens`` tokens (for a word longer than a passage)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        n = self.max_tokens
        return [s for s in (self.tokenizer.decode(ids[i:i + n]).strip() for i in range(0, len(ids), n)) if s]

    def __call__(self, text: str) -> list[str]:
        return split_text(text, self.count, self.max_tokens, self.hard_split)
