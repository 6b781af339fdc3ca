"""``RefragLlamaRetriever``: the retriever of a :class:`~refrag_rasd_integrations.llama_index.RefragLlamaVectorStore`.

A ``VectorIndexRetriever`` over a ``VectorStoreIndex`` on that vector store, so it returns exactly the nodes
``index.as_retriever()`` would: ``RefragLlamaVectorStore(...).as_retriever()`` and
:meth:`RefragChromaStore.as_llama_index_retriever
<refrag_rasd_integrations.store.RefragChromaStore.as_llama_index_retriever>` both give one. Each node carries
the passage text, its metadata, a passage handle (``metadata["refrag_passage"]``, kept out of the LLM's and the
embedder's view) and the similarity score; the token ids and chunk embeddings stay in the process registry,
where :class:`RefragRasdLLM` and :class:`RefragSynthesizer` resolve them. (LlamaIndex's own
``ChromaVectorStore`` returns no stored arrays: the vector store queries the collection itself.)

Example:
    >>> from refrag_rasd_integrations.llama_index import RefragLlamaRetriever
    >>> retriever = RefragLlamaRetriever(store, similarity_top_k=2)              # doctest: +REAL_MODEL
    >>> nodes = retriever.retrieve("capital of France")                          # doctest: +REAL_MODEL
    >>> retriever.passages(nodes)[0].chunk_embeddings.shape                      # doctest: +REAL_MODEL
    (2, 384)
"""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core import VectorStoreIndex
from llama_index.core.callbacks import CallbackManager
from llama_index.core.indices.vector_store.retrievers import VectorIndexRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle

from refrag_rasd_core.errors import InvalidInputError

from ..passages import Passage, resolve
from ..store import RefragChromaStore
from .filters import chroma_where
from .vector_stores import RefragLlamaVectorStore

__all__ = ["RefragLlamaRetriever", "RefragRetriever", "chroma_where"]


class RefragLlamaRetriever(VectorIndexRetriever):
    """Top-``similarity_top_k`` passages as ``NodeWithScore`` s, sync and async, with metadata ``filters``
    (LlamaIndex ``MetadataFilters`` or a Chroma ``where`` dict).

    ``store``: a :class:`~refrag_rasd_integrations.store.RefragChromaStore`, a :class:`RefragLlamaVectorStore`
    or a collection name (opened in the default database); or ``index``: a ``VectorStoreIndex`` on a
    :class:`RefragLlamaVectorStore`. Other keyword arguments go to ``VectorIndexRetriever``.

    Example:
        >>> retriever = store.as_llama_index_retriever(similarity_top_k=2)      # doctest: +REAL_MODEL
        >>> len(retriever.retrieve("capital of Spain"))                         # doctest: +REAL_MODEL
        2
    """

    def __init__(self, store: RefragChromaStore | RefragLlamaVectorStore | str | None = None,
                 similarity_top_k: int = 4, filters: Any = None, *, index: VectorStoreIndex | None = None,
                 callback_manager: CallbackManager | None = None, **kwargs: Any) -> None:
        if similarity_top_k < 1:
            raise InvalidInputError(f"similarity_top_k must be >= 1, got {similarity_top_k}")
        if index is None:
            vs = store if isinstance(store, RefragLlamaVectorStore) else RefragLlamaVectorStore(store)
            index = VectorStoreIndex.from_vector_store(vs, embed_model=vs.embed_model)
        elif store is not None:
            raise InvalidInputError("give store or index, not both")
        if not isinstance(index.vector_store, RefragLlamaVectorStore):
            raise InvalidInputError(f"RefragLlamaRetriever reads a RefragLlamaVectorStore, not a "
                                    f"{type(index.vector_store).__name__}")
        super().__init__(index, similarity_top_k=similarity_top_k, filters=filters,
                         callback_manager=callback_manager, **kwargs)

    @property
    def vector_store(self) -> RefragLlamaVectorStore:
        """The vector store the nodes come from."""
        return self._vector_store

    @property
    def store(self) -> RefragChromaStore:
        """The native store behind it."""
        return self._vector_store.store

    @property
    def filters(self) -> Any:
        """The metadata filters every query applies."""
        return self._filters

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        self.store.collection(create=False)  # a missing collection: CollectionNotFoundError, not no nodes
        return super()._retrieve(query_bundle)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        await asyncio.to_thread(self.store.collection, False)
        return await super()._aretrieve(query_bundle)

    def passages(self, nodes: list[Any]) -> list[Passage]:
        """The passages (text, token ids, chunk embeddings) behind nodes this retriever returned."""
        return resolve(nodes, store=self.store)


RefragRetriever = RefragLlamaRetriever
"""The same class under the LangChain retriever's name."""
