"""Every generation setting is checked in one place: a bad value of each, given to the engine, the LangChain
chat model and string LLM (at construction and per call), the LlamaIndex LLM, the server and the CLI, fails
with the same message, raised by :class:`GenerationConfig` (or the :class:`SpecOptions` it builds)."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.generation_config import GenerationConfig
from refrag_rasd_integrations.settings import GENERATION_FIELDS

BAD = [("max_tokens", 0), ("temperature", -1.0), ("top_p", 2.0), ("top_k", -1), ("seed", -1), ("stop", [""]),
       ("method", "fast"), ("context", "zipped"), ("expand", 2.0), ("expand_tokens", -1), ("policy", "magic"),
       ("spec", {"bogus": 1})]
SOURCES = ("generation_config.py", "spec_options.py")


@pytest.fixture(scope="module")
def engine():
    from tiny import tiny_loaded

    return Engine(tiny_loaded(0), drafter=None, refrag=None)


def expected(key, value) -> str:
    with pytest.raises(InvalidInputError) as info:
        GenerationConfig.of({key: value})
    return str(info.value)


def check(fn, key, value) -> None:
    """``fn()`` fails with the config's own message for ``key=value``, raised inside the config."""
    with pytest.raises(InvalidInputError) as info:
        fn()
    assert str(info.value) == expected(key, value)
    origin = Path(traceback.extract_tb(info.value.__traceback__)[-1].filename).name
    assert origin in SOURCES, f"{key}={value!r} was refused in {origin}, not by the config"


def model_kwargs(key, value) -> dict:
    return {key: value} if key in GENERATION_FIELDS else {"engine_kwargs": {key: value}}


@pytest.mark.parametrize(("key", "value"), BAD)
def test_engine(engine, key, value):
    check(lambda: engine.generate("Hi", **{key: value}), key, value)
    check(lambda: engine.stream("Hi", config=GenerationConfig(), **{key: value}), key, value)


@pytest.mark.parametrize(("key", "value"), BAD)
def test_langchain(engine, key, value):
    from refrag_rasd_integrations.langchain import ChatRefragRasd, RefragRasdLLM

    for cls in (ChatRefragRasd, RefragRasdLLM):
        check(lambda cls=cls: cls(engine=engine, **model_kwargs(key, value)), key, value)
        if key != "stop":  # LangChain hands ``stop`` over as its own argument: below
            check(lambda cls=cls: cls(engine=engine, max_tokens=2).invoke("Hi", **{key: value}), key, value)
    check(lambda: ChatRefragRasd(engine=engine, max_tokens=2).invoke("Hi", stop=value) if key == "stop"
          else ChatRefragRasd(engine=engine, max_tokens=2).invoke("Hi", **{key: value}), key, value)


@pytest.mark.parametrize(("key", "value"), BAD)
def test_llama_index(engine, key, value):
    from refrag_rasd_integrations.llama_index import RefragRasdLLM

    check(lambda: RefragRasdLLM(engine=engine, **model_kwargs(key, value)), key, value)
    check(lambda: RefragRasdLLM(engine=engine, max_tokens=2).complete("Hi", **{key: value}), key, value)


SERVER_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "method", "context", "expand",
                 "policy")


@pytest.mark.parametrize(("key", "value"), [(k, v) for k, v in BAD if k in SERVER_FIELDS])
def test_server(engine, key, value):
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from refrag_rasd_integrations.serve.chat_service import ChatService, ServeConfig
    from refrag_rasd_integrations.serve.http_api import make_api

    service = ChatService(ServeConfig(k=0, max_tokens=4, calibrate=False), engine=engine)
    body = {"messages": [{"role": "user", "content": "Hi"}], key: value}
    check(lambda: service.prepare(service.parse(body)), key, value)
    if key in ("method", "context", "max_tokens"):  # the server's own defaults go through the same config
        check(lambda: ServeConfig(**{key: value}), key, value)
    with TestClient(make_api(service)) as http:
        r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["message"] == expected(key, value)


CLI = {"max_tokens": ["--max-tokens", "0"], "temperature": ["--temperature", "-1"], "top_p": ["--top-p", "2"],
       "top_k": ["--top-k", "-1"], "seed": ["--seed", "-1"], "stop": ["--stop", ""], "method": ["--method", "fast"],
       "context": ["--context", "zipped"]}


@pytest.mark.parametrize(("key", "value"), [(k, v) for k, v in BAD if k in CLI])
def test_cli_refuses_before_any_model_loads(monkeypatch, capsys, key, value):
    from refrag_rasd_integrations import engines
    from refrag_rasd_integrations.cli import main

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the settings were checked")

    monkeypatch.setattr(Engine, "load", no_model)
    monkeypatch.setattr(engines, "get_engine", no_model)
    command = ["ask", "a question"] if key == "context" else ["generate", "Hi"]
    assert main([*command, *CLI[key]]) == 2
    assert capsys.readouterr().err.strip() == f"refrag-rasd: error: {expected(key, value)}"


def test_weights_are_checked_by_every_framework_class_and_key_the_shared_engines(engine, monkeypatch):
    """``weights=`` on the LangChain / LlamaIndex classes: a bad value is refused at construction, and the shared
    engines are kept apart per weights setting (``ChatRefragRasd(weights="exact")`` gets its own engine)."""
    from refrag_rasd_integrations import engines
    from refrag_rasd_integrations.langchain import ChatRefragRasd
    from refrag_rasd_integrations.llama_index import RefragRasdLLM

    for cls in (ChatRefragRasd, RefragRasdLLM):
        with pytest.raises(InvalidInputError, match="weights must be one of"):
            cls(weights="int8")
    monkeypatch.setattr(engines, "_ENGINES", {})
    exact = Engine(engine.target, drafter=None, refrag=None, weights="exact")
    engines.register_engine(engine)
    engines.register_engine(exact, weights="exact")
    assert ChatRefragRasd().resolve_engine() is engine
    assert ChatRefragRasd(weights="exact").resolve_engine() is exact
    assert RefragRasdLLM(weights="exact").resolve_engine() is exact
