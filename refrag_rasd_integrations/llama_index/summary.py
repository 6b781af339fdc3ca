"""Long documents in LlamaIndex: a ``SummaryIndex`` over a document's passages (a store's keep their stored
chunk embeddings), queried in ONE engine call that reads every node, and LlamaIndex's own ``tree_summarize`` on
the same LLM as the baseline.

* :func:`summary_nodes` / :func:`summary_index`: the document's passages
  (:func:`~refrag_rasd_integrations.long_documents.document_passages`: ``store.document_passages(source)``,
  nodes, documents or strings, split on the fly when they carry no stored arrays) as ``TextNode`` s, each with
  its passage handle in its metadata (hidden from the LLM and the embedder), in a ``SummaryIndex``.
* :func:`summary_query_engine`: ``index.as_query_engine(llm=..., response_mode=...)`` where
  ``response_mode="whole"`` (:data:`WHOLE`) hands every node, with its chunk embeddings, to ONE call through
  :class:`~refrag_rasd_integrations.llama_index.RefragSynthesizer`; any of LlamaIndex's own response modes
  (``"tree_summarize"``, ``"compact"``...) runs LlamaIndex's synthesizer on the same LLM, reading the nodes as
  text (passage recognition off, so the baseline stays a text baseline).

Example:
    >>> from refrag_rasd_integrations.llama_index import RefragRasdLLM, summary_index, summary_query_engine
    >>> index = summary_index(store.document_passages("hamlet"))                          # doctest: +REAL_MODEL
    >>> qe = summary_query_engine(index, RefragRasdLLM(max_tokens=16, context="compressed"))  # doctest: +REAL_MODEL
    >>> response = qe.query("Summarize the document in a few sentences.")                # doctest: +REAL_MODEL
    >>> response.metadata["refrag_rasd"]["passages"]                                       # doctest: +REAL_MODEL
    1
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core import SummaryIndex
from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.indices.prompt_helper import PromptHelper
from llama_index.core.prompts.chat_prompts import TEXT_QA_SYSTEM_PROMPT
from llama_index.core.response_synthesizers import ResponseMode, get_response_synthesizer
from llama_index.core.schema import TextNode

from refrag_rasd_core.errors import InvalidInputError

from ..long_documents import document_passages, passage_handles
from ..passages import HANDLE_KEY
from ..store.records import user_metadata
from ..store.splitting import DEFAULT_PASSAGE_TOKENS
from .llms import RefragRasdLLM
from .query_engine import RefragSynthesizer

__all__ = ["WHOLE", "summary_index", "summary_nodes", "summary_query_engine"]

WHOLE = "whole"
"""The response mode that reads every node in one engine call (the chunk embeddings reach the model)."""


def summary_nodes(documents: Sequence[Any], tokenizer: Any = None, *, store: Any = None,
                  passage_tokens: int = DEFAULT_PASSAGE_TOKENS) -> list[TextNode]:
    """The passages of ``documents`` as ``TextNode`` s in order, each carrying its passage handle (hidden,
    with every other metadata key, from the LLM's and the embedder's view: a text synthesizer reads the
    passage's text only). ``tokenizer`` splits text without stored arrays (default: the default engine's,
    or ``store``'s).

    Example:
        >>> from tiny import tiny_tokenizer
        >>> [n.text for n in summary_nodes(["One. Two.\\n\\nThree four five."], tiny_tokenizer(), passage_tokens=16)]
        ['One. Two.', 'Three four five.']
    """
    if tokenizer is None:
        tokenizer = store.tokenizer if store is not None else RefragRasdLLM().target_tokenizer()
    passages = document_passages(documents, tokenizer, passage_tokens=passage_tokens, store=store)
    nodes = []
    for p, handle in zip(passages, passage_handles(passages), strict=True):
        meta = {**user_metadata(p.metadata), HANDLE_KEY: handle}
        nodes.append(TextNode(text=p.text, id_=str(p.id), metadata=meta, excluded_llm_metadata_keys=list(meta),
                              excluded_embed_metadata_keys=list(meta)))
    return nodes


def summary_index(documents: Sequence[Any], tokenizer: Any = None, *, store: Any = None,
                  passage_tokens: int = DEFAULT_PASSAGE_TOKENS, **kwargs: Any) -> SummaryIndex:
    """A ``SummaryIndex`` over :func:`summary_nodes` of ``documents`` (``kwargs`` go to ``SummaryIndex``).

    Example:
        >>> from tiny import tiny_tokenizer
        >>> len(summary_index(["Some text. More text."], tiny_tokenizer()).docstore.docs)
        1
    """
    return SummaryIndex(nodes=summary_nodes(documents, tokenizer, store=store, passage_tokens=passage_tokens),
                        **kwargs)


def summary_query_engine(index: SummaryIndex, llm: RefragRasdLLM, *, response_mode: str = WHOLE,
                         streaming: bool = False, **kwargs: Any) -> BaseQueryEngine:
    """``index.as_query_engine`` on ``llm``: ``response_mode="whole"`` hands every node (with its chunk
    embeddings) to one call of the engine (:class:`RefragSynthesizer`); another mode is LlamaIndex's own
    synthesizer (``"tree_summarize"``: the baseline) on a copy of ``llm`` with passage recognition off, packing
    the nodes by the target's own tokenizer within the LLM's ``context_window``.
    ``kwargs`` go to ``as_query_engine`` (``system_prompt`` to the synthesizer for ``"whole"``).

    Example:
        >>> from tiny import tiny_tokenizer
        >>> index = summary_index(["Some text."], tiny_tokenizer())
        >>> type(summary_query_engine(index, RefragRasdLLM(max_tokens=8))).__name__
        'RetrieverQueryEngine'
    """
    if not isinstance(llm, RefragRasdLLM):
        raise InvalidInputError(f"the LLM must be a RefragRasdLLM, got {type(llm).__name__}")
    if response_mode == WHOLE:
        synth = RefragSynthesizer(llm=llm, streaming=streaming, system_prompt=kwargs.pop("system_prompt", None))
        return index.as_query_engine(llm=llm, response_synthesizer=synth, **kwargs)
    try:
        mode = ResponseMode(response_mode)
    except ValueError as exc:
        raise InvalidInputError(f"unknown response_mode {response_mode!r}; choose {WHOLE} or one of LlamaIndex's: "
                                f"{', '.join(m.value for m in ResponseMode)}") from exc
    plain = llm.model_copy(update={"recognize_passages": False})
    tok = plain.target_tokenizer()

    def count(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=False)["input_ids"])

    # LlamaIndex packs by the target's own tokens (not tiktoken's), and measures the text template while a chat
    # model reads the chat template's system message too: its room is kept free
    meta = plain.metadata
    reserve = len(count(TEXT_QA_SYSTEM_PROMPT.content or "")) + 64  # + the role tags and the query
    helper = PromptHelper(context_window=max(meta.context_window - reserve, 256), num_output=meta.num_output,
                          tokenizer=count)
    synth = get_response_synthesizer(llm=plain, response_mode=mode, streaming=streaming,
                                     prompt_helper=helper)
    return index.as_query_engine(llm=plain, response_synthesizer=synth, **kwargs)
