"""Many conversations against one server replica with its prefix cache: does the cache hold its byte budget
(process RSS flat after warm-up) with several clients at once, and does every client get its own answers?

The replica is the ``serve --no-ray`` app (FastAPI under uvicorn, in this process) over the default model; ``C``
client threads run ``N`` two-turn conversations (MT-Bench's turns, each conversation's first message numbered
so no two conversations share more than the template's head) through the OpenAI chat-completions API. Reported:
requests answered / sent, turn 2's cached tokens, RSS after the warm-up and at the end, and, for a sample of
conversations, whether the served answers equal the same conversation run alone on the engine with no cache.

Usage (from the repository root):
    python -m refrag_rasd_integrations.cli.bench.chat_load --data ../shared/data/mt_bench_dev.jsonl \\
        --conversations 200 --clients 4 --prefix-cache-mb 64 --out auto
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import threading
import time
from typing import Any

from .chat import mt_bench_conversations
from .results import resolve_out, results_header, write_results


def _serve(engine: Any, prefix_cache_mb: float, max_tokens: int) -> tuple[Any, str]:
    import uvicorn

    from ...serve.chat_service import ChatService, ServeConfig
    from ...serve.http_api import make_api
    from ...store.server import free_port

    port = free_port()
    cfg = ServeConfig(k=0, max_tokens=max_tokens, calibrate=False, prefix_cache_mb=prefix_cache_mb, port=port)
    server = uvicorn.Server(uvicorn.Config(make_api(ChatService(cfg, engine=engine)), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}/v1/chat/completions"


def run_chat_load(engine: Any, conversations: list[list[str]], *, clients: int = 4, prefix_cache_mb: float = 64,
                  max_tokens: int = 16, warmup: int = 20, check: int = 10) -> dict[str, Any]:
    """Serve ``conversations`` to ``clients`` threads (see the module docstring)."""
    import httpx
    import psutil

    proc = psutil.Process()
    server, url = _serve(engine, prefix_cache_mb, max_tokens)
    todo: queue.Queue = queue.Queue()
    for i, conv in enumerate(conversations):
        todo.put((i, conv))
    done: dict[int, list[dict[str, Any]]] = {}
    errors: list[str] = []
    rss: list[tuple[float, int]] = []
    finished = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=600) as http:
            while True:
                try:
                    i, conv = todo.get_nowait()
                except queue.Empty:
                    return
                messages: list[dict[str, str]] = []
                turns = []
                for n, text in enumerate(conv):
                    content = f"(conversation {i}) {text}" if n == 0 else text
                    messages.append({"role": "user", "content": content})
                    r = http.post(url, json={"messages": messages, "max_tokens": max_tokens, "method": "rasd"})
                    if r.status_code != 200:
                        errors.append(f"{i}/{n}: {r.status_code} {r.text[:120]}")
                        break
                    body = r.json()
                    answer = body["choices"][0]["message"]["content"]
                    messages.append({"role": "assistant", "content": answer})
                    turns.append({"answer": answer, "id": body["id"],
                                  "cached_tokens": body["usage"]["prompt_tokens_details"]["cached_tokens"],
                                  "prompt_tokens": body["usage"]["prompt_tokens"]})
                with lock:
                    done[i] = turns

    def sample() -> None:
        while not finished.is_set():
            rss.append((time.perf_counter(), proc.memory_info().rss))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    warm_rss = None
    timeline: list[tuple[int, float]] = []  # (conversations answered, RSS MB) every 10 conversations
    while any(t.is_alive() for t in threads):
        time.sleep(0.5)
        if warm_rss is None and len(done) >= warmup:
            warm_rss = proc.memory_info().rss
        if len(done) >= 10 * (len(timeline) + 1):
            timeline.append((len(done), round(proc.memory_info().rss / 2**20, 1)))
    seconds = time.perf_counter() - t0
    finished.set()
    end_rss = proc.memory_info().rss
    server.should_exit = True
    # a sample run alone, no cache: the served answers must be these (nothing lost, nothing mixed)
    saved, engine.prefix_cache = engine.prefix_cache, None
    equal = 0
    try:
        for i in sorted(done)[:check]:
            messages = []
            same = True
            for n, (text, turn) in enumerate(zip(conversations[i], done[i], strict=False)):
                messages.append({"role": "user", "content": f"(conversation {i}) {text}" if n == 0 else text})
                want = engine.generate(messages, max_tokens=max_tokens, method="rasd").text
                same &= want == turn["answer"]
                messages.append({"role": "assistant", "content": turn["answer"]})
            equal += same
    finally:
        engine.prefix_cache = saved
    turns2 = [c[1] for c in done.values() if len(c) > 1]
    ids = [t["id"] for c in done.values() for t in c]
    warm = warm_rss or end_rss
    return {"conversations": len(conversations), "clients": clients, "prefix_cache_mb": prefix_cache_mb,
            "answered_conversations": len(done), "errors": errors[:20], "seconds": round(seconds, 1),
            "requests": len(ids), "duplicate_ids": len(ids) - len(set(ids)),
            "turn2_cached_share": round(statistics.mean(t["cached_tokens"] / t["prompt_tokens"] for t in turns2), 3)
            if turns2 else None,
            "rss_after_warmup_mb": round(warm / 2**20, 1), "rss_end_mb": round(end_rss / 2**20, 1),
            "rss_max_mb": round(max(r for _, r in rss) / 2**20, 1) if rss else None,
            "rss_growth_after_warmup": round(end_rss / warm - 1, 4), "rss_timeline_mb": timeline,
            "checked_against_a_run_alone": min(check, len(done)), "equal_to_a_run_alone": equal}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="MT-Bench style .jsonl (lines with 'turns')")
    p.add_argument("--conversations", type=int, default=200)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--prefix-cache-mb", type=float, default=64)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--out", default=None, help="results file, or auto")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from refrag_rasd_core.engine import Engine

    lines = mt_bench_conversations(args.data)
    convs = [lines[i % len(lines)][:2] for i in range(args.conversations)]
    engine = Engine.load()
    res = {**results_header(engine, "serve", data=args.data), **run_chat_load(
        engine, convs, clients=args.clients, prefix_cache_mb=args.prefix_cache_mb, max_tokens=args.max_tokens)}
    print(json.dumps({k: v for k, v in res.items() if k not in ("machine", "settings")}, indent=1))
    path = resolve_out(args.out, "serve", "chat-load", res["machine"])
    if path is not None:
        write_results(res, path)
        print("results:", path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
