"""The ``rag`` suite: end-to-end RAG through the public LangChain path, plain RAG vs REFRAG + RASD.

The passages of every question of the data file are indexed into a real Chroma store (embedded; indexing
is resumable, so a second run reuses the collection). Each held-out question then runs through the same
LCEL chain ``{"context": retriever, "question": passthrough} | PassagePrompt() | ChatRefragRasd(...)``
with two model settings, interleaved after a warm-up:

* ``plain-rag``    full text context (the retrieved passages as tokens) + vanilla decoding;
* ``refrag-rasd``  REFRAG compressed context (the stored chunk embeddings) + RASD speculative decoding;
* with a corpus ``datastore`` (REST's setting), ``default-corpus`` and ``refrag-rasd-corpus``: the same two
  pipelines reading it too (``ChatRefragRasd(datastore=...)``): the store's own (every indexed passage) or one
  built from other files (:mod:`.datastore_corpus`). The results then carry a ``datastore`` block (the corpus,
  its size, build time, and ``effect``: ``accepted_per_forward`` and speed without and with it).

Measured from the caller's side (``chain.stream``): ``ttft_s`` (to the first streamed text, retrieval
included), ``total_s``, ``decode_tokens_per_s`` (after the first token), plus the engine's own
``prefill_s`` and ``accepted_per_forward``, and ``answer_recall`` (a reference answer in the output).

Example (needs a question file and minutes of model time, so the test suite does not run it):
    >>> from refrag_rasd_integrations.cli.bench.rag import run_rag_suite          # doctest: +SKIP
    >>> res = run_rag_suite(engine, rows, store)                             # doctest: +SKIP
    >>> res["methods"]["refrag-rasd"]["speedup_total_vs_plain"]              # doctest: +SKIP
    1.9
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError

from .metrics import answer_recall
from .results import Column, format_run_table, results_header

PIPELINES: dict[str, dict[str, Any]] = {
    "default": {},  # ChatRefragRasd() as a user gets it: context="auto" (the checkpoint's measured point), rasd
    "plain-rag": {"context": "text", "method": "vanilla"},
    "refrag-rasd": {"context": "compressed", "method": "rasd"},
}
CORPUS_PIPELINES = ("default", "refrag-rasd")
"""The pipelines run a second time with a corpus datastore, as ``<name>-corpus``."""


def load_rag_rows(path: str | Path | None = None) -> list[dict[str, Any]]:
    """RAG questions ``{"question_id", "question", "passages", "reference", "held_out"}`` from a Spec-Bench
    ``.jsonl`` (its ``rag`` lines; odd index = held out): ``path``, or ``../shared/data/spec_bench_dev.jsonl``
    when it exists. The package ships no Spec-Bench data: without the file this raises an error that says what
    to pass (for questions over a corpus every machine has, see
    :func:`refrag_rasd_integrations.cli.demo_corpus.demo_rows`)."""
    from refrag_rasd_core.shared_data import SHARED_DATA, SPEC_BENCH_DEV, default_data_path

    from .data import load_questions

    if path is None:
        path = default_data_path(SPEC_BENCH_DEV)
        if path is None:
            raise InvalidInputError(
                f"no RAG questions file: pass the path of a Spec-Bench .jsonl (--data), e.g. "
                f"{SHARED_DATA / SPEC_BENCH_DEV}, which is not on this machine. The package ships no Spec-Bench "
                "data; refrag_rasd_integrations.cli.demo_corpus.demo_rows() gives questions over a corpus every "
                "machine has.")
    rows = []
    for i, q in enumerate(load_questions(path, "rag")):
        lines = [ln for ln in q.prompt.split("\n") if ln.strip()]
        rows.append({"question_id": q.question_id, "question": lines[-1], "passages": lines[:-1],
                     "reference": q.reference, "held_out": i % 2 == 1})
    return rows


def index_rows(store: Any, rows: Sequence[dict[str, Any]], progress: bool = True) -> Any:
    """Index every passage of ``rows`` (one document per passage, source = its question id)."""
    docs = [(p, {"source": f"q{r['question_id']}-p{j}"}) for r in rows for j, p in enumerate(r["passages"])]
    return store.add_texts([d for d, _ in docs], [m for _, m in docs], progress=progress)


def plain_rag_engine(engine: Engine) -> Engine:
    """The engine plain RAG runs on in these comparisons: what a user ran before, the model's fp32 weights
    (``engine`` itself when it is exact; else an exact engine over the same loaded model, no drafter or REFRAG
    checkpoint, made once per engine)."""
    if engine.weights == "exact":
        return engine
    exact = getattr(engine, "_plain_rag_engine", None)
    if exact is None:
        exact = Engine(engine.target, drafter=None, refrag=None, refrag_long=None, weights="exact")
        engine._plain_rag_engine = exact  # type: ignore[attr-defined]
    return exact


def make_chain(store: Any, engine: Engine, *, k: int, max_new_tokens: int, **model_kwargs: Any) -> Any:
    """The LCEL chain a user writes: retriever -> documents-aware prompt -> chat model."""
    from langchain_core.runnables import RunnablePassthrough

    from ...langchain import ChatRefragRasd, PassagePrompt

    llm = ChatRefragRasd(engine=engine, max_tokens=max_new_tokens, seed=0, **model_kwargs)
    return {"context": store.as_retriever(k=k), "question": RunnablePassthrough()} | PassagePrompt() | llm


def run_chain(chain: Any, question: str, on_text: Any = None) -> dict[str, Any]:
    """Stream one answer through a LangChain chain; time it from the caller's side (``on_text(piece)`` sees
    the text as it streams)."""
    t0 = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    meta: dict[str, Any] = {}
    usage: dict[str, Any] = {}
    for chunk in chain.stream(question):
        if chunk.content and first is None:
            first = time.perf_counter() - t0
        piece = chunk.content if isinstance(chunk.content, str) else ""
        text.append(piece)
        if on_text is not None and piece:
            on_text(piece)
        meta = chunk.response_metadata or meta
        usage = chunk.usage_metadata or usage
    return _measured("".join(text), t0, first, meta, usage)


def run_query_engine(query_engine: Any, question: str, on_text: Any = None) -> dict[str, Any]:
    """The same as :func:`run_chain` through a streaming LlamaIndex query engine."""
    from ...llama_index.query_engine import STATS_KEY

    t0 = time.perf_counter()
    first: float | None = None
    response = query_engine.query(question)
    text: list[str] = []
    for piece in response.response_gen:
        if piece and first is None:
            first = time.perf_counter() - t0
        text.append(piece)
        if on_text is not None and piece:
            on_text(piece)
    raw = dict((response.metadata or {}).get(STATS_KEY) or {})
    return _measured("".join(text), t0, first, raw, raw.get("usage") or {})


def run_peer(peer: Any, engine: Engine, store: Any, question: str, *, k: int, max_new_tokens: int) -> dict[str, Any]:
    """Plain RAG end to end on a llama.cpp peer (:class:`~refrag_rasd_integrations.cli.bench.llamacpp.LlamaCppPeer`):
    the same retrieval, the passages laid out as the engine lays them out for ``context="text"``, greedy
    decoding; timed like :func:`run_chain` (retrieval included)."""
    from .llamacpp import plain_rag_ids

    t0 = time.perf_counter()
    passages = [p for p, _ in store.search(question, k=k)]
    ids = plain_rag_ids(engine, question, passages)
    t_gen = time.perf_counter()
    out, _, ttft = peer.generate(ids, max_new_tokens)
    first = None if ttft is None else t_gen - t0 + ttft
    answer = engine.tokenizer.decode(out, skip_special_tokens=True)
    return _measured(answer, t0, first, {}, {"output_tokens": len(out), "input_tokens": len(ids)})


def _measured(answer: str, t0: float, first: float | None, meta: dict[str, Any],
              usage: dict[str, Any]) -> dict[str, Any]:
    total = time.perf_counter() - t0
    stats = meta.get("stats") or {}
    n = int(usage.get("output_tokens", 0) or stats.get("new_tokens", 0))
    first = total if first is None else first
    return {"answer": answer, "ttft_s": first, "total_s": total, "new_tokens": n,
            "decode_tokens_per_s": (n - 1) / (total - first) if n > 1 and total > first else 0.0,
            "prefill_s": stats.get("ttft_s"), "accepted_per_forward": meta.get("accepted_per_forward"),
            "prefill_positions": stats.get("prefill_positions"), "prompt_tokens": usage.get("input_tokens"),
            "expanded": stats.get("expanded") if stats.get("chunks") else None}


def measured_rows(rows: Sequence[dict[str, Any]], limit: int = 3) -> list[dict[str, Any]]:
    """The rows a run measures: the first ``limit`` held-out ones."""
    return [r for r in rows if r.get("held_out", True)][:limit]


def pipelines(datastore: Any = None) -> dict[str, dict[str, Any]]:
    """The pipelines' model settings: :data:`PIPELINES`, and with a ``datastore`` each of
    :data:`CORPUS_PIPELINES` again as ``<name>-corpus`` (right after it) reading that datastore too."""
    out: dict[str, dict[str, Any]] = {}
    for name, kw in PIPELINES.items():
        out[name] = dict(kw)
        if datastore is not None and name in CORPUS_PIPELINES:
            out[f"{name}-corpus"] = {**kw, "datastore": datastore}
    return out


def run_rag_suite(engine: Engine, rows: Sequence[dict[str, Any]], store: Any, *, limit: int = 3, k: int = 5,
                  max_new_tokens: int = 64, repeats: int = 1, progress: bool = True,
                  peers: Sequence[str] = (), datastore: Any = None,
                  datastore_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the pipelines on the first ``limit`` held-out questions; returns the results dict. ``peers``:
    llama.cpp peers (``llamacpp``, ``llamacpp-pld``) run as plain RAG end to end beside them. ``datastore``: a
    corpus datastore for the ``-corpus`` pipelines (``datastore_info``: what the results record of it)."""
    questions = measured_rows(rows, limit)
    if not questions:
        raise InvalidInputError("no held-out rag questions to run")
    settings = pipelines(datastore)
    chains: dict[str, Any] = {name: make_chain(store, plain_rag_engine(engine) if name == "plain-rag" else engine,
                                               k=k, max_new_tokens=max_new_tokens, **kw)
                              for name, kw in settings.items()}
    runners: dict[str, Any] = {name: (lambda q, c=chain: run_chain(c, q)) for name, chain in chains.items()}
    if peers:
        from .llamacpp import LlamaCppPeer

        for name in peers:
            peer = LlamaCppPeer(pld=name == "llamacpp-pld")
            runners[name] = lambda q, p=peer: run_peer(p, engine, store, q, k=k, max_new_tokens=max_new_tokens)
    warm = [r for r in rows if not r.get("held_out", True)][:1] or questions[:1]
    for run in runners.values():  # warm-up (and the speculation budget's first calibration)
        run(warm[0]["question"])
    per_q = []
    it: Any = questions
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(questions, desc="rag suite", unit="q")
    for r in it:
        cells: dict[str, list[dict[str, Any]]] = {n: [] for n in runners}
        for _ in range(max(1, repeats)):
            for name, run in runners.items():
                cells[name].append(run(r["question"]))
        row = {"question_id": r["question_id"], "methods": {}}  # the id, not the text: the data set stays outside
        for name, runs in cells.items():
            cell = dict(runs[0])
            for key in ("ttft_s", "total_s"):
                cell[key] = round(statistics.median(x[key] for x in runs), 4)
            cell["answer_recall"] = answer_recall(cell["answer"], r.get("reference") or [])
            row["methods"][name] = cell
        per_q.append(row)
    recorded = {n: {key: ("corpus" if key == "datastore" else v) for key, v in kw.items()}
                for n, kw in settings.items()}
    res = {
        **results_header(engine, "rag", n_questions=len(questions), k=k, max_new_tokens=max_new_tokens,
                         repeats=repeats, pipelines=recorded, peers=list(peers), store_passages=store.count(),
                         plain_rag_weights=plain_rag_engine(engine).weights),
        "methods": summarize(per_q, list(runners)),
        "per_question": per_q,
    }
    if datastore_info is not None:
        from .datastore_corpus import corpus_effect

        res["datastore"] = {**datastore_info, "effect": corpus_effect(
            res["methods"], [(n, f"{n}-corpus") for n in CORPUS_PIPELINES],
            ("accepted_per_forward", "decode_tokens_per_s", "total_s"))}
    return res


