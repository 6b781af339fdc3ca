"""LlamaIndex adapters: :class:`RefragRasdLLM` (a ``CustomLLM``), :class:`RefragLlamaRetriever`,
:class:`RefragSynthesizer` and :class:`RefragQueryEngine` (hand the retrieved nodes, with their stored
chunk embeddings, to the engine), and :class:`RefragLlamaVectorStore` (the store as a LlamaIndex vector store,
for ``VectorStoreIndex.from_vector_store``).

Example:
    >>> from refrag_rasd_integrations.store import RefragChromaStore
    >>> qe = RefragChromaStore("wiki").as_query_engine(similarity_top_k=4, max_tokens=128)  # doctest: +SKIP
    >>> print(qe.query("Who wrote Hamlet?"))                                                  # doctest: +SKIP
"""

from .llms import RefragRasdLLM
from .query_engine import RefragQueryEngine, RefragSynthesizer
from .retrievers import RefragLlamaRetriever, chroma_where
from .vector_stores import RefragLlamaVectorStore, RefragStoreEmbedding

__all__ = ["RefragLlamaRetriever", "RefragLlamaVectorStore", "RefragQueryEngine", "RefragRasdLLM",
           "RefragStoreEmbedding", "RefragSynthesizer", "chroma_where"]
