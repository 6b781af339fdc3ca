"""``RefragRetriever``: the ``VectorStoreRetriever`` of a
:class:`~refrag_rasd_integrations.langchain.RefragVectorStore`.

``RefragVectorStore(...).as_retriever()`` and
:meth:`RefragChromaStore.as_retriever <refrag_rasd_integrations.store.RefragChromaStore.as_retriever>` both give
one. Each ``Document`` carries the passage text, its metadata, its similarity ``score`` and a passage handle
under ``metadata["refrag_passage"]``; the token ids and chunk embeddings stay in the process (the passage
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

from typing import Any, ClassVar

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.vectorstores import VectorStoreRetriever
from pydantic import field_validator, model_validator

from refrag_rasd_core.errors import InvalidInputError

from ..passages import Passage, resolve
from ..store import RefragChromaStore
from .vectorstores import RefragVectorStore

__all__ = ["RefragRetriever"]


class RefragRetriever(VectorStoreRetriever):
    """Top-``k`` passages of a refrag-rasd store, sync and async, with Chroma ``where`` metadata filters
    (``filter``); both can be given per call: ``retriever.invoke(query, k=2, filter={...})``.

    Built on ``vectorstore`` (a :class:`RefragVectorStore`), or on ``store``: a
    :class:`~refrag_rasd_integrations.store.RefragChromaStore`, a :class:`RefragVectorStore` or a collection
    name (opened in the default database). ``k`` and ``filter`` may come in LangChain's ``search_kwargs``.

    Example:
        >>> retriever = store.as_retriever(k=3)                # doctest: +REAL_MODEL
        >>> [d.metadata["source"] for d in retriever.invoke("capital of France")][0]  # doctest: +REAL_MODEL
        'paris'
    """

    allowed_search_types: ClassVar[tuple[str, ...]] = ("similarity", "similarity_score_threshold")

    k: int = 4
    filter: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _open_store(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "store" in data:
            if data.get("vectorstore") is not None:
                raise InvalidInputError("give store or vectorstore, not both")
            store = data.pop("store")
            data["vectorstore"] = store if isinstance(store, RefragVectorStore) else RefragVectorStore(store)
        if data.get("vectorstore") is not None and not isinstance(data["vectorstore"], RefragVectorStore):
            raise InvalidInputError(f"RefragRetriever reads a RefragVectorStore, not a "
                                    f"{type(data['vectorstore']).__name__}")
        search_kwargs = data.get("search_kwargs") or {}
        for key in ("k", "filter"):
            if key not in data and key in search_kwargs:
                data[key] = search_kwargs[key]
        return data

    @field_validator("k")
    @classmethod
    def _check_k(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"k must be >= 1, got {v}")
        return v

    @property
    def store(self) -> RefragChromaStore:
        """The native store the documents come from."""
        return self.vectorstore.store

    def _query_args(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
        args = {**self.search_kwargs, **kwargs}
        args["k"] = kwargs.get("k") or self.k
        args["filter"] = kwargs.get("filter") or self.filter
        threshold = args.pop("score_threshold", None)
        if self.search_type != "similarity_score_threshold":
            threshold = None
        return args, threshold

    @staticmethod
    def _documents(hits: list[tuple[Passage, float]], threshold: float | None) -> list[Document]:
        return [Document(page_content=p.text, metadata=dict(p.metadata), id=p.id) for p, score in hits
                if threshold is None or score >= threshold]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                **kwargs: Any) -> list[Document]:
        args, threshold = self._query_args(kwargs)
        return self._documents(self.vectorstore.search_passages(query, **args), threshold)

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                                       **kwargs: Any) -> list[Document]:
        args, threshold = self._query_args(kwargs)
        return self._documents(await self.vectorstore.asearch_passages(query, **args), threshold)

    def passages(self, documents: list[Document]) -> list[Passage]:
        """The passages (text, token ids, chunk embeddings) behind documents this retriever returned."""
        return resolve(documents, store=self.store)
