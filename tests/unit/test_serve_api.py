"""The server's HTTP API in-process (no Ray): OpenAI chat completions over the tiny engine and the fake store,
read by the real OpenAI SDK and LangChain's ChatOpenAI; error statuses; the engine released on disconnect."""

from __future__ import annotations

import json
import threading

import pytest

pytest.importorskip("fastapi")
from starlette.testclient import TestClient  # noqa: E402

from refrag_rasd_core.engine import Engine  # noqa: E402
from refrag_rasd_integrations.serve.chat_service import ChatService, ServeConfig  # noqa: E402
from refrag_rasd_integrations.serve.http_api import make_api  # noqa: E402

USER = [{"role": "user", "content": "Which city is the capital of France?"}]


@pytest.fixture(scope="module")
def engine():
    from tiny import tiny_loaded

    return Engine(tiny_loaded(0), drafter=None, refrag=None)


@pytest.fixture
def service(engine, store):
    return ChatService(ServeConfig(collection="fake-docs", k=2, max_tokens=12, method="vanilla", calibrate=False,
                                   max_tokens_limit=64), engine=engine, stores={"fake-docs": store})


@pytest.fixture
def http(service):
    with TestClient(make_api(service)) as client:
        yield client


def events(response) -> list:
    """The JSON payloads of a server-sent-events body, and ``"[DONE]"``."""
    out = []
    for block in response.text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            data = block[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_completion_reads_the_retrieved_passages(http, engine, store):
    r = http.post("/v1/chat/completions", json={"model": "refrag-rasd", "messages": USER},
                  headers={"x-request-id": "abc123"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "chatcmpl-abc123" and r.headers["x-request-id"] == "chatcmpl-abc123"
    assert body["object"] == "chat.completion" and body["model"] == engine.target.name
    extra = body["refrag_rasd"]
    assert extra["context"] == "text" and extra["method"] == "vanilla"
    assert [s["source"] for s in extra["sources"]][0] == "fr"  # bag-of-words retrieval ranks Paris first
    hits = store.search(USER[0]["content"], k=2)
    want = engine.generate(USER, passages=[p for p, _ in hits], context="text", method="vanilla",
                           max_new_tokens=12)
    assert body["choices"][0]["message"]["content"] == want.text
    assert body["usage"] == {"prompt_tokens": want.stats.prompt_tokens, "completion_tokens": want.stats.new_tokens,
                             "total_tokens": want.stats.prompt_tokens + want.stats.new_tokens,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    assert body["choices"][0]["finish_reason"] == ("length" if want.stats.new_tokens == 12 else "stop")


def test_stream_is_the_same_answer_as_sse(http):
    whole = http.post("/v1/chat/completions", json={"messages": USER}).json()
    r = http.post("/v1/chat/completions", json={"messages": USER, "stream": True,
                                                 "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    ev = events(r)
    assert ev[-1] == "[DONE]"
    chunks = ev[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"] and text
    final = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(final) == 1 and final[0]["refrag_rasd"]["sources"] == whole["refrag_rasd"]["sources"]
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and {k: usage[k] for k in ("prompt_tokens", "completion_tokens")} == {
        k: whole["usage"][k] for k in ("prompt_tokens", "completion_tokens")}
    # the same request a second time: all but its last block came from the replica's prefix cache
    assert usage["prompt_tokens_details"]["cached_tokens"] >= usage["prompt_tokens"] - 16


def test_openai_sdk_and_chat_openai_read_it(http):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)
    whole = client.chat.completions.create(model="refrag-rasd", messages=USER)
    text = whole.choices[0].message.content
    assert text and whole.usage.completion_tokens >= 1
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(model="refrag-rasd", messages=USER, stream=True)
                       if c.choices)
    assert streamed == text
    # the retrieval-augmented fields ride in extra_body: no retrieval (k=0) changes the prompt
    bare = client.chat.completions.create(model="refrag-rasd", messages=USER, extra_body={"k": 0})
    assert bare.model_extra["refrag_rasd"]["sources"] == [] and bare.model_extra["refrag_rasd"]["context"] == "none"

    lc = pytest.importorskip("langchain_openai")
    llm = lc.ChatOpenAI(model="refrag-rasd", base_url="http://testserver/v1", api_key="unused", http_client=http,
                        max_retries=0)
    assert llm.invoke(USER[0]["content"]).content == text
    pieces = [c.content for c in llm.stream(USER[0]["content"])]
    assert "".join(pieces) == text and len([p for p in pieces if p]) >= 2


def test_sampling_with_a_seed_repeats(http):
    body = {"messages": USER, "temperature": 1.0, "top_p": 0.9, "seed": 7, "k": 0}
    a, b = (http.post("/v1/chat/completions", json=body).json() for _ in range(2))
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"model": "gpt-4o", "messages": USER}, 404, "serves"),
    ({"messages": USER, "n": 2}, 400, "n must be 1"),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "no spaces"}}]}, 400, "tool"),
    ({"messages": USER, "logprobs": True}, 400, "logprobs"),
    ({"messages": USER, "presence_penalty": 0.5}, 400, "presence_penalty"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "system", "content": "be brief"}]}, 400, "user message"),
    ({"messages": [{"role": "function", "content": "x"}]}, 400, "role"),
    ({"messages": USER, "temperature": -1}, 400, "temperature"),
    ({"messages": USER, "max_tokens": 65}, 400, "limit"),
    ({"messages": USER, "method": "fast"}, 400, "unknown method"),
    ({"messages": USER, "context": "zipped"}, 400, "unknown context"),
    ({"messages": USER, "collection": "nope"}, 404, "nope"),
    ({"messages": [{"role": "user", "content": "word " * 2000}], "k": 0}, 400, "reads at most 512"),
])
def test_bad_requests_get_a_clear_status(http, body, status, words):
    for stream in (False, True):
        r = http.post("/v1/chat/completions", json={**body, "stream": stream})
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert words in err["message"] and err["type"]


