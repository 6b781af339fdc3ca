"""A load test's client side: K concurrent clients streaming M chat-completions requests to an OpenAI-compatible
server, each request's one outcome accounted for.

Every request carries its own id (``X-Request-Id``) and ends as exactly one :class:`Outcome`:

* ``answered``: HTTP 200, the stream ended with ``data: [DONE]`` and the completion's id echoes the request's;
* ``refused``: the server said no with a clear status (429 or 503: Serve's queue is full, the store is down);
* ``failed``: anything else (another status, an error event in the stream, a stream cut before ``[DONE]``, a
  connection error, the client's timeout), with the reason.

:func:`summarize` checks that none was lost (a sent id without an outcome) or duplicated (two outcomes for one
id, or an answer carrying another request's id) and reports throughput, latency and time to first token.

Example:
    >>> o = [Outcome("a", "answered", 200, 0.2, 1.0, 8, echoed_id="chatcmpl-a"),
    ...      Outcome("b", "refused", 503, None, 0.01, 0)]
    >>> s = summarize(o, wall_s=2.0, sent=["a", "b"])
    >>> s["answered"], s["refused"], s["lost"], s["duplicated"], s["answers_per_s"]
    (1, 1, 0, 0, 0.5)
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

REFUSED = (429, 503)


@dataclass
class Outcome:
    """What became of one request."""

    request_id: str
    status: str
    """``answered``, ``refused`` or ``failed``."""
    http_status: int | None
    ttft_s: float | None
    """Seconds from sending to the first content token."""
    latency_s: float
    """Seconds from sending to the end of the stream."""
    tokens: int
    replica: str | None = None
    error: str | None = None
    answer: str = ""
    echoed_id: str | None = None
    started_s: float = 0.0
    """When it was sent, in seconds from the start of the run."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stream_one(client: Any, url: str, body: dict[str, Any], request_id: str, timeout_s: float = 300.0,
               t_start: float | None = None) -> Outcome:
    """Send one streamed chat-completions request with ``httpx`` and classify what came back."""
    import httpx

    t0 = time.perf_counter()
    started = t0 - (t_start if t_start is not None else t0)
    ttft = None
    pieces: list[str] = []
    done = False
    echoed = replica = None
    usage: dict[str, Any] = {}
    extra: dict[str, Any] = {}

    def outcome(status: str, http: int | None, error: str | None = None) -> Outcome:
        return Outcome(request_id, status, http, ttft, time.perf_counter() - t0,
                       int(usage.get("completion_tokens", 0)), replica, error, "".join(pieces), echoed, started, extra)

    try:
        with client.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True,
                                                                        "stream_options": {"include_usage": True}},
                           headers={"x-request-id": request_id}, timeout=timeout_s) as r:
            if r.status_code != 200:
                text = r.read().decode("utf-8", "replace")[:300]
                return outcome("refused" if r.status_code in REFUSED else "failed", r.status_code,
                               f"HTTP {r.status_code}: {text}")
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    return outcome("failed", 200, f"error event: {event['error'].get('message')}")
                echoed = event.get("id", echoed)
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if ttft is None:
                            ttft = time.perf_counter() - t0
                        pieces.append(content)
                    if choice.get("finish_reason"):
                        extra = event.get("refrag_rasd") or {}
                        replica = extra.get("replica")
    except httpx.HTTPError as exc:
        return outcome("failed", None, f"{type(exc).__name__}: {exc}")
    if not done:
        return outcome("failed", 200, "the stream ended before data: [DONE]")
    if echoed != f"chatcmpl-{request_id}":
        return outcome("failed", 200, f"the answer carries id {echoed!r}, not this request's")
    return outcome("answered", 200)


def run_load(url: str, bodies: Sequence[dict[str, Any]], clients: int, *, prefix: str = "req",
             timeout_s: float = 300.0, time_limit_s: float | None = None,
             on_outcome: Callable[[Outcome], None] | None = None) -> tuple[list[Outcome], list[str], float]:
    """Send ``bodies`` (one request each) from ``clients`` concurrent clients; each client takes the next body
    when its last request ended. Stops sending after ``time_limit_s``. Returns ``(outcomes, sent ids,
    wall seconds)``."""
    import httpx

    work: queue.Queue = queue.Queue()
    for i, body in enumerate(bodies):
        work.put((f"{prefix}-{i:04d}", body))
    outcomes: list[Outcome] = []
    sent: list[str] = []
    lock = threading.Lock()
    t0 = time.perf_counter()

    def client_loop() -> None:
        with httpx.Client() as client:
            while time_limit_s is None or time.perf_counter() - t0 < time_limit_s:
                try:
                    rid, body = work.get_nowait()
                except queue.Empty:
                    return
                with lock:
                    sent.append(rid)
                out = stream_one(client, url, body, rid, timeout_s, t_start=t0)
                with lock:
                    outcomes.append(out)
                if on_outcome is not None:
                    on_outcome(out)

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes, sent, time.perf_counter() - t0


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, max(0, round(q * (len(v) - 1))))], 3)


def summarize(outcomes: Sequence[Outcome], wall_s: float, sent: Sequence[str]) -> dict[str, Any]:
    """Counts, lost / duplicated requests, throughput (answers/s, tokens/s), p50 / p95 latency and time to first
    token of the answered requests."""
    by_id = Counter(o.request_id for o in outcomes)
    answered = [o for o in outcomes if o.status == "answered"]
    lost = sorted(set(sent) - set(by_id))
    duplicated = sorted(i for i, n in by_id.items() if n > 1)
    duplicated += sorted(o.request_id for o in answered if o.echoed_id != f"chatcmpl-{o.request_id}")
    lat = [o.latency_s for o in answered]
    ttft = [o.ttft_s for o in answered if o.ttft_s is not None]
    tokens = sum(o.tokens for o in answered)
    return {
        "sent": len(sent), "answered": len(answered),
        "refused": sum(o.status == "refused" for o in outcomes),
        "failed": sum(o.status == "failed" for o in outcomes),
        "lost": len(lost), "duplicated": len(duplicated), "lost_ids": lost, "duplicated_ids": duplicated,
        "wall_s": round(wall_s, 2),
        "answers_per_s": round(len(answered) / wall_s, 3) if wall_s > 0 else 0.0,
        "tokens_per_s": round(tokens / wall_s, 2) if wall_s > 0 else 0.0,
        "latency_p50_s": _pct(lat, 0.5), "latency_p95_s": _pct(lat, 0.95),
        "ttft_p50_s": _pct(ttft, 0.5), "ttft_p95_s": _pct(ttft, 0.95),
        "replicas_seen": len({o.replica for o in answered if o.replica}),
        "errors": sorted(Counter(o.error.split(":")[0] for o in outcomes if o.error).items()),
    }


__all__ = ["REFUSED", "Outcome", "run_load", "stream_one", "summarize"]
