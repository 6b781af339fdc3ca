"""What one target forward costs, transformers' against the lean forward, and what that does to decoding.

1. One forward of M new positions (M = 1, 2, 4, 8, 16, 32: a plain step and tree verifies with a bushy
   tree's mask and positions) over a KV cache of ~700 positions (a real RAG prompt), for
   :class:`~refrag_rasd_core.target.TargetRunner` (transformers' forward),
   :class:`~refrag_rasd_core.lean.LeanRunner` and, when the torch build has the kernels, the lean forward with
   the opt-in int4 weights (``lean_int4``), interleaved in one process; median of the repeats.
   Where the lean forward's time goes at M = 1 and 16 (``lean_profile``: ``torch.profiler`` self CPU time per
   forward, grouped into the linears, attention and everything else: norms, rotary, cache writes, Python).
2. Vanilla greedy decoding of 128 tokens on a few RAG prompts: ``Engine(forward="hf")``,
   ``Engine(forward="lean")`` and transformers' ``model.generate``, interleaved per prompt; decode
   tokens/s (after the first token) and whether the three outputs are equal (and ``Engine(weights="int4")``:
   its rate and whether its output equals the exact model's).

Usage (from the repository root, ~3 minutes on a 2-core CPU):
    HF_HUB_OFFLINE=1 PYTHONPATH=core:. python -m refrag_rasd_integrations.cli.bench.forward_cost [--prompts 3]
        [--repeats 9]
Writes benchmarks/results/forward-cost/<date>-<machine>-<variant>.json and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.lean import LeanRunner
from refrag_rasd_core.models import load_target
from refrag_rasd_core.rasd.token_tree import TokenTree
from refrag_rasd_core.target import TargetRunner, truncate_cache
from refrag_rasd_integrations.cli.bench.machine import machine_info, machine_slug
from refrag_rasd_integrations.cli.bench.results import repo_root, results_path, write_results

SIZES = (1, 2, 4, 8, 16, 32)
SHARED_DEV = repo_root().parent / "shared" / "data" / "spec_bench_dev.jsonl"


def rag_prompts(n: int) -> list[list[dict]]:
    """Chat messages of ``n`` RAG questions: Spec-Bench's dev file when it is there, else the demo corpus."""
    from refrag_rasd_integrations.cli.bench.data import BenchQuestion, load_questions

    if SHARED_DEV.exists():
        return [q.messages for q in load_questions(SHARED_DEV, "rag", limit=n)]
    from refrag_rasd_integrations.cli.demo_corpus import demo_rows

    rows = [r for r in demo_rows(4) if r["held_out"]][:n]
    return [BenchQuestion(r["question_id"], "rag", "\n".join([*r["passages"], r["question"]]), []).messages
            for r in rows]


def bushy_tree(n: int) -> TokenTree:
    tree = TokenTree(1)
    for i in range(n - 1):
        tree.add(0 if i % 2 == 0 else len(tree) - 1, 2 + i, 0.5, 1)
    return tree


def verify_inputs(m: int, ctx: int, dtype: torch.dtype) -> tuple[torch.Tensor, dict]:
    """The ids and forward keywords of an ``m``-node bushy tree verified after ``ctx`` cached positions (a plain
    step when ``m == 1``)."""
    tree = bushy_tree(m)
    return torch.tensor([tree.tokens]), {"logits_at": None, "position_ids": tree.position_ids(ctx),
                                         "attention_mask": tree.attention_mask(ctx, dtype) if m > 1 else None}


