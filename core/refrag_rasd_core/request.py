"""One call turned into what the decoding loop reads: :class:`RequestBuilder` tokenizes the prompt and the
passages (once), resolves ``context="auto"`` and lays the passages out around the question;
:class:`EngineRequest` is the result.

Example:
    >>> from transformers import AutoTokenizer                                  # doctest: +REAL_MODEL
    >>> builder = RequestBuilder(engine.tokenizer, vocab_size=49152)            # doctest: +REAL_MODEL
    >>> req = builder.build("Who wrote it?", ["Shakespeare wrote Hamlet."],
    ...                     GenerationConfig(context="text"))                   # doctest: +REAL_MODEL
    >>> req.config.context, req.context_tokens > 0, len(req.passage_ids)        # doctest: +REAL_MODEL
    ('text', True, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import ContextTooLongError, InvalidInputError
from .generation_config import GenerationConfig, Prompt
from .structured.tool_calls import render_tool_messages, with_system_note

__all__ = ["EngineRequest", "RequestBuilder", "check_compressed_fits"]


@dataclass
class EngineRequest:
    """One call ready for the loop: its settings (``context`` resolved), the finished prompt ids, or a layout
    whose passages are compressed in the loop; the token ids of every passage (for the speculative
    datastore and the layout, tokenized once)."""

    config: GenerationConfig
    prompt_ids: list[int] | None = None
    layout: Any = None
    prompt_tokens: int = 0
    context_tokens: int = 0
    passages: list[Any] = field(default_factory=list)
    passage_ids: list[list[int]] = field(default_factory=list)
    question: str = ""
    raw_passages: list[int] = field(default_factory=list)
    """Passages (layout order) of a compressed layout read as text: all their chunks stay raw tokens."""
    datastore: Any = None
    """The call's corpus datastore (``None``: the engine's)."""
    context_reason: str = ""
    """Why ``context="auto"`` chose what it did when it is not the usual point (passages past the window)."""
    long_document: bool = False
    """Compressed because it does not fit the window: read by the engine's long-document checkpoint, if any."""

    @property
    def compressed(self) -> bool:
        """Whether the prefill reads compressed chunks (REFRAG)."""
        return self.layout is not None

    def check_fits(self, limit: int | None) -> None:
        """Raise :class:`ContextTooLongError` when the token prompt exceeds the model's window ``limit``
        (a compressed prompt is checked once it is built)."""
        if limit is not None and self.prompt_ids is not None and len(self.prompt_ids) >= limit:
            hint = " or use context='compressed' (REFRAG reads k tokens per position)" if self.context_tokens else ""
            raise ContextTooLongError(
                f"the prompt has {len(self.prompt_ids)} tokens but the model reads at most {limit}: shorten "
                f"the prompt or pass fewer passages{hint}"
            )


