"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis, on hypothesis), against
the in-process app over the tiny engine and the fake store: whatever the body, headers or path, no 5xx, and
every 4xx is an OpenAI error object. Bounded (``max_examples``) to stay within a minute or two; with API keys
configured, no request without the key gets through."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from refrag_rasd_core.engine import Engine  # noqa: E402
from refrag_rasd_integrations.serve.auth import KeyRing  # noqa: E402
from refrag_rasd_integrations.serve.chat_service import ChatService, ServeConfig  # noqa: E402
from refrag_rasd_integrations.serve.http_api import make_api  # noqa: E402

KEY = "sk-fuzzing-key-1"
FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def engine():
    from tiny import tiny_loaded

    return Engine(tiny_loaded(0), drafter=None, refrag=None)


def app_for(engine, store, **kw):
    cfg = ServeConfig(collection="fake-docs", k=2, max_tokens=4, max_tokens_limit=8, method="vanilla",
                      calibrate=False, docs=True, request_timeout=20, **kw)
    return make_api(ChatService(cfg, engine=engine, stores={"fake-docs": store}))


OPERATIONS = [("/v1/chat/completions", "POST"), ("/v1/models", "GET"), ("/health", "GET")]


def strategy(app, path, method, mode="positive"):
    """Hypothesis cases of one operation of ``app``'s OpenAPI schema: ``positive`` ones follow the schema,
    ``negative`` ones break it (the pytest plugin's lazy fixtures do not load on this pytest, so the strategy
    is used directly)."""
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return schema[path][method].as_strategy(generation_mode=GenerationMode(mode))


def check(response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        err = response.json()["error"]
        assert isinstance(err["message"], str) and err["message"] and err["type"]


@pytest.mark.parametrize(("path", "method", "mode"),  # a GET without parameters has no schema to break
                         [(p, m, "positive") for p, m in OPERATIONS] + [(*OPERATIONS[0], "negative")])
def test_no_server_errors(engine, store, path, method, mode):
    @FUZZ
    @given(case=strategy(app_for(engine, store), path, method, mode))
    def run(case):
        check(case.call())

    run()


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_every_request_without_the_key_is_refused(engine, store, path, method):
    app = app_for(engine, store, api_keys=KeyRing.parse([KEY]).digests())

    @settings(FUZZ, max_examples=25)
    @given(case=strategy(app, path, method), key=st.sampled_from([None, "Bearer not-the-key", f"Basic {KEY}",
                                                                  f"Bearer {KEY}x", KEY]))
    def run(case, key):
        response = case.call(headers={"authorization": key} if key else {})
        if path == "/health":
            assert response.status_code == 200
        else:
            assert response.status_code == 401, response.text[:300]
            check(response)
        check(case.call(headers={"authorization": f"Bearer {KEY}"}))

    run()
