"""``ChatRefragRasd``: a LangChain chat model over the refrag-rasd engine (REFRAG prefill + RASD decoding).

Example:
    >>> from refrag_rasd_integrations.langchain import ChatRefragRasd
    >>> llm = ChatRefragRasd(max_tokens=16)                     # weights load on the first call
    >>> msg = llm.invoke("Why is the sky blue?")                # doctest: +REAL_MODEL
    >>> msg.usage_metadata["output_tokens"] <= 16, msg.response_metadata["method"]  # doctest: +REAL_MODEL
    (True, 'rasd')

With a retriever, hand the passages over WITH their stored chunk embeddings (no encoder runs at query time):

    >>> from langchain_core.runnables import RunnablePassthrough
    >>> from refrag_rasd_integrations.langchain import PassagePrompt
    >>> chain = ({"context": store.as_retriever(k=2), "question": RunnablePassthrough()}
    ...          | PassagePrompt() | llm)                             # doctest: +REAL_MODEL
    >>> chain.invoke("Who wrote Hamlet?").response_metadata["passages"]   # doctest: +REAL_MODEL
    2
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool

from refrag_rasd_core.engine import GenerationStream
from refrag_rasd_core.structured.tool_calls import parse_tool_calls
from refrag_rasd_core.structured.tool_stream import ToolCallStream

from ..generation import GenerationRequest, run_in_thread, usage
from ..passages import MESSAGE_KEY
from ..settings import ModelSettings
from ._common import LangChainFace, messages_and_handles
from .structured import bind_tools, structured_output


class ChatRefragRasd(LangChainFace, ModelSettings, BaseChatModel):
    """Chat model on a local Hugging Face model, with REFRAG compressed passages and RASD speculative decoding.

    Settings: ``model`` (``None`` = the offline default SmolLM2-135M-Instruct), ``method`` (default ``rasd``),
    ``context`` (default ``auto``: the engine's measured operating point when passages come along, plain RAG
    with the shipped checkpoint; ``compressed`` asks for REFRAG), ``max_tokens``, ``temperature``, ``top_p``,
    ``top_k``, ``seed``, ``stop``, ``spec``; defaults are
    :class:`~refrag_rasd_core.generation_config.GenerationConfig`'s. Weights load on the first call and are shared
    by all instances with the same ``model`` / ``device`` / ``dtype``; calls from threads and asyncio tasks are safe.

    Passages reach the engine as handles (never as arrays, so traces stay small): from
    :class:`~refrag_rasd_integrations.langchain.prompts.PassagePrompt`, from ``invoke(..., passages=docs)``, or
    recognised in the prompt text (``recognize_passages``). ``response_metadata`` carries the speed statistics
    (``time_to_first_token_s``, ``accepted_per_forward``, ``decode_tokens_per_s``, ``stats``).

    Structured output and tools (decoded under a grammar, so every answer parses; see docs/structured.md):
    ``with_structured_output(Model)`` (``method="json_schema"`` by default, ``"function_calling"`` or
    ``"json_mode"``; ``include_raw``) and ``bind_tools([...], tool_choice=...)``, whose calls come back in
    ``AIMessage.tool_calls`` (streamed as ``tool_call_chunks``) and whose results go back as ``ToolMessage`` s.

    Example:
        >>> llm = ChatRefragRasd(max_tokens=32, method="rasd")
        >>> text = "".join(chunk.content for chunk in llm.stream("Name three rivers."))  # doctest: +REAL_MODEL
    """

    @property
    def _llm_type(self) -> str:
        return "refrag-rasd-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self.identifying()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        return self._ls_params("chat", super()._get_ls_params(stop=stop, **kwargs), stop, kwargs)

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
                 ) -> GenerationRequest:
        prompt, handles = messages_and_handles(messages)
        return GenerationRequest.build(self, prompt, stop=stop, handles=handles, **kwargs)

    def _opened(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
                ) -> Iterator[Any]:
        """The request and its open stream first (built in the worker thread: it may load weights), then the
        stream's pieces."""
        req = self._request(messages, stop, kwargs)
        stream = req.stream()
        yield req, stream
        yield from stream

    def bind_tools(self, tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool], *,
                   tool_choice: str | dict[str, Any] | bool | None = None, **kwargs: Any
                   ) -> Runnable[LanguageModelInput, AIMessage]:
        """This model with ``tools`` offered on every call (OpenAI-format schemas from tools, functions,
        Pydantic models or dicts); ``tool_choice``: ``"auto"`` (default), ``"none"``, ``"any"`` / ``"required"``
        / ``True`` (must call one) or a tool's name. ``parallel_tool_calls=True`` lets one answer call several.

        Example:
            >>> from langchain_core.tools import tool
            >>> @tool
            ... def add(a: int, b: int) -> int:
            ...     "Add two integers."
            ...     return a + b
            >>> msg = ChatRefragRasd(max_tokens=48).bind_tools([add], tool_choice="any").invoke(
            ...     "What is 2 + 3?")                                               # doctest: +REAL_MODEL
            >>> msg.tool_calls[0]["name"]                                          # doctest: +REAL_MODEL
            'add'
        """
        return bind_tools(self, tools, tool_choice=tool_choice, **kwargs)

    def with_structured_output(self, schema: dict[str, Any] | type, *,  # type: ignore[override]
                               method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
                               include_raw: bool = False, strict: bool | None = None,
                               **kwargs: Any) -> Runnable[LanguageModelInput, Any]:
        """A runnable whose answers are ``schema`` instances (a Pydantic model) or dicts (a TypedDict or a
        JSON schema), decoded under the schema's grammar: ``method="json_schema"`` (default: the answer is the
        JSON), ``"function_calling"`` (a forced call of a tool named after the schema) or ``"json_mode"`` (any
        JSON object). ``include_raw=True`` returns ``{"raw", "parsed", "parsing_error"}``. ``strict`` is
        accepted for OpenAI compatibility: the grammar is always strict. Keywords are bound to the model (e.g.
        ``max_tokens``).

        Example:
            >>> from pydantic import BaseModel
            >>> class Capital(BaseModel):
            ...     country: str
            ...     city: str
            >>> answer = ChatRefragRasd(max_tokens=48).with_structured_output(Capital).invoke(
            ...     "The capital of France is Paris.")                                # doctest: +REAL_MODEL
            >>> type(answer).__name__, sorted(answer.model_dump())                   # doctest: +REAL_MODEL
            ('Capital', ['city', 'country'])
        """
        return structured_output(self, schema, method=method, include_raw=include_raw, **kwargs)

    @staticmethod
    def _last_chunk(req: GenerationRequest, stream: GenerationStream,
                    calls: ToolCallStream | None = None) -> ChatGenerationChunk:
        meta = req.metadata(stream.stats)
        if calls is not None and calls.calls:
            meta["finish_reason"] = "tool_calls"
        return ChatGenerationChunk(message=AIMessageChunk(
            content="", usage_metadata=usage(stream.stats), response_metadata=meta,
            additional_kwargs=_read(req), chunk_position="last"))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any
                ) -> Iterator[ChatGenerationChunk]:
        req = self._request(messages, stop, kwargs)
        stream = req.stream()
        calls = ToolCallStream() if req.config.offers_tools else None
        for piece in itertools.chain(stream, [None]):  # as they come (a list would wait for the end)
            for chunk in _chunks(piece, calls):
                if run_manager:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        yield self._last_chunk(req, stream, calls)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any
                       ) -> AsyncIterator[ChatGenerationChunk]:
        items = run_in_thread(lambda: self._opened(messages, stop, kwargs))
        req, stream = await anext(items)
        calls = ToolCallStream() if req.config.offers_tools else None
        async for piece in _and_end(items):
            for chunk in _chunks(piece, calls):
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        yield self._last_chunk(req, stream, calls)

    def _result(self, req: GenerationRequest, stream: GenerationStream) -> ChatResult:
        meta = req.metadata(stream.stats)
        content, calls = parse_tool_calls(stream.text) if req.config.offers_tools else (stream.text, [])
        if calls:
            meta["finish_reason"] = "tool_calls"
        msg = AIMessage(content=content, usage_metadata=usage(stream.stats), response_metadata=meta,
                        additional_kwargs=_read(req), tool_calls=[
                            {"name": c["name"], "args": c["arguments"], "id": c["id"], "type": "tool_call"}
                            for c in calls])
        return ChatResult(generations=[ChatGeneration(message=msg, generation_info={
                              "finish_reason": meta["finish_reason"]})],
                          llm_output={"model_name": meta["model_name"], "token_usage": usage(stream.stats)})

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        req = self._request(messages, stop, kwargs)
        stream = req.stream()
        for piece in stream:
            if run_manager and piece:
                run_manager.on_llm_new_token(piece)
        return self._result(req, stream)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        items = run_in_thread(lambda: self._opened(messages, stop, kwargs))
        req, stream = await anext(items)
        async for piece in items:
            if run_manager and piece:
                await run_manager.on_llm_new_token(piece)
        return self._result(req, stream)


def _chunks(piece: str | None, calls: ToolCallStream | None) -> list[ChatGenerationChunk]:
    """The chunks of one streamed piece (``None``: the end): text as content; with tools offered, a call's
    name, id and argument pieces as ``tool_call_chunks``."""
    if calls is None:
        return [ChatGenerationChunk(message=AIMessageChunk(content=piece))] if piece else []
    out = []
    for e in calls.push(piece) if piece is not None else calls.finish():
        if e.kind == "text":
            out.append(ChatGenerationChunk(message=AIMessageChunk(content=e.text)))
        elif e.kind in ("call", "args"):
            first = e.kind == "call"
            out.append(ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[{
                "name": e.text if first else None, "args": "" if first else e.text, "id": e.call_id if first else None,
                "index": e.index, "type": "tool_call_chunk"}])))
    return out


async def _and_end(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The pieces, then ``None`` (the end)."""
    async for item in items:
        yield item
    yield None


def _read(req: GenerationRequest) -> dict[str, Any]:
    """What an answer carries of the passages its question read (their handles), so that a chat history which
    stores the question as plain text lays them out again in that turn."""
    refs = req.passage_refs()
    return {MESSAGE_KEY: refs} if refs else {}


__all__ = ["ChatRefragRasd"]
