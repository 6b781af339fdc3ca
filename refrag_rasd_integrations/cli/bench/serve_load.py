"""Serving load test (issue 17): the default model behind Ray Serve on this machine, loopback only, bounded in
count and time.

1. Starts a ``chroma run`` server on loopback (or uses ``--chroma-url``) and indexes the demo corpus into it
   (resumable: a second run reuses the index).
2. First the step before Ray: the same HTTP API served from this one process (uvicorn, one engine on all cores;
   ``--no-one-process`` skips it). Then, for each replica count (``--replicas 1,2``): runs the Serve application
   with that many engine replicas (the machine's cores split between them), warms every replica up, then K
   concurrent clients stream M retrieval-augmented questions (the demo questions, cycled); reports answers/s,
   output tokens/s, p50 / p95 latency and time to first token, and that every request was answered or refused
   with a clear status (none lost, none duplicated). Each answer is scored against the question's reference
   (answer recall), so speed never comes without the answers' quality.
3. With ``--kill``: on the largest replica count, kills one replica (``ray.kill``) once a few answers are in;
   records what became of the requests in flight, how long Serve took to replace the replica, and that every
   request sent after the replacement is answered.
4. With ``--overload N``: one replica with a queue of N requests per proxy and more clients than it holds; the
   surplus must be refused (503) and nothing lost.

    .venv/bin/python -m refrag_rasd_integrations.cli.bench.serve_load --replicas 1,2 --clients 4 --questions 16 \\
        --kill --out benchmarks/results/serve/<date>-<machine>-load.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from refrag_rasd_integrations.cli.bench.load import run_load, summarize  # noqa: E402
from refrag_rasd_integrations.cli.bench.machine import machine_info  # noqa: E402
from refrag_rasd_integrations.cli.bench.metrics import answer_recall  # noqa: E402
from refrag_rasd_integrations.cli.demo_corpus import demo_questions, index_demo_corpus  # noqa: E402
from refrag_rasd_integrations.serve import ServeConfig, kill_replica, shutdown, start, wait_ready  # noqa: E402
from refrag_rasd_integrations.serve.deployment import build_app, replica_actor_names  # noqa: E402
from refrag_rasd_integrations.store.server import ChromaServer, free_port  # noqa: E402

COLLECTION = "serve-load-demo"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def log_summary(label: str, s: dict) -> None:
    log(f"{label}: {s['answered']}/{s['sent']} answered, {s['refused']} refused, {s['failed']} failed, lost "
        f"{s['lost']}, duplicated {s['duplicated']}; {s['answers_per_s']} answers/s, p50 {s['latency_p50_s']} s, "
        f"p95 {s['latency_p95_s']} s, TTFT p50 {s['ttft_p50_s']} s; recall {s['answer_recall']}")


def bodies_for(n: int, max_tokens: int, k: int) -> tuple[list[dict], list[list[str]]]:
    qs = demo_questions()
    picked = [qs[i % len(qs)] for i in range(n)]
    return ([{"model": "refrag-rasd", "messages": [{"role": "user", "content": q.question}], "max_tokens": max_tokens,
              "k": k} for q in picked], [list(q.reference) for q in picked])


def phase(url: str, n: int, clients: int, max_tokens: int, k: int, prefix: str, time_limit_s: float,
          on_outcome=None) -> dict:
    bodies, refs = bodies_for(n, max_tokens, k)
    outcomes, sent, wall = run_load(url, bodies, clients, prefix=prefix, time_limit_s=time_limit_s,
                                    timeout_s=300, on_outcome=on_outcome)
    summary = summarize(outcomes, wall, sent)
    ref_of = {f"{prefix}-{i:04d}": r for i, r in enumerate(refs)}
    scores = [answer_recall(o.answer, ref_of[o.request_id]) for o in outcomes if o.status == "answered"]
    scores = [s for s in scores if s is not None]
    summary["answer_recall"] = round(sum(scores) / len(scores), 3) if scores else None
    summary["outcomes"] = [{k2: v for k2, v in o.to_dict().items() if k2 not in ("answer", "extra")}
                           | {"context": o.extra.get("context"), "method": o.extra.get("method")}
                           for o in outcomes]
    return summary


class OneProcess:
    """The step before Ray: the same HTTP API in this process (uvicorn, one engine, all cores), no replicas."""

    def __init__(self, cfg: ServeConfig, engine) -> None:  # noqa: ANN001 - Engine
        import uvicorn

        from refrag_rasd_integrations.serve.chat_service import ChatService
        from refrag_rasd_integrations.serve.http_api import make_api

        if cfg.calibrate:
            engine.calibrate_verify_costs()
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(make_api(ChatService(cfg, engine=engine)), host="127.0.0.1",
                                                    port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def deploy(cfg: ServeConfig) -> None:
    """Replace the application with one of ``cfg.replicas`` replicas (deleted first: the old replicas hold
    the CPUs the new ones reserve, so a rolling update could not place them)."""
    from ray import serve

    serve.delete(cfg.app_name)
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/", blocking=False)
    wait_ready(cfg.app_name, cfg.replicas, timeout_s=600)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", default="1,2", help="replica counts to compare")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients")
    ap.add_argument("--questions", type=int, default=16, help="requests per replica count")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("-k", type=int, default=4, help="passages retrieved per question")
    ap.add_argument("--method", default="rasd")
    ap.add_argument("--context", default="auto")
    ap.add_argument("--max-queued", type=int, default=64)
    ap.add_argument("--no-one-process", action="store_true", help="skip the one-process baseline (no Ray)")
    ap.add_argument("--kill", action="store_true", help="kill a replica mid-load on the largest replica count")
    ap.add_argument("--overload", type=int, default=0,
                    help="then 1 replica with this queue length per proxy and more clients than it holds (503s)")
    ap.add_argument("--time-limit", type=float, default=600, help="seconds of sending per phase")
    ap.add_argument("--chroma-url", default=None, help="use this Chroma server (default: start one on loopback)")
    ap.add_argument("--port", type=int, default=None, help="HTTP port (default: a free one)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    counts = [int(x) for x in args.replicas.split(",") if x.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    chroma = None
    url_chroma = args.chroma_url
    if not url_chroma:
        chroma = ChromaServer(tmp / "chroma", log=tmp / "chroma.log").start()
        url_chroma = chroma.url
    log(f"Chroma server at {url_chroma}; indexing the demo corpus")
    from refrag_rasd_integrations.engines import get_engine
    from refrag_rasd_integrations.store import RefragChromaStore

    store = RefragChromaStore(COLLECTION, url=url_chroma, engine=get_engine())
    report, _ = index_demo_corpus(store, progress=False)
    log(f"{report.passages} passages indexed ({report.added} new)")
    results: dict = {"machine": machine_info("cpu"), "settings": {
        "replicas": counts, "clients": args.clients, "questions": args.questions, "max_tokens": args.max_tokens,
        "k": args.k, "method": args.method, "context": args.context, "max_queued_requests": args.max_queued,
        "collection_passages": store.count(), "model": "SmolLM2-135M-Instruct (default)"}, "runs": []}
    port = args.port or free_port()
    base = dict(collection=COLLECTION, k=args.k, chroma_url=url_chroma, method=args.method, context=args.context,
                max_tokens=args.max_tokens, max_queued_requests=args.max_queued, port=port, app_name="serve-load")
    if not args.no_one_process:
        with OneProcess(ServeConfig(**base), store.engine) as url:
            log(f"one process (no Ray) at {url}; warming up")
            phase(url, 2, 1, 8, args.k, "warm0", 300)
            s = phase(url, args.questions, args.clients, args.max_tokens, args.k, "p0", args.time_limit)
            s.update(replicas=0, startup_s=None)
            log_summary("one process", s)
            results["runs"].append(s)
    try:
        for i, n in enumerate(counts):
            cfg = ServeConfig(replicas=n, **base)
            t0 = time.perf_counter()
            if i == 0:
                url = start(cfg, wait_s=600)
            else:
                deploy(cfg)
            up_s = time.perf_counter() - t0
            log(f"{n} replica(s) up in {up_s:.0f} s at {url}; warming up")
            warm = phase(url, 2 * n, n, 8, args.k, f"warm{n}", 300)
            log(f"warm-up: {warm['answered']}/{warm['sent']} answered")
            log(f"load: {args.clients} clients, {args.questions} questions")
            s = phase(url, args.questions, args.clients, args.max_tokens, args.k, f"r{n}", args.time_limit)
            s.update(replicas=n, startup_s=round(up_s, 1))
            log_summary(f"{n} replica(s)", s)
            results["runs"].append(s)
        if args.kill:
            results["kill"] = kill_phase(url, cfg, args)
        if args.overload:
            results["overload"] = overload_phase(url, base, args)
    finally:
        shutdown()
        if chroma is not None:
            chroma.stop()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
        log(f"wrote {args.out}")
    print(format_table(results))
    return 0


def kill_phase(url: str, cfg: ServeConfig, args: argparse.Namespace) -> dict:
    """Kill one replica once two answers of the load are in; then wait for Serve's replacement and send more."""
    answered = threading.Event()
    count = {"n": 0}
    killed: dict = {}

    def on_outcome(o) -> None:
        if o.status == "answered":
            count["n"] += 1
            if count["n"] == 2:
                answered.set()

    def killer() -> None:
        if answered.wait(600):
            killed["at"] = time.perf_counter()
            killed["name"] = kill_replica(cfg.app_name)
            log(f"killed {killed['name']}")

    before = replica_actor_names(cfg.app_name)
    t = threading.Thread(target=killer, daemon=True)
    t.start()
    during = phase(url, args.questions, args.clients, args.max_tokens, args.k, "kill", args.time_limit,
                   on_outcome=on_outcome)
    t.join(5)
    wait_ready(cfg.app_name, cfg.replicas, timeout_s=600, gone=[killed.get("name", "")])
    replaced_s = time.perf_counter() - killed["at"] if "at" in killed else None
    after = phase(url, 2 * args.clients, args.clients, args.max_tokens, args.k, "after", args.time_limit)
    out = {"replicas": cfg.replicas, "killed": killed.get("name"), "replicas_before": before,
           "replicas_after": replica_actor_names(cfg.app_name),
           "replaced_within_s": round(replaced_s, 1) if replaced_s else None, "during": during, "after": after}
    log(f"kill: during {during['answered']} answered / {during['failed']} failed / {during['refused']} refused "
        f"(lost {during['lost']}, duplicated {during['duplicated']}); replaced within {out['replaced_within_s']} s; "
        f"after: {after['answered']}/{after['sent']} answered")
    return out


