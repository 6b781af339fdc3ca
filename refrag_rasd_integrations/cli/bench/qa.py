"""The ``qa`` suite: retrieval-augmented question answering, every context setting against plain RAG.

The distinct passages of a corpus file are indexed once into a Chroma collection through
:class:`~refrag_rasd_integrations.store.RefragChromaStore` (reused on the next run). Each question retrieves
its top-k through the public LangChain retriever and every *setting* answers it through the public chat model
:class:`~refrag_rasd_integrations.langchain.ChatRefragRasd`, greedy, interleaved question by question in one
process:

* ``none``                     the question alone (no passages): the floor;
* ``text``                     plain RAG: the retrieved passages as tokens (the baseline);
* ``text:K``                   plain RAG over the best ``K`` (< top-k) retrieved passages only: the usual way to a
                               sooner first token without REFRAG, measured against the full plain RAG;
* ``compressed:P[:POLICY]``    REFRAG: stored chunk vectors, a share ``P`` of the chunks expanded as tokens by
                               ``POLICY`` (``rl``, ``rank``, ``similarity``, ``random``, ``perplexity``; default
                               ``auto``);
* ``default``                  whatever ``ChatRefragRasd()`` does when the user sets nothing.

Per setting: ``answer_recall`` (a gold answer contained in the output), ``answer_f1`` (token F1 of the best
gold answer against the output's first sentence), ``keeps_text_hits`` (the share of the questions ``text``
answers right that this setting answers right too), ``ttft_s`` (from the caller's side, retrieval included),
``ttft_speedup_vs_text`` and ``prefill_positions``. For the compressed settings, what limits them:
``answer_chunk_expanded`` (of the questions whose retrieved chunks hold a gold answer, the share where the
policy expanded one of those chunks) and ``lost_with_answer_expanded`` (how many of plain RAG's right answers
were lost although an answer chunk was expanded: the compression, not the policy, lost those).

Data files: NQ-open / SQuAD style lines ``{"question", "answers", "passage", "title"?}``, or Spec-Bench lines
whose ``rag`` prompts carry their passages (every line but the last).

Example:
    $ refrag-rasd bench --suite qa --data ../shared/data/nq_open_dev.jsonl --limit 20 \\
          --settings none,text,compressed:0,compressed:0.25:rl,default --out results/qa-nq.json
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.qa_file import QAItem
from refrag_rasd_core.refrag import answer_chunks, chunk_texts

from .metrics import answer_f1, answer_recall
from .rag import run_chain
from .results import Column, format_table_of, machine_line, results_header

DEFAULT_SETTINGS = ("none,text,compressed:0,compressed:0.25:rl,compressed:0.25:similarity,compressed:0.5:similarity,"
                    "default")
POLICIES = ("auto", "rl", "rank", "similarity", "question", "random", "perplexity")


@dataclass
class Setting:
    """A parsed setting name (see the module docstring)."""

    name: str
    context: str | None = None  # None: the chat model's default
    expand: float | None = None
    policy: str | None = None
    passages: int | None = None  # text:K: the best K retrieved passages only

    @classmethod
    def parse(cls, name: str) -> Setting:
        """A setting from its name.

        Example:
            >>> Setting.parse("text:2")
            Setting(name='text:2', context='text', expand=None, policy=None, passages=2)
        """
        parts = name.strip().split(":")
        if parts[0] in ("none", "text", "default") and len(parts) == 1:
            return cls(name=parts[0], context=None if parts[0] == "default" else parts[0])
        if parts[0] == "text" and len(parts) == 2:
            if not parts[1].isdigit() or int(parts[1]) < 1:
                raise InvalidInputError(f"bad setting {name!r}: text:K takes a passage count K >= 1")
            return cls(name=f"text:{int(parts[1])}", context="text", passages=int(parts[1]))
        if parts[0] == "compressed" and len(parts) in (2, 3):
            p, policy = compressed_amount_and_policy(parts)
            if not 0.0 <= p <= 1.0 or policy not in POLICIES:
                raise InvalidInputError(f"bad setting {name!r}: compressed:P[:POLICY] takes 0 <= P <= 1 and a "
                                        f"policy of {', '.join(POLICIES)}")
            return cls(name=name.strip(), context="compressed", expand=p, policy=policy)
        raise InvalidInputError(f"unknown setting {name!r}: use none, text, text:K, compressed:P[:POLICY] or default")

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`ChatRefragRasd` for this setting (greedy, vanilla decoding, except
        ``default``, which keeps every default)."""
        if self.context is None:
            return {}
        kw: dict[str, Any] = {"context": self.context, "method": "vanilla", "recognize_passages": False}
        if self.context == "compressed":
            kw["engine_kwargs"] = {"expand": self.expand, "policy": self.policy}
        return kw


