"""Long documents in LangChain: summarize (or question) documents past the model's window in ONE
:class:`~refrag_rasd_integrations.langchain.ChatRefragRasd` call whose passages are all the documents' chunks,
and LangChain's map-reduce built from runnables on the same model, as the baseline.

* :func:`summarize_documents`: the documents' passages (a store's keep their stored chunk embeddings:
  ``RefragChromaStore.document_passages(source)``, a retriever's documents; other text is split on the fly) go
  to the model as passage handles, with the instruction (or ``question``) as the prompt: one call.
* :func:`map_reduce_documents`: the documents' text in pieces of about ``piece_tokens`` tokens;
  ``prompt | model`` ``.batch``-ed over the pieces (each summarized, or mined for the question), then one call
  combines the partial answers. The model reads every piece as text (passage recognition off).
* :func:`summarize_chain`: either one as a ``Runnable`` over a list of documents.

Both return the final ``AIMessage``; ``response_metadata["long_document"]`` says what the whole run cost
(``strategy``, ``model_calls``, ``pieces``, ``total_s``, ``ttft_s`` to the final answer's first token,
``prefill_positions`` summed over the calls, ``partials`` of the baseline).

Example:
    >>> from refrag_rasd_integrations.langchain import ChatRefragRasd, summarize_documents
    >>> llm = ChatRefragRasd(max_tokens=16, context="compressed")
    >>> msg = summarize_documents(llm, store.document_passages("hamlet"))                  # doctest: +REAL_MODEL
    >>> msg.response_metadata["long_document"]["model_calls"]                               # doctest: +REAL_MODEL
    1
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda

from refrag_rasd_core.errors import InvalidInputError

from ..long_documents import (
    DEFAULT_PIECE_TOKENS,
    STRATEGIES,
    SUMMARIZE_INSTRUCTION,
    document_passages,
    document_text,
    instructions,
    passage_handles,
)
from ..store.splitting import DEFAULT_PASSAGE_TOKENS, PassageSplitter
from .chat_models import ChatRefragRasd

__all__ = ["LONG_DOCUMENT_KEY", "map_reduce_documents", "summarize_chain", "summarize_documents"]

LONG_DOCUMENT_KEY = "long_document"
"""``response_metadata`` key of the whole run's cost."""

_PIECE_PROMPT = ChatPromptTemplate.from_messages([("human", "{instruction}\n\n{text}")])


def _check_model(llm: Any) -> ChatRefragRasd:
    if not isinstance(llm, ChatRefragRasd):
        raise InvalidInputError(f"the model must be a ChatRefragRasd, got {type(llm).__name__}")
    return llm


def summarize_documents(llm: ChatRefragRasd, documents: Sequence[Any], *, question: str | None = None,
                        instruction: str = SUMMARIZE_INSTRUCTION, store: Any = None,
                        passage_tokens: int = DEFAULT_PASSAGE_TOKENS, **kwargs: Any) -> AIMessage:
    """Summarize ``documents`` (or answer ``question`` about them) in ONE call of ``llm`` that reads every one
    of their passages. ``documents``: LangChain ``Document`` s (a retriever's or a vector store's carry their
    stored chunk embeddings), :class:`~refrag_rasd_integrations.passages.Passage` s (``store.document_passages``),
    passage handles or strings. ``store``: where handles the process no longer holds are fetched (default:
    ``llm.store``). ``kwargs``: the call's settings (``context``, ``max_tokens``...).

    Example:
        >>> msg = summarize_documents(ChatRefragRasd(max_tokens=16), ["A long text..."])   # doctest: +SKIP
    """
    llm = _check_model(llm)
    t0 = time.perf_counter()
    passages = document_passages(documents, llm.target_tokenizer(), passage_tokens=passage_tokens,
                                 store=store or llm.store)
    start = time.perf_counter()
    msg = llm.invoke(question if question is not None else instruction, passages=passage_handles(passages),
                     **kwargs)
    stats = msg.response_metadata.get("stats") or {}
    msg.response_metadata[LONG_DOCUMENT_KEY] = {
        "strategy": "whole", "model_calls": 1, "pieces": len(passages), "total_s": time.perf_counter() - t0,
        "ttft_s": start - t0 + float(stats.get("ttft_s") or 0.0),
        "prefill_positions": int(stats.get("prefill_positions") or 0), "partials": []}
    return msg


