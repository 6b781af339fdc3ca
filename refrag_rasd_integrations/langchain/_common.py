"""What the LangChain chat model and string LLM share: message conversion, LangSmith's parameters and the
target's tokenizer. Their settings are :class:`~refrag_rasd_integrations.settings.ModelSettings`; a call
becomes a request through :meth:`GenerationRequest.build
<refrag_rasd_integrations.generation.GenerationRequest.build>`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from refrag_rasd_core.errors import InvalidInputError

from ..generation import content_text
from ..passages import MESSAGE_KEY


def messages_and_handles(messages: Sequence[Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """LangChain messages -> engine chat messages (each human message with its passage handles under
    ``"passages"``; the last one's are the question's), plus the handles of messages with no human message to
    carry them. A human message's handles stay with it, and so do the handles an
    answer carries (``ChatRefragRasd`` puts the passages it read on its ``AIMessage``, so a chat history that
    keeps only the question text still knows them): in a conversation each turn's passages are laid out in the
    turn that read them, so the prompt of a turn starts with the one before (the prefix cache reuses it)."""
    roles = {"system": "system", "human": "user", "ai": "assistant", "developer": "system",
             "SystemMessageChunk": "system", "HumanMessageChunk": "user", "AIMessageChunk": "assistant"}
    out: list[dict[str, Any]] = []
    for m in messages:
        kind = getattr(m, "type", None)
        if kind == "function":
            raise InvalidInputError("function messages (OpenAI's legacy format) are not supported: use tool messages")
        if kind == "tool":  # a tool's result, read by the model inside <tool_response>
            out.append({"role": "tool", "content": content_text(m.content), "tool_call_id": m.tool_call_id})
            continue
        role = getattr(m, "role", None) if kind == "chat" else roles.get(kind)
        if role is None:
            raise InvalidInputError(f"unsupported message type {kind!r}")
        msg: dict[str, Any] = {"role": role, "content": content_text(m.content)}
        if getattr(m, "tool_calls", None):  # an earlier answer's calls, written back as the model wrote them
            msg["tool_calls"] = [{"id": c.get("id"), "name": c["name"], "args": c.get("args", {})}
                                 for c in m.tool_calls]
        handles = list((getattr(m, "additional_kwargs", {}) or {}).get(MESSAGE_KEY, []) or [])
        if handles:
            msg["passages"] = handles
        out.append(msg)
    for i, m in enumerate(out):  # an answer carries what its question read: it goes back to that question
        if m["role"] == "assistant" and m.get("passages"):
            handles = m.pop("passages")
            asked = next((j for j in range(i - 1, -1, -1) if out[j]["role"] == "user"), None)
            if asked is not None and not out[asked].get("passages"):
                out[asked]["passages"] = handles
    if any(m["role"] == "user" for m in out):  # the question's stay in its message: the request takes them
        return out, []
    return out, [h for m in out for h in m.pop("passages", [])]  # no question yet: handed over as before


class LangChainFace:
    """The parts of a LangChain model class over a :class:`~refrag_rasd_integrations.settings.ModelSettings`
    that do not depend on chat or string input (mixed in before the LangChain base class)."""

    def _ls_params(self, model_type: str, params: dict[str, Any], stop: list[str] | None,
                   kwargs: dict[str, Any]) -> dict[str, Any]:
        cfg = self.generation_config()  # type: ignore[attr-defined]
        params.update(ls_provider="refrag-rasd", ls_model_name=self.target_name(kwargs.get("model")),  # type: ignore[attr-defined]
                      ls_model_type=model_type, ls_temperature=kwargs.get("temperature", cfg.temperature),
                      ls_max_tokens=kwargs.get("max_tokens", cfg.max_tokens))
        ls_stop = stop or kwargs.get("stop") or list(cfg.stop)
        if ls_stop:
            params["ls_stop"] = list(ls_stop)
        return params

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with the target's own tokenizer (never GPT-2 from the hub)."""
        return list(self.target_tokenizer()(text, add_special_tokens=False)["input_ids"])  # type: ignore[attr-defined]