def forward_costs(model, ctx_ids: list[int], repeats: int, int4: bool = False) -> dict:
    """Median ms of one forward at each M, every runner, over the same cached context."""
    runners = {"hf": TargetRunner(model), "lean": LeanRunner(model)}
    if int4:
        runners["lean_int4"] = LeanRunner(model, int4=True)
    ctx = len(ctx_ids)
    caches = {}
    for name, r in runners.items():
        caches[name] = r.new_cache()
        r.forward(torch.tensor([ctx_ids]), caches[name])
    times: dict[str, dict[int, list[float]]] = {name: {m: [] for m in SIZES} for name in runners}
    for rep in range(repeats + 1):  # round-robin, so a burst of load hits both alike; round 0 warms up
        for m in SIZES:
            ids, kw = verify_inputs(m, ctx, model.dtype)
            for name, r in runners.items():
                t0 = time.perf_counter()
                r.forward(ids, caches[name], **kw)
                dt = time.perf_counter() - t0
                truncate_cache(caches[name], ctx)
                if rep:
                    times[name][m].append(dt)
    med = {name: {m: round(1e3 * statistics.median(v), 2) for m, v in t.items()} for name, t in times.items()}
    return {"context": ctx, "repeats": repeats, "ms": med,
            "relative_to_m1": {name: {m: round(v[m] / v[1], 3) for m in SIZES} for name, v in med.items()},
            "lean_speedup": {m: round(med["hf"][m] / med["lean"][m], 3) for m in SIZES},
            **({"lean_int4_speedup": {m: round(med["hf"][m] / med["lean_int4"][m], 3) for m in SIZES},
                "lean_int4_plan": runners["lean_int4"].describe()} if int4 else {}),
            "lean_plan": runners["lean"].describe(),
            "lean_plan_timings": {g: p.timings for g, p in runners["lean"].plans.items()}}


LINEAR_OPS = ("mkldnn::_linear_pointwise", "mkl::_mkl_linear", "aten::addmm", "aten::mm", "aten::linear",
              "aten::_weight_int4pack_mm_for_cpu", "aten::_weight_int4pack_mm")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
                 "aten::scaled_dot_product_attention")


def profile_breakdown(model, ctx_ids: list[int], sizes: tuple[int, ...] = (1, 16), repeats: int = 10) -> dict:
    """Self CPU ms per lean forward at each M, grouped: the linears (decoder + LM head), attention, the rest.
    The profiler adds its own overhead, so ``total_ms`` runs above the timed medians of :func:`forward_costs`."""
    from torch.profiler import ProfilerActivity, profile

    runner = LeanRunner(model)
    cache = runner.new_cache()
    ctx = len(ctx_ids)
    runner.forward(torch.tensor([ctx_ids]), cache)
    out = {}
    for m in sizes:
        ids, kw = verify_inputs(m, ctx, model.dtype)
        for rep in range(3 + repeats):  # 3 warm-up forwards, then the profiled ones
            if rep == 3:
                prof = profile(activities=[ProfilerActivity.CPU])
                prof.start()
            runner.forward(ids, cache, **kw)
            truncate_cache(cache, ctx)
        prof.stop()
        groups = {"linears": 0.0, "attention": 0.0, "other": 0.0}
        for ev in prof.key_averages():
            key = "linears" if ev.key in LINEAR_OPS else "attention" if ev.key in ATTENTION_OPS else "other"
            groups[key] += ev.self_cpu_time_total / 1e3 / repeats
        total = sum(groups.values())
        out[m] = {**{k: round(v, 2) for k, v in groups.items()}, "total_ms": round(total, 2),
                  "linear_share": round(groups["linears"] / total, 3)}
    return out


