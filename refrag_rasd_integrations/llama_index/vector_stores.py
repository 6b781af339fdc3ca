"""``RefragLlamaVectorStore``: a refrag-rasd Chroma store as a LlamaIndex vector store, LlamaIndex's one face
of the store.

``VectorStoreIndex.from_vector_store(vs, embed_model=vs.embed_model)`` builds an index over it;
``VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=vs), ...)`` indexes into
it; ``vs.as_retriever()`` (and :meth:`RefragChromaStore.as_llama_index_retriever
<refrag_rasd_integrations.store.RefragChromaStore.as_llama_index_retriever>`) gives a
:class:`~refrag_rasd_integrations.llama_index.RefragLlamaRetriever` over such an index. Each node is stored
whole (LlamaIndex's node parser did the splitting) with its decoder token ids and REFRAG chunk embeddings,
computed once at indexing; the node itself round-trips (id, metadata, relationships) as with LlamaIndex's own
Chroma store. A node a query returns also carries its passage handle (``metadata["refrag_passage"]``), its
``score`` and the store's own keys, all kept out of the LLM's and the embedder's view; the passage registers
in the process's passage registry, so :class:`~refrag_rasd_integrations.llama_index.RefragRasdLLM` finds its
stored arrays by handle or by its text in the prompt a synthesizer writes: nothing is encoded at query time.

Example:
    >>> from llama_index.core import VectorStoreIndex
    >>> from refrag_rasd_integrations.llama_index import RefragLlamaVectorStore, RefragRasdLLM
    >>> vs = RefragLlamaVectorStore(store)                                                  # doctest: +REAL_MODEL
    >>> index = VectorStoreIndex.from_vector_store(vs, embed_model=vs.embed_model)          # doctest: +REAL_MODEL
    >>> qe = index.as_query_engine(llm=RefragRasdLLM(max_tokens=16), similarity_top_k=2)     # doctest: +REAL_MODEL
    >>> len(qe.query("Who wrote Hamlet?").source_nodes)                                      # doctest: +REAL_MODEL
    2
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.schema import BaseNode, MetadataMode, TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from refrag_rasd_core.errors import InvalidInputError

from ..passages import HANDLE_KEY, STORE_KEYS, Passage
from ..store import DEFAULT_COLLECTION, RefragChromaStore, user_metadata
from .filters import chroma_where

if TYPE_CHECKING:
    from .retrievers import RefragLlamaRetriever

_QUERY_KEYS = frozenset({*STORE_KEYS, HANDLE_KEY, "score"})
"""What a queried node's metadata holds besides its own (hidden from the LLM and the embedder)."""