class RequestBuilder:
    """Tokenizes prompts and passages for one target (its tokenizer and vocabulary size)."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = int(vocab_size)

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt: chat messages go through the chat template (with the generation prompt);
        a string is used as it is."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise InvalidInputError("the prompt is empty")
            return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if not isinstance(prompt, Sequence) or not all(isinstance(m, dict) for m in prompt):
            raise InvalidInputError(f"the prompt must be a string or a list of chat messages "
                                    f"({{'role': ..., 'content': ...}} dicts), got {type(prompt).__name__}")
        messages: list[dict[str, Any]] = [dict(m) for m in prompt if isinstance(m, dict)]
        if not messages or not any(str(m.get("content", "")).strip() for m in messages):
            raise InvalidInputError("the prompt has no messages with content")
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                     return_dict=False)
            return list(ids)
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        return self.tokenizer(text)["input_ids"]

    def passage_token_ids(self, passages: Sequence[Any] | None) -> list[list[int]]:
        """Token ids of passages given as strings, token-id lists or objects with ``token_ids`` / ``text``."""
        out: list[list[int]] = []
        for p in passages or []:
            ids = getattr(p, "token_ids", None) if not isinstance(p, (str, list, tuple)) else None
            if ids is None and isinstance(p, (list, tuple)):
                ids = p
            if ids is None:
                txt = p if isinstance(p, str) else getattr(p, "text", None)
                if txt is None:
                    raise InvalidInputError(f"a passage must be text, token ids or have .text, got {type(p)!r}")
                ids = self.tokenizer(txt, add_special_tokens=False)["input_ids"] if txt.strip() else []
            out.append([int(t) for t in ids])
            self.check_token_ids(out[-1], f"passage {len(out) - 1}")
        return out

    def check_token_ids(self, ids: Sequence[int], what: str) -> None:
        """Refuse token ids outside the target's vocabulary (they come from another tokenizer)."""
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise InvalidInputError(f"{what} has token id {bad}, outside this model's vocabulary "
                                    f"[0, {self.vocab_size}): token ids must come from the target's own "
                                    "tokenizer (or pass text)")

    def build(self, prompt: Prompt, passages: Sequence[Any] | None, cfg: GenerationConfig, *,
              auto_point: Callable[[int], dict[str, Any]] | None = None,
              require_refrag: Callable[[], Any] | None = None, limit: int | None = None,
              window_point: Callable[[], dict[str, Any] | None] | None = None,
              long_checkpoint: bool = False) -> EngineRequest:
        """The request of one call. ``passages`` go with the question; in a conversation an earlier user
        message may carry its own under ``"passages"`` (laid out in that message as they were in its turn).
        ``auto_point(passage_tokens)`` gives the operating point ``context="auto"`` stands for when passages
        come along (default: plain RAG); ``require_refrag()`` raises when compression cannot run. With ``auto``,
        passages that do not fit the window ``limit`` as text (with room for ``max_tokens``) are compressed
        with ``window_point()``'s setting, its raw-token budget capped to what the window leaves (``None``:
        no REFRAG, the request is refused as too long), read by the long-document checkpoint when the engine has
        one (``long_checkpoint``)."""
        from .refrag.context import layout_prompt, question_text

        prompt = _with_tools(prompt, cfg)
        original = prompt
        prompt, objects, pids = self._message_passages(prompt, passages)
        point = None
        if cfg.context == "auto" and pids:
            point = auto_point(sum(map(len, pids))) if auto_point is not None else {"context": "text"}
        asked = cfg
        cfg = cfg.resolve_context(point)
        plain = [{k: v for k, v in m.items() if k != "passages"} if isinstance(m, dict) else m for m in prompt] \
            if isinstance(prompt, list) else prompt
        if cfg.context == "none":  # the prompt as given: a string as it is, messages through the chat template
            ids = self.encode_prompt(original if isinstance(original, str) else plain)
            return EngineRequest(cfg, prompt_ids=ids, prompt_tokens=len(ids), passage_ids=pids)
        layout = layout_prompt(self.tokenizer, prompt, [])
        history = cfg.history if cfg.history != "auto" else cfg.context
        earlier = sum(layout.block_sizes[:-1])  # passages of earlier turns, laid out before the question's
        compressed = cfg.context == "compressed" or (history == "compressed" and earlier > 0)
        if compressed and require_refrag is not None:
            require_refrag()
        if not layout.passages:  # nothing to lay out: the conversation alone
            ids = self.encode_prompt([{"role": "user", "content": plain}] if isinstance(plain, str) else plain)
            return EngineRequest(cfg, prompt_ids=ids, prompt_tokens=len(ids), passage_ids=pids)
        full = layout.full_ids()
        reason, long_document = "", False
        if (not compressed and asked.context == "auto" and limit is not None and window_point is not None
                and len(full) + cfg.max_tokens > limit):
            point = window_point()
            if point is not None and require_refrag is not None:
                cfg, reason = _past_window(asked.resolve_context(point), layout, len(full), limit,
                                           require_refrag().k)
                compressed, history, long_document = True, "compressed", long_checkpoint
                reason += "; the long-document checkpoint" if long_checkpoint else ""
        if not compressed:
            return EngineRequest(cfg, prompt_ids=full, prompt_tokens=len(full),
                                 context_tokens=layout.context_tokens, passage_ids=pids)
        kept = [p for p, ids in zip(objects, pids, strict=True) if ids]  # layout_prompt drops empty passages
        return EngineRequest(cfg, layout=layout, prompt_tokens=len(full), context_tokens=layout.context_tokens,
                             passages=kept, passage_ids=pids, question=question_text(plain),
                             raw_passages=[i for i in range(len(layout.passages)) if (
                                 history != "compressed" if i < earlier else cfg.context != "compressed")],
                             context_reason=reason, long_document=long_document)

    def _message_passages(self, prompt: Prompt, passages: Sequence[Any] | None
                          ) -> tuple[Prompt, list[Any], list[list[int]]]:
        """The prompt with every user message's passages as token ids (the question's last: its own, then
        ``passages``), the passage objects and their token ids, in the order they are laid out."""
        if isinstance(prompt, str) or not isinstance(prompt, Sequence):
            ids = self.passage_token_ids(passages)
            if isinstance(prompt, str):
                return [{"role": "user", "content": prompt, "passages": ids}] if ids else prompt, \
                    list(passages or []), ids
            return prompt, list(passages or []), ids
        messages: list[Any] = [dict(m) if isinstance(m, dict) else m for m in prompt]
        users = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
        objects: list[Any] = []
        pids: list[list[int]] = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                continue
            own = list(m.get("passages") or [])
            if users and i == users[-1]:
                own += list(passages or [])
            if own or "passages" in m:
                ids = self.passage_token_ids(own)
                m["passages"] = ids
                objects += own
                pids += ids
        if not users and passages:
            pids = self.passage_token_ids(passages)
            objects = list(passages)
        return messages, objects, pids

    def from_ids(self, prompt_ids: Sequence[int], passages: Sequence[Any] | None,
                 cfg: GenerationConfig) -> EngineRequest:
        """The request of an already tokenized prompt (``context`` must be ``none`` or ``auto``; the passages
        feed the speculative datastore only)."""
        if cfg.context not in ("none", "auto"):
            raise InvalidInputError("generate_ids takes a finished prompt: use context='none', or generate()")
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise InvalidInputError("the prompt is empty")
        self.check_token_ids(ids, "the prompt")
        return EngineRequest(cfg.resolve_context(None), prompt_ids=ids, prompt_tokens=len(ids),
                             passage_ids=self.passage_token_ids(passages))


