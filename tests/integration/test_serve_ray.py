"""The server on a real local Ray cluster: one replica of a tiny model (saved to a folder, loaded by the replica)
reading a real ``chroma run`` server on loopback; an answer streamed through the OpenAI-compatible endpoint and
through LangChain's ChatOpenAI (with an API key: none or a wrong one is a 401); nothing Ray or Serve opened
listens beyond loopback; a replica killed with ``ray.kill`` is replaced by Serve; then everything shuts
down. (The tiny model keeps it fast; the store's retrieval embedder and chunk encoder are the real defaults.)"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")

from refrag_rasd_core.engine import Engine  # noqa: E402
from refrag_rasd_integrations.serve import (  # noqa: E402
    ServeConfig,
    kill_replica,
    replica_states,
    shutdown,
    start,
    wait_ready,
)

pytestmark = pytest.mark.integration

KEY = "sk-integration-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}

QUESTION = "Which city is the capital of France?"
TEXTS = ["Paris is the capital of France. The Eiffel Tower stands there.",
         "Berlin is the capital of Germany. The Brandenburg Gate stands in its centre.",
         "Photosynthesis turns light, water and carbon dioxide into sugar in plants."]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from tiny import tiny_loaded

    folder = tmp_path_factory.mktemp("tiny-model")
    loaded = tiny_loaded(0)
    loaded.model.save_pretrained(folder, safe_serialization=True)
    loaded.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def served(tiny_folder, chroma_server):
    from conftest import free_port
    from refrag_rasd_integrations.serve import KeyRing
    from refrag_rasd_integrations.store import RefragChromaStore

    engine = Engine.load(str(tiny_folder), device="cpu", drafter=None, refrag=None)
    store = RefragChromaStore("served-docs", url=chroma_server.url, engine=engine)
    store.add_texts(TEXTS, metadatas=[{"source": f"doc{i}"} for i in range(len(TEXTS))])
    cfg = ServeConfig(model=str(tiny_folder), device="cpu", refrag=None, method="rasd", collection="served-docs",
                      k=2, max_tokens=16, chroma_url=chroma_server.url, calibrate=False, replicas=1,
                      port=free_port(), app_name="refrag-rasd-test", api_keys=KeyRing.parse([KEY]).digests())
    try:
        url = start(cfg, wait_s=240)
        yield url, cfg, engine, store
    finally:
        shutdown()


def sse_text(response) -> tuple[str, list]:
    chunks = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            chunks.append(json.loads(line[len("data: "):]))
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c.get("choices")), chunks


def test_streams_through_ray_serve_and_chat_openai(served):
    url, cfg, engine, store = served
    body = {"model": "refrag-rasd", "messages": [{"role": "user", "content": QUESTION}], "stream": True,
            "stream_options": {"include_usage": True}, "method": "vanilla"}
    for bad in ({}, {"authorization": "Bearer wrong-key-000"}):
        r = httpx.post(f"{url}/v1/chat/completions", json=body, headers=bad, timeout=60)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text, chunks = sse_text(r)
    final = next(c for c in chunks if c.get("choices") and c["choices"][0]["finish_reason"])
    sources = final["refrag_rasd"]["sources"]
    assert [s["source"] for s in sources][0] == "doc0" and len(sources) == 2  # the server's retrieval
    assert chunks[-1]["usage"]["completion_tokens"] >= 1
    # the replica read the passages the store holds: the same answer as this process's engine on them
    hits = store.search(QUESTION, k=2)
    want = engine.generate([{"role": "user", "content": QUESTION}], passages=[p for p, _ in hits], context="text",
                           method="vanilla", max_new_tokens=16)
    assert text == want.text and text

    lc = pytest.importorskip("langchain_openai")
    llm = lc.ChatOpenAI(model="refrag-rasd", base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120,
                        extra_body={"method": "vanilla"})
    assert "".join(c.content for c in llm.stream(QUESTION)) == text
    # the default method (rasd) is lossless: the same greedy answer
    assert llm.bind(extra_body={}).invoke(QUESTION).content == text


def test_nothing_listens_beyond_loopback(served):
    psutil = pytest.importorskip("psutil")
    ray_pids = {}
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        text = " ".join([proc.info["name"] or "", *(proc.info["cmdline"] or [])])
        if any(w in text for w in ("ray::", "raylet", "gcs_server", "ray/_private", "ray/dashboard", "ray/serve")):
            ray_pids[proc.info["pid"]] = text[:120]
    listening = [c for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in ray_pids]
    assert listening, "no Ray process found listening"
    wide = [(ray_pids[c.pid], c.laddr) for c in listening if c.laddr.ip not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert not wide, f"listening beyond loopback: {wide}"


def test_a_killed_replica_is_replaced(served):
    url, cfg, _, _ = served
    killed = kill_replica(cfg.app_name)
    assert killed.startswith("SERVE_REPLICA::")
    wait_ready(cfg.app_name, cfg.replicas, timeout_s=180, gone=[killed])
    assert replica_states(cfg.app_name).get("RUNNING") == 1
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": QUESTION}],
                                                       "max_tokens": 4}, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["refrag_rasd"]["replica"]