def test_not_json_is_a_400(http):
    r = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "invalid request" in r.json()["error"]["message"]


def test_chroma_server_down_is_a_503(engine):
    from conftest import free_port

    svc = ChatService(ServeConfig(collection="docs", chroma_url=f"http://127.0.0.1:{free_port()}", calibrate=False),
                      engine=engine)
    with TestClient(make_api(svc)) as http:
        r = http.post("/v1/chat/completions", json={"messages": USER})
        assert r.status_code == 503, r.text
        assert "Chroma" in r.json()["error"]["message"]
        assert http.post("/v1/chat/completions", json={"messages": USER, "k": 0, "max_tokens": 3}).status_code == 200


def test_models_and_health(http, engine):
    ids = [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert ids[0] == engine.target.name and "refrag-rasd" in ids
    health = http.get("/health").json()
    assert health == {"status": "ok", "model": engine.target.name}  # no host, process or URL


def test_a_dropped_stream_releases_the_engine(service, engine):
    svc = ChatService(ServeConfig(k=0, max_tokens=400, max_tokens_limit=400, method="vanilla", calibrate=False),
                      engine=engine)
    with TestClient(make_api(svc)) as http:
        with http.stream("POST", "/v1/chat/completions", json={"messages": USER, "stream": True}) as r:
            first = next(r.iter_lines())
            assert first.startswith("data: ")
        done = threading.Event()
        result = {}

        def again():
            result["r"] = http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 3})
            done.set()

        threading.Thread(target=again, daemon=True).start()
        assert done.wait(60), "the engine stayed busy after the client left"
        assert result["r"].status_code == 200


def test_config_from_text_arguments():
    cfg = ServeConfig.from_dict({"replicas": "2", "k": "0", "calibrate": "false", "chroma_url": "none",
                                 "threads": "1"})
    assert (cfg.replicas, cfg.k, cfg.calibrate, cfg.chroma_url, cfg.threads) == (2, 0, False, None, 1)
    assert ServeConfig(replicas=4).replica_cpus(cpus=2) == 0.5
    from refrag_rasd_core.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="unknown server setting"):
        ServeConfig.from_dict({"replica": 2})
    with pytest.raises(InvalidInputError, match="replicas"):
        ServeConfig(replicas=0)
    with pytest.raises(InvalidInputError, match="method"):
        ServeConfig(method="fast")


def test_a_conversations_next_turn_reports_its_cached_tokens(engine):
    """OpenAI's ``prompt_tokens_details.cached_tokens``: the second turn reuses what the first one read."""
    svc = ChatService(ServeConfig(k=0, max_tokens=6, method="vanilla", calibrate=False, prefix_cache_mb=16),
                      engine=engine)
    turn1 = [{"role": "user", "content": "Tell me about the old mill by the river, please, in a few words."}]
    with TestClient(make_api(svc)) as http:
        first = http.post("/v1/chat/completions", json={"messages": turn1}).json()
        answer = first["choices"][0]["message"]["content"]
        turn2 = [*turn1, {"role": "assistant", "content": answer}, {"role": "user", "content": "And then?"}]
        second = http.post("/v1/chat/completions", json={"messages": turn2}).json()
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= first["usage"]["prompt_tokens"] - 16
    engine.prefix_cache = None  # the module's engine serves the other tests without one
