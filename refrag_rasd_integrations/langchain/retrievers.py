"""``RefragRetriever``: a LangChain retriever over a :class:`~refrag_rasd_integrations.store.RefragChromaStore`.

Each ``Document`` carries the passage text, its metadata, its similarity ``score`` and a passage handle under
``metadata["refrag_passage"]``; the token ids and chunk embeddings stay in the process (the passage
registry), where :class:`~refrag_rasd_integrations.langchain.ChatRefragRasd` picks them up, so traces never
carry arrays. ``retriever.passages(docs)`` gives the :class:`Passage` objects with their arrays.

Example:
    >>> from refrag_rasd_integrations.langchain import RefragRetriever
    >>> retriever = RefragRetriever(store=store, k=4, filter={"source": "hamlet"})  # doctest: +REAL_MODEL
    >>> docs = retriever.invoke("who wrote it?", k=2)                               # doctest: +REAL_MODEL
    >>> len(docs), retriever.passages(docs)[0].chunk_embeddings.shape               # doctest: +REAL_MODEL
    (1, (2, 384))
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, field_validator

from ..passages import Passage, resolve


class RefragRetriever(BaseRetriever):
    """Top-``k`` passages of a refrag-rasd Chroma store, sync and async, with Chroma ``where`` metadata
    filters (``filter``); both can be given per call: ``retriever.invoke(query, k=2, filter={...})``.

    ``store`` is a :class:`~refrag_rasd_integrations.store.RefragChromaStore` or a collection name (opened in
    the default embedded database).

    Example:
        >>> retriever = store.as_retriever(k=3)                # doctest: +REAL_MODEL
        >>> [d.metadata["source"] for d in retriever.invoke("capital of France")][0]  # doctest: +REAL_MODEL
        'paris'
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Any
    k: int = 4
    filter: dict[str, Any] | None = None

    @field_validator("store", mode="before")
    @classmethod
    def _open_store(cls, v: Any) -> Any:
        if isinstance(v, str):
            from ..store import RefragChromaStore

            return RefragChromaStore(v)
        return v

    @field_validator("k")
    @classmethod
    def _check_k(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"k must be >= 1, got {v}")
        return v

    @staticmethod
    def _documents(hits: list[tuple[Passage, float]]) -> list[Document]:
        return [Document(page_content=p.text, metadata=dict(p.metadata), id=p.id) for p, _ in hits]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None, filter: dict[str, Any] | None = None,
                                **kwargs: Any) -> list[Document]:
        return self._documents(self.store.search(query, k=k or self.k, filter=filter or self.filter, **kwargs))

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                                       k: int | None = None, filter: dict[str, Any] | None = None,
                                       **kwargs: Any) -> list[Document]:
        hits = await self.store.asearch(query, k=k or self.k, filter=filter or self.filter, **kwargs)
        return self._documents(hits)

    def passages(self, documents: list[Document]) -> list[Passage]:
        """The passages (text, token ids, chunk embeddings) behind documents this retriever returned."""
        return resolve(documents, store=self.store)


__all__ = ["RefragRetriever"]
