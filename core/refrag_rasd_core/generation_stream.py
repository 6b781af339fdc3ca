"""The engine's streaming surface: :class:`GenerationStream` (what ``Engine.stream`` returns) and
:class:`ModelLock` (one decoding loop at a time per engine).

Example:
    >>> stream = GenerationStream(iter(["Hel", "lo"]), stats=None, token_ids=[])
    >>> "".join(stream), stream.text
    ('Hello', 'Hello')
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from .errors import InvalidInputError
from .stats import GenerationResult

__all__ = ["GenerationStream", "ModelLock"]


class ModelLock:
    """Serializes the model between threads. A call from the thread that already holds it (a new request
    while one of this engine's streams is still open in the same thread) raises instead of deadlocking."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    def __enter__(self) -> None:
        me = threading.get_ident()
        if self._owner == me:
            raise InvalidInputError(
                "this engine is busy with a stream still open in this thread: iterate it to the end or call "
                "its close() before starting another call"
            )
        self._lock.acquire()
        self._owner = me

    def __exit__(self, *exc: object) -> None:
        self._owner = None
        self._lock.release()


class GenerationStream:
    """An iterator of text pieces; ``.stats``, ``.text`` and ``.token_ids`` are complete once it is exhausted."""

    def __init__(self, pieces: Iterator[str], stats: Any, token_ids: list[int], *, tools: bool = False) -> None:
        self._pieces = pieces
        self.stats = stats
        self.token_ids = token_ids
        self.text = ""
        self.tools = tools  # the call offered tools: the result parses its calls

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            self.text += piece
            yield piece

    def close(self) -> None:
        """Stop generating now and release the engine (a stream holds it until it ends or is closed)."""
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()

    def result(self) -> GenerationResult:
        """Run to the end (if not done yet) and return the whole result."""
        for _ in self:
            pass
        return GenerationResult(text=self.text, token_ids=self.token_ids, stats=self.stats, tools=self.tools)
