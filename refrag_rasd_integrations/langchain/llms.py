"""``RefragRasdLLM``: the string-in / string-out LangChain LLM (for string chains and legacy code).

Example:
    >>> from refrag_rasd_integrations.langchain import RefragRasdLLM
    >>> llm = RefragRasdLLM(max_tokens=16)
    >>> isinstance(llm.invoke("Write one sentence about rivers."), str)   # doctest: +REAL_MODEL
    True
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from refrag_rasd_core.engine import GenerationStream

from ..generation import GenerationRequest, run_in_thread, usage
from ..settings import CompletionSettings
from ._common import LangChainFace


class RefragRasdLLM(LangChainFace, CompletionSettings, BaseLLM):
    """String LLM over the refrag-rasd engine; same settings as
    :class:`~refrag_rasd_integrations.langchain.ChatRefragRasd`.

    ``chat_template=True`` (default) sends the string as one user message through the model's chat template
    (right for instruct models); ``False`` continues the raw text. Passages come with ``passages=`` or are
    recognised in the prompt text (a ``format_docs`` step over a refrag-rasd retriever's documents).
    ``generation_info`` of each generation carries the usage and the speed statistics.

    Example:
        >>> llm = RefragRasdLLM(chat_template=False, method="pld", max_tokens=16)
        >>> llm.get_num_tokens("hello world")       # the target's tokenizer  # doctest: +REAL_MODEL
        2
    """

    @property
    def _llm_type(self) -> str:
        return "refrag-rasd-llm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {**self.identifying(), "chat_template": self.chat_template}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        return self._ls_params("llm", super()._get_ls_params(stop=stop, **kwargs), stop, kwargs)

    def _prompt(self, prompt: str) -> str | list[dict[str, str]]:
        return [{"role": "user", "content": prompt}] if self.chat_template else prompt

    def _opened(self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any]) -> Iterator[Any]:
        """The request and its open stream first (built in the worker thread: it may load weights), then the
        stream's pieces."""
        req = GenerationRequest.build(self, self._prompt(prompt), stop=stop, **kwargs)
        stream = req.stream()
        yield req, stream
        yield from stream

    @staticmethod
    def _info(req: GenerationRequest, stream: GenerationStream) -> dict[str, Any]:
        return {**req.metadata(stream.stats), "usage": usage(stream.stats)}

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        items = self._opened(prompt, stop, kwargs)
        req, stream = next(items)
        for piece in items:
            chunk = GenerationChunk(text=piece)
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield GenerationChunk(text="", generation_info=self._info(req, stream))

    async def _astream(self, prompt: str, stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any
                       ) -> AsyncIterator[GenerationChunk]:
        items = run_in_thread(lambda: self._opened(prompt, stop, kwargs))
        req, stream = await anext(items)
        async for piece in items:
            chunk = GenerationChunk(text=piece)
            if run_manager:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield GenerationChunk(text="", generation_info=self._info(req, stream))

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        gens = []
        for p in prompts:
            items = self._opened(p, stop, kwargs)
            req, stream = next(items)
            for piece in items:
                if run_manager and piece:
                    run_manager.on_llm_new_token(piece)
            gens.append([Generation(text=stream.text, generation_info=self._info(req, stream))])
        return _result(gens)

    async def _agenerate(self, prompts: list[str], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        gens = []
        for p in prompts:
            items = run_in_thread(functools.partial(self._opened, p, stop, kwargs))
            req, stream = await anext(items)
            async for piece in items:
                if run_manager and piece:
                    await run_manager.on_llm_new_token(piece)
            gens.append([Generation(text=stream.text, generation_info=self._info(req, stream))])
        return _result(gens)


def _result(gens: list[list[Generation]]) -> LLMResult:
    total = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    name = None
    for (g,) in gens:
        info = g.generation_info or {}
        name = name or info.get("model_name")
        for k in total:
            total[k] += int(info.get("usage", {}).get(k, 0))
    return LLMResult(generations=gens, llm_output={"token_usage": total, "model_name": name})


__all__ = ["RefragRasdLLM"]