def map_reduce_documents(llm: ChatRefragRasd, documents: Sequence[Any], *, question: str | None = None,
                         piece_tokens: int = DEFAULT_PIECE_TOKENS, store: Any = None, max_concurrency: int = 1,
                         **kwargs: Any) -> AIMessage:
    """LangChain's map-reduce over ``documents`` on ``llm``: their text in pieces of at most ``piece_tokens``
    tokens, ``prompt | llm | StrOutputParser()`` batched over the pieces (``max_concurrency`` at a time; one
    engine runs one call at a time anyway), then one ``prompt | llm`` call combining the partial answers (none
    for a one-piece document). The pieces are read as text: passage recognition is off for these calls.

    Example:
        >>> msg = map_reduce_documents(ChatRefragRasd(max_tokens=64), docs)              # doctest: +SKIP
        >>> msg.response_metadata["long_document"]["model_calls"] > 1                   # doctest: +SKIP
        True
    """
    llm = _check_model(llm)
    if isinstance(piece_tokens, bool) or not isinstance(piece_tokens, int) or piece_tokens < 16:
        raise InvalidInputError(f"piece_tokens must be an integer >= 16, got {piece_tokens!r}")
    piece_prompt, combine_prompt = instructions(question)
    t0 = time.perf_counter()
    plain = llm.model_copy(update={"recognize_passages": False})
    model = plain.bind(**kwargs) if kwargs else plain
    pieces = PassageSplitter(llm.target_tokenizer(), piece_tokens)(document_text(documents, store=store or llm.store))
    if not pieces:
        raise InvalidInputError("the documents have no text")
    mapped: list[AIMessage] = (_PIECE_PROMPT | model).batch(
        [{"instruction": piece_prompt, "text": p} for p in pieces], config={"max_concurrency": max_concurrency})
    partials = [StrOutputParser().invoke(m).strip() for m in mapped]
    calls = list(mapped)
    start = time.perf_counter()
    if len(pieces) > 1:
        final = (_PIECE_PROMPT | model).invoke(
            {"instruction": combine_prompt, "text": "\n\n".join(p for p in partials if p)})
        calls.append(final)
    else:
        final, start = mapped[0], t0
    stats = [m.response_metadata.get("stats") or {} for m in calls]
    ttft = float(stats[-1].get("ttft_s") or 0.0)
    final.response_metadata[LONG_DOCUMENT_KEY] = {
        "strategy": "map-reduce", "model_calls": len(calls), "pieces": len(pieces),
        "total_s": time.perf_counter() - t0, "ttft_s": (start - t0) + ttft if len(pieces) > 1 else ttft,
        "prefill_positions": sum(int(s.get("prefill_positions") or 0) for s in stats), "partials": partials}
    return final


def summarize_chain(llm: ChatRefragRasd, *, strategy: str = "whole", **kwargs: Any) -> Runnable:
    """A ``Runnable`` from a list of documents to the summary ``AIMessage``: :func:`summarize_documents`
    (``strategy="whole"``) or :func:`map_reduce_documents` (``"map-reduce"``); ``kwargs`` go to that function.

    Example:
        >>> chain = summarize_chain(ChatRefragRasd(max_tokens=16), context="compressed")
        >>> chain.name
        'summarize_whole'
    """
    llm = _check_model(llm)
    if strategy == "whole":
        return RunnableLambda(lambda docs: summarize_documents(llm, docs, **kwargs), name="summarize_whole")
    if strategy == "map-reduce":
        return RunnableLambda(lambda docs: map_reduce_documents(llm, docs, **kwargs), name="summarize_map_reduce")
    raise InvalidInputError(f"strategy must be whole or map-reduce here (LangChain), got {strategy!r}; "
                            f"the engine-level functions offer {', '.join(STRATEGIES)}")
