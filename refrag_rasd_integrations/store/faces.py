"""The frameworks' faces of a store: :class:`FrameworkFaces` gives
:class:`~refrag_rasd_integrations.store.RefragChromaStore` its LangChain retriever and its LlamaIndex retriever,
query engine and chat engine. The framework packages are imported when a face is asked for, never when the
store is: the store itself stays framework-free.

Example:
    >>> retriever = store.as_retriever(k=2)                   # doctest: +REAL_MODEL
    >>> type(retriever).__name__                              # doctest: +REAL_MODEL
    'RefragRetriever'
"""

from __future__ import annotations

from typing import Any

__all__ = ["FrameworkFaces"]


class FrameworkFaces:
    """``as_retriever`` (LangChain), ``as_llama_index_retriever``, ``as_query_engine`` and ``as_chat_engine``
    (LlamaIndex) over this store."""

    def as_retriever(self, **kwargs: Any) -> Any:
        """A LangChain retriever over this store (``k``, ``filter``): what
        :class:`~refrag_rasd_integrations.langchain.RefragVectorStore` ``(store).as_retriever()`` gives."""
        from ..langchain.vectorstores import RefragVectorStore

        return RefragVectorStore(self).as_retriever(**kwargs)

    def as_llama_index_retriever(self, **kwargs: Any) -> Any:
        """A LlamaIndex retriever over this store (``similarity_top_k``, ``filters``): what
        :class:`~refrag_rasd_integrations.llama_index.RefragLlamaVectorStore` ``(store).as_retriever()`` gives."""
        from ..llama_index.vector_stores import RefragLlamaVectorStore

        return RefragLlamaVectorStore(self).as_retriever(**kwargs)

    def as_query_engine(self, llm: Any = None, *, similarity_top_k: int = 4, streaming: bool = False,
                        **llm_kwargs: Any) -> Any:
        """A LlamaIndex query engine that hands the retrieved passages, with their chunk embeddings, to the
        engine (REFRAG + RASD)."""
        from ..llama_index.query_engine import RefragQueryEngine

        return RefragQueryEngine.from_store(self, llm=llm, similarity_top_k=similarity_top_k,
                                            streaming=streaming, **llm_kwargs)

    def as_chat_engine(self, llm: Any = None, *, similarity_top_k: int = 4, **llm_kwargs: Any) -> Any:
        """A LlamaIndex chat engine: each turn retrieves its passages, which reach the engine with their chunk
        embeddings and stay with the turn in the chat memory."""
        from ..llama_index.chat_engine import RefragChatEngine

        return RefragChatEngine.from_store(self, llm=llm, similarity_top_k=similarity_top_k, **llm_kwargs)
