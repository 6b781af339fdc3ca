"""Tool calls in the Hermes / Qwen format: how tools reach the prompt, the grammar a call must follow, and
how an answer is read back into calls.

The model sees its tools in the system message (inside ``<tools></tools>``, one JSON signature per line) and
calls one by writing::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

That is the format xgrammar's ``qwen_3`` structural tag describes, so constrained decoding uses the library's
own tag (:func:`tool_call_format`): ``tool_choice="auto"`` lets the model answer in text or call a tool,
``"required"`` makes it call one, ``{"type": "function", "function": {"name": ...}}`` that one. A tool's
result comes back as a ``tool`` message, read by the model inside ``<tool_response></tool_response>``.

Example:
    >>> tools = normalize_tools([{"name": "add", "description": "Add two numbers",
    ...                           "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}])
    >>> [t["function"]["name"] for t in tools]
    ['add']
    >>> content, calls = parse_tool_calls('<tool_call>\\n{"name": "add", "arguments": {"a": 2}}\\n</tool_call>')
    >>> content, calls[0]["name"], calls[0]["arguments"]
    ('', 'add', {'a': 2})
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InvalidInputError
from .response_format import ResponseFormat

__all__ = ["TOOL_CALL_CLOSE", "TOOL_CALL_OPEN", "normalize_tool_choice", "normalize_tools", "parse_tool_calls",
           "render_tool_messages", "tool_call_format", "tool_call_text", "with_system_note"]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

TOOLS_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
    "XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call>"
)


def normalize_tools(tools: Any) -> tuple[dict[str, Any], ...]:
    """Tools as OpenAI's ``{"type": "function", "function": {"name", "description", "parameters"}}`` dicts
    (bare ``{"name", ...}`` function dicts are wrapped); names unique and well formed."""
    if tools is None:
        return ()
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise InvalidInputError(f"tools must be a list of tool definitions, got {type(tools).__name__}")
    out: list[dict[str, Any]] = []
    for tool in tools:
        if not isinstance(tool, Mapping):
            raise InvalidInputError(f"a tool must be a dict (OpenAI's function tool format), got {type(tool).__name__}")
        fn = tool.get("function") if tool.get("type", "function") == "function" and "function" in tool else tool
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not _NAME.match(fn["name"]):
            raise InvalidInputError(
                f"a tool needs a 'name' of 1-64 letters, digits, '_', '.' or '-', got {tool!r}"[:300])
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, Mapping):
            raise InvalidInputError(f"tool {fn['name']!r}: 'parameters' must be a JSON schema object")
        out.append({"type": "function", "function": {
            "name": fn["name"], "description": str(fn.get("description") or ""),
            "parameters": json.loads(json.dumps(params))}})
    names = [t["function"]["name"] for t in out]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"tool names must be unique, got {names}")
    return tuple(out)


def normalize_tool_choice(choice: Any, tools: Sequence[Mapping[str, Any]]) -> str | dict[str, Any]:
    """``"auto"`` (default), ``"none"``, ``"required"`` (``"any"`` is LangChain's word for it) or one named
    tool (``{"type": "function", "function": {"name": ...}}``, or just its name)."""
    if choice is None or choice == "auto":
        return "auto"
    if choice in ("none", "required"):
        return str(choice)
    if choice in ("any", True):
        return "required"
    names = [t["function"]["name"] for t in tools]
    name = choice if isinstance(choice, str) else (
        (choice.get("function") or {}).get("name") if isinstance(choice, Mapping) else None)
    if not isinstance(name, str):
        raise InvalidInputError(f"tool_choice must be 'auto', 'none', 'required' or a tool, got {choice!r}")
    if tools and name not in names:
        raise InvalidInputError(f"tool_choice names {name!r}, which is not among the tools {names}")
    return {"type": "function", "function": {"name": name}}


def tool_call_format(tools: Sequence[Mapping[str, Any]], tool_choice: str | Mapping[str, Any],
                     parallel: bool = False) -> ResponseFormat | None:
    """The constraint on an answer given ``tools`` (xgrammar's ``qwen_3`` structural tag, reasoning off, at
    most one whitespace character between JSON tokens): ``None`` when no tool may be called."""
    if not tools or tool_choice == "none":
        return None
    from xgrammar import get_model_structural_tag

    tag = get_model_structural_tag("qwen_3", tools=[dict(t) for t in tools], tool_choice=dict(tool_choice)
                                   if isinstance(tool_choice, Mapping) else tool_choice,
                                   reasoning="disabled", parallel_tool_calls=parallel, max_whitespace_cnt=1)
    return ResponseFormat("structural_tag", tag.model_dump_json(), "tool_call")


def tool_call_text(name: str, arguments: Any) -> str:
    """How an assistant message's call is written back into the prompt."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return f'{TOOL_CALL_OPEN}\n{{"name": "{name}", "arguments": {args}}}\n{TOOL_CALL_CLOSE}'


def render_tool_messages(messages: Sequence[Mapping[str, Any]],
                         tools: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """Chat messages ready for a chat template that knows nothing of tools: the tools' signatures appended to
    the system message (one is added first when there is none), an assistant message's ``tool_calls`` written
    as ``<tool_call>`` blocks, and ``tool`` messages as user messages inside ``<tool_response>``."""
    out: list[dict[str, Any]] = []
    for m in messages:
        m = dict(m)
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            calls = [tool_call_text(*_call_parts(c)) for c in m.pop("tool_calls")]
            m["content"] = "\n".join(([str(m["content"])] if m.get("content") else []) + calls)
        elif role == "tool":
            m = {"role": "user", "content": f"<tool_response>\n{m.get('content', '')}\n</tool_response>"}
        out.append(m)
    if tools:
        out = with_system_note(out, TOOLS_PROMPT.format(tools="\n".join(json.dumps(t, sort_keys=True) for t in tools)))
    return out


def with_system_note(messages: Sequence[Mapping[str, Any]], note: str) -> list[dict[str, Any]]:
    """``messages`` with ``note`` appended to the system message (one is added first when there is none): the
    front of the prompt, which stays the same from turn to turn (the prefix cache reuses it)."""
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{out[0].get('content', '')}\n\n{note}".lstrip()
    else:
        out.insert(0, {"role": "system", "content": note})
    return out


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """The answer's text outside tool-call blocks and its calls (``id``, ``name``, ``arguments`` as a dict);
    a block that is not valid JSON stays in the text."""
    calls: list[dict[str, Any]] = []
    kept: list[str] = []
    last = 0
    for match in _CALL.finditer(text):
        try:
            obj = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            continue
        args = obj.get("arguments", {})
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "name": obj["name"],
                      "arguments": args if isinstance(args, dict) else {"value": args}})
        kept.append(text[last:match.start()])
        last = match.end()
    kept.append(text[last:])
    return "".join(kept).strip(), calls


def _call_parts(call: Any) -> tuple[str, Any]:
    """(name, arguments) of a call given as OpenAI's ``{"function": {"name", "arguments"}}`` or LangChain's
    ``{"name", "args"}``."""
    if not isinstance(call, Mapping):
        raise InvalidInputError(f"a tool call must be a dict, got {type(call).__name__}")
    fn = call.get("function") if isinstance(call.get("function"), Mapping) else call
    name = fn.get("name")
    if not isinstance(name, str):
        raise InvalidInputError(f"a tool call needs a name, got {call!r}"[:300])
    return name, fn.get("arguments", fn.get("args", {}))
