"""``RefragLlamaRetriever``: a LlamaIndex retriever over a :class:`~refrag_rasd_integrations.store.RefragChromaStore`.

Queries the Chroma collection directly (LlamaIndex's ``ChromaVectorStore`` returns no stored arrays). Each
``TextNode`` carries the passage text, its metadata, a passage handle (``metadata["refrag_passage"]``, kept out
of the LLM's and the embedder's view) and the similarity score; the token ids and chunk embeddings stay in the
process registry, where :class:`RefragRasdLLM` and :class:`RefragSynthesizer` resolve them.

Example:
    >>> from refrag_rasd_integrations.llama_index import RefragLlamaRetriever
    >>> retriever = RefragLlamaRetriever(store, similarity_top_k=2)              # doctest: +REAL_MODEL
    >>> nodes = retriever.retrieve("capital of France")                          # doctest: +REAL_MODEL
    >>> retriever.passages(nodes)[0].chunk_embeddings.shape                      # doctest: +REAL_MODEL
    (2, 384)
"""

from __future__ import annotations

from typing import Any

from llama_index.core.callbacks import CallbackManager
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from ..passages import DOC_KEY, HANDLE_KEY, INDEX_KEY, N_TOKENS_KEY, Passage, resolve

_HIDDEN = [HANDLE_KEY, DOC_KEY, INDEX_KEY, N_TOKENS_KEY, "score"]


def chroma_where(filters: Any) -> dict[str, Any] | None:
    """A Chroma ``where`` dict from LlamaIndex ``MetadataFilters`` (EQ / NE / GT / GTE / LT / LTE / IN / NIN,
    AND / OR) or a ``where`` dict given as is."""
    if filters is None or isinstance(filters, dict):
        return filters or None
    ops = {"==": "$eq", "!=": "$ne", ">": "$gt", ">=": "$gte", "<": "$lt", "<=": "$lte", "in": "$in",
           "nin": "$nin"}
    parts = []
    for f in filters.filters:
        if hasattr(f, "filters"):
            parts.append(chroma_where(f))
            continue
        op = ops.get(getattr(f.operator, "value", str(f.operator)))
        if op is None:
            from refrag_rasd_core.errors import InvalidInputError

            raise InvalidInputError(f"filter operator {f.operator} is not supported by the Chroma store")
        parts.append({f.key: {op: f.value}})
    if len(parts) == 1:
        return parts[0]
    cond = getattr(filters.condition, "value", str(filters.condition)).lower()
    return {"$or" if cond == "or" else "$and": parts}


class RefragLlamaRetriever(BaseRetriever):
    """Top-``similarity_top_k`` passages as ``NodeWithScore`` s, sync and async, with metadata ``filters``
    (LlamaIndex ``MetadataFilters`` or a Chroma ``where`` dict).

    Example:
        >>> retriever = store.as_llama_index_retriever(similarity_top_k=2)      # doctest: +REAL_MODEL
        >>> len(retriever.retrieve("capital of Spain"))                         # doctest: +REAL_MODEL
        2
    """

    def __init__(self, store: Any, similarity_top_k: int = 4, filters: Any = None,
                 callback_manager: CallbackManager | None = None, **kwargs: Any) -> None:
        if similarity_top_k < 1:
            from refrag_rasd_core.errors import InvalidInputError

            raise InvalidInputError(f"similarity_top_k must be >= 1, got {similarity_top_k}")
        if isinstance(store, str):
            from ..store import RefragChromaStore

            store = RefragChromaStore(store)
        self.store = store
        self.similarity_top_k = similarity_top_k
        self.filters = filters
        super().__init__(callback_manager=callback_manager, **kwargs)

    @staticmethod
    def _nodes(hits: list[tuple[Passage, float]]) -> list[NodeWithScore]:
        out = []
        for p, score in hits:
            node = TextNode(id_=p.id, text=p.text, metadata=dict(p.metadata),
                            excluded_llm_metadata_keys=list(_HIDDEN), excluded_embed_metadata_keys=list(_HIDDEN))
            out.append(NodeWithScore(node=node, score=score))
        return out

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._nodes(self.store.search(query_bundle.query_str, k=self.similarity_top_k,
                                             filter=chroma_where(self.filters)))

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = await self.store.asearch(query_bundle.query_str, k=self.similarity_top_k,
                                        filter=chroma_where(self.filters))
        return self._nodes(hits)

    def passages(self, nodes: list[Any]) -> list[Passage]:
        """The passages (text, token ids, chunk embeddings) behind nodes this retriever returned."""
        return resolve(nodes, store=self.store)


__all__ = ["RefragLlamaRetriever", "chroma_where"]
