"""``RefragVectorStore``: a refrag-rasd Chroma store as a LangChain ``VectorStore``, LangChain's one face of
the store.

Everything LangChain expects of a vector store works on it (``add_documents`` / ``add_texts`` with ids,
``delete``, ``get_by_ids``, ``similarity_search`` with Chroma ``where`` filters, scores, the async twins), and
the records are refrag-rasd's: each one keeps its decoder token ids and REFRAG chunk embeddings, computed once
at indexing. ``as_retriever()`` gives a :class:`~refrag_rasd_integrations.langchain.RefragRetriever` (a
``VectorStoreRetriever``) whose ``Document`` s carry a passage handle (``metadata["refrag_passage"]``) and the
score; :meth:`RefragChromaStore.as_retriever <refrag_rasd_integrations.store.RefragChromaStore.as_retriever>`
gives the same retriever. A ``Document`` of the search methods carries only the text, the caller's metadata
and the id (LangChain's contract); :class:`~refrag_rasd_integrations.langchain.ChatRefragRasd` (through
:class:`~refrag_rasd_integrations.langchain.PassagePrompt`) finds its stored arrays again by its text in the
process's passage registry. Either way nothing is encoded at query time.

It follows LangChain's contract, not the native store's indexing: a document is stored whole under its id
(split long documents first, e.g. with a ``RecursiveCharacterTextSplitter``; for the native split-and-resume
indexing use :meth:`RefragChromaStore.add_documents <refrag_rasd_integrations.store.RefragChromaStore.add_documents>`
on :attr:`RefragVectorStore.store`). Retrieval vectors come from ``embedding`` (any LangChain ``Embeddings``)
or, by default, the store's offline sentence-transformers model.

Example:
    >>> from langchain_core.runnables import RunnablePassthrough
    >>> from refrag_rasd_integrations.langchain import ChatRefragRasd, PassagePrompt, RefragVectorStore
    >>> vs = RefragVectorStore(collection_name="wiki")                     # doctest: +REAL_MODEL
    >>> vs.add_texts(["Paris is the capital of France."], ids=["paris"])    # doctest: +REAL_MODEL
    ['paris']
    >>> chain = ({"context": vs.as_retriever(search_kwargs={"k": 4}), "question": RunnablePassthrough()}
    ...          | PassagePrompt() | ChatRefragRasd(max_tokens=16))          # doctest: +REAL_MODEL
    >>> chain.invoke("What is the capital of France?").response_metadata["passages"]  # doctest: +REAL_MODEL
    1
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from refrag_rasd_core.errors import InvalidInputError

from ..passages import Passage
from ..store import DEFAULT_COLLECTION, RefragChromaStore, user_metadata

if TYPE_CHECKING:
    from .retrievers import RefragRetriever


class _EmbeddingsEncoder:
    """A LangChain ``Embeddings`` as the store's retrieval embedder (sentence-transformers' ``encode``)."""

    def __init__(self, embeddings: Embeddings) -> None:
        self.embeddings = embeddings
        model = getattr(embeddings, "model", None) or getattr(embeddings, "model_name", None)
        self.name = type(embeddings).__name__ + (f":{model}" if isinstance(model, str) else "")

    def encode(self, texts: Sequence[str], normalize_embeddings: bool = True, **_: Any) -> np.ndarray:
        vecs = np.asarray(self.embeddings.embed_documents(list(texts)), dtype=np.float32).reshape(len(texts), -1)
        return _normalized(vecs) if normalize_embeddings else vecs

    def embed_query(self, text: str) -> list[float]:
        """A query's vector (what the store's own ``search`` asks for; an embedder may embed queries apart)."""
        return _normalized(np.asarray([self.embeddings.embed_query(text)], dtype=np.float32))[0].tolist()


def _normalized(vecs: np.ndarray) -> np.ndarray:
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


class _EncoderEmbeddings(Embeddings):
    """The store's sentence-transformers retrieval embedder as a LangChain ``Embeddings``."""

    def __init__(self, store: RefragChromaStore) -> None:
        self.store = store

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return np.asarray(self.store.embedder.encode(list(texts), normalize_embeddings=True),
                          dtype=np.float32).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.store.embed_query(text)


