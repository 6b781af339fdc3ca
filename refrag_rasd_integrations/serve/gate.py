"""A request's time budget and the gate in front of a replica's engine: at most ``slots`` requests work on
the engine at once, at most ``max_waiting`` wait for it (503 past that), and none waits past its budget
(504). The prompt is tokenized and its size checked against the model's window *before* the gate, so an
oversized request is refused without ever holding the engine.

Example:
    >>> gate, budget = EngineGate(slots=1, max_waiting=4), Budget(30.0)
    >>> gate.acquire(budget); gate.busy
    True
    >>> gate.release(); gate.busy, budget.expired()
    (False, False)
"""

from __future__ import annotations

import threading
import time

from refrag_rasd_core.heap import trim

from .errors import RequestTimeoutError, ServerBusyError


class Budget:
    """Seconds a request may take from its arrival (``seconds`` 0 or less: no limit)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.deadline = time.monotonic() + self.seconds if self.seconds > 0 else None

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def check(self) -> None:
        """Raise :class:`RequestTimeoutError` once the budget is spent."""
        if self.expired():
            raise RequestTimeoutError(f"the request ran past this server's time budget ({self.seconds:g} s)")


class EngineGate:
    """``slots`` requests at a time on the engine, ``max_waiting`` (-1: any number) waiting for it."""

    def __init__(self, slots: int = 1, max_waiting: int = -1) -> None:
        self._slots = threading.BoundedSemaphore(max(int(slots), 1))
        self._mu = threading.Lock()
        self._waiting = 0
        self._held = 0
        self.max_waiting = int(max_waiting)

    @property
    def busy(self) -> bool:
        return self._held > 0

    def acquire(self, budget: Budget) -> None:
        """Wait for a slot within ``budget`` (:class:`RequestTimeoutError` past it; :class:`ServerBusyError`
        when too many already wait)."""
        with self._mu:
            if self.max_waiting >= 0 and self._waiting >= self.max_waiting and self._held > 0:
                raise ServerBusyError(f"the server is busy ({self._waiting} requests waiting): retry later")
            self._waiting += 1
        try:
            got = self._slots.acquire(timeout=budget.remaining())
        finally:
            with self._mu:
                self._waiting -= 1
        if not got:
            raise RequestTimeoutError(f"the engine stayed busy past this request's time budget "
                                      f"({budget.seconds:g} s)")
        with self._mu:
            self._held += 1

    def release(self) -> None:
        """Give the slot back, after handing the request's freed memory back to the system (a few ms; it keeps
        the replica's RSS flat: :mod:`refrag_rasd_core.heap`)."""
        trim()
        with self._mu:
            self._held -= 1
        self._slots.release()


__all__ = ["Budget", "EngineGate"]
