"""What the LangChain chat model and string LLM share: message conversion. Their
settings are :class:`~refrag_rasd_integrations.settings.ModelSettings`; a call becomes a request through
:func:`~refrag_rasd_integrations.generation.request_for`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from refrag_rasd_core.errors import InvalidInputError

from ..generation import content_text
from ..passages import MESSAGE_KEY


def messages_and_handles(messages: Sequence[Any]) -> tuple[list[dict[str, str]], list[str]]:
    """LangChain messages -> engine chat messages, plus the passage handles they carry."""
    roles = {"system": "system", "human": "user", "ai": "assistant", "developer": "system"}
    out: list[dict[str, str]] = []
    handles: list[str] = []
    for m in messages:
        kind = getattr(m, "type", None)
        if kind in ("tool", "function"):
            raise InvalidInputError("this model does not call tools: tool / function messages are not supported")
        role = getattr(m, "role", None) if kind == "chat" else roles.get(kind)
        if role is None:
            raise InvalidInputError(f"unsupported message type {kind!r}")
        out.append({"role": role, "content": content_text(m.content)})
        handles.extend(h for h in (getattr(m, "additional_kwargs", {}) or {}).get(MESSAGE_KEY, []) or [])
    return out, handles