def check_compressed_fits(positions: int, limit: int | None, k: int) -> None:
    """Raise :class:`ContextTooLongError` when a compressed prompt of ``positions`` does not fit ``limit``."""
    if limit is not None and positions >= limit:
        raise ContextTooLongError(
            f"the compressed prompt takes {positions} positions but the model reads at most {limit} (at k={k} that "
            f"is about {limit * k} tokens of passages): pass fewer passages or expand fewer chunks")


def _past_window(cfg: GenerationConfig, layout: Any, text_tokens: int, limit: int,
                 k: int) -> tuple[GenerationConfig, str]:
    """``cfg`` (compressed, from the past-the-window point) with its raw-token budget capped so that the
    compressed prompt and ``max_tokens`` fit ``limit``, and the reason to report in the stats."""
    from .refrag.chunking import num_chunks

    base = text_tokens - layout.context_tokens + sum(num_chunks(len(p), k) for p in layout.passages)
    if base >= limit:  # refused before any chunk is encoded
        raise ContextTooLongError(
            f"the passages hold {layout.context_tokens:,} tokens: even compressed ({k} tokens per position) the "
            f"prompt takes {base:,} positions but the model reads at most {limit:,}; pass fewer passages (about "
            f"{(limit - (base - layout.context_tokens // k)) * k:,} tokens of passages fit)")
    room = max(limit - cfg.max_tokens - base, 0) * k // max(k - 1, 1)  # an expanded chunk adds k - 1 positions
    budget = cfg.expand_tokens
    if cfg.expand is None:
        budget = min(budget if budget is not None else room, room)
        cfg = replace(cfg, expand_tokens=budget)
    kept = f"{cfg.expand:.0%} of the chunks" if cfg.expand is not None else f"{budget or 0:,} tokens"
    return cfg, (f"the passages ({layout.context_tokens:,} tokens) do not fit the {limit:,}-position window as "
                 f"text: compressed (REFRAG, {k} tokens per position), {kept} kept raw ({cfg.policy} policy)")


def _with_tools(prompt: Prompt, cfg: GenerationConfig) -> Prompt:
    """The prompt with the offered tools (or the JSON schema the answer must follow, when
    ``cfg.format_instruction``) in its system message, and earlier calls and tool results written the way the
    model reads them (:func:`~refrag_rasd_core.structured.tool_calls.render_tool_messages`); a string prompt
    becomes a user message when there is something to tell."""
    note = cfg.response_format.instruction() if cfg.response_format is not None and cfg.format_instruction else None
    if isinstance(prompt, str):
        if not cfg.offers_tools and note is None:
            return prompt
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(prompt, Sequence) and prompt and all(isinstance(m, dict) for m in prompt):
        out = render_tool_messages(prompt, cfg.tools if cfg.offers_tools else ())  # type: ignore[arg-type]
        return with_system_note(out, note) if note else out
    return prompt
