"""The demo behind ``make demo`` / ``refrag-rasd demo``: a real RAG pipeline, REFRAG + RASD vs plain RAG.

1. loads the default model (converted once, cached) and opens an embedded Chroma collection;
2. indexes the bundled corpus (the 200 Wikipedia passages of the Spec-Bench ``rag`` questions) with their
   retrieval vectors, token ids and REFRAG chunk embeddings (resumable: a second run finds it indexed);
3. answers held-out questions through a LangChain chain ``retriever | PassagePrompt | ChatRefragRasd``
   (or a LlamaIndex query engine with ``--llamaindex``): REFRAG compressed context + RASD decoding,
   streamed; then the same question with plain RAG (full text context, vanilla decoding), same process;
4. prints the side-by-side table: time to first token, tokens/s, accepted tokens per forward, answer.

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
from .bench.rag import PIPELINES, index_rows, load_rag_rows, make_chain, run_chain, run_query_engine

DEMO_COLLECTION = "refrag-rasd-demo"


def _runner(framework: str, store: Any, engine: Engine, pipeline: str, max_new_tokens: int, k: int) -> Any:
    settings = PIPELINES[pipeline]
    if framework == "llamaindex":
        from .llama_index import RefragRasdLLM
        from .llama_index.query_engine import RefragQueryEngine

        llm = RefragRasdLLM(engine=engine, store=store, max_tokens=max_new_tokens, seed=0, **settings)
        qe = RefragQueryEngine.from_store(store, llm=llm, similarity_top_k=k, streaming=True)
        return lambda q, on_text=None: run_query_engine(qe, q, on_text)
    chain = make_chain(store, engine, k=k, max_new_tokens=max_new_tokens, **settings)
    return lambda q, on_text=None: run_chain(chain, q, on_text)


def run_demo(engine: Engine, store: Any, n_questions: int = 3, max_new_tokens: int = 96, *,
             framework: str = "langchain", k: int = 5, out: TextIO = sys.stdout) -> list[dict[str, Any]]:
    """Index the corpus (if needed), stream REFRAG + RASD answers, compare with plain RAG; returns the rows."""
    rows = load_rag_rows()
    t = time.perf_counter()
    report = index_rows(store, rows, progress=True)
    print(f"corpus: {store.count()} passages in Chroma collection {store.collection_name!r} "
          f"({report.added} indexed now, {report.skipped} already there; {time.perf_counter() - t:.1f} s)", file=out)
    fast = _runner(framework, store, engine, "refrag-rasd", max_new_tokens, k)
    plain = _runner(framework, store, engine, "plain-rag", max_new_tokens, k)
    print("warming up (measuring this machine's verify costs; one unshown question per pipeline)...", file=out)
    engine.calibrate_verify_costs()
    warm = next(r for r in rows if not r["held_out"])
    fast(warm["question"])
    plain(warm["question"])
    via = "LlamaIndex query engine" if framework == "llamaindex" else "LangChain chain"
    results = []
    for i, r in enumerate([r for r in rows if r["held_out"]][:n_questions], 1):
        print(f"\n=== Question {i}: {r['question'].rstrip('?')}?", file=out)
        print(f"    REFRAG (compressed passages) + RASD, through the {via}, streaming:\n", file=out)
        a = fast(r["question"], lambda piece: print(piece, end="", flush=True, file=out))
        print("\n\n    (plain RAG on the same question, for the table...)", file=out)
        b = plain(r["question"])
        for name, m in (("refrag-rasd", a), ("plain-rag", b)):
            results.append({"question": i, "pipeline": name, **m,
                            "answer_recall": answer_recall(m["answer"], r["reference"])})
    print_table(results, out)
    return results


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
    fast = [r for r in results if r["pipeline"] == "refrag-rasd"]
    plain = [r for r in results if r["pipeline"] == "plain-rag"]
    if fast and plain:
        ttft = statistics.median(p["ttft_s"] / f["ttft_s"] for f, p in zip(fast, plain, strict=True))
        tps = statistics.median(f["decode_tokens_per_s"] / p["decode_tokens_per_s"]
                                for f, p in zip(fast, plain, strict=True) if p["decode_tokens_per_s"])
        tot = statistics.median(p["total_s"] / f["total_s"] for f, p in zip(fast, plain, strict=True))
        print(f"\nREFRAG + RASD vs plain RAG, measured in this run (median over {len(fast)} questions): "
              f"time to first token {ttft:.2f}x faster, decoding {tps:.2f}x the tokens/s, "
              f"whole answer {tot:.2f}x faster.", file=out)
        print("ref? = the answer contains a Spec-Bench reference answer. Answers differ where the compressed "
              "context changes what the model reads (the shipped REFRAG checkpoint is a short CPU run; see "
              "docs/training-refrag.md); RASD itself is lossless (the same tokens as vanilla decoding over the "
              "same context).", file=out)
