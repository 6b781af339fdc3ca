"""The server as a hostile client meets it (issue 42), in-process over the tiny engine and the fake store:
limits (body size, JSON depth and numbers, caps naming the field), the time budget, API keys and their
collections, media type, CORS, docs, request ids, filters, and an oversized request refused before the
engine; plus what the replicas' environment and the CLI hand over."""

from __future__ import annotations

import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
from starlette.testclient import TestClient  # noqa: E402

from refrag_rasd_core.engine import Engine  # noqa: E402
from refrag_rasd_integrations.serve.auth import KeyRing  # noqa: E402
from refrag_rasd_integrations.serve.chat_service import ChatService, ServeConfig  # noqa: E402
from refrag_rasd_integrations.serve.http_api import make_api  # noqa: E402

USER = [{"role": "user", "content": "Which city is the capital of France?"}]
URL = "/v1/chat/completions"


@pytest.fixture(scope="module")
def engine():
    from tiny import tiny_loaded

    return Engine(tiny_loaded(0), drafter=None, refrag=None)


def make(engine, store=None, **kw):
    cfg = {"collection": "fake-docs" if store else None, "k": 2, "max_tokens": 8, "method": "vanilla",
           "calibrate": False, "max_tokens_limit": 400, **kw}
    return ChatService(ServeConfig(**cfg), engine=engine, stores={"fake-docs": store} if store else None)


@pytest.fixture
def http(engine, store):
    with TestClient(make_api(make(engine, store, max_body_bytes=16384, max_passages=4, max_passage_chars=2000)),
                    raise_server_exceptions=False) as client:
        yield client


