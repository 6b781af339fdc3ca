"""The load test's client (refrag_rasd_integrations.cli.bench.load) against a real HTTP server (uvicorn) over the
tiny engine: every request ends as exactly one outcome, answered or refused with a clear status; none lost or
duplicated; a stream cut short is a failure, not an answer."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from conftest import free_port  # noqa: E402
from refrag_rasd_core.engine import Engine  # noqa: E402
from refrag_rasd_integrations.cli.bench.load import Outcome, run_load, stream_one, summarize  # noqa: E402
from refrag_rasd_integrations.serve.chat_service import ChatService, ServeConfig  # noqa: E402
from refrag_rasd_integrations.serve.http_api import make_api  # noqa: E402

USER = [{"role": "user", "content": "Which city is the capital of France?"}]


@pytest.fixture(scope="module")
def server_url():
    from tiny import tiny_loaded

    engine = Engine(tiny_loaded(0), drafter=None, refrag=None)
    # the default collection lives on a Chroma server that is not there: retrieval requests get a 503
    svc = ChatService(ServeConfig(collection="docs", chroma_url=f"http://127.0.0.1:{free_port()}", max_tokens=8,
                                  method="vanilla", calibrate=False), engine=engine)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(make_api(svc), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_every_request_gets_one_outcome(server_url):
    bodies = [{"messages": USER, "k": 0} if i % 3 else {"messages": USER} for i in range(9)]
    seen: list[Outcome] = []
    outcomes, sent, wall = run_load(server_url, bodies, clients=3, on_outcome=seen.append)
    s = summarize(outcomes, wall, sent)
    assert (s["sent"], s["answered"], s["refused"], s["failed"], s["lost"], s["duplicated"]) == (9, 6, 3, 0, 0, 0)
    assert len(seen) == 9
    for o in outcomes:
        if o.status == "answered":
            assert o.echoed_id == f"chatcmpl-{o.request_id}" and o.tokens >= 1 and o.answer
            assert 0 < o.ttft_s <= o.latency_s and o.replica
        else:
            assert o.http_status == 503 and "Chroma" in o.error
    assert s["answers_per_s"] > 0 and s["latency_p50_s"] <= s["latency_p95_s"]


class _CutStream:
    """An HTTP server that starts an answer and hangs up before ``data: [DONE]`` (a replica dying mid-answer)."""

    def __enter__(self) -> str:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                self.wfile.write(b'data: {"id":"chatcmpl-cut","choices":[{"delta":{"content":"Par"}}]}\n\n')
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc):
        self.httpd.shutdown()


def test_a_cut_stream_and_a_dead_server_are_failures(server_url):
    import httpx

    with _CutStream() as cut_url, httpx.Client() as client:
        cut = stream_one(client, cut_url, {"messages": USER}, "cut", timeout_s=10)
        assert cut.status == "failed" and "before data: [DONE]" in cut.error and cut.answer == "Par"
        # max_tokens=1: a whole answer, for contrast with the cut one below
        ok = stream_one(client, server_url, {"messages": USER, "k": 0, "max_tokens": 1}, "one")
        assert ok.status == "answered" and ok.tokens == 1
        dead = stream_one(client, f"http://127.0.0.1:{free_port()}", {"messages": USER}, "two", timeout_s=5)
        assert dead.status == "failed" and "ConnectError" in dead.error
    s = summarize([ok, dead, ok], 1.0, ["one", "two", "three"])
    assert s["lost"] == 1 and s["duplicated"] == 1 and s["failed"] == 1


def test_a_time_limit_stops_sending(server_url):
    bodies = [{"messages": USER, "k": 0, "max_tokens": 2}] * 50
    outcomes, sent, _ = run_load(server_url, bodies, clients=2, time_limit_s=0.0)
    assert outcomes == [] and sent == []
