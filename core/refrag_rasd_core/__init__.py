"""refrag-rasd-core: REFRAG compressed prefill and RASD speculative decoding for Hugging Face causal LMs."""

from pathlib import Path

from .heap import bound_kernel_caches

bound_kernel_caches()  # before any oneDNN kernel runs: refrag_rasd_core.heap says why

from .errors import (  # noqa: E402
    CheckpointError,
    ContextTooLongError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    RefragRasdError,
    TokenizerMismatchError,
)

__version__ = (Path(__file__).with_name("VERSION")).read_text().strip()
"""The package version (written once, in the ``VERSION`` file beside this module)."""

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
