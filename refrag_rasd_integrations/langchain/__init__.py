"""LangChain adapters: :class:`ChatRefragRasd` (chat model), :class:`RefragRasdLLM` (string LLM),
:class:`RefragVectorStore` (a :class:`~refrag_rasd_integrations.store.RefragChromaStore` as a LangChain
``VectorStore``), :class:`RefragRetriever` (its ``VectorStoreRetriever``, also what
``RefragChromaStore.as_retriever()`` gives),
:class:`PassagePrompt` (hands retrieved passages, with their stored chunk embeddings, to the model), and
:func:`summarize_documents` / :func:`map_reduce_documents` / :func:`summarize_chain` (long documents: all their
chunks in one call, and LangChain's map-reduce as the baseline).

Example:
    >>> from langchain_core.runnables import RunnablePassthrough
    >>> from refrag_rasd_integrations.langchain import ChatRefragRasd, PassagePrompt
    >>> chain = ({"context": store.as_retriever(k=2), "question": RunnablePassthrough()}
    ...          | PassagePrompt() | ChatRefragRasd(max_tokens=16))          # doctest: +REAL_MODEL
    >>> chain.invoke("Who wrote Hamlet?").response_metadata["passages"]       # doctest: +REAL_MODEL
    2
"""

from .chat_models import ChatRefragRasd
from .llms import RefragRasdLLM
from .prompts import PassagePrompt
from .retrievers import RefragRetriever
from .summarize import map_reduce_documents, summarize_chain, summarize_documents
from .vectorstores import RefragVectorStore

__all__ = ["ChatRefragRasd", "PassagePrompt", "RefragRasdLLM", "RefragRetriever", "RefragVectorStore",
           "map_reduce_documents", "summarize_chain", "summarize_documents"]