def is_error(r, status, *, param=None, words=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["type"]
    if param is not None:
        assert err["param"] == param, err
    if words is not None:
        assert words in err["message"], err
    return err


# ---- body -----------------------------------------------------------------------------------------------------
def test_body_over_the_limit_is_a_413_before_parsing(http):
    big = json.dumps({"messages": USER, "passages": ["x" * 20000]}).encode()
    is_error(http.post(URL, content=big, headers={"content-type": "application/json"}), 413)

    def chunks():  # no Content-Length: counted while reading
        for _ in range(20):
            yield b"[" * 1000

    is_error(http.post(URL, content=chunks(), headers={"content-type": "application/json"}), 413)


@pytest.mark.parametrize(("raw", "words"), [
    (b"[" * 5000 + b"]" * 5000, "nested deeper"),
    (b'{"messages": [], "a": ' + b"[" * 65 + b"]" * 65 + b"}", "nested deeper"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}', "out of range"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "not a JSON number"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "seed": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_bad_json_is_a_json_400(http, raw, words):
    is_error(http.post(URL, content=raw, headers={"content-type": "application/json"}), 400, words=words)


def test_overflowing_numbers_are_400s(http):
    for field, value in (("seed", 2 ** 70), ("max_tokens", 2 ** 70), ("k", 2 ** 70), ("n", 2 ** 70)):
        r = http.post(URL, json={"messages": USER, field: value})
        assert r.status_code == 400, (field, r.text)
        assert r.json()["error"]["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_only_json_is_accepted(http, content_type):
    headers = {"content-type": content_type} if content_type else {}
    r = http.post(URL, content=json.dumps({"messages": USER}).encode(), headers=headers)
    is_error(r, 415)


# ---- caps ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("extra", "param"), [
    ({"passages": ["Paris."] * 5}, "passages"),
    ({"passages": ["a" * 1500, "b" * 600]}, "passages"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": "x" * 300}, "stop"),
    ({"k": 33}, "k"),
    ({"collection": "../etc"}, "collection"),
    ({"filter": {"source": {"$regex": "x"}}}, "filter"),
    ({"filter": {"$and": [{"source": "fr"}]}}, "filter"),
    ({"filter": {"source": [1, 2]}}, "filter"),
    ({"filter": []}, "filter"),
])
def test_caps_name_the_field(http, extra, param):
    for stream in (False, True):
        is_error(http.post(URL, json={"messages": USER, "stream": stream, **extra}), 400, param=param)


def test_message_caps(engine):
    with TestClient(make_api(make(engine, k=0, max_messages=3, max_message_chars=50))) as http:
        is_error(http.post(URL, json={"messages": USER * 4}), 400, param="messages")
        is_error(http.post(URL, json={"messages": [{"role": "user", "content": "x" * 51}]}), 400, param="messages")


def test_a_good_filter_still_filters_and_chroma_refusals_are_400s(http, store):
    r = http.post(URL, json={"messages": USER, "filter": {"source": {"$in": ["de", "fr"]}}})
    assert r.status_code == 200, r.text
    assert {s["source"] for s in r.json()["refrag_rasd"]["sources"]} <= {"de", "fr"}
    r = http.post(URL, json={"messages": USER, "filter": {"source": {"$in": ["de", 5]}}})  # mixed types
    is_error(r, 400, param="filter")


# ---- time budget and the engine --------------------------------------------------------------------------------
def test_a_request_past_its_budget_ends_and_releases_the_engine(engine):
    svc = make(engine, k=0, max_tokens=400, request_timeout=0.3)
    slow = engine.stream

    def slowed(*a, **kw):  # every token takes 50 ms: 400 of them run far past the budget
        inner = slow(*a, **kw)

        def pieces():
            for piece in inner:
                time.sleep(0.05)
                yield piece
        stream = type(inner)(pieces(), inner.stats, inner.token_ids)
        return stream

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "stream", slowed)
        with TestClient(make_api(svc)) as http:
            t = time.monotonic()
            is_error(http.post(URL, json={"messages": USER, "max_tokens": 400}), 504)
            assert time.monotonic() - t < 5
            r = http.post(URL, json={"messages": USER, "max_tokens": 400, "stream": True})
            last = [b for b in r.text.split("\n\n") if b.strip()]
            assert last[-1] == "data: [DONE]" and json.loads(last[-2][6:])["error"]["code"] == "request_timeout"
            assert not svc.gate.busy
    with TestClient(make_api(svc)) as http:  # the engine is free again
        assert http.post(URL, json={"messages": USER, "max_tokens": 2}).status_code == 200


def test_an_oversized_request_is_refused_without_the_engine(engine):
    svc = make(engine, k=0, max_tokens=4, request_timeout=60)
    oversized = {"messages": USER, "passages": ["word " * 2000]}  # within the caps, past the 512-token window
    with TestClient(make_api(svc)) as http:
        svc.gate.acquire(__import__("refrag_rasd_integrations.serve.gate", fromlist=["Budget"]).Budget(5))
        try:  # the engine is held by someone else: the refusal must not wait for it
            t = time.monotonic()
            is_error(http.post(URL, json=oversized), 400, words="reads at most 512")
            assert time.monotonic() - t < 3
        finally:
            svc.gate.release()


def test_four_clients_with_one_oversized(engine):
    svc = make(engine, k=0, max_tokens=6, request_timeout=30)
    bodies = [{"messages": USER}] * 3 + [{"messages": USER, "passages": ["word " * 2000]}]
    out: dict[int, tuple[int, float]] = {}
    with TestClient(make_api(svc)) as http:
        alone = time.monotonic()
        assert http.post(URL, json=bodies[0]).status_code == 200
        one = time.monotonic() - alone

        def go(i):
            t = time.monotonic()
            r = http.post(URL, json=bodies[i])
            out[i] = (r.status_code, time.monotonic() - t)

        threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
    assert [out[i][0] for i in range(4)] == [200, 200, 200, 400]
    assert out[3][1] < 3 * one + 2  # refused without queueing behind the engine
    assert max(out[i][1] for i in range(3)) < 3 * one + 5  # the others wait for each other only


def test_a_full_queue_is_a_json_503(engine):
    svc = make(engine, k=0, max_queued_requests=0, request_timeout=5)
    from refrag_rasd_integrations.serve.gate import Budget

    with TestClient(make_api(svc)) as http:
        svc.gate.acquire(Budget(5))
        try:
            is_error(http.post(URL, json={"messages": USER}), 503)
        finally:
            svc.gate.release()


# ---- access ----------------------------------------------------------------------------------------------------
KEYS = KeyRing.parse(["sk-all-collections", "sk-only-other:other-docs"]).digests()


@pytest.fixture
def locked(engine, store):
    with TestClient(make_api(make(engine, store, api_keys=KEYS)), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("auth", [None, "", "Bearer", "Bearer ", "Bearer wrong-key-123", "Basic sk-all-collections",
                                  "sk-all-collections", "Bearer sk-all-collections-but-longer"])
def test_without_a_valid_key_every_route_is_a_401(locked, auth):
    headers = {"authorization": auth} if auth is not None else {}
    is_error(locked.post(URL, json={"messages": USER}, headers=headers), 401)
    is_error(locked.get("/v1/models", headers=headers), 401)
    is_error(locked.post(URL, content=b"x" * 10_000, headers=headers), 401)  # before reading the body
    assert locked.get("/health").status_code == 200  # open, minimal


def test_keys_and_their_collections(locked):
    good = {"authorization": "Bearer sk-all-collections"}
    assert locked.post(URL, json={"messages": USER}, headers=good).status_code == 200
    assert locked.get("/v1/models", headers=good).status_code == 200
    other = {"authorization": "Bearer sk-only-other"}
    is_error(locked.post(URL, json={"messages": USER}, headers=other), 403, param="collection")
    is_error(locked.post(URL, json={"messages": USER, "collection": "fake-docs", "stream": True}, headers=other), 403)
    assert locked.post(URL, json={"messages": USER, "k": 0}, headers=other).status_code == 200  # no collection read
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url="http://testserver/v1", api_key="sk-all-collections", http_client=locked)
    assert client.chat.completions.create(model="refrag-rasd", messages=USER).choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url="http://testserver/v1", api_key="nope-nope", http_client=locked,
                      max_retries=0).chat.completions.create(model="refrag-rasd", messages=USER)


def test_keys_from_env_and_file(tmp_path):
    f = tmp_path / "keys.json"
    f.write_text(json.dumps({"keys": {"sk-from-file-1": ["docs"], "sk-from-file-2": "*"}}))
    ring = KeyRing.parse(file=f, env={"REFRAG_RASD_API_KEYS": "sk-env-key-1, sk-env-key-2"})
    assert len(ring) == 4 and ring.check("Bearer sk-from-file-1") == frozenset({"docs"})
    assert ring.check("bearer sk-env-key-2") is None
    assert all("sk-" not in d for d in ring.digests())  # only digests are kept
    from refrag_rasd_core.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="8 characters"):
        KeyRing.parse(["short"])


