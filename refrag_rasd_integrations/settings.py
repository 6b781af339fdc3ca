"""The settings of a refrag-rasd model, declared once: the LangChain chat model and string LLM, the LlamaIndex
LLM and the ``refrag-rasd ask`` command all take these, and :func:`check_settings` validates them (at
construction and per call) with the package's typed errors.

Example:
    >>> from refrag_rasd_integrations.settings import ModelSettings, check_settings
    >>> ModelSettings(method="pld", max_tokens=32).request_settings()["method"]
    'pld'
    >>> check_settings({"method": "fast"})
    Traceback (most recent call last):
    ...
    refrag_rasd_core.errors.InvalidInputError: unknown method 'fast'; choose one of vanilla, pld, rest, draft, rasd
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from refrag_rasd_core.engine import METHODS, GenerationConfig
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.models import DEFAULT_TARGET_NAME

CONTEXTS = ("auto", "compressed", "text", "none")
"""How passages enter the decoder: ``auto`` (the engine's measured operating point), ``compressed`` (REFRAG),
``text`` (plain RAG) or ``none`` (passages feed RASD's datastore only)."""

ENGINE_SETTINGS = frozenset(GenerationConfig.__dataclass_fields__) | {"max_tokens"}
"""Settings a call may pass through to the engine (``engine_kwargs`` and per-call keywords)."""


def check_settings(settings: Mapping[str, Any]) -> None:
    """Raise :class:`~refrag_rasd_core.errors.InvalidInputError` for a setting out of range (only the keys
    present are checked; ``None`` means "the default")."""
    s = {k: v for k, v in settings.items() if v is not None}
    if "method" in s and s["method"] not in METHODS:
        raise InvalidInputError(f"unknown method {s['method']!r}; choose one of {', '.join(METHODS)}")
    if "context" in s and s["context"] not in CONTEXTS:
        raise InvalidInputError(f"unknown context {s['context']!r}; choose one of {', '.join(CONTEXTS)}")
    for key, low in (("max_tokens", 1), ("top_k", 0), ("context_window", 1)):
        if key in s and (isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < low):
            raise InvalidInputError(f"{key} must be an integer >= {low}, got {s[key]!r}")
    if "temperature" in s and not (isinstance(s["temperature"], (int, float)) and s["temperature"] >= 0):
        raise InvalidInputError(f"temperature must be >= 0, got {s['temperature']!r}")
    if "top_p" in s and not (isinstance(s["top_p"], (int, float)) and 0 < s["top_p"] <= 1):
        raise InvalidInputError(f"top_p must be in (0, 1], got {s['top_p']!r}")
    if "stop" in s and (isinstance(s["stop"], str) or not all(isinstance(x, str) for x in s["stop"])):
        raise InvalidInputError(f"stop must be a list of strings, got {s['stop']!r}")
    unknown = sorted(set(s.get("engine_kwargs") or {}) - ENGINE_SETTINGS)
    if unknown:
        raise InvalidInputError(f"unknown engine setting(s) {', '.join(map(repr, unknown))} in engine_kwargs")


class ModelSettings(BaseModel):
    """The settings of a refrag-rasd model (the base of every framework class; framework-neutral).

    Example:
        >>> ModelSettings(context="text", max_tokens=0)
        Traceback (most recent call last):
        ...
        refrag_rasd_core.errors.InvalidInputError: max_tokens must be an integer >= 1, got 0
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model: str | None = None
    """Target model: ``None`` = SmolLM2-135M-Instruct (offline), a HF id, a local folder or a ``.gguf`` file."""
    device: str = "auto"
    dtype: str | None = None
    method: str = "rasd"
    """Decoding: ``rasd`` (default), ``pld``, ``rest``, ``draft`` or ``vanilla``."""
    context: str = "auto"
    """``auto`` (the engine's measured operating point when passages are handed over: plain RAG unless the
    REFRAG checkpoint records a compressed setting that keeps its answers, for all requests or for long
    contexts), ``compressed`` (REFRAG),
    ``text`` (plain RAG) or ``none`` (passages feed RASD's datastore only)."""
    max_tokens: int = 256
    temperature: float = 0.0
    """0 = greedy."""
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] | None = None
    spec: dict[str, Any] | None = None
    """Speculation options (``max_nodes``, ``retrieval_len``, ...; see docs/engine.md)."""
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further engine settings (e.g. REFRAG's ``expand`` and ``policy``)."""
    recognize_passages: bool = True
    """Find passages a retriever handed out in the prompt text and hand them over with their stored arrays."""
    store: Any = Field(default=None, exclude=True)
    """A :class:`~refrag_rasd_integrations.store.RefragChromaStore` to fetch passage handles the in-process
    registry no longer holds."""
    engine: Any = Field(default=None, exclude=True)
    """An :class:`~refrag_rasd_core.engine.Engine` to use instead of the shared one for ``model``."""

    def __init__(self, /, **data: Any) -> None:
        check_settings(data)
        super().__init__(**data)

    def request_settings(self) -> dict[str, Any]:
        """What :meth:`GenerationRequest.build <refrag_rasd_integrations.generation.GenerationRequest.build>`
        reads: every setting but ``engine``."""
        return {k: getattr(self, k) for k in ModelSettings.model_fields if k != "engine"}

    def target_name(self, override: str | None = None) -> str:
        """The target's name as the frameworks report it."""
        return str(override or self.model or DEFAULT_TARGET_NAME)

    def identifying(self) -> dict[str, Any]:
        """The settings that tell two models apart (LangChain's ``_identifying_params``)."""
        return {"model": self.target_name(), "method": self.method, "context": self.context,
                "max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "device": self.device}

    def target_tokenizer(self) -> Any:
        """The target's tokenizer (loads the shared engine if none was given)."""
        if self.engine is not None:
            return self.engine.tokenizer
        from .engines import get_engine

        return get_engine(self.model, device=self.device, dtype=self.dtype).tokenizer


class CompletionSettings(ModelSettings):
    """:class:`ModelSettings` of a string-in, string-out model (LangChain ``RefragRasdLLM``, LlamaIndex
    ``RefragRasdLLM``)."""

    chat_template: bool = True
    """Send the string as one user message through the model's chat template (right for instruct models);
    ``False`` continues the raw text."""


__all__ = ["CONTEXTS", "ENGINE_SETTINGS", "CompletionSettings", "ModelSettings", "check_settings"]
