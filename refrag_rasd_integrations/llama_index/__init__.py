"""LlamaIndex adapters: :class:`RefragRasdLLM` (a ``CustomLLM``), :class:`RefragLlamaVectorStore` (the store
as a LlamaIndex vector store, for ``VectorStoreIndex.from_vector_store``), :class:`RefragLlamaRetriever` (its
retriever, also named ``RefragRetriever``; what ``RefragChromaStore.as_llama_index_retriever()`` gives), and
:class:`RefragSynthesizer` and :class:`RefragQueryEngine` (hand the retrieved nodes, with their stored chunk
embeddings, to the engine), :class:`RefragChatEngine` (a conversation over the store; ``store.as_chat_engine()``),
and :func:`summary_index` / :func:`summary_query_engine` (long documents: a ``SummaryIndex`` read in one call,
LlamaIndex's ``tree_summarize`` as the baseline).

Example:
    >>> qe = store.as_query_engine(similarity_top_k=2, max_tokens=16)          # doctest: +REAL_MODEL
    >>> bool(str(qe.query("Who wrote Hamlet?")))                              # doctest: +REAL_MODEL
    True
"""

from .chat_engine import RefragChatEngine
from .filters import chroma_where
from .llms import RefragRasdLLM
from .query_engine import RefragQueryEngine, RefragSynthesizer
from .retrievers import RefragLlamaRetriever, RefragRetriever
from .summary import summary_index, summary_nodes, summary_query_engine
from .vector_stores import RefragLlamaVectorStore, RefragStoreEmbedding

__all__ = ["RefragChatEngine", "RefragLlamaRetriever", "RefragLlamaVectorStore", "RefragQueryEngine",
           "RefragRasdLLM", "RefragRetriever", "RefragStoreEmbedding", "RefragSynthesizer", "chroma_where",
           "summary_index", "summary_nodes", "summary_query_engine"]
