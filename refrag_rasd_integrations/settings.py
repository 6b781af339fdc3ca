"""The settings of a refrag-rasd model as the frameworks see them: the LangChain chat model and string LLM
and the LlamaIndex LLM all take these. The generation settings are the engine's own
:class:`~refrag_rasd_core.generation_config.GenerationConfig` fields, checked and defaulted there and
nowhere else: a field left at ``None`` means the config's default.

Example:
    >>> from refrag_rasd_integrations.settings import ModelSettings
    >>> ModelSettings(method="pld", max_tokens=32).generation_config().method
    'pld'
    >>> ModelSettings().generation_config().method          # the one default, GenerationConfig's
    'rasd'
    >>> ModelSettings(method="fast")
    Traceback (most recent call last):
    ...
    refrag_rasd_core.errors.InvalidInputError: unknown method 'fast'; choose one of vanilla, pld, rest, draft, rasd
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from refrag_rasd_core.engine import DEFAULT_WEIGHTS, Engine, check_weights
from refrag_rasd_core.generation_config import CONTEXTS, GenerationConfig
from refrag_rasd_core.models import DEFAULT_TARGET_NAME

GENERATION_FIELDS = ("method", "context", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "spec")
"""The :class:`GenerationConfig` fields a model declares as its own settings (the rest go in ``engine_kwargs``)."""


def generation_settings(data: dict[str, Any]) -> GenerationConfig:
    """The :class:`GenerationConfig` of a model's settings ``data`` (its generation fields and
    ``engine_kwargs``); raises :class:`~refrag_rasd_core.errors.InvalidInputError` for a bad one."""
    return GenerationConfig.of({k: data.get(k) for k in GENERATION_FIELDS}, **(data.get("engine_kwargs") or {}))


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
    weights: str = DEFAULT_WEIGHTS
    """How the target's linears run: ``auto`` (as stored: the default model's 4-bit linears run 4-bit on CPU),
    ``exact`` (fp32) or ``int4`` (:class:`~refrag_rasd_core.engine.Engine`'s ``weights``)."""
    method: str | None = None
    """Decoding: ``rasd`` (the default), ``pld``, ``rest``, ``draft`` or ``vanilla``."""
    context: str | None = None
    """How passages enter the decoder: ``auto`` (the default: the engine's measured operating point, which is
    plain RAG unless the REFRAG checkpoint records a compressed setting that keeps plain RAG's answers; the
    shipped one records none), ``compressed`` (REFRAG), ``text`` (plain RAG) or ``none`` (passages feed RASD's
    datastore only)."""
    max_tokens: int | None = None
    """The most tokens to generate (default 256)."""
    temperature: float | None = None
    """0 = greedy (the default)."""
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] | None = None
    spec: dict[str, Any] | None = None
    """Speculation options (``max_nodes``, ``retrieval_len``, ...; see docs/engine.md)."""
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further generation settings (e.g. REFRAG's ``expand`` and ``policy``)."""
    recognize_passages: bool = True
    """Find passages a retriever handed out in the prompt text and hand them over with their stored arrays."""
    store: Any = Field(default=None, exclude=True)
    """A :class:`~refrag_rasd_integrations.store.RefragChromaStore` to fetch passage handles the in-process
    registry no longer holds."""
    datastore: Any = Field(default=None, exclude=True)
    """A corpus datastore for ``rasd`` / ``rest``: ``True`` (``store``'s), a ``RefragChromaStore`` (its
    ``datastore()``), or a datastore (``CorpusDatastore``, ``RestDatastore``); ``None``: the request's passages only."""
    engine: Engine | None = Field(default=None, exclude=True)
    """An :class:`~refrag_rasd_core.engine.Engine` to use instead of the shared one for ``model``."""

    def __init__(self, /, **data: Any) -> None:
        generation_settings(data)  # GenerationConfig checks every generation setting, before pydantic sees it
        check_weights(data.get("weights", DEFAULT_WEIGHTS))
        super().__init__(**data)

    def generation_config(self) -> GenerationConfig:
        """This model's generation settings as the engine's config (defaults filled in)."""
        return generation_settings({k: getattr(self, k) for k in (*GENERATION_FIELDS, "engine_kwargs")})

    def target_name(self, override: str | None = None) -> str:
        """The target's name as the frameworks report it."""
        return str(override or self.model or DEFAULT_TARGET_NAME)

    def identifying(self) -> dict[str, Any]:
        """The settings that tell two models apart (LangChain's ``_identifying_params``)."""
        cfg = self.generation_config()
        return {"model": self.target_name(), "method": cfg.method, "context": cfg.context,
                "max_tokens": cfg.max_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p,
                "top_k": cfg.top_k, "device": self.device, "weights": self.weights}

    def resolve_engine(self, model: str | None = None) -> Engine:
        """The engine a call runs on: ``engine`` when one was given (and no other ``model`` is asked for),
        else the shared one for the model (loaded on first use)."""
        from .engines import get_engine

        if self.engine is not None and (model is None or model == self.model):
            return self.engine
        return get_engine(model or self.model, device=self.device, dtype=self.dtype, weights=self.weights)

    def target_tokenizer(self) -> Any:
        """The target's tokenizer (loads the shared engine if none was given)."""
        return self.resolve_engine().tokenizer


class CompletionSettings(ModelSettings):
    """:class:`ModelSettings` of a string-in, string-out model (LangChain ``RefragRasdLLM``, LlamaIndex
    ``RefragRasdLLM``)."""

    chat_template: bool = True
    """Send the string as one user message through the model's chat template (right for instruct models);
    ``False`` continues the raw text."""


__all__ = ["CONTEXTS", "GENERATION_FIELDS", "CompletionSettings", "ModelSettings", "generation_settings"]
