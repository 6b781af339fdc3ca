"""Structured output and tool calls through the server (in-process, tiny engine): OpenAI's ``response_format``
(``json_schema``, ``json_object``, ``text``), ``tools`` / ``tool_choice`` answered as ``message.tool_calls``
and streamed as ``delta.tool_calls``, earlier calls and ``tool`` results sent back, read by the real OpenAI
SDK; bad values are OpenAI-style 400s naming what is wrong. A tiny random model writes garbage: the grammar
makes it valid."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
from pydantic import BaseModel, Field  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from refrag_rasd_integrations.serve.chat_service import ChatService, ServeConfig  # noqa: E402
from refrag_rasd_integrations.serve.http_api import make_api  # noqa: E402

USER = [{"role": "user", "content": "What is 2 plus 3?"}]
ADD = {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9},
                                     "b": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["a", "b"], "additionalProperties": False}}}
ECHO = {"type": "function", "function": {"name": "echo", "description": "Echo a word", "parameters": {
    "type": "object", "properties": {"word": {"enum": ["yes", "no"]}}, "required": ["word"]}}}


class Pair(BaseModel):
    a: int = Field(ge=0, le=9)
    word: str = Field(pattern=r"^[a-z]{1,6}$")


@pytest.fixture(scope="module")
def engine():
    from tiny import tiny_tools_engine

    return tiny_tools_engine()


@pytest.fixture(scope="module")
def http(engine):
    cfg = ServeConfig(k=0, max_tokens=96, method="vanilla", calibrate=False, max_tokens_limit=160)
    with TestClient(make_api(ChatService(cfg, engine=engine))) as client:
        yield client


@pytest.fixture(scope="module")
def sdk(http):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)


def events(response) -> list:
    blocks = [b[len("data: "):] for b in response.text.split("\n\n") if b.strip()]
    return [b if b == "[DONE]" else json.loads(b) for b in blocks]


def test_json_schema_answers_validate(sdk):
    fmt = {"type": "json_schema", "json_schema": {"name": "Pair", "schema": Pair.model_json_schema(), "strict": True}}
    out = sdk.chat.completions.create(model="refrag-rasd", messages=USER, response_format=fmt, max_tokens=96)
    assert out.choices[0].finish_reason == "stop", out
    Pair.model_validate_json(out.choices[0].message.content)
    streamed = sdk.chat.completions.create(model="refrag-rasd", messages=USER, response_format=fmt, max_tokens=96,
                                           stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == out.choices[0].message.content
    # the SDK's own parse() helper reads it into the model
    parsed = sdk.chat.completions.parse(model="refrag-rasd", messages=USER, response_format=Pair, max_tokens=96)
    assert isinstance(parsed.choices[0].message.parsed, Pair)


def test_json_object_and_text(http):
    r = http.post("/v1/chat/completions", json={"messages": USER, "response_format": {"type": "json_object"},
                                                 "max_tokens": 96, "temperature": 1.0, "seed": 3})
    assert r.status_code == 200, r.text
    if r.json()["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(r.json()["choices"][0]["message"]["content"]), dict)
    plain = http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 8}).json()
    text = http.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 8,
                                                    "response_format": {"type": "text"}}).json()
    assert text["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]


def test_a_required_tool_call_comes_back_as_tool_calls(sdk):
    out = sdk.chat.completions.create(model="refrag-rasd", messages=USER, tools=[ADD, ECHO],
                                      tool_choice="required", max_tokens=96)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in ("add", "echo")
    args = json.loads(call.function.arguments)
    assert set(args) == ({"a", "b"} if call.function.name == "add" else {"word"})
    assert len(choice.message.tool_calls) == 1  # parallel_tool_calls is off unless asked


def test_a_named_tool_is_the_one_called(sdk):
    out = sdk.chat.completions.create(model="refrag-rasd", messages=USER, tools=[ADD, ECHO], max_tokens=96,
                                      tool_choice={"type": "function", "function": {"name": "echo"}})
    call = out.choices[0].message.tool_calls[0]
    assert call.function.name == "echo" and json.loads(call.function.arguments)["word"] in ("yes", "no")


def test_tool_calls_stream_as_deltas(http, sdk):
    body = {"messages": USER, "tools": [ADD, ECHO], "tool_choice": "required", "max_tokens": 96}
    whole = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["tool_calls"][0]
    r = http.post("/v1/chat/completions", json={**body, "stream": True})
    assert r.status_code == 200, r.text
    ev = events(r)
    assert ev[-1] == "[DONE]"
    deltas = [c["choices"][0]["delta"] for c in ev[:-1] if c["choices"]]
    pieces = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
    first = pieces[0]
    assert first["index"] == 0 and first["id"].startswith("call_") and first["type"] == "function"
    assert first["function"] == {"name": whole["function"]["name"], "arguments": ""}
    assert all("id" not in p and "name" not in p["function"] for p in pieces[1:]) and len(pieces) >= 2
    args = "".join(p["function"]["arguments"] for p in pieces)
    assert json.loads(args) == json.loads(whole["function"]["arguments"])  # greedy: the same call
    assert ev[-2]["choices"][0]["finish_reason"] == "tool_calls"
    # the SDK's stream reads the same call back
    streamed = list(sdk.chat.completions.create(model="refrag-rasd", stream=True, **body))
    got = "".join(tc.function.arguments or "" for c in streamed if c.choices for tc in c.choices[0].delta.tool_calls
                  or [])
    assert json.loads(got) == json.loads(args)


def test_tool_results_go_back_to_the_model(http, engine):
    history = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "5"}]
    r = http.post("/v1/chat/completions", json={"messages": history, "tools": [ADD], "max_tokens": 8})
    assert r.status_code == 200, r.text
    want = engine.generate([*USER, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "name": "add", "args": {"a": 2, "b": 3}}]}, {"role": "tool", "content": "5"}],
        tools=[ADD], max_tokens=8, method="vanilla", context="none")
    got = r.json()
    assert got["usage"]["prompt_tokens"] == want.stats.prompt_tokens
    assert got["choices"][0]["message"].get("content") == (want.content or None if want.tool_calls else want.text)
    # the rendered prompt carries the earlier call and its result
    from refrag_rasd_core.structured import render_tool_messages

    text = json.dumps(render_tool_messages(history[1:2] + history[2:]))
    assert "<tool_call>" in text and "<tool_response>\\n5\\n</tool_response>" in text


def test_parallel_calls_stream_with_their_indexes(http):
    body = {"messages": USER, "tools": [ADD, ECHO], "tool_choice": "required", "parallel_tool_calls": True,
            "max_tokens": 160, "temperature": 1.0, "seed": 5}
    whole = http.post("/v1/chat/completions", json=body).json()["choices"][0]
    calls = whole["message"].get("tool_calls") or []
    assert calls and all(json.loads(c["function"]["arguments"]) is not None for c in calls)
    ev = events(http.post("/v1/chat/completions", json={**body, "stream": True}))
    heads = [t for c in ev[:-1] if c["choices"] for t in c["choices"][0]["delta"].get("tool_calls") or [] if "id" in t]
    assert [h["index"] for h in heads] == list(range(len(heads))) and len(heads) >= len(calls)
    assert [h["function"]["name"] for h in heads][:len(calls)] == [c["function"]["name"] for c in calls]


def test_langchain_chat_openai_binds_tools_to_the_server(http):
    lc = pytest.importorskip("langchain_openai")
    llm = lc.ChatOpenAI(model="refrag-rasd", base_url="http://testserver/v1", api_key="unused", http_client=http,
                        max_retries=0, max_tokens=96)
    bound = llm.bind_tools([ADD, ECHO], tool_choice="required")
    msg = bound.invoke(USER[0]["content"])
    assert msg.tool_calls and msg.tool_calls[0]["name"] in ("add", "echo")
    merged = None
    for chunk in bound.stream(USER[0]["content"]):
        merged = chunk if merged is None else merged + chunk
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [(c["name"], c["args"]) for c in msg.tool_calls]
    pair = llm.with_structured_output(Pair, method="json_schema").invoke(USER[0]["content"])
    assert isinstance(pair, Pair)


@pytest.mark.parametrize(("extra", "words", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tool", None),
    ({"tools": [ADD, ADD]}, "unique", None),
    ({"tools": [ADD], "tool_choice": {"type": "function", "function": {"name": "mul"}}}, "mul", None),
    ({"tools": [ADD], "tool_choice": "sometimes"}, "tool_choice", "tool_choice"),
    ({"tools": [ADD], "response_format": {"type": "json_object"}}, "cannot be combined", None),
    ({"response_format": {"type": "yaml"}}, "response_format", "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "json_schema", "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "does not compile", None),
    ({"messages": [*USER, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "add", "arguments": "{not json"}}]}]}, "JSON object", None),
    ({"tools": [ADD] * 200}, "tools", "tools"),
    ({"parallel_tool_calls": "maybe"}, "parallel_tool_calls", "parallel_tool_calls"),
    ({"functions": [ADD["function"]]}, "use tools", None),
])
def test_bad_values_are_400s(http, extra, words, param):
    for stream in (False, True):
        r = http.post("/v1/chat/completions", json={"messages": USER, **extra, "stream": stream})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert words in err["message"] and err["type"] == "invalid_request_error", err
        if param:
            assert (err["param"] or "").startswith(param), err
