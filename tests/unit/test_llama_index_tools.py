"""LlamaIndex function calling and structured output on a tiny random model: ``chat_with_tools`` (calls into
``additional_kwargs["tool_calls"]`` and ``ToolSelection`` s, streamed without the call markup), tool results
back into the prompt, a ``FunctionAgent`` that calls a tool, ``structured_predict`` / ``as_structured_llm``
(answers decoded under the schema: the random model writes garbage, the grammar makes it valid)."""


import asyncio
import json
from typing import Literal

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool

from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_integrations.llama_index import RefragRasdLLM
from refrag_rasd_integrations.llama_index.llms import to_engine_messages


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def echo(word: Literal["yes", "no"]) -> str:
    """Echo a word."""
    return word


from test_serve_tools import Pair  # noqa: E402  (the server tests' schema)


@pytest.fixture(scope="module")
def engine():
    from tiny import tiny_tools_engine

    return tiny_tools_engine()


@pytest.fixture
def llm(engine):
    return RefragRasdLLM(engine=engine, max_tokens=96, method="vanilla")


TOOLS = [FunctionTool.from_defaults(fn=add), FunctionTool.from_defaults(fn=echo)]


def test_metadata_and_a_required_call(llm):
    assert llm.metadata.is_function_calling_model
    r = llm.chat_with_tools(TOOLS, "What is 2 + 3?", tool_required=True)
    assert r.raw["finish_reason"] == "tool_calls" and "<tool_call>" not in (r.message.content or "")
    (sel,) = llm.get_tool_calls_from_response(r)
    assert sel.tool_name in ("add", "echo") and sel.tool_id.startswith("call_")
    tool = next(t for t in TOOLS if t.metadata.name == sel.tool_name)
    assert not tool.call(**sel.tool_kwargs).is_error  # the arguments fit the function
    call = r.message.additional_kwargs["tool_calls"][0]
    assert call["type"] == "function" and json.loads(call["function"]["arguments"]) == sel.tool_kwargs


def test_a_named_tool_and_no_call(llm):
    r = llm.chat_with_tools(TOOLS, "Say yes", tool_choice="echo")
    assert [s.tool_name for s in llm.get_tool_calls_from_response(r)] == ["echo"]
    plain = llm.chat_with_tools(TOOLS, "Say yes", tool_choice="none", max_tokens=8)
    assert llm.get_tool_calls_from_response(plain, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="tool call"):
        llm.get_tool_calls_from_response(plain)


def test_streamed_calls_leave_the_text_clean(llm):
    whole = llm.chat_with_tools(TOOLS, "What is 2 + 3?", tool_required=True)
    parts = list(llm.stream_chat_with_tools(TOOLS, "What is 2 + 3?", tool_required=True))
    assert all("<tool_call" not in p.message.content for p in parts)
    last = parts[-1]
    assert [(s.tool_name, s.tool_kwargs) for s in llm.get_tool_calls_from_response(last)] == [
        (s.tool_name, s.tool_kwargs) for s in llm.get_tool_calls_from_response(whole)]

    async def run():
        return [x async for x in await llm.astream_chat_with_tools(TOOLS, "What is 2 + 3?", tool_required=True)]
    assert llm.get_tool_calls_from_response(asyncio.run(run())[-1])[0].tool_kwargs == \
        llm.get_tool_calls_from_response(whole)[0].tool_kwargs


def test_tool_results_and_earlier_calls_go_back_into_the_prompt(llm, engine):
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
    history = [ChatMessage(role="user", content="What is 2 + 3?"),
               ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": [call]}),
               ChatMessage(role=MessageRole.TOOL, content="5", additional_kwargs={"tool_call_id": "call_1"})]
    msgs = to_engine_messages(history)
    assert msgs[1]["tool_calls"] == [{"id": "call_1", "name": "add", "args": {"a": 2, "b": 3}}]
    assert msgs[2] == {"role": "tool", "content": "5", "tool_call_id": "call_1"}
    blocks = ChatMessage(role="assistant", blocks=[ToolCallBlock(tool_call_id="call_1", tool_name="add",
                                                                 tool_kwargs={"a": 2, "b": 3})])
    assert to_engine_messages([blocks])[0]["tool_calls"] == msgs[1]["tool_calls"]
    r = llm.chat_with_tools(TOOLS, chat_history=history, max_tokens=8)
    want = engine.generate(msgs, tools=[t.metadata.to_openai_tool() for t in TOOLS], max_tokens=8,
                           method="vanilla")
    assert r.raw["stats"]["prompt_tokens"] == want.stats.prompt_tokens
    with pytest.raises(InvalidInputError, match="arguments"):
        to_engine_messages([ChatMessage(role="assistant", additional_kwargs={"tool_calls": [
            {"function": {"name": "add", "arguments": "{oops"}}]})])


def test_function_agent_calls_a_tool(llm):
    from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult

    tools = [FunctionTool.from_defaults(fn=add, return_direct=True),
             FunctionTool.from_defaults(fn=echo, return_direct=True)]
    agent = FunctionAgent(tools=tools, llm=llm, initial_tool_choice="add")

    async def run():
        handler = agent.run(user_msg="What is 2 + 3?")
        results = [e async for e in handler.stream_events() if isinstance(e, ToolCallResult)]
        return results, await handler

    results, out = asyncio.run(run())
    assert [r.tool_name for r in results] == ["add"]
    assert str(out) == str(add(**results[0].tool_kwargs))


def test_structured_predict_validates(llm):
    prompt = PromptTemplate("Read a number and a word from: {text}")
    got = llm.structured_predict(Pair, prompt, text="seven cats")
    assert isinstance(got, Pair)
    assert asyncio.run(llm.astructured_predict(Pair, prompt, text="seven cats")) == got
    sllm = llm.as_structured_llm(Pair)
    r = sllm.chat([ChatMessage(role="user", content="Read a number and a word from: seven cats")])
    assert isinstance(r.raw, Pair) and Pair.model_validate_json(r.message.content) == r.raw
    with pytest.raises(ValueError, match="max_tokens"):
        llm.structured_predict(Pair, prompt, llm_kwargs={"max_tokens": 2}, text="seven cats")


def test_stream_structured_predict_ends_with_a_valid_object(llm):
    prompt = PromptTemplate("Read a number and a word from: {text}")
    parts = list(llm.stream_structured_predict(Pair, prompt, text="seven cats"))
    assert parts[-1] == llm.structured_predict(Pair, prompt, text="seven cats") and len(parts) >= 2
    assert all(set(p.model_dump()) <= {"a", "word"} for p in parts[:-1])

    async def run():
        return [x async for x in await llm.astream_structured_predict(Pair, prompt, text="seven cats")]
    assert asyncio.run(run())[-1] == parts[-1]
