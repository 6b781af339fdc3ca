"""The demo behind ``make demo`` / ``refrag-rasd demo``: RAG questions answered with RASD speculative
decoding (passages as the datastore), streamed, then the same questions with plain decoding, side by side.

Example:
    $ refrag-rasd demo --questions 2 --max-new-tokens 96
"""

from __future__ import annotations

import sys
from importlib import resources
from typing import TextIO

from refrag_rasd_core.engine import Engine, GenerationConfig

from .bench.data import BenchQuestion, load_questions


def demo_questions(n: int) -> list[BenchQuestion]:
    """The first ``n`` RAG questions shipped with the package (Spec-Bench, Apache-2.0; see the data NOTICE)."""
    path = resources.files("refrag_rasd_core") / "data" / "spec_bench_train.jsonl"
    return load_questions(str(path), "rag", limit=n)


def run_demo(engine: Engine, n_questions: int = 2, max_new_tokens: int = 96, method: str = "rasd",
             out: TextIO = sys.stdout) -> list[dict]:
    """Stream ``method``'s answers, then time vanilla decoding on the same prompts; print a table."""
    rows = []
    questions = demo_questions(n_questions + 1)
    # a server is warm: measure this machine's verify costs and let the speculation budget calibrate on
    # one question that is not shown, as it would on earlier traffic
    print("(calibrating the speculation budget on this machine: one unshown question first)", file=out)
    engine.calibrate_verify_costs()
    engine.generate(questions[-1].messages, passages=questions[-1].passages, method=method, max_new_tokens=64)
    for i, q in enumerate(questions[:n_questions], 1):
        question = q.prompt.strip().split("\n")[-1]
        print(f"\n=== Question {i}: {question}", file=out)
        print(f"    ({len(q.passages)} retrieved passages; answers stream as they are accepted)\n", file=out)
        spec_cfg = GenerationConfig(max_new_tokens=max_new_tokens, method=method)
        stream = engine.stream(q.messages, passages=q.passages, config=spec_cfg)
        for piece in stream:
            print(piece, end="", flush=True, file=out)
        print("\n", file=out)
        plain = engine.generate(q.messages, config=GenerationConfig(max_new_tokens=max_new_tokens))
        for name, s, ids in ((method, stream.stats, stream.token_ids), ("vanilla", plain.stats, plain.token_ids)):
            rows.append({"question": i, "method": name, "ttft_s": s.ttft_s, "tokens_per_s": s.tokens_per_s,
                         "tokens_per_forward": s.accepted_per_forward, "new_tokens": s.new_tokens,
                         "same_as_vanilla": ids == plain.token_ids})
    print(f"{'q':>2} {'method':<8} {'TTFT s':>7} {'tok/s':>7} {'tok/fwd':>8} {'tokens':>7} {'same':>5}", file=out)
    for r in rows:
        print(f"{r['question']:>2} {r['method']:<8} {r['ttft_s']:>7.2f} {r['tokens_per_s']:>7.1f} "
              f"{r['tokens_per_forward']:>8.2f} {r['new_tokens']:>7} {str(r['same_as_vanilla']):>5}", file=out)
    return rows