class RefragVectorStore(VectorStore):
    """A LangChain ``VectorStore`` over a :class:`~refrag_rasd_integrations.store.RefragChromaStore`.

    ``store``: the native store (or a collection name); else one is opened with ``collection_name`` and
    ``store_kwargs`` (``path=``, ``host=``/``port=`` for a ``chroma run`` server, ``engine=``, ...).
    ``embedding``: the LangChain ``Embeddings`` for retrieval vectors (default: the store's offline
    sentence-transformers model); the collection records which one built it and refuses another.

    Example:
        >>> vs = RefragVectorStore(collection_name="notes")                         # doctest: +REAL_MODEL
        >>> ids = vs.add_documents([Document("Madrid is the capital of Spain.")])   # doctest: +REAL_MODEL
        >>> vs.similarity_search("capital of Spain", k=1)[0].page_content           # doctest: +REAL_MODEL
        'Madrid is the capital of Spain.'
    """

    def __init__(self, store: RefragChromaStore | str | None = None, *, embedding: Embeddings | None = None,
                 collection_name: str = DEFAULT_COLLECTION, **store_kwargs: Any) -> None:
        if isinstance(store, RefragChromaStore):
            if embedding is not None or store_kwargs:
                raise InvalidInputError("give either an opened store or the arguments to open one, not both")
            self.store = store
        else:
            if embedding is not None:
                enc = _EmbeddingsEncoder(embedding)
                store_kwargs.setdefault("embedder", enc)
                store_kwargs.setdefault("embedder_name", enc.name)
            self.store = RefragChromaStore(store or collection_name, **store_kwargs)
        self._embedding = embedding

    @property
    def embeddings(self) -> Embeddings:
        """The retrieval embeddings (the one given, else the store's model wrapped as ``Embeddings``)."""
        return self._embedding if self._embedding is not None else _EncoderEmbeddings(self.store)

    # ---- writing -------------------------------------------------------------------------------------------
    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *,
                  ids: list[str | None] | None = None, **kwargs: Any) -> list[str]:
        """Store each text whole, under its id (a new uuid4 where none is given); an existing id is
        replaced. Returns the ids."""
        texts = list(texts)
        metas = list(metadatas) if metadatas is not None else [{} for _ in texts]
        given = list(ids) if ids is not None else [None] * len(texts)
        if not len(texts) == len(metas) == len(given):
            raise InvalidInputError(f"{len(texts)} texts, {len(metas)} metadatas and {len(given)} ids")
        if not texts:
            return []
        out = [str(i) if i is not None else str(uuid.uuid4()) for i in given]
        # within one call the last text given for an id wins (what writing them one by one would leave)
        last = {i: n for n, i in enumerate(out)}
        keep = sorted(last.values())
        self.store.put_texts([texts[n] for n in keep], [metas[n] for n in keep], [out[n] for n in keep],
                             batch_size=int(kwargs.get("batch_size", 64)))
        return out

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete by ids (missing ids are ignored), by a metadata filter (``filter={"source": "a.txt"}``), or
        everything when neither is given (the collection and its recorded configuration stay)."""
        if not self.store.exists():
            return True
        where = kwargs.get("filter") or kwargs.get("where")
        if ids is None and where is None:
            ids = self.store.ids()
            if not ids:
                return True
        self.store.delete(ids=list(ids) if ids is not None else None, where=where)
        return True

    # ---- reading -------------------------------------------------------------------------------------------
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The documents with these ids that exist (order not guaranteed, as LangChain specifies)."""
        if not ids or not self.store.exists():
            return []
        return [self._document(p) for p in self.store.get_passages([str(i) for i in ids])]

    def similarity_search(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                          **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter=filter, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        """Documents with their cosine similarity to ``query`` (higher is closer)."""
        return self._scored(self.embeddings.embed_query(query), k, filter, kwargs.get("where_document"))

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4,
                                    filter: dict[str, Any] | None = None, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self._scored(embedding, k, filter, kwargs.get("where_document"))]

    def _select_relevance_score_fn(self) -> Any:
        return lambda similarity: max(0.0, min(1.0, similarity))  # cosine similarity of normalized vectors

    def _scored(self, vector: Sequence[float], k: int, filter: dict[str, Any] | None,
                where_document: dict[str, Any] | None) -> list[tuple[Document, float]]:
        if not self.store.exists():
            return []
        return [(self._document(p), s) for p, s in self.store.search_by_vector(vector, k, filter, where_document)]

    def search_passages(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                        where_document: dict[str, Any] | None = None) -> list[tuple[Passage, float]]:
        """The ``k`` passages closest to ``query`` with their similarity, token ids and chunk embeddings; each
        passage's metadata holds its handle and ``score`` (what :class:`RefragRetriever` returns). Unlike the
        search methods, a missing collection raises
        :class:`~refrag_rasd_integrations.errors.CollectionNotFoundError` (index documents first)."""
        return self.store.search(query, k, filter, where_document)

    async def asearch_passages(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                               where_document: dict[str, Any] | None = None) -> list[tuple[Passage, float]]:
        """:meth:`search_passages` off the event loop."""
        return await asyncio.to_thread(self.search_passages, query, k, filter, where_document)

    def as_retriever(self, **kwargs: Any) -> RefragRetriever:
        """A :class:`~refrag_rasd_integrations.langchain.RefragRetriever` over this store: ``k`` and ``filter``
        (or LangChain's ``search_kwargs={"k": ..., "filter": ...}``), ``search_type`` ``"similarity"`` or
        ``"similarity_score_threshold"`` (with ``search_kwargs={"score_threshold": ...}``)."""
        from .retrievers import RefragRetriever  # the retriever module builds on this one

        tags = kwargs.pop("tags", None) or [*self._get_retriever_tags()]
        return RefragRetriever(vectorstore=self, tags=tags, **kwargs)

    @staticmethod
    def _document(p: Passage) -> Document:
        return Document(page_content=p.text, metadata=user_metadata(p.metadata), id=p.id)

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings | None = None, metadatas: list[dict] | None = None,
                   *, ids: list[str] | None = None, **kwargs: Any) -> RefragVectorStore:
        """A store (``collection_name`` and the native store's arguments in ``kwargs``) holding ``texts``."""
        vs = cls(embedding=embedding, **kwargs)
        vs.add_texts(texts, metadatas, ids=ids)
        return vs


__all__ = ["RefragVectorStore"]
