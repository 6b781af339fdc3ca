"""The OpenAI chat-completions wire format as the server speaks it: the request body (with the
retrieval-augmented extension fields), the response and stream-chunk objects, server-sent events and error
bodies. Framework-neutral: no Ray, no FastAPI.

The extension fields ride in the same JSON body (the OpenAI SDK's ``extra_body``; LangChain's
``ChatOpenAI(extra_body=...)``): ``collection``, ``k``, ``filter``, ``context``, ``expand``, ``policy``,
``method``, ``top_k`` and ``passages``. Fields the server cannot honour (``n`` > 1, ``tools``, ``logprobs``,
penalties, a JSON ``response_format``) are refused with a 400, never silently ignored.

Example:
    >>> req = ChatCompletionRequest.model_validate(
    ...     {"model": "refrag-rasd", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8,
    ...      "collection": "docs", "k": 3, "context": "compressed", "expand": 0.25})
    >>> req.question(), req.retrieval(), req.generation_settings()["expand"]
    ('Hi', ('docs', 3), 0.25)
    >>> sse({"a": 1}), SSE_DONE
    ('data: {"a":1}\\n\\n', 'data: [DONE]\\n\\n')
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from refrag_rasd_core.errors import InvalidInputError

from ..generation import content_text

SSE_DONE = "data: [DONE]\n\n"


class ChatMessage(BaseModel):
    """One chat message: a role and text content (a string or OpenAI text parts)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = ""

    def as_engine_message(self) -> dict[str, str]:
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content_text(self.content or "")}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """A ``POST /v1/chat/completions`` body: OpenAI's fields plus the retrieval-augmented ones."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    tools: list[Any] | None = None
    logprobs: bool | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: dict[str, Any] | None = None
    # ---- retrieval-augmented extension -------------------------------------------------------------------
    collection: str | None = None
    """Chroma collection to retrieve passages from (default: the server's ``--collection``)."""
    k: int | None = Field(default=None, ge=0)
    """Passages to retrieve for the last user message (0: no retrieval)."""
    filter: dict[str, Any] | None = None
    """Chroma ``where`` filter on the passages' metadata."""
    passages: list[str] | None = None
    """Passage texts given with the request (retrieval is skipped)."""
    context: str | None = None
    expand: float | None = None
    policy: str | None = None
    method: str | None = None
    top_k: int | None = None

    def check_supported(self) -> None:
        """Refuse what this server cannot honour (raises :class:`InvalidInputError`)."""
        if self.n not in (None, 1):
            raise InvalidInputError("n must be 1: one answer per request")
        if self.tools:
            raise InvalidInputError("tools are not supported by this server")
        if self.logprobs:
            raise InvalidInputError("logprobs are not supported by this server")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise InvalidInputError(f"{name} is not supported by this server (send 0 or leave it out)")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise InvalidInputError("only response_format {'type': 'text'} is supported")
        if not any(m.role == "user" for m in self.messages):
            raise InvalidInputError("the messages need at least one user message")

    def engine_messages(self) -> list[dict[str, str]]:
        return [m.as_engine_message() for m in self.messages]

    def question(self) -> str:
        """The last user message's text: the retrieval query."""
        return next(m.as_engine_message()["content"] for m in reversed(self.messages) if m.role == "user")

    def retrieval(self, default_collection: str | None = None, default_k: int = 4) -> tuple[str | None, int]:
        """``(collection, k)`` to retrieve from; ``(None, 0)`` when the request asks for none."""
        collection = self.collection or default_collection
        k = default_k if self.k is None else self.k
        return (collection, k) if collection and k > 0 and not self.passages else (None, 0)

    def generation_settings(self) -> dict[str, Any]:
        """The generation settings this request gives (unchecked: the engine's
        :class:`~refrag_rasd_core.generation_config.GenerationConfig` checks them and fills the rest from the
        server's defaults)."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        given = {"max_tokens": self.max_completion_tokens or self.max_tokens, "temperature": self.temperature,
                 "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed, "stop": stop, "method": self.method,
                 "context": self.context, "expand": self.expand, "policy": self.policy}
        return {k: v for k, v in given.items() if v is not None}

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def usage_of(stats: Any) -> dict[str, Any]:
    """OpenAI ``usage`` of a finished generation; ``prompt_tokens_details.cached_tokens``: prefill positions that
    came from the replica's prefix cache."""
    prompt, completion = int(stats.prompt_tokens), int(stats.new_tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": int(getattr(stats, "cached_tokens", 0))}}


def finish_reason(stats: Any) -> str:
    """OpenAI's ``finish_reason``: ``length`` when ``max_tokens`` ran out, else ``stop``."""
    return "length" if getattr(stats, "finish_reason", "") in ("length", "max_tokens") else "stop"


def _wire(model: type, obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` checked against the ``openai`` package's own type ``model`` (the SDK's wire format), as JSON-ready
    data; the extension fields (``refrag_rasd``) ride along (OpenAI's models keep extra fields)."""
    return model.model_validate(obj).model_dump(mode="json", exclude_unset=True)


def completion(request_id: str, model: str, text: str, stats: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` object (:class:`openai.types.chat.ChatCompletion`)."""
    from openai.types.chat import ChatCompletion

    return _wire(ChatCompletion, {
        "id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason(stats), "logprobs": None}],
        "usage": usage_of(stats), "refrag_rasd": extra})


def chunk(request_id: str, model: str, created: int, delta: dict[str, Any], finish: str | None = None,
          **fields: Any) -> dict[str, Any]:
    """A ``chat.completion.chunk`` object with one choice (:class:`openai.types.chat.ChatCompletionChunk`)."""
    from openai.types.chat import ChatCompletionChunk

    return _wire(ChatCompletionChunk, {
        "id": request_id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **fields})


def usage_chunk(request_id: str, model: str, created: int, stats: Any) -> dict[str, Any]:
    """The last chunk of a stream asked with ``stream_options.include_usage``: no choices, the usage."""
    from openai.types.chat import ChatCompletionChunk

    return _wire(ChatCompletionChunk, {"id": request_id, "object": "chat.completion.chunk", "created": created,
                                       "model": model, "choices": [], "usage": usage_of(stats)})


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def sse(obj: dict[str, Any]) -> str:
    """One server-sent event carrying ``obj`` as JSON."""
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


__all__ = ["SSE_DONE", "ChatCompletionRequest", "ChatMessage", "chunk", "completion", "error_body",
           "finish_reason", "sse", "usage_chunk", "usage_of"]
