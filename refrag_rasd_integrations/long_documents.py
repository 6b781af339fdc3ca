"""Long documents, framework-free: read a whole document (summarize it, or answer a question about it) in ONE
model call whose passages are the document's chunks, and the two baselines that work past the window by
calling the model many times, written once on the engine.

* :func:`document_passages`: documents -> passages. A passage from a store keeps its stored token ids and
  chunk embeddings (no encoder runs for it); any other text (a string, a LangChain ``Document``, a LlamaIndex
  node) is split on the fly into passages of at most ``passage_tokens`` decoder tokens
  (:class:`~refrag_rasd_integrations.store.splitting.PassageSplitter`), whose chunks the engine encodes itself.
* :func:`summarize` / :func:`ask_whole_document`: one :meth:`Engine.generate
  <refrag_rasd_core.engine.Engine.generate>` call with every passage of the document, under the caller's
  ``context`` (default ``auto``; ``compressed`` reads the chunk embeddings, REFRAG).
* :func:`map_reduce`: the document as text in pieces of about ``piece_tokens`` tokens, each summarized (or,
  for a question, mined for what it says about it) in its own call, then the partial answers combined in one
  final call (LangChain's map-reduce).
* :func:`tree_summarize`: the same pieces, their summaries packed into groups that fit ``piece_tokens`` and
  summarized again, level by level, until one is left (LlamaIndex's ``tree_summarize``).

Every function returns a :class:`LongDocumentResult`: the text and what it cost (wall time, time to the first
token of the final answer, model calls, prefill positions summed over the calls, each call's statistics). The
baselines read their pieces as plain text (``context="text"``) whatever ``context`` the caller gives.

Example:
    >>> from refrag_rasd_integrations.long_documents import summarize, map_reduce
    >>> doc = open("README.md").read()                                                # doctest: +SKIP
    >>> whole = summarize(engine, [doc], context="compressed", max_tokens=64)         # doctest: +SKIP
    >>> base = map_reduce(engine, [doc], max_tokens=64)                               # doctest: +SKIP
    >>> whole.model_calls, base.model_calls > 1                                       # doctest: +SKIP
    (1, True)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from refrag_rasd_core.engine import Engine, GenerationConfig, GenerationResult, GenerationStats
from refrag_rasd_core.errors import InvalidInputError

from .passages import HANDLE_KEY, INDEX_KEY, PASSAGES, Passage, PassageRegistry, resolve
from .store.records import document_id, passage_id
from .store.splitting import DEFAULT_PASSAGE_TOKENS, PassageSplitter

__all__ = ["COMBINE_INSTRUCTION", "DEFAULT_PIECE_TOKENS", "LONG_DOCUMENT_COLLECTION", "PIECE_INSTRUCTION",
           "STRATEGIES", "SUMMARIZE_INSTRUCTION", "LongDocumentResult", "ask_whole_document", "document_passages",
           "document_text", "instructions", "map_reduce", "pack", "passage_handles", "read_document", "read_with",
           "summarize", "tree_summarize"]

SUMMARIZE_INSTRUCTION = "Summarize the document in a few sentences."
"""What the model is asked when it reads the whole document to summarize it."""
PIECE_INSTRUCTION = "Summarize this part of the document in a few sentences."
"""What a baseline asks of each piece when summarizing."""
COMBINE_INSTRUCTION = ("These are summaries of consecutive parts of one document. Combine them into one summary "
                       "of the whole document in a few sentences.")
"""What a baseline asks when it combines partial summaries."""
PIECE_QUESTION = "Using only this part of the document, write down what it says about this question: {question}"
"""What a baseline asks of each piece for a question."""
COMBINE_QUESTION = "These are notes taken from the parts of one document. Using them, answer the question: {question}"
"""What a baseline asks when it combines the notes of the pieces into the answer."""
DEFAULT_PIECE_TOKENS = 3000
"""A baseline's piece size in decoder tokens (LangChain's ``token_max`` default)."""
LONG_DOCUMENT_COLLECTION = "long-document"
"""The registry collection of passages split on the fly (their handles: ``"long-document/<id>"``)."""
STRATEGIES = ("whole", "map-reduce", "tree-summarize")
"""How a long document is read: in one call (``whole``) or by one of the two baselines."""


@dataclass
class LongDocumentResult:
    """What reading a long document gave and cost.

    ``total_s``: wall time of the whole function (splitting included); ``ttft_s``: time from the start to the
    first token of the final answer (for a baseline: every earlier call, then the final call's prefill);
    ``model_calls``: engine calls; ``prefill_positions``: prefill positions summed over the calls (a compressed
    chunk is one position); ``context`` / ``context_reason``: how the final call read its passages;
    ``partials``: the intermediate answers (a baseline's), in order; ``call_stats``: each call's statistics;
    ``calls`` (= ``model_calls``) and ``peak_positions`` (the most positions one call held: prefill and
    generated tokens, what its KV cache peaks at) as the benchmark harness reads them.

    Example:
        >>> r = LongDocumentResult(text="A summary.", strategy="whole", model_calls=1)
        >>> r.to_dict()["strategy"], r.stats is None
        ('whole', True)
    """

    text: str
    strategy: str
    total_s: float = 0.0
    ttft_s: float = 0.0
    model_calls: int = 0
    prefill_positions: int = 0
    prompt_tokens: int = 0
    new_tokens: int = 0
    pieces: int = 0
    context: str = ""
    context_reason: str = ""
    partials: list[str] = field(default_factory=list)
    call_stats: list[GenerationStats] = field(default_factory=list)

    @property
    def stats(self) -> GenerationStats | None:
        """The final call's statistics (``None`` before any call)."""
        return self.call_stats[-1] if self.call_stats else None

    @property
    def calls(self) -> int:
        """Model calls (``model_calls``)."""
        return self.model_calls

    @property
    def peak_positions(self) -> int:
        """The most positions one call held (its prefill plus its generated tokens)."""
        return max((s.prefill_positions + s.new_tokens for s in self.call_stats), default=0)

    def to_dict(self) -> dict[str, Any]:
        """The result as plain values (each call's statistics as :meth:`GenerationStats.to_dict`)."""
        return {"text": self.text, "strategy": self.strategy, "total_s": round(self.total_s, 6),
                "ttft_s": round(self.ttft_s, 6), "model_calls": self.model_calls,
                "prefill_positions": self.prefill_positions, "prompt_tokens": self.prompt_tokens,
                "new_tokens": self.new_tokens, "pieces": self.pieces, "context": self.context,
                "context_reason": self.context_reason, "partials": list(self.partials),
                "peak_positions": self.peak_positions, "call_stats": [s.to_dict() for s in self.call_stats]}


class _Calls:
    """The calls of one long-document run: their statistics, and the clock since the run began."""

    def __init__(self, engine: Engine, config: GenerationConfig) -> None:
        self.engine, self.config = engine, config
        self.t0 = time.perf_counter()
        self.stats: list[GenerationStats] = []
        self.last_start = self.t0
        self.last_text = ""

    def generate(self, prompt: str, passages: Sequence[Any], **overrides: Any) -> GenerationResult:
        self.last_start = time.perf_counter()
        res = self.engine.generate(prompt, passages=list(passages), config=self.config.merge(overrides))
        self.stats.append(res.stats)
        self.last_text = res.text
        return res

    def result(self, text: str, strategy: str, pieces: int = 0, partials: Sequence[str] = ()) -> LongDocumentResult:
        final = self.stats[-1]
        return LongDocumentResult(
            text=text, strategy=strategy, total_s=time.perf_counter() - self.t0,
            ttft_s=self.last_start - self.t0 + final.ttft_s, model_calls=len(self.stats),
            prefill_positions=sum(s.prefill_positions for s in self.stats),
            prompt_tokens=sum(s.prompt_tokens for s in self.stats), new_tokens=sum(s.new_tokens for s in self.stats),
            pieces=pieces, context=final.context, context_reason=str(getattr(final, "context_reason", "") or ""),
            partials=list(partials), call_stats=list(self.stats))


# ---- documents into passages --------------------------------------------------------------------------------
def document_passages(documents: Sequence[Any], tokenizer: Any, *, passage_tokens: int = DEFAULT_PASSAGE_TOKENS,
                      store: Any = None, registry: PassageRegistry | None = None) -> list[Passage]:
    """The passages of ``documents`` (strings, ``(text, metadata)`` pairs, framework documents and nodes,
    passages or handles) in order: stored passages (:class:`Passage` s with arrays, passage
    handles, documents and nodes a store's retriever or :meth:`RefragChromaStore.document_passages
    <refrag_rasd_integrations.store.RefragChromaStore.document_passages>` handed out) as they are, with their
    token ids and chunk embeddings; any other text split into passages of at most ``passage_tokens`` tokens of
    ``tokenizer`` (the engine's), each with the document's metadata and a deterministic id.

    Example:
        >>> from tiny import tiny_tokenizer
        >>> ps = document_passages(["One. Two.\\n\\nThree four five."], tiny_tokenizer(), passage_tokens=16)
        >>> [p.text for p in ps], ps[0].chunk_embeddings is None
        (['One. Two.', 'Three four five.'], True)
    """
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise InvalidInputError("documents must be a list (of strings, Documents, nodes or passages), "
                                f"got {type(documents).__name__}")
    splitter = PassageSplitter(tokenizer, passage_tokens)
    out: list[Passage] = []
    for item in resolve(_items(documents), store=store, registry=registry):
        if item.token_ids is not None or item.chunk_embeddings is not None:
            out.append(item)  # stored: its arrays are kept
            continue
        source = str(item.metadata.get("source") or item.id or "")
        digest = document_id(source, item.text)
        out.extend(Passage(text=piece, metadata={**item.metadata, INDEX_KEY: i}, id=passage_id(digest, i))
                   for i, piece in enumerate(splitter(item.text)))
    if not out:
        raise InvalidInputError("the documents have no text")
    return out


def _items(documents: Sequence[Any]) -> list[Any]:
    """The documents, a ``(text, metadata)`` pair (what :func:`~.store.iter_file_documents` yields) as a
    text-only passage."""
    return [Passage(text=str(d[0]), metadata=dict(d[1] or {})) if isinstance(d, tuple) and len(d) == 2 else d
            for d in documents]


def passage_handles(passages: Sequence[Passage], registry: PassageRegistry | None = None,
                    collection: str = LONG_DOCUMENT_COLLECTION) -> list[str]:
    """Handles of ``passages`` in the passage registry (a stored passage keeps the handle its store gave it;
    another is registered under ``collection``): what a framework call carries instead of the arrays.

    Example:
        >>> passage_handles([Passage(text="Some text.", id="d-0000")])
        ['long-document/d-0000']
    """
    reg = registry or PASSAGES
    out = []
    for p in passages:
        handle = p.metadata.get(HANDLE_KEY)
        if not (isinstance(handle, str) and reg.get(handle) is p):
            if p.id is None:
                p.id = document_id("", p.text)
            handle = reg.put(p, collection)
        out.append(handle)
    return out


def document_text(documents: Sequence[Any], store: Any = None, registry: PassageRegistry | None = None) -> str:
    """The documents' text, in order, one blank line between two (stored passages included: their text).

    Example:
        >>> document_text(["First part.", "Second part."])
        'First part.\\n\\nSecond part.'
    """
    texts = [p.text.strip() for p in resolve(_items(documents), store=store, registry=registry)]
    return "\n\n".join(t for t in texts if t)


def pack(texts: Sequence[str], count: Callable[[str], int], max_tokens: int, separator: str = "\n\n") -> list[str]:
    """Consecutive ``texts`` joined into as few groups as fit ``max_tokens`` each (a text alone over the bound
    is a group of its own); with more than one text, every group holds at least two, so packing always shrinks.

    Example:
        >>> pack(["aa", "bb", "cc", "dd"], len, 6, separator="")
        ['aabbcc', 'dd']
        >>> pack(["aaaa", "bbbb", "cccc"], len, 2, separator="")
        ['aaaabbbb', 'cccc']
    """
    groups: list[list[str]] = []
    for t in texts:
        if groups and ((len(groups[-1]) < 2 and len(texts) > 1)
                       or count(separator.join([*groups[-1], t])) <= max_tokens):
            groups[-1].append(t)
        else:
            groups.append([t])
    return [separator.join(g) for g in groups]


def _pieces(engine: Engine, documents: Sequence[Any], piece_tokens: int, store: Any
            ) -> tuple[list[str], PassageSplitter]:
    if isinstance(piece_tokens, bool) or not isinstance(piece_tokens, int) or piece_tokens < 16:
        raise InvalidInputError(f"piece_tokens must be an integer >= 16, got {piece_tokens!r}")
    splitter = PassageSplitter(engine.tokenizer, piece_tokens)
    text = document_text(documents, store=store)
    pieces = splitter(text)
    if not pieces:
        raise InvalidInputError("the documents have no text")
    return pieces, splitter


def _config(config: GenerationConfig | None, settings: dict[str, Any]) -> GenerationConfig:
    return (config or GenerationConfig()).merge(settings)


# ---- one call: the whole document ---------------------------------------------------------------------------
def read_document(engine: Engine, prompt: str, documents: Sequence[Any], *, config: GenerationConfig | None = None,
                  passage_tokens: int = DEFAULT_PASSAGE_TOKENS, store: Any = None, strategy: str = "whole",
                  **settings: Any) -> LongDocumentResult:
    """``prompt`` (an instruction or a question) over the whole document in ONE engine call whose passages are
    the document's passages (:func:`document_passages`); ``config`` / ``settings`` as
    :meth:`Engine.generate <refrag_rasd_core.engine.Engine.generate>` takes them (``context``, ``max_tokens``...)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInputError("the question is empty")
    cfg = _config(config, settings)
    calls = _Calls(engine, cfg)
    passages = document_passages(documents, engine.tokenizer, passage_tokens=passage_tokens, store=store)
    res = calls.generate(prompt, passages)
    return calls.result(res.text, strategy, pieces=len(passages))


def summarize(engine: Engine, documents: Sequence[Any], *, instruction: str = SUMMARIZE_INSTRUCTION,
              config: GenerationConfig | None = None, passage_tokens: int = DEFAULT_PASSAGE_TOKENS,
              store: Any = None, **settings: Any) -> LongDocumentResult:
    """Summarize ``documents`` in one call that reads all their passages (see :func:`read_document`).

    Example:
        >>> r = summarize(engine, [long_text], context="compressed", max_tokens=32)   # doctest: +SKIP
        >>> r.model_calls, r.context                                                  # doctest: +SKIP
        (1, 'compressed')
    """
    return read_document(engine, instruction, documents, config=config, passage_tokens=passage_tokens,
                         store=store, **settings)


def ask_whole_document(engine: Engine, question: str, documents: Sequence[Any], *,
                       config: GenerationConfig | None = None, passage_tokens: int = DEFAULT_PASSAGE_TOKENS,
                       store: Any = None, **settings: Any) -> LongDocumentResult:
    """Answer ``question`` from the whole of ``documents`` in one call (no retrieval: every passage is read).

    Example:
        >>> r = ask_whole_document(engine, "Who is the author?", [long_text], max_tokens=16)  # doctest: +SKIP
    """
    return read_document(engine, question, documents, config=config, passage_tokens=passage_tokens,
                         store=store, **settings)


# ---- the baselines --------------------------------------------------------------------------------------------
def instructions(question: str | None) -> tuple[str, str]:
    """What a baseline asks of each piece and of the combining call: to summarize, or, with ``question``, to
    note what a piece says about it and then answer it.

    Example:
        >>> instructions(None)[0]
        'Summarize this part of the document in a few sentences.'
    """
    if question is None:
        return PIECE_INSTRUCTION, COMBINE_INSTRUCTION
    if not isinstance(question, str) or not question.strip():
        raise InvalidInputError("the question is empty")
    return PIECE_QUESTION.format(question=question.strip()), COMBINE_QUESTION.format(question=question.strip())


def _map(engine: Engine, documents: Sequence[Any], question: str | None, piece_tokens: int,
         config: GenerationConfig | None, store: Any, settings: dict[str, Any]
         ) -> tuple[_Calls, list[str], str, PassageSplitter]:
    """The baselines' first step: the document's text in pieces, one plain-text call per piece (summarize it,
    or note what it says about ``question``). Returns the calls so far, each piece's answer, what the combining
    calls ask, and the splitter (its token count packs the answers)."""
    piece_prompt, combine_prompt = instructions(question)
    calls = _Calls(engine, _config(config, settings).merge(context="text"))
    pieces, splitter = _pieces(engine, documents, piece_tokens, store)
    return calls, [calls.generate(piece_prompt, [p]).text.strip() for p in pieces], combine_prompt, splitter


def map_reduce(engine: Engine, documents: Sequence[Any], *, question: str | None = None,
               piece_tokens: int = DEFAULT_PIECE_TOKENS, config: GenerationConfig | None = None, store: Any = None,
               **settings: Any) -> LongDocumentResult:
    """The map-reduce baseline: the document's text in pieces of at most ``piece_tokens`` tokens, one call per
    piece (summarize it; with ``question``: note what it says about the question), then ONE call that combines
    the partial answers (none when the document is one piece). Every call reads its text as plain text
    (``context="text"``); the combining call fails with ``ContextTooLongError`` when the partial answers do not
    fit the window (:func:`tree_summarize` packs them instead).

    Example:
        >>> r = map_reduce(engine, [long_text], max_tokens=64)          # doctest: +SKIP
        >>> r.model_calls == r.pieces + 1                               # doctest: +SKIP
        True
    """
    calls, partials, combine_prompt, _ = _map(engine, documents, question, piece_tokens, config, store, settings)
    if len(partials) == 1:
        return calls.result(partials[0], "map-reduce", pieces=1, partials=partials)
    final = calls.generate(combine_prompt, [p for p in partials if p] or [""])
    return calls.result(final.text, "map-reduce", pieces=len(partials), partials=partials)


def tree_summarize(engine: Engine, documents: Sequence[Any], *, question: str | None = None,
                   piece_tokens: int = DEFAULT_PIECE_TOKENS, config: GenerationConfig | None = None,
                   store: Any = None, **settings: Any) -> LongDocumentResult:
    """The tree-summarize baseline (LlamaIndex's ``tree_summarize``): the document's text in pieces of at most
    ``piece_tokens`` tokens, each summarized (with ``question``: mined for it); the summaries packed into as few
    groups as fit ``piece_tokens`` (:func:`pack`) and each group summarized again, level by level, until one
    answer is left. A document of one piece is one call. Every call reads plain text (``context="text"``).

    Example:
        >>> r = tree_summarize(engine, [long_text], max_tokens=64)      # doctest: +SKIP
        >>> r.model_calls >= r.pieces                                   # doctest: +SKIP
        True
    """
    calls, level, combine_prompt, splitter = _map(engine, documents, question, piece_tokens, config, store,
                                                  settings)
    n_pieces, partials = len(level), list(level)
    while len(level) > 1:
        groups = pack([t for t in level if t] or [""], splitter.count, piece_tokens)
        level = [calls.generate(combine_prompt, [g]).text.strip() for g in groups]
        partials.extend(level)
    return calls.result(calls.last_text, "tree-summarize", pieces=n_pieces, partials=partials[:-1])


def read_with(strategy: str, engine: Engine, documents: Sequence[Any], *, question: str | None = None,
              piece_tokens: int = DEFAULT_PIECE_TOKENS, passage_tokens: int = DEFAULT_PASSAGE_TOKENS,
              config: GenerationConfig | None = None, store: Any = None, **settings: Any) -> LongDocumentResult:
    """Summarize ``documents`` (or answer ``question`` about them) by one of :data:`STRATEGIES`: ``whole``
    (:func:`summarize` / :func:`ask_whole_document`), ``map-reduce`` (:func:`map_reduce`) or ``tree-summarize``
    (:func:`tree_summarize`); every strategy behind the same call, for the command line and the benchmarks.

    Example:
        >>> read_with("sideways", None, ["text"])
        Traceback (most recent call last):
        ...
        refrag_rasd_core.errors.InvalidInputError: unknown strategy 'sideways'; choose one of whole, ...
    """
    if strategy not in STRATEGIES:
        raise InvalidInputError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "whole":
        prompt = SUMMARIZE_INSTRUCTION if question is None else question
        return read_document(engine, prompt, documents, config=config, passage_tokens=passage_tokens, store=store,
                             **settings)
    baseline = map_reduce if strategy == "map-reduce" else tree_summarize
    return baseline(engine, documents, question=question, piece_tokens=piece_tokens, config=config, store=store,
                    **settings)
