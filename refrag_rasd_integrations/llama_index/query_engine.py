"""The LlamaIndex query path that hands the retrieved nodes, with their stored chunk embeddings, to the engine.

LlamaIndex's standard synthesizers flatten nodes into a text prompt, which loses the chunk embeddings.
:class:`RefragSynthesizer` instead calls the LLM with the QUESTION and ``passages=nodes``: the engine lays the
passages out itself (REFRAG compressed chunk vectors when a checkpoint is loaded; RASD's datastore from their
token ids). :class:`RefragQueryEngine` is a ``RetrieverQueryEngine`` with that synthesizer.

Example:
    >>> qe = store.as_query_engine(similarity_top_k=2, max_tokens=16)             # doctest: +REAL_MODEL
    >>> response = qe.query("Who wrote Hamlet?")                                 # doctest: +REAL_MODEL
    >>> response.metadata["refrag_rasd"]["passages"], len(response.source_nodes)  # doctest: +REAL_MODEL
    (2, 2)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from llama_index.core.prompts.mixin import PromptDictType
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.response_synthesizers import BaseSynthesizer
from llama_index.core.schema import NodeWithScore

from .llms import RefragRasdLLM
from .retrievers import RefragLlamaRetriever

STATS_KEY = "refrag_rasd"


class RefragSynthesizer(BaseSynthesizer):
    """Answers from the question plus the nodes themselves (not a text prompt built from them).

    ``response.metadata["refrag_rasd"]`` holds the usage and speed statistics (for a streaming response, once
    the stream is exhausted). ``system_prompt``: an optional system message.

    Example:
        >>> synth = RefragSynthesizer(llm=RefragRasdLLM(max_tokens=16))                     # doctest: +REAL_MODEL
        >>> qe = RetrieverQueryEngine(retriever=store.as_llama_index_retriever(),
        ...                           response_synthesizer=synth)                   # doctest: +REAL_MODEL
        >>> bool(qe.query("Who wrote Hamlet?").response)                                    # doctest: +REAL_MODEL
        True
    """

    def __init__(self, llm: RefragRasdLLM | None = None, *, streaming: bool = False,
                 system_prompt: str | None = None, **kwargs: Any) -> None:
        super().__init__(llm=llm or RefragRasdLLM(), streaming=streaming, **kwargs)
        self.system_prompt = system_prompt

    def _get_prompts(self) -> PromptDictType:
        return {}

    def _update_prompts(self, prompts: PromptDictType) -> None:
        pass

    def _messages(self, query_str: str) -> list[Any]:
        from llama_index.core.base.llms.types import ChatMessage, MessageRole

        msgs = [ChatMessage(role=MessageRole.SYSTEM, content=self.system_prompt)] if self.system_prompt else []
        return msgs + [ChatMessage(role=MessageRole.USER, content=query_str)]

    def synthesize(self, query: Any, nodes: list[NodeWithScore],
                   additional_source_nodes: Sequence[NodeWithScore] | None = None, **response_kwargs: Any) -> Any:
        stats: dict[str, Any] = {}
        response = super().synthesize(query, nodes, additional_source_nodes, passages=nodes, _stats=stats,
                                      **response_kwargs)
        response.metadata = {**(response.metadata or {}), STATS_KEY: stats}
        return response

    async def asynthesize(self, query: Any, nodes: list[NodeWithScore],
                          additional_source_nodes: Sequence[NodeWithScore] | None = None,
                          **response_kwargs: Any) -> Any:
        stats: dict[str, Any] = {}
        response = await super().asynthesize(query, nodes, additional_source_nodes, passages=nodes,
                                             _stats=stats, **response_kwargs)
        response.metadata = {**(response.metadata or {}), STATS_KEY: stats}
        return response

    def get_response(self, query_str: str, text_chunks: Sequence[str], passages: Any = None,
                     _stats: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        stats = _stats if _stats is not None else {}
        gen = self._llm.stream_chat(self._messages(query_str), passages=passages or list(text_chunks), **kwargs)
        if self._streaming:
            return _deltas(gen, stats)
        *_, last = gen
        stats.update(last.raw or {})
        return last.message.content or ""

    async def aget_response(self, query_str: str, text_chunks: Sequence[str], passages: Any = None,
                            _stats: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        stats = _stats if _stats is not None else {}
        gen = await self._llm.astream_chat(self._messages(query_str), passages=passages or list(text_chunks),
                                           **kwargs)
        if self._streaming:
            return _adeltas(gen, stats)
        last = None
        async for r in gen:
            last = r
        stats.update(last.raw or {})
        return last.message.content or ""


def _deltas(gen: Iterator[Any], stats: dict[str, Any]) -> Iterator[str]:
    for r in gen:
        if r.raw:
            stats.update(r.raw)
        if r.delta:
            yield r.delta


async def _adeltas(gen: AsyncIterator[Any], stats: dict[str, Any]) -> AsyncIterator[str]:
    async for r in gen:
        if r.raw:
            stats.update(r.raw)
        if r.delta:
            yield r.delta


class RefragQueryEngine(RetrieverQueryEngine):
    """A ``RetrieverQueryEngine`` whose synthesizer hands the nodes (with chunk embeddings) to the engine.

    Example:
        >>> qe = RefragQueryEngine.from_store(store, similarity_top_k=2, streaming=True,
        ...                                   max_tokens=16)                                # doctest: +REAL_MODEL
        >>> pieces = list(qe.query("Who wrote Hamlet?").response_gen)                       # doctest: +REAL_MODEL
        >>> len(pieces) > 0                                                                 # doctest: +REAL_MODEL
        True
    """

    @classmethod
    def from_store(cls, store: Any, llm: RefragRasdLLM | None = None, *, similarity_top_k: int = 4,
                   filters: Any = None, streaming: bool = False, system_prompt: str | None = None,
                   **llm_kwargs: Any) -> RefragQueryEngine:
        """Build the retriever, the LLM (``llm_kwargs`` are its settings) and the synthesizer in one go."""
        llm = llm or RefragRasdLLM(store=store, **llm_kwargs)
        retriever = RefragLlamaRetriever(store, similarity_top_k=similarity_top_k, filters=filters)
        return cls(retriever=retriever, response_synthesizer=RefragSynthesizer(
            llm=llm, streaming=streaming, system_prompt=system_prompt))


__all__ = ["RefragQueryEngine", "RefragSynthesizer", "STATS_KEY"]
