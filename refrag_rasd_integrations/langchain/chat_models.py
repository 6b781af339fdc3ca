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

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from refrag_rasd_core.engine import GenerationStream

from ..generation import GenerationRequest, run_in_thread, usage
from ..passages import MESSAGE_KEY
from ..settings import ModelSettings
from ._common import LangChainFace, messages_and_handles


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

    @staticmethod
    def _last_chunk(req: GenerationRequest, stream: GenerationStream) -> ChatGenerationChunk:
        return ChatGenerationChunk(message=AIMessageChunk(
            content="", usage_metadata=usage(stream.stats), response_metadata=req.metadata(stream.stats),
            additional_kwargs=_read(req), chunk_position="last"))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any
                ) -> Iterator[ChatGenerationChunk]:
        req = self._request(messages, stop, kwargs)
        stream = req.stream()
        for piece in stream:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield self._last_chunk(req, stream)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any
                       ) -> AsyncIterator[ChatGenerationChunk]:
        items = run_in_thread(lambda: self._opened(messages, stop, kwargs))
        req, stream = await anext(items)
        async for piece in items:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield self._last_chunk(req, stream)

    def _result(self, req: GenerationRequest, stream: GenerationStream) -> ChatResult:
        meta = req.metadata(stream.stats)
        msg = AIMessage(content=stream.text, usage_metadata=usage(stream.stats), response_metadata=meta,
                        additional_kwargs=_read(req))
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


def _read(req: GenerationRequest) -> dict[str, Any]:
    """What an answer carries of the passages its question read (their handles), so that a chat history which
    stores the question as plain text lays them out again in that turn."""
    refs = req.passage_refs()
    return {MESSAGE_KEY: refs} if refs else {}


__all__ = ["ChatRefragRasd"]
