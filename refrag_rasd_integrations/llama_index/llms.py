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

from collections.abc import AsyncIterator, Iterator, Sequence
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
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.prompts import BasePromptTemplate, PromptTemplate
from llama_index.core.types import Model

from refrag_rasd_core.structured.tool_calls import parse_tool_calls
from refrag_rasd_core.structured.tool_stream import ToolCallStream

from ..generation import GenerationRequest, run_in_thread, usage
from ..settings import CompletionSettings
from .function_calling import (
    chat_with_tools_kwargs,
    engine_message,
    parse_partial,
    parse_structured,
    tool_selections,
    wire_tool_calls,
)


def to_engine_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex chat messages -> engine chat messages (:func:`~.function_calling.engine_message`): tool
    results (``MessageRole.TOOL``) and earlier calls go back into the prompt. A user message whose
    ``additional_kwargs`` carry passage handles (``"refrag_passages"``, as :class:`RefragChatEngine
    <refrag_rasd_integrations.llama_index.chat_engine.RefragChatEngine>` writes) keeps them: the engine lays
    them out in that message, as in the turn that read them."""
    return [engine_message(m) for m in messages]


class RefragRasdLLM(CompletionSettings, CustomLLM, FunctionCallingLLM):
    """LlamaIndex LLM on a local Hugging Face model with REFRAG compressed passages and RASD decoding.

    Same settings as the LangChain models (``model``, ``method``, ``context``, ``max_tokens``,
    ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``, ``spec``, ``engine_kwargs``). Passages come with
    ``complete(question, passages=nodes)`` (nodes from :class:`RefragLlamaRetriever` carry their stored
    chunk embeddings) or are recognised in the prompt text. ``raw`` of every response carries ``usage`` and
    the speed statistics. Weights load lazily and are shared between instances.

    A function-calling LLM (``FunctionAgent`` drives it): ``chat_with_tools`` / ``stream_chat_with_tools``
    offer the tools (``tool_required``, ``tool_choice``, ``allow_parallel_tool_calls``) under the engine's
    grammar, the calls come back in ``message.additional_kwargs["tool_calls"]``
    (:meth:`get_tool_calls_from_response`) and the results go back as ``MessageRole.TOOL`` messages.
    ``structured_predict`` / ``as_structured_llm`` decode under the output class's JSON schema, so the answer
    always validates.

    Example:
        >>> llm = RefragRasdLLM(method="pld", max_tokens=32)
        >>> llm.metadata.is_chat_model, llm.metadata.is_function_calling_model
        (True, True)
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
                           is_chat_model=True, is_function_calling_model=True,
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
    def _chats(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> Iterator[ChatResponse]:
        """The answer as it streams (with tools offered, only the text outside the calls), then the last
        response: ``raw`` (usage, stats) and the calls in ``additional_kwargs["tool_calls"]``."""
        req = GenerationRequest.build(self, to_engine_messages(messages), **kwargs)
        stream = req.stream()
        calls = ToolCallStream() if req.config.offers_tools else None
        content = ""
        for piece in stream:
            delta = piece if calls is None else "".join(e.text for e in calls.push(piece) if e.kind == "text")
            if delta:
                content += delta
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=content), delta=delta)
        raw = {**req.metadata(stream.stats), "usage": usage(stream.stats)}
        text, found = parse_tool_calls(stream.text) if calls is not None else (stream.text, [])
        extra: dict[str, Any] = {}
        if found:
            extra["tool_calls"] = wire_tool_calls(found)
            if raw["finish_reason"] not in ("length", "max_tokens"):
                raw["finish_reason"] = "tool_calls"
        yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text, additional_kwargs=extra),
                           delta="", raw=raw)

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

    # ---- tools and structured output -----------------------------------------------------------------------
    def _prepare_chat_with_tools(self, tools: Sequence[Any], user_msg: str | ChatMessage | None = None,
                                 chat_history: list[ChatMessage] | None = None, verbose: bool = False,
                                 allow_parallel_tool_calls: bool = False, tool_required: bool = False,
                                 **kwargs: Any) -> dict[str, Any]:
        """``chat``'s keywords with ``tools`` offered (see :func:`~.function_calling.chat_with_tools_kwargs`)."""
        return chat_with_tools_kwargs(tools, user_msg, chat_history, tool_required=tool_required,
                                      allow_parallel_tool_calls=allow_parallel_tool_calls, **kwargs)

    def get_tool_calls_from_response(self, response: ChatResponse, error_on_no_tool_call: bool = True,
                                     **kwargs: Any) -> list[ToolSelection]:
        """The answer's calls as :class:`ToolSelection` s.

        Example:
            >>> from llama_index.core.tools import FunctionTool
            >>> add = FunctionTool.from_defaults(fn=lambda a, b: a + b, name="add", description="Add a and b")
            >>> llm = RefragRasdLLM(max_tokens=64)
            >>> r = llm.chat_with_tools([add], "What is 2 + 3?", tool_required=True)   # doctest: +REAL_MODEL
            >>> llm.get_tool_calls_from_response(r)[0].tool_name                     # doctest: +REAL_MODEL
            'add'
        """
        return tool_selections(response, error_on_no_tool_call)

    def structured_predict(self, output_cls: type[Model], prompt: BasePromptTemplate,
                           llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any) -> Model:
        """An ``output_cls`` instance, decoded under its JSON schema (the answer always validates unless
        ``max_tokens`` cuts it short). ``as_structured_llm(output_cls)`` goes through here.

        Example:
            >>> from pydantic import BaseModel
            >>> from llama_index.core.prompts import PromptTemplate
            >>> class City(BaseModel):
            ...     name: str
            >>> RefragRasdLLM(max_tokens=32).structured_predict(
            ...     City, PromptTemplate("The capital of {country}?"), country="France").name  # doctest: +REAL_MODEL
            'Paris'
        """
        messages = prompt.format_messages(llm=self, **prompt_args)
        return parse_structured(output_cls, self.chat(messages, **{**(llm_kwargs or {}),
                                                                   "response_format": output_cls}))

    async def astructured_predict(self, output_cls: type[Model], prompt: BasePromptTemplate,
                                  llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any) -> Model:
        """:meth:`structured_predict`, async."""
        messages = prompt.format_messages(llm=self, **prompt_args)
        return parse_structured(output_cls, await self.achat(messages, **{**(llm_kwargs or {}),
                                                                          "response_format": output_cls}))

    def _structured_stream_call(self, output_cls: type[Model], prompt: PromptTemplate,  # type: ignore[override]
                                llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any) -> Iterator[Any]:
        """``stream_structured_predict``'s partial objects (``FlexibleModel`` s), then the ``output_cls``
        instance."""
        messages = prompt.format_messages(llm=self, **prompt_args)
        for r in self.stream_chat(messages, **{**(llm_kwargs or {}), "response_format": output_cls}):
            obj = parse_partial(output_cls, r)
            if obj is not None:
                yield obj

    async def _structured_astream_call(self, output_cls: type[Model], prompt: PromptTemplate,  # type: ignore[override]
                                       llm_kwargs: dict[str, Any] | None = None, **prompt_args: Any
                                       ) -> AsyncIterator[Any]:
        """:meth:`_structured_stream_call`, async."""
        messages = prompt.format_messages(llm=self, **prompt_args)
        stream = await self.astream_chat(messages, **{**(llm_kwargs or {}), "response_format": output_cls})

        async def gen() -> AsyncIterator[Any]:
            async for r in stream:
                obj = parse_partial(output_cls, r)
                if obj is not None:
                    yield obj
        return gen()


__all__ = ["RefragRasdLLM", "to_engine_messages"]
