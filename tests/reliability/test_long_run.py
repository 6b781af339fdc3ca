"""Long run (issue 9, part 3; ``make stress``): 500 consecutive requests with mixed methods and context modes
on one tiny engine (with a small causal-LM draft, so the draft's own KV cache is exercised too).

Resident memory is sampled every 25 requests; after a 100-request warm-up it must stay flat (no KV-cache,
datastore or draft-cache leak), and the median latency of the last 100 requests must not exceed 1.5x that
of the first 100 after warm-up (no slowdown). The curve is written to
``benchmarks/results/serve/<date>-<machine>-long-run-tiny.json``.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import time

import pytest
from reliability_util import rss_mb

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.rasd import CausalLMDrafter
from tiny import tiny_chunk_encoder, tiny_llama, tiny_loaded, tiny_refrag

pytestmark = pytest.mark.stress

N = 500
WARMUP = 100
EVERY = 25
RSS_GROWTH_MB = 25.0
SLOWDOWN = 1.5
METHODS = ["vanilla", "pld", "rest", "draft", "rasd"]
CONTEXTS = ["none", "text", "compressed"]
TOPICS = ["the Eiffel Tower in Paris", "Mount Fuji in Japan", "the river Nile", "the cat on the mat",
          "photosynthesis in plants", "the Roman Colosseum", "café crème ☕ and croissants 🥐"]


def request(i: int) -> dict:
    topic = TOPICS[i % len(TOPICS)]
    passages = [f"Passage {j} about {TOPICS[(i + j) % len(TOPICS)]}: " + f"{topic} is mentioned here. " * (1 + j % 2)
                for j in range(1 + i % 3)]
    return dict(prompt=f"Request {i}: tell me about {topic}.", passages=passages, method=METHODS[i % 5],
                context=CONTEXTS[(i // 5) % 3], max_new_tokens=12 + i % 9, stream=i % 7 == 0)


def test_500_requests_flat_memory_no_slowdown():
    loaded = tiny_loaded(0, max_positions=1024)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    drafter = CausalLMDrafter(tiny_llama(1, vocab_size=len(loaded.tokenizer), layers=1),
                              tokenizer=loaded.tokenizer, target_tokenizer=loaded.tokenizer)
    engine = Engine(loaded, drafter=drafter, refrag=tiny_refrag(loaded, enc), refrag_encoder=enc)
    latencies, tokens, curve = [], [], []
    gc.collect()
    curve.append({"request": 0, "rss_mb": round(rss_mb(), 2)})
    t_start = time.perf_counter()
    for i in range(N):
        r = request(i)
        prompt, stream = r.pop("prompt"), r.pop("stream")
        t0 = time.perf_counter()
        if stream:
            s = engine.stream(prompt, **r)
            "".join(s)
            n = s.stats.new_tokens
        else:
            n = engine.generate(prompt, **r).stats.new_tokens
        latencies.append(time.perf_counter() - t0)
        tokens.append(n)
        assert n >= 1
        if (i + 1) % EVERY == 0:
            gc.collect()
            curve.append({"request": i + 1, "rss_mb": round(rss_mb(), 2),
                          "median_latency_ms": round(1000 * statistics.median(latencies[-EVERY:]), 2)})
    wall = time.perf_counter() - t_start
    at_warm = next(c["rss_mb"] for c in curve if c["request"] == WARMUP)
    after = [c["rss_mb"] for c in curve if c["request"] >= WARMUP]
    growth = max(after) - at_warm
    first = statistics.median(latencies[WARMUP:WARMUP + 100])
    last = statistics.median(latencies[-100:])
    # least-squares slope of RSS after warm-up, in KiB per request
    xs = [c["request"] for c in curve if c["request"] >= WARMUP]
    mx, my = statistics.fmean(xs), statistics.fmean(after)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, after, strict=True)) / sum((x - mx) ** 2 for x in xs)
    summary = {
        "requests": N, "warmup": WARMUP, "sample_every": EVERY, "wall_s": round(wall, 1),
        "methods": METHODS, "contexts": CONTEXTS, "model": "tiny random LLaMA (2 layers, hidden 64) + 1-layer draft",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), torch threads 1",
        "rss_start_mb": curve[0]["rss_mb"], "rss_at_warmup_mb": at_warm, "rss_end_mb": curve[-1]["rss_mb"],
        "rss_growth_after_warmup_mb": round(growth, 2),
        "rss_slope_after_warmup_kib_per_request": round(slope * 1024, 2),
        "median_latency_first100_after_warmup_ms": round(1000 * first, 2),
        "median_latency_last100_ms": round(1000 * last, 2), "slowdown": round(last / first, 3),
        "new_tokens_total": sum(tokens),
        "bounds": {"rss_growth_mb": RSS_GROWTH_MB, "slowdown": SLOWDOWN},
        "curve": curve,
    }
    from refrag_rasd_integrations.cli.bench.machine import local_slug
    from refrag_rasd_integrations.cli.bench.results import results_path, write_results

    out = write_results(summary, results_path("serve", "long-run-tiny", local_slug()))
    print(json.dumps({k: v for k, v in summary.items() if k != "curve"}, indent=1))
    assert growth < RSS_GROWTH_MB, f"RSS grew {growth:.1f} MB after warm-up (curve in {out})"
    assert last <= SLOWDOWN * first, f"latency went from {first * 1000:.1f} to {last * 1000:.1f} ms (curve in {out})"
    assert len(engine._budgets) <= len(METHODS) + 1  # per-method state is bounded, not per request
