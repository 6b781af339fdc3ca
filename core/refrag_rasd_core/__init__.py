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

from .engine import Engine, GenerationConfig, GenerationStream  # noqa: E402
from .stats import GenerationResult, GenerationStats  # noqa: E402

__all__ = [
    "Engine",
    "GenerationConfig",
    "GenerationResult",
    "GenerationStats",
    "GenerationStream",
    "CheckpointError",
    "ContextTooLongError",
    "InvalidInputError",
    "ModelLoadError",
    "ModelNotFoundError",
    "RefragRasdError",
    "TokenizerMismatchError",
    "__version__",
]
