"""Incremental detokenization with stop strings: token ids in, safe-to-show text pieces out.

Text is held back while it could still become a stop string or while it ends inside a multi-byte
character, so a streamed answer never shows text that the final answer does not contain.

Example:
    >>> class Tok:  # any tokenizer with ``decode``
    ...     def decode(self, ids, skip_special_tokens=True):
    ...         return "".join(chr(i) for i in ids)
    >>> s = TextAssembler(Tok(), stop=["END"])
    >>> [s.push(ord(c)) for c in "hi EN"], s.push(ord("D")), s.stopped, s.text
    (['h', 'i', ' ', '', ''], '', True, 'hi ')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import InvalidInputError


class TextAssembler:
    """Turns generated token ids into text pieces, honouring stop strings exactly."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = (), skip_special_tokens: bool = True) -> None:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        for s in stops:
            if not isinstance(s, str) or s == "":
                raise InvalidInputError(f"stop strings must be non-empty strings, got {s!r}")
        self._tok = tokenizer
        self._stops = stops
        self._max_stop = max((len(s) for s in stops), default=0)
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_ids = 0   # ids before this index are fully rendered into _done
        self._done = ""        # text of ids[:_prefix_ids]
        self._emitted = 0      # characters of the full text already handed out
        self.text = ""         # the full text so far (truncated at a stop string once stopped)
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; return the new text that is safe to show (possibly ``""``)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        tail = self._tok.decode(self._ids[self._prefix_ids:], skip_special_tokens=self._skip)
        full = self._done + tail
        if not tail.endswith("\ufffd") and len(self._ids) - self._prefix_ids > 8:
            # fold the stable part into _done so each decode stays short
            self._done, self._prefix_ids = full, len(self._ids)
        self.text = full
        if self._stops:
            start = max(0, self._emitted - self._max_stop)
            hits = [i for i in (full.find(s, start) for s in self._stops) if i >= 0]
            if hits:
                self.stopped = True
                self.text = full[: min(hits)]
                return self._release(len(self.text))
        safe = len(full)
        if full.endswith("\ufffd"):
            safe = len(full.rstrip("\ufffd"))
        safe = min(safe, len(full) - self._stop_prefix_len(full))
        return self._release(safe)

    def finish(self) -> str:
        """End of generation: release whatever was held back (it can no longer become a stop string)."""
        text = self.text.rstrip("\ufffd") if not self.stopped else self.text
        return self._release(len(text))

    def _release(self, upto: int) -> str:
        if upto <= self._emitted:
            return ""
        piece = self.text[self._emitted:upto]
        self._emitted = upto
        return piece

    def _stop_prefix_len(self, full: str) -> int:
        """Length of the longest suffix of ``full`` that is a proper prefix of a stop string."""
        best = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(full)), best, -1):
                if full.endswith(s[:n]):
                    best = n
                    break
        return best
