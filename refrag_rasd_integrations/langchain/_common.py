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
