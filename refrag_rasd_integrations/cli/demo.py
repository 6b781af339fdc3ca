"""The demo behind ``make demo`` / ``refrag-rasd demo``: a real RAG pipeline, the defaults vs plain RAG vs REFRAG.

1. loads the default model (converted once, cached) and opens an embedded Chroma collection;
2. indexes the demo corpus (:mod:`refrag_rasd_integrations.cli.demo_corpus`: passages of Python's reference
   documentation, which ships with CPython, and of the project's own docs) with their retrieval vectors,
   token ids and REFRAG chunk embeddings (resumable: a second run finds it indexed);
3. answers the corpus's questions (written for it, with reference answers) through a LangChain chain
   ``retriever | PassagePrompt | ChatRefragRasd`` (or a LlamaIndex query engine with ``--llamaindex``) with the
   default settings (``context="auto"``: the REFRAG checkpoint's measured operating point, plain RAG for the
   shipped one; RASD decoding), streamed; then the same question with plain RAG (text context, vanilla
   decoding) and with REFRAG's compressed context (+ RASD), same process;
4. prints the side-by-side table: time to first token, tokens/s, accepted tokens per forward, whether the
   reference answer is in the answer, the answer.

Example:
    $ refrag-rasd demo --questions 3
    $ refrag-rasd demo --llamaindex
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any, TextIO

from refrag_rasd_core.engine import Engine

from .bench.metrics import answer_recall
from .bench.rag import PIPELINES, make_chain, plain_rag_engine, run_chain, run_query_engine
from .demo_corpus import WARM_UP_QUESTION, demo_passages, demo_questions, index_demo_corpus

DEMO_COLLECTION = "refrag-rasd-demo"


def _runner(framework: str, store: Any, engine: Engine, pipeline: str, max_new_tokens: int, k: int) -> Any:
    settings = PIPELINES[pipeline]
    if framework == "llamaindex":
        from ..llama_index import RefragRasdLLM
        from ..llama_index.query_engine import RefragQueryEngine

        llm = RefragRasdLLM(engine=engine, store=store, max_tokens=max_new_tokens, seed=0, **settings)
        qe = RefragQueryEngine.from_store(store, llm=llm, similarity_top_k=k, streaming=True)
        return lambda q, on_text=None: run_query_engine(qe, q, on_text)
    chain = make_chain(store, engine, k=k, max_new_tokens=max_new_tokens, **settings)
    return lambda q, on_text=None: run_chain(chain, q, on_text)


def run_demo(engine: Engine, store: Any, n_questions: int = 3, max_new_tokens: int = 96, *,
             framework: str = "langchain", k: int = 5, out: TextIO = sys.stdout) -> list[dict[str, Any]]:
    """Index the corpus (if needed), stream the default pipeline's answers, compare with plain RAG and REFRAG's
    compressed context; returns the rows."""
    passages = demo_passages()
    questions = demo_questions(passages)
    t = time.perf_counter()
    report, pruned = index_demo_corpus(store, passages, progress=True)
    gone = f", {pruned} no longer in the corpus removed" if pruned else ""
    print(f"corpus: {store.count()} passages in Chroma collection {store.collection_name!r} "
          f"({report.added} indexed now, {report.skipped} already there{gone}; {time.perf_counter() - t:.1f} s)",
          file=out)
    runners = {name: _runner(framework, store, plain_rag_engine(engine) if name == "plain-rag" else engine, name,
                             max_new_tokens, k) for name in PIPELINES}
    print("warming up (measuring this machine's verify costs; one unshown question per pipeline)...", file=out)
    engine.calibrate_verify_costs()
    for run in runners.values():
        run(WARM_UP_QUESTION)
    via = "LlamaIndex query engine" if framework == "llamaindex" else "LangChain chain"
    point = _describe(engine.auto_context())
    refrag = engine.describe()["refrag"]
    long = ((refrag or {}).get("auto") or {}).get("long") or {}
    if long.get("context") == "compressed":
        point += f"; {_describe(long)} from {long['min_passage_tokens']:,} passage tokens on"
    results = []
    for i, q in enumerate(questions[:n_questions], 1):
        print(f"\n=== Question {i}: {q.question.rstrip('?')}?", file=out)
        print(f"    the default settings (context='auto' = {point}, RASD decoding), through the {via}, "
              "streaming:\n", file=out)
        answers = {"default": runners["default"](q.question, lambda piece: print(piece, end="", flush=True, file=out))}
        print("\n\n    (plain RAG and REFRAG-compressed context on the same question, for the table...)", file=out)
        answers.update({name: run(q.question) for name, run in runners.items() if name != "default"})
        for name, m in answers.items():
            results.append({"question": i, "pipeline": name, **m,
                            "answer_recall": answer_recall(m["answer"], q.reference)})
    print_table(results, out)
    return results


def _describe(point: dict[str, Any]) -> str:
    if point.get("context") != "compressed":
        return "plain RAG"
    return f"REFRAG compressed, expand {point.get('expand', 0)} by {point.get('policy', 'auto')}"


def print_table(results: list[dict[str, Any]], out: TextIO = sys.stdout) -> None:
    print(f"\n{'q':>2} {'pipeline':<12} {'TTFT s':>7} {'tok/s':>6} {'tok/fwd':>7} {'total s':>7} {'ref?':>4}  answer",
          file=out)
    for r in results:
        acc = r.get("accepted_per_forward")
        ans = " ".join(r["answer"].split())
        ans = ans if len(ans) <= 60 else ans[:57] + "..."
        ref = {1.0: "yes", 0.0: "no"}.get(r.get("answer_recall"), "-")
        print(f"{r['question']:>2} {r['pipeline']:<12} {r['ttft_s']:>7.2f} {r['decode_tokens_per_s']:>6.1f} "
              f"{(acc if acc is not None else float('nan')):>7.2f} {r['total_s']:>7.2f} {ref:>4}  {ans}", file=out)
    plain = [r for r in results if r["pipeline"] == "plain-rag"]
    print(f"\nAgainst plain RAG (text context, vanilla decoding, fp32 weights), measured in this run (median over "
          f"{len(plain)} questions):", file=out)
    for name in ("default", "refrag-rasd"):
        fast = [r for r in results if r["pipeline"] == name]
        if not fast or len(fast) != len(plain):
            continue
        ttft = statistics.median(p["ttft_s"] / f["ttft_s"] for f, p in zip(fast, plain, strict=True))
        tps = statistics.median(f["decode_tokens_per_s"] / p["decode_tokens_per_s"]
                                for f, p in zip(fast, plain, strict=True) if p["decode_tokens_per_s"])
        tot = statistics.median(p["total_s"] / f["total_s"] for f, p in zip(fast, plain, strict=True))
        right = sum(r.get("answer_recall") == 1.0 for r in fast)
        print(f"  {name:<12} time to first token {ttft:.2f}x faster, decoding {tps:.2f}x the tokens/s, whole answer "
              f"{tot:.2f}x faster; {right}/{len(fast)} answers hold the reference "
              f"(plain RAG: {sum(r.get('answer_recall') == 1.0 for r in plain)}/{len(plain)}).", file=out)
    print("ref? = the answer contains the question's reference answer. `default` is what ChatRefragRasd() does "
          "unset: context='auto' is the operating point measured for the REFRAG checkpoint (plain RAG for the "
          "shipped one, whose compressed answers lose too many of plain RAG's: docs/engine.md), and RASD decoding "
          "is lossless (the same tokens as plain decoding). `refrag-rasd` is REFRAG's compressed context, "
          "shown for its speed and its answers.", file=out)
