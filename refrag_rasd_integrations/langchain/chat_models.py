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
    >>> chain = {"context": store.as_retriever(k=2), "question": RunnablePassthrough()} | PassagePrompt() | llm  # doctest: +REAL_MODEL
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

from ..generation import iter_pieces, request_for, run_in_thread, usage
from ..settings import ModelSettings
from ._common import messages_and_handles


class ChatRefragRasd(ModelSettings, BaseChatModel):
    """Chat model on a local Hugging Face model, with REFRAG compressed passages and RASD speculative decoding.

    Settings: ``model`` (``None`` = the offline default SmolLM2-135M-Instruct), ``method`` (``rasd``),
    ``context`` (``auto``: REFRAG ``compressed`` when passages come along), ``max_tokens``, ``temperature``,
    ``top_p``, ``top_k``, ``seed``, ``stop``, ``spec``. Weights load on the first call and are shared by all
    instances with the same ``model`` / ``device`` / ``dtype``; calls from threads and asyncio tasks are safe.

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
        params = super()._get_ls_params(stop=stop, **kwargs)
        params.update(ls_provider="refrag-rasd", ls_model_name=self.target_name(kwargs.get("model")),
                      ls_model_type="chat", ls_temperature=kwargs.get("temperature", self.temperature),
                      ls_max_tokens=kwargs.get("max_tokens", self.max_tokens))
        ls_stop = stop or kwargs.get("stop") or self.stop
        if ls_stop:
            params["ls_stop"] = list(ls_stop)
        return params

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the target's own tokenizer (never GPT-2 from the hub)."""
        return list(self.target_tokenizer()(text, add_special_tokens=False)["input_ids"])

    def _chunks(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
                ) -> tuple[Any, Iterator[tuple[str, Any]]]:
        prompt, handles = messages_and_handles(messages)
        req = request_for(self, prompt, stop=stop, handles=handles, **kwargs)
        return req, iter_pieces(req)

    def _with_request(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
                      ) -> Iterator[Any]:
        """The request first (built in the worker thread: it may load weights), then its pieces."""
        req, pieces = self._chunks(messages, stop, kwargs)
        yield req
        yield from pieces

    @staticmethod
    def _last_chunk(req: Any, stats: Any) -> ChatGenerationChunk:
        return ChatGenerationChunk(message=AIMessageChunk(
            content="", usage_metadata=usage(stats), response_metadata=req.metadata(stats),
            chunk_position="last"))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any
                ) -> Iterator[ChatGenerationChunk]:
        req, pieces = self._chunks(messages, stop, kwargs)
        for piece, stats in pieces:
            if stats is not None:
                yield self._last_chunk(req, stats)
                return
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any
                       ) -> AsyncIterator[ChatGenerationChunk]:
        items = run_in_thread(lambda: self._with_request(messages, stop, kwargs))
        req = await anext(items)
        async for piece, stats in items:
            if stats is not None:
                yield self._last_chunk(req, stats)
                return
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk

    def _result(self, req: Any, text: str, stats: Any) -> ChatResult:
        meta = req.metadata(stats)
        msg = AIMessage(content=text, usage_metadata=usage(stats), response_metadata=meta)
        return ChatResult(generations=[ChatGeneration(message=msg, generation_info={
                              "finish_reason": meta["finish_reason"]})],
                          llm_output={"model_name": meta["model_name"], "token_usage": usage(stats)})

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        req, pieces = self._chunks(messages, stop, kwargs)
        text = []
        for piece, stats in pieces:
            if stats is not None:
                return self._result(req, "".join(text), stats)
            text.append(piece)
            if run_manager and piece:
                run_manager.on_llm_new_token(piece)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        items = run_in_thread(lambda: self._with_request(messages, stop, kwargs))
        req = await anext(items)
        text = []
        async for piece, stats in items:
            if stats is not None:
                return self._result(req, "".join(text), stats)
            text.append(piece)
            if run_manager and piece:
                await run_manager.on_llm_new_token(piece)
        raise AssertionError("unreachable")  # pragma: no cover


__all__ = ["ChatRefragRasd"]
