"""``RefragRasdLLM``: the string-in / string-out LangChain LLM (for string chains and legacy code).

Example:
    >>> from refrag_rasd_integrations.langchain import RefragRasdLLM
    >>> llm = RefragRasdLLM(max_tokens=16)
    >>> isinstance(llm.invoke("Write one sentence about rivers."), str)   # doctest: +REAL_MODEL
    True
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from ..generation import iter_pieces, request_for, run_in_thread, usage
from ..settings import CompletionSettings


class RefragRasdLLM(CompletionSettings, BaseLLM):
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
        params = super()._get_ls_params(stop=stop, **kwargs)
        params.update(ls_provider="refrag-rasd", ls_model_name=self.target_name(kwargs.get("model")),
                      ls_model_type="llm", ls_temperature=kwargs.get("temperature", self.temperature),
                      ls_max_tokens=kwargs.get("max_tokens", self.max_tokens))
        return params

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the target's own tokenizer (never GPT-2 from the hub)."""
        return list(self.target_tokenizer()(text, add_special_tokens=False)["input_ids"])

    def _prompt(self, prompt: str) -> Any:
        return [{"role": "user", "content": prompt}] if self.chat_template else prompt

    def _with_request(self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any]) -> Iterator[Any]:
        req = request_for(self, self._prompt(prompt), stop=stop, **dict(kwargs))
        yield req
        yield from iter_pieces(req)

    @staticmethod
    def _info(req: Any, stats: Any) -> dict[str, Any]:
        return {**req.metadata(stats), "usage": usage(stats)}

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        items = self._with_request(prompt, stop, kwargs)
        req = next(items)
        for piece, stats in items:
            if stats is not None:
                yield GenerationChunk(text="", generation_info=self._info(req, stats))
                return
            chunk = GenerationChunk(text=piece)
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk

    async def _astream(self, prompt: str, stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any
                       ) -> AsyncIterator[GenerationChunk]:
        items = run_in_thread(lambda: self._with_request(prompt, stop, kwargs))
        req = await anext(items)
        async for piece, stats in items:
            if stats is not None:
                yield GenerationChunk(text="", generation_info=self._info(req, stats))
                return
            chunk = GenerationChunk(text=piece)
            if run_manager:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk

    def _one(self, prompt: str, stop: list[str] | None, run_manager: Any, kwargs: dict[str, Any]) -> Generation:
        text = []
        for chunk in self._stream(prompt, stop=stop, run_manager=run_manager, **kwargs):
            if chunk.generation_info:
                return Generation(text="".join(text), generation_info=chunk.generation_info)
            text.append(chunk.text)
        raise AssertionError("unreachable")  # pragma: no cover

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        gens = [[self._one(p, stop, run_manager, kwargs)] for p in prompts]
        return _result(gens)

    async def _agenerate(self, prompts: list[str], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        gens = []
        for p in prompts:
            text, info = [], None
            async for chunk in self._astream(p, stop=stop, run_manager=run_manager, **kwargs):
                if chunk.generation_info:
                    info = chunk.generation_info
                else:
                    text.append(chunk.text)
            gens.append([Generation(text="".join(text), generation_info=info)])
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
