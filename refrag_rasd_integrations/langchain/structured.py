"""Tools and structured output for :class:`~refrag_rasd_integrations.langchain.ChatRefragRasd`: the runnables
behind its ``bind_tools`` and ``with_structured_output``. The engine does the work (the tools' grammar, the
schema's grammar, reading calls back: :mod:`refrag_rasd_core.structured`); here LangChain's shapes are mapped
onto its settings (``tools``, ``tool_choice``, ``response_format``) and LangChain's own output parsers read the
answer.

Example:
    >>> from pydantic import BaseModel
    >>> class Pair(BaseModel):
    ...     a: int
    ...     b: int
    >>> from refrag_rasd_integrations.langchain import ChatRefragRasd
    >>> runnable = structured_output(ChatRefragRasd(max_tokens=24), Pair)
    >>> runnable.invoke("a is 1 and b is 2")                       # doctest: +REAL_MODEL
    Pair(a=1, b=2)
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from langchain_core.output_parsers import JsonOutputKeyToolsParser, JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import PydanticToolsParser
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

from refrag_rasd_core.errors import InvalidInputError

__all__ = ["bind_tools", "structured_output"]

METHODS = ("json_schema", "function_calling", "json_mode")


def bind_tools(model: Any, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> Runnable:
    """``model`` with ``tools`` (anything LangChain's ``convert_to_openai_tool`` reads) bound as its ``tools``
    setting. ``tool_choice``: ``"auto"``, ``"none"``, ``"any"`` / ``"required"`` / ``True``, or a tool's name
    (``True`` with one tool forces that one)."""
    formatted = [convert_to_openai_tool(t) for t in tools]
    if tool_choice is True and len(formatted) == 1:
        tool_choice = formatted[0]["function"]["name"]
    if tool_choice is not None:
        kwargs["tool_choice"] = tool_choice
    return model.bind(tools=formatted, **kwargs)


def structured_output(model: Any, schema: dict[str, Any] | type, *, method: str = "json_schema",
                      include_raw: bool = False, **kwargs: Any) -> Runnable:
    """The runnable of ``with_structured_output`` (see
    :meth:`ChatRefragRasd.with_structured_output
    <refrag_rasd_integrations.langchain.ChatRefragRasd.with_structured_output>`)."""
    if method not in METHODS:
        raise InvalidInputError(f"unknown structured output method {method!r}; choose one of {', '.join(METHODS)}")
    if schema is None and method != "json_mode":
        raise InvalidInputError(f"method={method!r} needs a schema (a Pydantic model, a TypedDict or a JSON schema)")
    pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)  # Pydantic 2 or 1
    traced = {"kwargs": {"method": method}, "schema": schema}
    parser: Runnable
    if method == "function_calling":
        tool = convert_to_openai_tool(schema)
        name = tool["function"]["name"]
        llm = bind_tools(model, [schema], tool_choice=name, ls_structured_output_format=traced, **kwargs)
        parser = (PydanticToolsParser(tools=[schema], first_tool_only=True) if pydantic  # type: ignore[list-item]
                  else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True))
    elif method == "json_mode":
        llm = model.bind(response_format={"type": "json_object"}, ls_structured_output_format=traced, **kwargs)
        parser = PydanticOutputParser(pydantic_object=schema) if pydantic else JsonOutputParser()  # type: ignore[arg-type]
    else:
        json_schema = convert_to_json_schema(schema)
        fmt = {"type": "json_schema", "json_schema": {"name": json_schema.get("title", "response"),
                                                       "schema": json_schema}}
        llm = model.bind(response_format=fmt, ls_structured_output_format=traced, **kwargs)
        parser = PydanticOutputParser(pydantic_object=schema) if pydantic else JsonOutputParser()  # type: ignore[arg-type]
    if not include_raw:
        return llm | parser
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    failed = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")
