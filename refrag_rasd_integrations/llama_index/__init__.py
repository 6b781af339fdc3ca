"""LlamaIndex adapters: :class:`RefragRasdLLM` (a ``CustomLLM``), :class:`RefragLlamaRetriever`,
:class:`RefragSynthesizer` and :class:`RefragQueryEngine` (hand the retrieved nodes, with their stored
chunk embeddings, to the engine), and :class:`RefragLlamaVectorStore` (the store as a LlamaIndex vector store,
for ``VectorStoreIndex.from_vector_store``).

Example:
    >>> qe = store.as_query_engine(similarity_top_k=2, max_tokens=16)          # doctest: +REAL_MODEL
    >>> bool(str(qe.query("Who wrote Hamlet?")))                              # doctest: +REAL_MODEL
    True
"""

from .llms import RefragRasdLLM
from .query_engine import RefragQueryEngine, RefragSynthesizer
from .retrievers import RefragLlamaRetriever, chroma_where
from .vector_stores import RefragLlamaVectorStore, RefragStoreEmbedding

__all__ = ["RefragLlamaRetriever", "RefragLlamaVectorStore", "RefragQueryEngine", "RefragRasdLLM",
           "RefragStoreEmbedding", "RefragSynthesizer", "chroma_where"]