def test_docs_cors_health_and_request_ids(engine, store):
    with TestClient(make_api(make(engine, store))) as http:
        for path in ("/docs", "/redoc", "/openapi.json"):
            is_error(http.get(path), 404)
        r = http.post(URL, json={"messages": USER}, headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        assert http.options(URL, headers={"origin": "https://evil.example",
                                          "access-control-request-method": "POST"}).status_code in (404, 405)
        assert set(http.get("/health").json()) == {"status", "model"}
        for bad in ("x" * 65, "<script>alert(1)</script>", "a b", "a/b"):
            r = http.post(URL, json={"messages": USER, "k": 0, "max_tokens": 2}, headers={"x-request-id": bad})
            rid = r.json()["id"]
            assert rid.startswith("chatcmpl-") and bad not in rid and len(rid) == len("chatcmpl-") + 32
        is_error(http.get("/nowhere"), 404)
        is_error(http.put(URL, json={}), 405)
    with TestClient(make_api(make(engine, store, docs=True, cors_origins=["https://app.example"]))) as http:
        assert http.get("/openapi.json").status_code == 200 and http.get("/docs").status_code == 200
        pre = http.options(URL, headers={"origin": "https://app.example", "access-control-request-method": "POST",
                                         "access-control-request-headers": "authorization, content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
        r = http.post(URL, json={"messages": USER, "k": 0, "max_tokens": 2},
                      headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_a_server_fault_is_a_json_500_without_details(engine, store, caplog):
    svc = make(engine, store)

    def boom(*a, **kw):
        raise RuntimeError("secret internals at /srv/x")

    svc.prepare = boom
    with TestClient(make_api(svc), raise_server_exceptions=False) as http:
        err = is_error(http.post(URL, json={"messages": USER}), 500)
        assert "secret" not in err["message"] and "secret internals" in caplog.text


# ---- what replicas and the CLI hand over ---------------------------------------------------------------------
def test_replicas_get_no_secrets():
    from refrag_rasd_integrations.serve.deployment import replica_env

    env = replica_env({"HF_TOKEN": "hf_x", "HUGGING_FACE_HUB_TOKEN": "hf_y", "HF_HOME": "/c", "HF_HUB_OFFLINE": "0",
                       "REFRAG_RASD_API_KEYS": "k", "REFRAG_RASD_CHROMA_HEADERS": "Authorization=Bearer t",
                       "REFRAG_RASD_CHROMA_URL": "http://c:8000", "REFRAG_RASD_SECRET": "s", "AWS_SECRET": "a",
                       "HF_API_KEY": "x", "PATH": "/bin"})
    assert env == {"HF_HOME": "/c", "HF_HUB_OFFLINE": "0", "REFRAG_RASD_CHROMA_URL": "http://c:8000",
                   "TOKENIZERS_PARALLELISM": "false"}


def test_cli_options_reach_the_config(monkeypatch):
    from refrag_rasd_integrations.cli import main
    from refrag_rasd_integrations.serve import local

    seen = {}
    monkeypatch.setattr(local, "run_local", lambda cfg, **kw: seen.setdefault("cfg", cfg))
    monkeypatch.setenv("REFRAG_RASD_API_KEYS", "sk-from-the-env")
    monkeypatch.setenv("REFRAG_RASD_CHROMA_HEADERS", "X-Chroma-Token=abc")
    assert main(["serve", "--no-ray", "--api-key", "sk-command-line:docs", "--cors-origin", "https://a.example",
                 "--max-body-bytes", "2048", "--request-timeout", "9", "--chroma-header", "X-Other=1",
                 "--docs"]) == 0
    cfg = seen["cfg"]
    ring = KeyRing(cfg.api_keys)
    assert ring.check("Bearer sk-command-line") == frozenset({"docs"}) and ring.check("Bearer sk-from-the-env") is None
    assert "sk-command-line" not in json.dumps(cfg.to_dict())
    assert (cfg.cors_origins, cfg.max_body_bytes, cfg.request_timeout, cfg.docs, cfg.host) == (
        ["https://a.example"], 2048, 9.0, True, "127.0.0.1")
    assert cfg.chroma_headers == {"X-Chroma-Token": "abc", "X-Other": "1"}
