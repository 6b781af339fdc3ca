"""Issue 36: the batch-invariant int4 forward against the int4 forward before it (torch's attention and LM head)
and the exact fp32 forward, in one process, interleaved.

    python benchmarks/int4_invariance.py forward --threads 1 --repeats 9 --out forward.json
    python benchmarks/int4_invariance.py decode --threads 1 --limit 3 --max-new-tokens 128 --out decode.json

``forward``: median ms of one forward of M rows (a bushy token tree) over a 700-position cache, M = 1..32.
``decode``: greedy vanilla / pld / rest / draft / rasd on held-out Spec-Bench rag and summarization questions
(``--data``, read at run time): each method's output against the same engine's vanilla, and tokens/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.generation_config import GenerationConfig

ROWS = (1, 2, 4, 8, 16, 32)
PLAN = {"int4_invariant": ["vanilla", "pld", "rest", "draft", "rasd"], "int4_before": ["vanilla", "pld", "rasd"],
        "exact": ["vanilla", "pld", "rasd"]}


def engines() -> dict[str, Engine]:
    new = Engine.load(weights="int4")
    assert "NOT batch-invariant" not in new.runner.describe(), new.runner.describe()
    old = Engine(new.target, weights="int4")
    old.runner.weights.invariant = None  # type: ignore[attr-defined]  # the int4 path as it was: torch's kernels
    old.runner.weights.row_head = None  # type: ignore[attr-defined]
    return {"exact": Engine(new.target), "int4_before": old, "int4_invariant": new}


def tree_mask(m: int, start: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if m == 1:
        return None, None
    parents = [-1] + [max(0, i - 1 - (i % 3 == 0)) for i in range(1, m)]
    mask = torch.full((1, 1, m, start + m), float("-inf"))
    mask[..., :start] = 0
    depth = []
    for i in range(m):
        path, j = [], i
        while j >= 0:
            path.append(j)
            j = parents[j]
        mask[0, 0, i, [start + x for x in path]] = 0
        depth.append(len(path) - 1)
    return mask, torch.tensor([[start + d for d in depth]])


def forward_cost(repeats: int) -> dict:
    runners = {k: e.runner for k, e in engines().items()}
    vocab = next(iter(runners.values())).model.config.vocab_size
    prompt = torch.randint(100, vocab - 100, (1, 700), generator=torch.Generator().manual_seed(0))
    tokens = torch.randint(100, vocab - 100, (1, max(ROWS)), generator=torch.Generator().manual_seed(1))
    caches = {}
    for k, run in runners.items():
        caches[k] = run.new_cache(1024)
        run.forward(prompt, caches[k])
    masks = {m: tree_mask(m, 700) for m in ROWS}
    ms: dict[str, dict[int, list[float]]] = {k: {m: [] for m in ROWS} for k in runners}
    for _ in range(repeats):
        for m in ROWS:
            for k, run in runners.items():
                mask, pos = masks[m]
                t = time.perf_counter()
                run.forward(tokens[:, :m], caches[k], logits_at=None if m > 1 else -1, attention_mask=mask,
                            position_ids=pos)
                ms[k][m].append((time.perf_counter() - t) * 1e3)
                caches[k].truncate(700)
    return {k: {m: round(statistics.median(v), 2) for m, v in d.items()} for k, d in ms.items()}


def decode(data: str, limit: int, max_new: int) -> dict:
    from refrag_rasd_integrations.cli.bench.data import load_questions, training_question_ids

    engs = engines()
    questions = load_questions(data, "rag,summarization", limit, training_question_ids())

    def run(eng: Engine, method: str, q) -> dict:
        cfg = GenerationConfig.of(max_tokens=max_new, temperature=0.0, method=method, seed=0, context="none")
        t = time.perf_counter()
        r = eng.generate(q.messages, passages=q.passages or None, config=cfg)
        return {"ids": r.token_ids, "s": time.perf_counter() - t, "new": r.stats.new_tokens, "ttft": r.stats.ttft_s}

    for e, methods in PLAN.items():  # warm-up
        for m in methods:
            run(engs[e], m, questions[0])
    rows = []
    for q in questions:
        runs = {f"{e}/{m}": run(engs[e], m, q) for e, methods in PLAN.items() for m in methods}
        for key, r in runs.items():
            r["equal"] = r["ids"] == runs[key.split("/")[0] + "/vanilla"]["ids"]
        rows.append({"id": q.question_id, "category": q.category, "runs": runs})
    summary = {}
    for key in rows[0]["runs"]:
        rs = [r["runs"][key] for r in rows]
        decode_s = sum(r["s"] - r["ttft"] for r in rs)
        vs_exact = statistics.median(r["runs"][key]["s"] / r["runs"]["exact/vanilla"]["s"] for r in rows)
        summary[key] = {"equal": f"{sum(r['equal'] for r in rs)}/{len(rs)}",
                        "decode_tokens_per_s": round(sum(r["new"] for r in rs) / decode_s, 2),
                        "time_vs_exact_vanilla": round(vs_exact, 3)}
    for r in rows:
        for run_ in r["runs"].values():
            del run_["ids"]
    return {"summary": summary, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["forward", "decode"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--data", default="../shared/data/spec_bench_dev.jsonl")
    p.add_argument("--limit", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    res = forward_cost(args.repeats) if args.what == "forward" else decode(args.data, args.limit, args.max_new_tokens)
    res["threads"] = torch.get_num_threads()
    text = json.dumps(res, indent=1)
    print(text if args.what == "forward" else json.dumps(res["summary"], indent=1))
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