def compressed_amount_and_policy(parts: Sequence[str]) -> tuple[float, str]:
    """``["compressed", P, POLICY?]`` -> ``(P, POLICY)`` (``P`` = -1 when it is not a number; POLICY ``auto``
    when absent).

    Example:
        >>> compressed_amount_and_policy(["compressed", "0.25"])
        (0.25, 'auto')
    """
    try:
        p = float(parts[1])
    except ValueError:
        p = -1.0
    return p, parts[2] if len(parts) == 3 else "auto"


def parse_settings(spec: str, k: int | None = None) -> list[Setting]:
    """``"none,text,compressed:0.25:rl"`` -> settings; ``text`` is always run (the baseline). With the run's
    top-k ``k``, a ``text:K`` must retrieve fewer passages than plain RAG does."""
    settings = [Setting.parse(s) for s in spec.split(",") if s.strip()]
    for s in settings:
        if k is not None and s.passages is not None and s.passages >= k:
            raise InvalidInputError(f"setting {s.name!r}: K must be below the run's top-k ({k}); plain RAG "
                                    f"over all {k} passages is 'text'")
    if not any(s.name == "text" for s in settings):
        settings.insert(0, Setting("text", "text"))
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"a setting is named twice in {spec!r}")
    return settings


def collection_name(passages: Sequence[str], signature: dict[str, Any] | None = None) -> str:
    """A collection name that changes with the corpus and with the chunk-embedding configuration
    (``signature``: the encoder, pooling, k... a store must match), so a different corpus is never mixed in
    and a checkpoint of another k gets its own collection instead of a mismatch error.

    Example:
        >>> collection_name(["a"]) != collection_name(["a"], {"k": 8})
        True
    """
    digest = hashlib.sha256("\0".join(passages).encode()).hexdigest()[:12]
    if not signature:
        return f"qa-{digest}"
    sig = hashlib.sha256(json.dumps(signature, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"qa-{digest}-{sig}"


def index_corpus(store: Any, passages: Sequence[str], progress: bool = True) -> Any:
    """Index the corpus (one document per passage; resumable: a second run skips what is there)."""
    return store.add_texts(list(passages), [{"source": f"qa-{i}"} for i in range(len(passages))], progress=progress)


def _norm_ws(text: str) -> str:
    return " ".join(text.split())


def make_setting_chain(setting: Setting, store: Any, engine: Engine, *, k: int, max_new_tokens: int) -> Any:
    """The LCEL chain of one setting: ``none`` asks the chat model the bare question; the others are
    ``{"context": retriever, "question": passthrough} | PassagePrompt() | ChatRefragRasd(...)``, the retriever
    returning ``k`` passages (``text:K``: ``K``)."""
    from langchain_core.runnables import RunnablePassthrough

    from ...langchain import ChatRefragRasd, PassagePrompt

    llm = ChatRefragRasd(engine=engine, max_tokens=max_new_tokens, seed=0, **setting.model_kwargs())
    if setting.context == "none":
        return llm
    retriever = store.as_retriever(k=setting.passages or k)
    return {"context": retriever, "question": RunnablePassthrough()} | PassagePrompt() | llm


def retrieved_answer_chunks(engine: Engine, passages: Sequence[str], answers: Sequence[str]) -> list[int] | None:
    """Indices (prompt order, as a compressed request cuts them) of the retrieved passages' chunks that hold a
    gold answer; ``None`` when the engine has no REFRAG checkpoint."""
    refrag = engine.describe()["refrag"]
    if refrag is None:
        return None
    k = refrag["k"]
    texts = [t for ids in engine.passage_token_ids(list(passages)) for t in chunk_texts(engine.tokenizer, ids, k)]
    return answer_chunks(texts, answers)


def run_qa_suite(engine: Engine, items: Sequence[QAItem], store: Any, settings: Sequence[Setting], *,
                 k: int = 5, max_new_tokens: int = 32, progress: bool = True) -> dict[str, Any]:
    """Answer every question with every setting (interleaved, after one warm-up question); returns the
    results dict (``machine``, ``settings``, ``retrieval_recall_at_k``, ``methods``, ``per_question``)."""
    if not items:
        raise InvalidInputError("no questions to run")
    chains = {s.name: make_setting_chain(s, store, engine, k=k, max_new_tokens=max_new_tokens) for s in settings}
    retriever = store.as_retriever(k=k)
    for chain in chains.values():  # warm-up: first-call costs (lazy loads, the speculation budget)
        run_chain(chain, items[0].question)
    rows = []
    it: Any = items
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(items, desc="qa suite", unit="q")
    for item in it:
        docs = retriever.invoke(item.question)
        got = [_norm_ws(d.page_content) for d in docs]
        gold = [_norm_ws(g) for g in item.gold]
        # ids and measurements only: question, passage and answer text stay in the data file (a results file
        # may be committed; benchmark data from other repositories must not be copied into it)
        row: dict[str, Any] = {"id": item.qid, "gold_retrieved": (any(g in got for g in gold) if gold else None),
                               "sources": [d.metadata.get("source") for d in docs], "methods": {},
                               "answer_chunks": retrieved_answer_chunks(engine, [d.page_content for d in docs],
                                                                        item.answers)}
        for name, chain in chains.items():
            m = run_chain(chain, item.question)
            row["methods"][name] = {
                "answer_recall": answer_recall(m["answer"], item.answers),
                "answer_f1": answer_f1(m["answer"], item.answers), "ttft_s": round(m["ttft_s"], 4),
                "prefill_s": m["prefill_s"], "prefill_positions": m["prefill_positions"],
                "total_s": round(m["total_s"], 4), "new_tokens": m["new_tokens"],
            }
            if m.get("expanded") is not None:  # a compressed request: which chunks stayed raw
                row["methods"][name]["expanded"] = m["expanded"]
        rows.append(row)
    found = [r["gold_retrieved"] for r in rows if r["gold_retrieved"] is not None]
    methods = summarize_qa(rows, list(chains))
    return {
        **results_header(engine, "qa", n_questions=len(rows), k=k, max_new_tokens=max_new_tokens,
                         settings={s.name: s.model_kwargs() for s in settings}, store_passages=store.count()),
        "retrieval_recall_at_k": round(statistics.fmean(found), 4) if found else None,
        "methods": methods,
        "operating_point": operating_point(methods),
        "per_question": rows,
    }


def summarize_qa(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Per setting: answer recall / F1, the share of ``text``'s right answers kept, time to first token and
    its speedup over ``text`` (median of per-question ratios), prefill positions; for compressed settings the
    answer-chunk diagnostics (:func:`answer_chunk_diagnostics`)."""
    text_hits = [r for r in rows if r["methods"]["text"]["answer_recall"] == 1.0]
    out: dict[str, Any] = {}
    for n in names:
        cells = [r["methods"][n] for r in rows]
        rec = [c["answer_recall"] for c in cells if c["answer_recall"] is not None]
        f1 = [c["answer_f1"] for c in cells if c["answer_f1"] is not None]
        pos = [c["prefill_positions"] for c in cells if c.get("prefill_positions") is not None]
        out[n] = {
            "answer_recall": round(statistics.fmean(rec), 4) if rec else None,
            "answer_f1": round(statistics.fmean(f1), 4) if f1 else None,
            "keeps_text_hits": (round(sum(r["methods"][n]["answer_recall"] == 1.0 for r in text_hits)
                                      / len(text_hits), 4) if text_hits else None),
            "ttft_s": round(statistics.median(c["ttft_s"] for c in cells), 4),
            "ttft_speedup_vs_text": round(statistics.median(r["methods"]["text"]["ttft_s"] / r["methods"][n]["ttft_s"]
                                                            for r in rows), 3),
            "prefill_positions": round(statistics.fmean(pos), 1) if pos else None,
            "n": len(cells),
            **answer_chunk_diagnostics(rows, n),
        }
    return out


def answer_chunk_diagnostics(rows: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    """For a setting whose rows record ``expanded`` chunks and the questions' ``answer_chunks``: the share of
    answer-bearing questions whose expanded chunks include an answer chunk, and how many of plain RAG's right
    answers it lost with an answer chunk expanded (the compressed rest changed the answer) or without one
    (the policy missed it). Empty for settings that compress nothing.

    Example:
        >>> def row(text, got, expanded, answer):
        ...     return {"answer_chunks": answer, "methods": {"text": {"answer_recall": text},
        ...             "c": {"answer_recall": got, "expanded": expanded}}}
        >>> answer_chunk_diagnostics([row(1.0, 0.0, [2], [2]), row(1.0, 0.0, [0], [3]), row(0.0, 1.0, [1], [])], "c")
        {'answer_chunk_expanded': 0.5, 'lost_with_answer_expanded': 1, 'lost_without_answer_expanded': 1}
    """
    cells = [(r, r["methods"][name]) for r in rows
             if r["methods"][name].get("expanded") is not None and r.get("answer_chunks") is not None]
    if not cells:
        return {}
    has = [(r, c, bool(set(c["expanded"]) & set(r["answer_chunks"]))) for r, c in cells if r["answer_chunks"]]
    lost = [hit for r, c, hit in has if r["methods"]["text"]["answer_recall"] == 1.0 and c["answer_recall"] != 1.0]
    return {"answer_chunk_expanded": round(statistics.fmean(h for _, _, h in has), 4) if has else None,
            "lost_with_answer_expanded": sum(lost), "lost_without_answer_expanded": len(lost) - sum(lost)}


def operating_point(methods: dict[str, Any], keep: float = 0.95) -> dict[str, Any]:
    """The fastest measured setting that keeps at least ``keep`` of plain RAG's right answers: a compressed
    setting (``{"context": "compressed", "expand": P, "policy": POLICY}``) when one qualifies, else plain RAG
    (``{"context": "text"}``). What ``context="auto"`` should mean for the checkpoint measured.

    Example:
        >>> operating_point({"text": {"keeps_text_hits": 1.0, "ttft_speedup_vs_text": 1.0},
        ...                  "compressed:0.25:rank": {"keeps_text_hits": 0.96, "ttft_speedup_vs_text": 2.5},
        ...                  "compressed:0": {"keeps_text_hits": 0.1, "ttft_speedup_vs_text": 4.0}})
        {'context': 'compressed', 'expand': 0.25, 'policy': 'rank', 'setting': 'compressed:0.25:rank'}
    """
    best: tuple[float, str] | None = None
    for name, s in methods.items():
        if not name.startswith("compressed:") or s.get("keeps_text_hits") is None:
            continue
        fast_enough = s["ttft_speedup_vs_text"] > (1.0 if best is None else best[0])
        if s["keeps_text_hits"] >= keep and fast_enough:
            best = (s["ttft_speedup_vs_text"], name)
    if best is None:
        return {"context": "text", "setting": "text"}
    st = Setting.parse(best[1])
    return {"context": "compressed", "expand": st.expand, "policy": st.policy, "setting": st.name}


COLUMNS = (Column("answer recall", "answer_recall"), Column("answer F1", "answer_f1"),
           Column("keeps plain RAG's right answers", "keeps_text_hits"), Column("TTFT s", "ttft_s"),
           Column("TTFT speedup vs text", "ttft_speedup_vs_text", ".2f", "x"),
           Column("prefill positions", "prefill_positions", ".0f"))
# which chunks the policy expanded: lost answers split into policy misses and compression losses
DIAGNOSTICS = (Column("answer chunk expanded", "answer_chunk_expanded"),
               Column("lost hits: answer chunk expanded / not",
                      lambda s: f"{s['lost_with_answer_expanded']} / {s['lost_without_answer_expanded']}"
                      if "lost_with_answer_expanded" in s else None))


def format_qa_table(res: dict[str, Any], markdown: bool = False) -> str:
    """The table of a run: printed at its end, and rendered into docs/benchmarks.md (``markdown``)."""
    diag = any("answer_chunk_expanded" in v for v in res["methods"].values())
    table = format_table_of(res["methods"], COLUMNS + (DIAGNOSTICS if diag else ()), first="setting",
                            markdown=markdown)
    if markdown:
        return table
    recall = res.get("retrieval_recall_at_k")
    return (f"{table}\n{res['settings']['n_questions']} questions, top-{res['settings']['k']} passages, retrieval "
            f"recall@k {'-' if recall is None else format(recall, '.2f')}; machine: {machine_line(res['machine'])}\n"
            f"fastest setting keeping >= 95% of plain RAG's right answers: {res['operating_point']['setting']}")
