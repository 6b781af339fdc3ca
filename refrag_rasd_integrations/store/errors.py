"""Failures inside the Chroma client or server, as :class:`~refrag_rasd_integrations.errors.StoreError` s
that name what to check.

Example:
    >>> from refrag_rasd_integrations.store.errors import chroma_failure
    >>> print(chroma_failure(ConnectionError("connection refused"), "querying collection 'docs'"))
    querying collection 'docs' failed (ConnectionError: connection refused): the Chroma server is not reachable:
    start it again (`chroma run --path DIR`) and retry
"""

from __future__ import annotations

from refrag_rasd_core.errors import RefragRasdError

from ..errors import StoreError

__all__ = ["chroma_failure"]


def chroma_failure(exc: Exception, action: str,
                   hint: str = "check the metadata filter (Chroma `where` syntax) and the collection") -> Exception:
    """A failure inside the Chroma client or server as a :class:`StoreError` naming what to check (our own
    typed errors pass through)."""
    if isinstance(exc, RefragRasdError):
        return exc
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    if type(exc).__module__.split(".")[0] in {"httpx", "httpcore"} or "connect" in low:
        hint = "the Chroma server is not reachable: start it again (`chroma run --path DIR`) and retry"
    elif isinstance(exc, OSError) or any(w in low for w in ("readonly", "read-only", "disk", "i/o", "space")):
        hint = ("check that the store path is writable and its disk has room; indexing is resumable, so run it "
                "again afterwards")
    return StoreError(f"{action} failed ({text}): {hint}")
