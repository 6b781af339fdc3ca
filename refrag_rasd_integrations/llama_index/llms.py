"""``RefragRasdLLM``: a LlamaIndex ``CustomLLM`` over the refrag-rasd engine.

Example:
    >>> from refrag_rasd_integrations.llama_index import RefragRasdLLM
    >>> llm = RefragRasdLLM(max_tokens=16)
    >>> resp = llm.complete("Why is the sky blue?")              # doctest: +REAL_MODEL
    >>> resp.raw["usage"]["output_tokens"] <= 16, resp.raw["method"]  # doctest: +REAL_MODEL
    (True, 'rasd')
    >>> "".join(r.delta for r in llm.stream_complete("Name three rivers.")) != ""  # doctest: +REAL_MODEL
    True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback

from ..generation import GenerationRequest, run_in_thread, usage
from ..passages import MESSAGE_KEY
from ..settings import CompletionSettings


def to_engine_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex chat messages -> engine chat messages (tool / function roles are refused). A user message
    whose ``additional_kwargs`` carry passage handles (``"refrag_passages"``, as :class:`RefragChatEngine
    <refrag_rasd_integrations.llama_index.chat_engine.RefragChatEngine>` writes) keeps them: the engine lays
    them out in that message, as in the turn that read them."""
    roles = {MessageRole.SYSTEM: "system", MessageRole.USER: "user", MessageRole.ASSISTANT: "assistant",
             MessageRole.DEVELOPER: "system"}
    out = []
    for m in messages:
        role = roles.get(m.role)
        if role is None:
            from refrag_rasd_core.errors import InvalidInputError

            raise InvalidInputError(f"this model does not take {m.role} messages (no tool calling)")
        msg: dict[str, Any] = {"role": role, "content": m.content or ""}
        handles = list((m.additional_kwargs or {}).get(MESSAGE_KEY) or [])
        if handles and role == "user":
            msg["passages"] = handles
        out.append(msg)
    return out


class RefragRasdLLM(CompletionSettings, CustomLLM):
    """LlamaIndex LLM on a local Hugging Face model with REFRAG compressed passages and RASD decoding.

    Same settings as the LangChain models (``model``, ``method``, ``context``, ``max_tokens``,
    ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``, ``spec``, ``engine_kwargs``). Passages come with
    ``complete(question, passages=nodes)`` (nodes from :class:`RefragLlamaRetriever` carry their stored
    chunk embeddings) or are recognised in the prompt text. ``raw`` of every response carries ``usage`` and
    the speed statistics. Weights load lazily and are shared between instances.

    Example:
        >>> llm = RefragRasdLLM(method="pld", max_tokens=32)
        >>> llm.metadata.is_chat_model
        True
    """

    context_window: int | None = None
    """Tokens the model reads (default: the engine's window when it is loaded, else 8192)."""

    @classmethod
    def class_name(cls) -> str:
        return "RefragRasdLLM"

    @property
    def metadata(self) -> LLMMetadata:
        window = self.context_window
        if window is None:
            window = (self.engine.max_positions if self.engine is not None else None) or 8192
        return LLMMetadata(context_window=int(window), num_output=self.generation_config().max_tokens,
                           is_chat_model=True,
                           model_name=self.target_name())

    # ---- plumbing ------------------------------------------------------------------------------------------
    def _prompt(self, prompt: str, formatted: bool) -> str | list[dict[str, str]]:
        if not formatted and self.completion_to_prompt is not None and not self.chat_template:
            prompt = self.completion_to_prompt(prompt)
        return [{"role": "user", "content": prompt}] if self.chat_template else prompt

    def _completions(self, prompt: str | list[dict[str, str]], kwargs: dict[str, Any]
                     ) -> Iterator[CompletionResponse]:
        """The answer as it streams: one response per piece, then the last one with ``raw`` (usage, stats)."""
        kwargs = {k: v for k, v in kwargs.items() if k != "formatted"}
        req = GenerationRequest.build(self, prompt, **kwargs)
        stream = req.stream()
        for piece in stream:
            if piece:
                yield CompletionResponse(text=stream.text, delta=piece)
        yield CompletionResponse(text=stream.text, delta="",
                                 raw={**req.metadata(stream.stats), "usage": usage(stream.stats)})

    # ---- completion ----------------------------------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        *_, last = self._completions(self._prompt(prompt, formatted), kwargs)
        return last

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._completions(self._prompt(prompt, formatted), kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        last = None
        async for r in run_in_thread(lambda: self._completions(self._prompt(prompt, formatted), kwargs)):
            last = r
        return last

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any
                               ) -> CompletionResponseAsyncGen:
        return run_in_thread(lambda: self._completions(self._prompt(prompt, formatted), kwargs))

    # ---- chat ----------------------------------------------------------------------------------------------
    @staticmethod
    def _chat(r: CompletionResponse) -> ChatResponse:
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=r.text), delta=r.delta,
                            raw=r.raw)

    def _chats(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> Iterator[ChatResponse]:
        for r in self._completions(to_engine_messages(messages), kwargs):
            yield self._chat(r)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        *_, last = self._chats(messages, kwargs)
        return last

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._chats(messages, kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        last = None
        async for r in run_in_thread(lambda: self._chats(messages, kwargs)):
            last = r
        return last

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return run_in_thread(lambda: self._chats(messages, kwargs))


__all__ = ["RefragRasdLLM", "to_engine_messages"]
