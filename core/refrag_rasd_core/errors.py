"""The package's exception hierarchy.

Every error the package raises on purpose is a :class:`RefragRasdError`; each subclass names one cause
so callers can catch exactly what they can handle. Messages say what was wrong and how to fix it.

Example:
    >>> from refrag_rasd_core.errors import InvalidInputError, RefragRasdError
    >>> issubclass(InvalidInputError, RefragRasdError)
    True
"""

from __future__ import annotations


class RefragRasdError(Exception):
    """Base class of every error raised on purpose by refrag-rasd."""


class InvalidInputError(RefragRasdError, ValueError):
    """A user-supplied argument is out of range, empty, or of the wrong type."""


class ContextTooLongError(InvalidInputError):
    """The prompt (plus the requested new tokens) does not fit the model's context window."""


class ModelLoadError(RefragRasdError):
    """A model, tokenizer or encoder could not be found or loaded."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """A path, GGUF file or model id names nothing that exists (offline, no hub is tried)."""


class TokenizerMismatchError(ModelLoadError):
    """Two components that must share a tokenizer (target and draft, model and tokenizer) do not."""


class CheckpointError(RefragRasdError):
    """A checkpoint is missing, truncated, has wrong shapes or a wrong hash, or was made for another model."""