class RefragStoreEmbedding(BaseEmbedding):
    """The store's retrieval embedder (offline sentence-transformers) as a LlamaIndex embedding model: what
    an index over :class:`RefragLlamaVectorStore` should embed with (the vectors it stores are this model's)."""

    _store: RefragChromaStore = PrivateAttr()

    def __init__(self, store: RefragChromaStore, **kwargs: Any) -> None:
        super().__init__(model_name=store.embedder_name, **kwargs)
        self._store = store

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._store.embed_query(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return np.asarray(self._store.embedder.encode(list(texts), normalize_embeddings=True),
                          dtype=np.float32).tolist()


class RefragLlamaVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store over a :class:`~refrag_rasd_integrations.store.RefragChromaStore`.

    ``store``: the native store (or a collection name); else one is opened with ``collection_name`` and
    ``store_kwargs`` (``path=``, ``host=``/``port=`` for a ``chroma run`` server, ``engine=``, ...).
    Metadata filters: LlamaIndex ``MetadataFilters`` or a Chroma ``where`` dict.

    Example:
        >>> from llama_index.core.schema import TextNode
        >>> vs = RefragLlamaVectorStore(collection_name="notes", engine=engine)            # doctest: +REAL_MODEL
        >>> text = "Madrid is the capital of Spain."
        >>> vs.add([TextNode(text=text, id_="madrid",
        ...                  embedding=vs.embed_model.get_text_embedding(text))])         # doctest: +REAL_MODEL
        ['madrid']
    """

    stores_text: bool = True
    flat_metadata: bool = True

    _store: RefragChromaStore = PrivateAttr()

    def __init__(self, store: RefragChromaStore | str | None = None, *, collection_name: str = DEFAULT_COLLECTION,
                 **store_kwargs: Any) -> None:
        super().__init__()
        if isinstance(store, RefragChromaStore):
            if store_kwargs:
                raise InvalidInputError("give either an opened store or the arguments to open one, not both")
            self._store = store
        else:
            self._store = RefragChromaStore(store or collection_name, **store_kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "RefragLlamaVectorStore"

    @property
    def store(self) -> RefragChromaStore:
        """The native store (indexing, signature checks, passages with their arrays)."""
        return self._store

    @property
    def client(self) -> Any:
        return self._store.collection()

    @property
    def embed_model(self) -> RefragStoreEmbedding:
        """The embedding model whose vectors this store holds (give it to the index)."""
        return RefragStoreEmbedding(self._store)

    def as_retriever(self, **kwargs: Any) -> RefragLlamaRetriever:
        """A :class:`~refrag_rasd_integrations.llama_index.RefragLlamaRetriever` over an index on this store
        (``similarity_top_k``, ``filters``: ``MetadataFilters`` or a Chroma ``where`` dict)."""
        from .retrievers import RefragLlamaRetriever  # the retriever module builds on this one

        return RefragLlamaRetriever(self, **kwargs)

    # ---- writing -------------------------------------------------------------------------------------------
    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Store nodes whole under their ids (an existing id is replaced), with their embeddings when the
        index computed them."""
        nodes = list(nodes)
        if not nodes:
            return []
        have = [n.embedding is not None for n in nodes]
        if any(have) and not all(have):
            raise InvalidInputError("some nodes come with embeddings and some without: embed all or none")
        texts = [n.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]
        metas = [node_to_metadata_dict(n, remove_text=True, flat_metadata=self.flat_metadata) for n in nodes]
        vectors = [n.get_embedding() for n in nodes] if all(have) else None
        return self._store.put_texts(texts, metas, [n.node_id for n in nodes], vectors=vectors,
                                     batch_size=int(kwargs.get("batch_size", 64)))

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete the nodes of one source document."""
        if self._store.exists():
            self._store.delete(where={"ref_doc_id": ref_doc_id})

    def delete_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None,
                     **delete_kwargs: Any) -> None:
        if not self._store.exists():
            return
        if not node_ids and filters is None:
            raise InvalidInputError("give node_ids or filters (to delete everything: clear())")
        self._store.delete(ids=node_ids or None, where=chroma_where(filters))

    def clear(self) -> None:
        """Delete every node (the collection and its recorded configuration stay)."""
        ids = self._store.ids()
        if ids:
            self._store.delete(ids=ids)

    # ---- reading -------------------------------------------------------------------------------------------
    def get_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
                  ) -> list[BaseNode]:
        if not self._store.exists():
            return []
        passages = (self._store.get_passages(node_ids) if node_ids else
                    self._store.passages_where(chroma_where(filters)))
        return [_node(p) for p in passages]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        if query.node_ids:
            raise InvalidInputError("this store filters by metadata, not by node ids: use filters")
        if query.query_embedding is not None:
            vector = query.query_embedding
        elif query.query_str:
            vector = self._store.embed_query(query.query_str)
        else:
            raise InvalidInputError("the query has neither an embedding nor a text")
        where = chroma_where(query.filters)
        if query.doc_ids:
            doc = {"ref_doc_id": {"$in": list(query.doc_ids)}}
            where = {"$and": [where, doc]} if where else doc
        if not self._store.exists():
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        hits = self._store.search_by_vector(vector, max(1, int(query.similarity_top_k)), where)
        return VectorStoreQueryResult(nodes=[_node(p, score=s) for p, s in hits], similarities=[s for _, s in hits],
                                      ids=[p.id for p, _ in hits])

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """:meth:`query` off the event loop."""
        return await asyncio.to_thread(self.query, query, **kwargs)


def _node(p: Passage, score: float | None = None) -> BaseNode:
    """The LlamaIndex node a stored passage was (a record the native indexing wrote becomes a TextNode). With
    a ``score`` (a query's node) its metadata also holds the passage handle, the score and the store's keys,
    hidden from the LLM and the embedder."""
    meta = user_metadata(p.metadata)
    if "_node_content" in meta:
        node = metadata_dict_to_node(meta, text=p.text)
        node.id_ = p.id
    else:
        node = TextNode(text=p.text, id_=p.id, metadata=meta)
    if score is not None:
        extra = {**{k: v for k, v in p.metadata.items() if k in _QUERY_KEYS}, "score": score}
        node.metadata.update(extra)
        for hidden in (node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys):
            hidden.extend(k for k in extra if k not in hidden)
    return node


__all__ = ["RefragLlamaVectorStore", "RefragStoreEmbedding"]
