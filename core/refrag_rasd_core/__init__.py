"""refrag-rasd-core: REFRAG compressed prefill and RASD speculative decoding for Hugging Face causal LMs."""

from .errors import (
    CheckpointError,
    ContextTooLongError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    RefragRasdError,
    TokenizerMismatchError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ContextTooLongError",
    "InvalidInputError",
    "ModelLoadError",
    "ModelNotFoundError",
    "RefragRasdError",
    "TokenizerMismatchError",
    "__version__",
]
