"""Settings shared by the LangChain chat model and string LLM, and message conversion."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from refrag_rasd_core.engine import METHODS
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.models import DEFAULT_TARGET_NAME

from ..generation import CONTEXTS, GenerationRequest, _content_text
from ..passages import MESSAGE_KEY


class RefragRasdParams(BaseModel):
    """The settings of a refrag-rasd model (LangChain chat model or string LLM)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model: str | None = None
    """Target model: ``None`` = SmolLM2-135M-Instruct (offline), a HF id, a local folder or a ``.gguf`` file."""
    device: str = "auto"
    dtype: str | None = None
    method: str = "rasd"
    """Decoding: ``rasd`` (default), ``pld``, ``rest``, ``draft`` or ``vanilla``."""
    context: str = "auto"
    """``auto`` (``compressed`` when passages are handed over), ``compressed`` (REFRAG), ``text`` (plain RAG)
    or ``none`` (passages feed RASD's datastore only)."""
    max_tokens: int = 256
    temperature: float = 0.0
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

    @field_validator("method")
    @classmethod
    def _check_method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; choose one of {', '.join(METHODS)}")
        return v

    @field_validator("context")
    @classmethod
    def _check_context(cls, v: str) -> str:
        if v not in CONTEXTS:
            raise ValueError(f"unknown context {v!r}; choose one of {', '.join(CONTEXTS)}")
        return v

    @field_validator("max_tokens")
    @classmethod
    def _check_max_tokens(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"max_tokens must be >= 1, got {v}")
        return v

    def _settings(self) -> dict[str, Any]:
        return {"model": self.model, "device": self.device, "dtype": self.dtype, "method": self.method,
                "context": self.context, "max_tokens": self.max_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed, "stop": self.stop,
                "spec": self.spec, "engine_kwargs": self.engine_kwargs, "store": self.store,
                "recognize_passages": self.recognize_passages}

    def _request(self, prompt: Any, *, stop: Sequence[str] | None, handles: Sequence[str] = (),
                 **kwargs: Any) -> GenerationRequest:
        passages = kwargs.pop("passages", None)
        return GenerationRequest.build(self._settings(), prompt, passages=passages, handles=handles, stop=stop,
                                       engine=self.engine, **kwargs)

    def _tokenizer(self) -> Any:
        if self.engine is not None:
            return self.engine.tokenizer
        from ..engines import get_engine

        return get_engine(self.model, device=self.device, dtype=self.dtype).tokenizer

    def _model_name(self, override: str | None = None) -> str:
        return str(override or self.model or DEFAULT_TARGET_NAME)

    def _identifying(self) -> dict[str, Any]:
        return {"model": self._model_name(), "method": self.method, "context": self.context,
                "max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "device": self.device}


def to_engine_messages(messages: Sequence[Any]) -> tuple[list[dict[str, str]], list[str]]:
    """LangChain messages -> engine chat messages, plus the passage handles they carry."""
    roles = {"system": "system", "human": "user", "ai": "assistant", "developer": "system"}
    out: list[dict[str, str]] = []
    handles: list[str] = []
    for m in messages:
        kind = getattr(m, "type", None)
        if kind in ("tool", "function"):
            raise InvalidInputError("this model does not call tools: tool / function messages are not supported")
        role = getattr(m, "role", None) if kind == "chat" else roles.get(kind)
        if role is None:
            raise InvalidInputError(f"unsupported message type {kind!r}")
        out.append({"role": role, "content": _content_text(m.content)})
        handles.extend(h for h in (getattr(m, "additional_kwargs", {}) or {}).get(MESSAGE_KEY, []) or [])
    return out, handles


def iter_pieces(req: GenerationRequest) -> Iterator[tuple[str, Any]]:
    """``(piece, None)`` for every text piece, then ``("", stats)`` once the answer is complete."""
    stream = req.stream()
    for piece in stream:
        yield piece, None
    yield "", stream.stats
