"""Errors raised by the integrations, in core's :class:`~refrag_rasd_core.errors.RefragRasdError` hierarchy.

Example:
    >>> from refrag_rasd_integrations.errors import StoreMismatchError
    >>> from refrag_rasd_core.errors import RefragRasdError
    >>> issubclass(StoreMismatchError, RefragRasdError)
    True
"""

from __future__ import annotations

from refrag_rasd_core.errors import InvalidInputError, RefragRasdError


class StoreError(RefragRasdError):
    """A vector-store operation failed (the collection is missing, a server is unreachable, a record is bad)."""


class StoreMismatchError(StoreError, InvalidInputError):
    """A collection was built with another configuration (encoder, k, dtype, projector, tokenizer) than the
    one it is opened with: its stored chunk embeddings cannot be read by this model."""


class CollectionNotFoundError(StoreError, LookupError):
    """The named collection does not exist (index documents into it first)."""


class PassageNotFoundError(StoreError, LookupError):
    """A passage handle names nothing in the in-process cache nor in the store."""


__all__ = ["CollectionNotFoundError", "PassageNotFoundError", "StoreError", "StoreMismatchError"]