def decode_rates(target, prompts: list[list[dict]], max_new: int, int4: bool = False) -> dict:
    """Vanilla decoding with the engine (both forwards, and int4 weights when asked) and with
    ``model.generate``: decode tokens/s; int4's output is compared with the exact one (first divergence)."""
    t0 = time.perf_counter()
    engines = {"hf": Engine(target, drafter=None, refrag=None, forward="hf")}
    t1 = time.perf_counter()
    engines["lean"] = Engine(target, drafter=None, refrag=None, forward="lean", weights="exact")  # not the default
    t2 = time.perf_counter()
    if int4:
        engines["lean_int4"] = Engine(target, drafter=None, refrag=None, forward="lean", weights="int4")
    t3 = time.perf_counter()
    rows = []
    for messages in prompts:
        row: dict = {}
        ids = engines["hf"].encode_prompt(messages)
        row["prompt_tokens"] = len(ids)
        tokens = {}
        for name, engine in engines.items():
            res = engine.generate_ids(ids, max_new_tokens=max_new)
            s = res.stats
            row[name] = {"new_tokens": s.new_tokens, "ttft_s": round(s.ttft_s, 3),
                         "decode_tok_s": round((s.new_tokens - 1) / max(s.total_s - s.ttft_s, 1e-9), 2)}
            tokens[name] = res.token_ids
        x = torch.tensor([ids])
        kw = {"attention_mask": torch.ones_like(x), "do_sample": False}
        a = time.perf_counter()
        target.model.generate(x, max_new_tokens=1, **kw)
        b = time.perf_counter()
        out = target.model.generate(x, max_new_tokens=max_new, **kw)[0, len(ids):].tolist()
        c = time.perf_counter()
        row["generate"] = {"new_tokens": len(out), "ttft_s": round(b - a, 3),
                           "decode_tok_s": round((len(out) - 1) / max((c - b) - (b - a), 1e-9), 2)}
        tokens["generate"] = out
        row["equal_outputs"] = tokens["hf"] == tokens["lean"] == tokens["generate"]
        if int4:
            a, b = tokens["lean_int4"], tokens["generate"]
            row["int4_equal_to_exact"] = a == b
            row["int4_first_difference"] = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                                                None if len(a) == len(b) else min(len(a), len(b)))
        rows.append(row)
        print(json.dumps(row))
    mean = {name: round(statistics.mean(r[name]["decode_tok_s"] for r in rows), 2)
            for name in (*engines, "generate")}
    out = {"max_new_tokens": max_new, "prompts": rows, "mean_decode_tok_s": mean,
           "lean_vs_generate": round(mean["lean"] / mean["generate"], 3),
           "lean_vs_hf": round(mean["lean"] / mean["hf"], 3),
           "engine_build_s": {"hf": round(t1 - t0, 2), "lean": round(t2 - t1, 2)}}
    if int4:
        out.update(lean_int4_vs_generate=round(mean["lean_int4"] / mean["generate"], 3),
                   int4_equal_to_exact=sum(r["int4_equal_to_exact"] for r in rows) / len(rows))
        out["engine_build_s"]["lean_int4"] = round(t3 - t2, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--context", type=int, default=700)
    ap.add_argument("--out", default=None, help="results file (default: benchmarks/results/forward-cost/"
                    "<date>-<machine>-<variant>.json)")
    ap.add_argument("--variant", default="default", help="the default --out's last part")
    ap.add_argument("--no-int4", action="store_true", help="skip the opt-in int4 weights (Engine(weights='int4'))")
    args = ap.parse_args()
    from refrag_rasd_core.lean.int4 import int4_available

    int4 = int4_available() and not args.no_int4
    target = load_target(device="cpu")
    prompts = rag_prompts(args.prompts)
    tok = target.tokenizer
    ctx_ids = (tok.apply_chat_template(prompts[0], add_generation_prompt=True, tokenize=True, return_dict=False)
               * 4)[:args.context]
    costs = forward_costs(target.model, list(ctx_ids), args.repeats, int4=int4)
    print("forward ms at M:", json.dumps(costs["ms"]), "\nlean plan:", costs["lean_plan"])
    costs["lean_profile"] = profile_breakdown(target.model, list(ctx_ids))
    print("lean forward, self CPU ms per forward:", json.dumps(costs["lean_profile"]))
    decode = decode_rates(target, prompts, args.max_new_tokens, int4=int4)
    print("decode tok/s:", json.dumps(decode["mean_decode_tok_s"]))
    info = machine_info("cpu")
    out = {"what": "one target forward at M new positions over a ~700-position cache (transformers' forward vs "
                   "the lean forward), and vanilla greedy decode tokens/s (Engine hf / lean, model.generate)",
           "machine": info, "model": target.name, "dtype": str(target.dtype).replace("torch.", ""),
           "forward_cost": costs, "vanilla_decode": decode}
    path = Path(args.out) if args.out else results_path("forward-cost", args.variant, machine_slug(info))
    print("wrote", write_results(out, path))


if __name__ == "__main__":
    main()
