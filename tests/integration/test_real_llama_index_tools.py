"""LlamaIndex tools and structured output on the real default model (SmolLM2-135M-Instruct, offline): a
``FunctionAgent`` with two tools calls the right one and answers from its result, and ``structured_predict``
fills a Pydantic model (decoded under its schema, so it always validates)."""

import asyncio

import pytest
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel

from refrag_rasd_integrations.llama_index import RefragRasdLLM

pytestmark = pytest.mark.integration


def add(a: int, b: int) -> int:
    """Add two integers a and b."""
    return a + b


def capital(country: str) -> str:
    """The capital city of a country."""
    return {"france": "Paris", "italy": "Rome"}.get(country.lower(), "unknown")


class City(BaseModel):
    """A city and the country it is in."""

    city: str
    country: str


@pytest.fixture(scope="module")
def llm(real_engine):
    return RefragRasdLLM(engine=real_engine, max_tokens=64)


def test_function_agent_calls_the_right_tool(llm):
    from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult

    agent = FunctionAgent(tools=[FunctionTool.from_defaults(fn=add), FunctionTool.from_defaults(fn=capital)],
                          llm=llm, initial_tool_choice="required",
                          system_prompt="Use the tools to answer. Reply briefly.")

    async def run():
        handler = agent.run(user_msg="What is 2 plus 3?", max_iterations=6)
        calls = [e async for e in handler.stream_events() if isinstance(e, ToolCallResult)]
        return calls, await handler

    calls, out = asyncio.run(run())
    assert calls and calls[0].tool_name == "add" and calls[0].tool_kwargs == {"a": 2, "b": 3}, calls
    assert calls[0].tool_output.content == "5" and str(out).strip()


def test_structured_predict_into_a_model(llm):
    got = llm.structured_predict(City, PromptTemplate("Extract the city and its country: {text}"),
                                 text="Paris is the capital of France.")
    assert isinstance(got, City) and got.city == "Paris" and got.country == "France", got
