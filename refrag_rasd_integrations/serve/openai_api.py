"""The OpenAI chat-completions wire format as the server speaks it: the request body (with the
retrieval-augmented extension fields), the response and stream-chunk objects, server-sent events and error
bodies. Framework-neutral: no Ray, no FastAPI.

The extension fields ride in the same JSON body (the OpenAI SDK's ``extra_body``; LangChain's
``ChatOpenAI(extra_body=...)``): ``collection``, ``k``, ``filter``, ``context``, ``expand``, ``policy``,
``method``, ``top_k`` and ``passages``. Fields the server cannot honour (``n`` > 1, ``logprobs``, penalties, the
legacy ``functions``) are refused with a 400, never silently ignored.

Structured output and tools follow OpenAI: ``response_format`` (``text``, ``json_object``, ``json_schema``),
``tools`` (function tools), ``tool_choice`` and ``parallel_tool_calls`` are decoded under the engine's grammar
(:mod:`refrag_rasd_core.structured`); ``tool`` messages and assistant messages with ``tool_calls`` carry a
conversation's earlier calls and their results back to the model.

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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from refrag_rasd_core.errors import InvalidInputError

from ..generation import content_text

SSE_DONE = "data: [DONE]\n\n"


class CalledFunction(BaseModel):
    """The function an earlier answer called: its name and its arguments as a JSON object's text."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=64)
    arguments: str = "{}"

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, value: str) -> str:
        try:
            parsed = json.loads(value or "{}")
        except ValueError:
            raise ValueError("a tool call's arguments must be a JSON object's text") from None
        if not isinstance(parsed, dict):
            raise ValueError("a tool call's arguments must be a JSON object's text")
        return value or "{}"


class ToolCall(BaseModel):
    """One call in an assistant message's ``tool_calls``."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    """One chat message: a role and text content (a string or OpenAI text parts); an assistant message may carry
    ``tool_calls``, a ``tool`` message the result of the call ``tool_call_id``."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = ""
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def as_engine_message(self) -> dict[str, Any]:
        role = "system" if self.role == "developer" else self.role
        msg: dict[str, Any] = {"role": role, "content": content_text(self.content or "")}
        if role == "tool":
            msg["tool_call_id"] = self.tool_call_id or ""
        elif role == "assistant" and self.tool_calls:
            msg["tool_calls"] = [{"id": c.id, "name": c.function.name, "args": json.loads(c.function.arguments)}
                                 for c in self.tool_calls]
        return msg


class FunctionDefinition(BaseModel):
    """A function tool as OpenAI declares it (the name's form is checked by the engine's config)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str


class NamedToolChoice(BaseModel):
    """``tool_choice`` naming the one tool the answer must call."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["function"] = "function"
    function: NamedFunction


class JsonSchema(BaseModel):
    """``response_format.json_schema``: the schema the answer follows (``strict`` is accepted: the grammar
    always is)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormatBody(BaseModel):
    """OpenAI's ``response_format``: ``text``, ``json_object`` or ``json_schema`` (with its ``json_schema``)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormatBody:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs its json_schema")
        return self

    def engine_format(self) -> dict[str, Any]:
        """The dict the engine's :class:`~refrag_rasd_core.structured.ResponseFormat` reads."""
        return self.model_dump(by_alias=True, exclude_none=True)


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
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    logprobs: bool | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: ResponseFormatBody | None = None
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
        if self.functions or self.function_call is not None:
            raise InvalidInputError("functions / function_call (OpenAI's legacy fields) are not supported: use "
                                    "tools / tool_choice")
        if self.logprobs:
            raise InvalidInputError("logprobs are not supported by this server")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise InvalidInputError(f"{name} is not supported by this server (send 0 or leave it out)")
        if not any(m.role == "user" for m in self.messages):
            raise InvalidInputError("the messages need at least one user message")

    def engine_messages(self) -> list[dict[str, Any]]:
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
                 "context": self.context, "expand": self.expand, "policy": self.policy,
                 "parallel_tool_calls": self.parallel_tool_calls,
                 "response_format": self.response_format.engine_format() if self.response_format else None,
                 "tools": [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None,
                 "tool_choice": self.tool_choice.model_dump() if isinstance(self.tool_choice, BaseModel)
                 else self.tool_choice}
        return {k: v for k, v in given.items() if v is not None}

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def usage_of(stats: Any) -> dict[str, Any]:
    """OpenAI ``usage`` of a finished generation; ``prompt_tokens_details.cached_tokens``: prefill positions that
    came from the replica's prefix cache."""
    prompt, completion = int(stats.prompt_tokens), int(stats.new_tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": int(getattr(stats, "cached_tokens", 0))}}


def finish_reason(stats: Any, called: bool = False) -> str:
    """OpenAI's ``finish_reason``: ``length`` when ``max_tokens`` ran out, else ``tool_calls`` when the answer
    ``called`` a tool, else ``stop``."""
    if getattr(stats, "finish_reason", "") in ("length", "max_tokens"):
        return "length"
    return "tool_calls" if called else "stop"


def _wire(model: Any, obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` checked against the ``openai`` package's own type ``model`` (the SDK's wire format), as JSON-ready
    data; the extension fields (``refrag_rasd``) ride along (OpenAI's models keep extra fields)."""
    return model.model_validate(obj).model_dump(mode="json", exclude_unset=True)


def completion(request_id: str, model: str, text: str, stats: Any, extra: dict[str, Any], *,
               tools: bool = False) -> dict[str, Any]:
    """A ``chat.completion`` object (:class:`openai.types.chat.ChatCompletion`); ``tools``: the request offered
    tools, so the calls in ``text`` become ``message.tool_calls`` (arguments as JSON text) and the rest its
    ``content`` (``null`` when the answer is only calls)."""
    from openai.types.chat import ChatCompletion

    from refrag_rasd_core.structured.tool_calls import parse_tool_calls

    content, calls = parse_tool_calls(text) if tools else (text, [])
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["content"] = content or None
        message["tool_calls"] = [{"id": c["id"], "type": "function", "function": {
            "name": c["name"], "arguments": json.dumps(c["arguments"])}} for c in calls]
    return _wire(ChatCompletion, {
        "id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(stats, bool(calls)),
                     "logprobs": None}],
        "usage": usage_of(stats), "refrag_rasd": extra})


def stream_deltas(events: list[Any]) -> list[dict[str, Any]]:
    """The ``delta`` s of a stream's :class:`~refrag_rasd_core.structured.tool_stream.ToolCallEvent` s: text as
    ``content``; a call first as its index, id, type and name (arguments ``""``), then its arguments' pieces."""
    out: list[dict[str, Any]] = []
    for e in events:
        if e.kind == "text" and e.text:
            out.append({"content": e.text})
        elif e.kind == "call":
            out.append({"tool_calls": [{"index": e.index, "id": e.call_id, "type": "function",
                                        "function": {"name": e.text, "arguments": ""}}]})
        elif e.kind == "args" and e.text:
            out.append({"tool_calls": [{"index": e.index, "function": {"arguments": e.text}}]})
    return out


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
           "finish_reason", "sse", "stream_deltas", "usage_chunk", "usage_of"]