def overload_phase(url: str, base: dict, args: argparse.Namespace) -> dict:
    """One replica with a short queue (``--overload`` requests per proxy) and twice as many clients as the
    replica and its queue hold: the surplus must be refused with a clear status, nothing lost."""
    cfg = ServeConfig(**{**base, "replicas": 1, "max_queued_requests": args.overload})
    deploy(cfg)
    clients = 2 * (args.overload + cfg.max_ongoing_requests)
    s = phase(url, 2 * clients, clients, args.max_tokens, args.k, "over", args.time_limit)
    s.update(replicas=1, max_queued_requests=args.overload, clients=clients)
    log_summary(f"overload (queue {args.overload}, {clients} clients)", s)
    return s


def _errors(d: dict) -> str:
    """A run's errors as ``"kind xN, ..."`` (``none`` without any)."""
    return ", ".join(f"{e} x{n}" for e, n in d["errors"]) or "none"


def format_table(results: dict) -> str:
    rows = ["| replicas | answered / sent | refused | failed | lost | dup | answers/s | tokens/s | p50 latency | "
            "p95 latency | p50 TTFT | p95 TTFT | answer recall |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in results["runs"]:
        rows.append(f"| {s['replicas'] or 'one process, no Ray'} | {s['answered']} / {s['sent']} | {s['refused']} | "
                    f"{s['failed']} | {s['lost']} "
                    f"| {s['duplicated']} | {s['answers_per_s']} | {s['tokens_per_s']} | {s['latency_p50_s']} s | "
                    f"{s['latency_p95_s']} s | {s['ttft_p50_s']} s | {s['ttft_p95_s']} s | {s['answer_recall']} |")
    kill = results.get("kill")
    if kill:
        d, a = kill["during"], kill["after"]
        rows.append(f"\nkilled a replica of {kill['replicas']} mid-load: {d['answered']} answered, {d['failed']} "
                    f"failed ({_errors(d)}), {d['refused']} refused, lost {d['lost']}, duplicated "
                    f"{d['duplicated']}; Serve replaced it within {kill['replaced_within_s']} s; afterwards "
                    f"{a['answered']} / {a['sent']} answered")
    if results.get("overload"):
        rows.append(_overload_line(results["overload"]))
    return "\n".join(rows)


def _overload_line(over: dict) -> str:
    """The overload run in one line: what a full queue refused and whether anything was lost."""
    return (f"\noverload (1 replica, queue {over['max_queued_requests']}, {over['clients']} clients): "
            f"{over['answered']} answered, {over['refused']} refused ({_errors(over)}), {over['failed']} failed, "
            f"lost {over['lost']}, duplicated {over['duplicated']}")


if __name__ == "__main__":
    sys.exit(main())