def summarize(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    out = {}
    for n in names:
        cells = [r["methods"][n] for r in rows]
        base = [r["methods"]["plain-rag"] for r in rows]
        rec = [c["answer_recall"] for c in cells if c["answer_recall"] is not None]
        acc = [c["accepted_per_forward"] for c in cells if c.get("accepted_per_forward") is not None]
        out[n] = {
            "ttft_s": round(statistics.median(c["ttft_s"] for c in cells), 4),
            "total_s": round(statistics.median(c["total_s"] for c in cells), 4),
            "decode_tokens_per_s": round(statistics.median(c["decode_tokens_per_s"] for c in cells), 3),
            "accepted_per_forward": round(statistics.fmean(acc), 3) if acc else None,
            "answer_recall": round(statistics.fmean(rec), 3) if rec else None,
            "speedup_ttft_vs_plain": round(statistics.median(b["ttft_s"] / c["ttft_s"] for b, c in
                                                             zip(base, cells, strict=True)), 3),
            "speedup_total_vs_plain": round(statistics.median(b["total_s"] / c["total_s"] for b, c in
                                                              zip(base, cells, strict=True)), 3),
            "n": len(cells),
        }
    return out


COLUMNS = (Column("TTFT s", "ttft_s", ".3f"), Column("decode tokens/s", "decode_tokens_per_s"),
           Column("total s", "total_s"), Column("accepted / forward", "accepted_per_forward"),
           Column("answer recall", "answer_recall"), Column("speedup (total)", "speedup_total_vs_plain", ".2f", "x"))


def format_table(res: dict[str, Any], markdown: bool = False) -> str:
    """The table of a run: printed at its end, and rendered into docs/benchmarks.md (``markdown``)."""
    return format_run_table(res, COLUMNS, first="pipeline", accepted="accepted_per_forward", markdown=markdown)
