"""Tools and structured output for :class:`~refrag_rasd_integrations.llama_index.RefragRasdLLM`: LlamaIndex's
shapes mapped onto the engine's settings (``tools``, ``tool_choice``, ``parallel_tool_calls``,
``response_format``), the way the LangChain side does it. The engine does the work (the tools' grammar, the
schema's grammar, reading calls back: :mod:`refrag_rasd_core.structured`).

An answer's calls ride in its message's ``additional_kwargs["tool_calls"]`` as OpenAI's
``{"id", "type": "function", "function": {"name", "arguments"}}`` (arguments as JSON text), read back by
:func:`tool_selections`; a conversation's earlier calls (there, or as ``ToolCallBlock`` s) and the tools'
results (``MessageRole.TOOL`` messages) go back into the prompt (:func:`engine_message`).

Example:
    >>> from llama_index.core.base.llms.types import ChatMessage, ChatResponse
    >>> msg = ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": [
    ...     {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}]})
    >>> [(s.tool_id, s.tool_name, s.tool_kwargs) for s in tool_selections(ChatResponse(message=msg))]
    [('call_1', 'add', {'a': 2})]
    >>> engine_message(msg)["tool_calls"]
    [{'id': 'call_1', 'name': 'add', 'args': {'a': 2}}]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.llms.llm import ToolSelection

from refrag_rasd_core.errors import InvalidInputError

from ..passages import MESSAGE_KEY

__all__ = ["chat_with_tools_kwargs", "engine_message", "parse_partial", "parse_structured", "tool_selections",
           "wire_tool_calls"]

ROLES = {MessageRole.SYSTEM: "system", MessageRole.USER: "user", MessageRole.ASSISTANT: "assistant",
         MessageRole.DEVELOPER: "system", MessageRole.TOOL: "tool"}


def engine_message(m: ChatMessage) -> dict[str, Any]:
    """One LlamaIndex message as the engine reads it: a ``tool`` message keeps its ``tool_call_id``; an
    assistant message's calls (``additional_kwargs["tool_calls"]`` or ``ToolCallBlock`` s) are written back the
    way the model wrote them; a user message keeps its passage handles (``"refrag_passages"``)."""
    role = ROLES.get(m.role)
    if role is None:
        raise InvalidInputError(f"this model does not take {m.role} messages (use tool messages for tool results)")
    extra = m.additional_kwargs or {}
    msg: dict[str, Any] = {"role": role, "content": m.content or ""}
    if role == "tool":
        msg["tool_call_id"] = str(extra.get("tool_call_id") or "")
        return msg
    if role == "assistant":
        calls = [_engine_call(c) for c in extra.get("tool_calls") or ()]
        calls += [{"id": b.tool_call_id, "name": b.tool_name, "args": _args(b.tool_kwargs)}
                  for b in m.blocks if getattr(b, "block_type", None) == "tool_call"]
        if calls:
            msg["tool_calls"] = calls
    handles = list(extra.get(MESSAGE_KEY) or [])
    if handles and role == "user":
        msg["passages"] = handles
    return msg


def _engine_call(call: Any) -> dict[str, Any]:
    """A stored call (OpenAI's dict or SDK object, or a ``{"name", "args"}`` dict) as ``{"id", "name", "args"}``."""
    c = call.model_dump() if hasattr(call, "model_dump") else call
    if not isinstance(c, dict):
        raise InvalidInputError(f"a tool call must be a dict, got {type(call).__name__}")
    fn: dict[str, Any] = c["function"] if isinstance(c.get("function"), dict) else c
    if not isinstance(fn.get("name"), str):
        raise InvalidInputError(f"a tool call needs a name, got {c!r}"[:300])
    return {"id": c.get("id"), "name": fn["name"], "args": _args(fn.get("arguments", fn.get("args", {})))}


def _args(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError:
            raise InvalidInputError(f"a tool call's arguments are not JSON: {arguments[:200]!r}") from None
    if not isinstance(arguments, dict):
        raise InvalidInputError(f"a tool call's arguments must be a JSON object, got {arguments!r}"[:300])
    return arguments


def wire_tool_calls(calls: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The engine's parsed calls (:func:`~refrag_rasd_core.structured.parse_tool_calls`) as the message
    carries them: OpenAI's format, arguments as JSON text."""
    return [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": json.dumps(
        c["arguments"])}} for c in calls]


def tool_selections(response: ChatResponse, error_on_no_tool_call: bool = True) -> list[ToolSelection]:
    """The calls of an answer as LlamaIndex's :class:`ToolSelection` s (``ValueError`` when there is none and
    ``error_on_no_tool_call``)."""
    calls = [_engine_call(c) for c in (response.message.additional_kwargs or {}).get("tool_calls") or ()]
    if not calls and error_on_no_tool_call:
        raise ValueError(f"expected at least one tool call, got the answer {(response.message.content or '')[:200]!r}")
    return [ToolSelection(tool_id=str(c["id"] or ""), tool_name=c["name"], tool_kwargs=c["args"]) for c in calls]


def chat_with_tools_kwargs(tools: Sequence[Any], user_msg: str | ChatMessage | None,
                           chat_history: Sequence[ChatMessage] | None, *, allow_parallel_tool_calls: bool,
                           tool_required: bool, tool_choice: Any = None, **kwargs: Any) -> dict[str, Any]:
    """``chat``'s keywords for a call with ``tools`` (LlamaIndex tools: their ``metadata.to_openai_tool()``):
    ``tool_choice`` (``"auto"``, ``"none"``, ``"required"``, a tool's name or OpenAI's dict) wins over
    ``tool_required`` (``True``: ``"required"``)."""
    messages = list(chat_history or [])
    if user_msg is not None:
        messages.append(ChatMessage(role=MessageRole.USER, content=user_msg) if isinstance(user_msg, str)
                        else user_msg)
    specs = [t.metadata.to_openai_tool(skip_length_check=True) for t in tools]
    choice = tool_choice if tool_choice is not None else ("required" if tool_required else "auto")
    return {"messages": messages, "tools": specs or None, "tool_choice": choice if specs else None,
            "parallel_tool_calls": bool(allow_parallel_tool_calls), **kwargs}


def parse_structured(output_cls: type, response: ChatResponse) -> Any:
    """The answer of a call decoded under ``output_cls``'s schema, as an ``output_cls`` instance. The grammar
    makes every finished answer valid; one cut short by ``max_tokens`` is refused with that reason."""
    text = response.message.content or ""
    try:
        return output_cls.model_validate_json(text)  # type: ignore[attr-defined]
    except ValueError as exc:
        reason = (response.raw or {}).get("finish_reason") if isinstance(response.raw, dict) else None
        why = " (the answer ran out of max_tokens: raise it)" if reason in ("length", "max_tokens") else ""
        raise ValueError(f"the answer is not a valid {output_cls.__name__}{why}: {exc}") from exc


def parse_partial(output_cls: type, response: ChatResponse) -> Any:
    """What a streamed structured answer holds so far: the last response as an ``output_cls`` instance
    (:func:`parse_structured`), the ones before as LlamaIndex's ``FlexibleModel`` of it (every field optional)
    read from the partial JSON, or ``None`` while nothing is readable yet."""
    if response.raw:  # the last response carries the statistics: the whole answer
        return parse_structured(output_cls, response)
    from llama_index.core.program.utils import create_flexible_model
    from pydantic_core import from_json

    try:
        data = from_json(response.message.content or "", allow_partial=True)
        return create_flexible_model(output_cls).model_validate(data) if isinstance(data, dict) else None
    except ValueError:
        return None
