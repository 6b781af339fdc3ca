"""What every adapter (LangChain chat / string LLM, LlamaIndex LLM, the CLI) does between a framework call and
:meth:`Engine.stream <refrag_rasd_core.engine.Engine.stream>`: pick the shared engine, find the passages
(handed over explicitly, or recognised in the prompt), choose the context mode, merge the settings.

How passages reach the engine:

1. explicitly: ``passages=`` (handles, ``Document`` s, nodes, :class:`Passage` s or strings) as a call keyword,
   or passage handles in a chat message's ``additional_kwargs["refrag_passages"]`` (what
   :class:`~refrag_rasd_integrations.langchain.prompts.PassagePrompt` writes). The prompt is then the
   question;
2. recognised: when no passage was handed over and ``recognize_passages`` is on, passages that a retriever of
   this process handed out recently (the :data:`~refrag_rasd_integrations.passages.PASSAGES` registry) and
   whose text occurs verbatim in the prompt are taken out of the prompt and handed over with their stored
   arrays; what is left of the prompt is the question. So a plain ``retriever | format_docs | prompt | model``
   chain still feeds REFRAG the stored chunk embeddings.

With passages, ``context="auto"`` means the operating point measured for the engine's REFRAG checkpoint
(``Engine.auto_context()``): plain RAG (``"text"``) unless the checkpoint records a compressed setting that
keeps at least 95% of plain RAG's right answers on the qa suite, for every request or (its ``"long"`` point) for
requests whose passages hold at least so many tokens; ``"compressed"`` (REFRAG: stored chunk
vectors, no encoder at query time) is there when asked for. Without passages the prompt is used as it is and
RASD looks up continuations in the prompt itself.

Example:
    >>> from refrag_rasd_integrations.generation import GenerationRequest
    >>> req = GenerationRequest.build({"method": "vanilla", "max_tokens": 4}, "Hi!", engine=engine)  # doctest: +REAL_MODEL
    >>> req.context, req.settings["max_tokens"], "".join(req.stream()) != ""                     # doctest: +REAL_MODEL
    ('none', 4, True)
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from refrag_rasd_core.errors import InvalidInputError

from .engines import get_engine, has_refrag, model_label
from .passages import PASSAGES, Passage, PassageRegistry, resolve
from .settings import ENGINE_SETTINGS, check_settings

_ALIASES = {"max_new_tokens": "max_tokens"}
SETTING_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "method", "spec", "stop")
Messages = list[dict[str, str]]


@dataclass
class GenerationRequest:
    """One resolved call: the engine, the prompt, the passages and the engine settings."""

    engine: Any
    prompt: str | Messages
    passages: list[Passage]
    settings: dict[str, Any]
    model_name: str
    context: str
    recognized: int = 0

    @classmethod
    def build(cls, params: dict[str, Any], prompt: str | Messages, *, passages: Sequence[Any] | None = None,
              handles: Sequence[str] = (), stop: Sequence[str] | None = None, engine: Any = None,
              registry: PassageRegistry | None = None, **overrides: Any) -> GenerationRequest:
        """``params``: the model's settings (:meth:`ModelSettings.request_settings
        <refrag_rasd_integrations.settings.ModelSettings.request_settings>`); ``overrides``: per-call keywords
        (any setting, or an engine setting such as ``expand``), checked as the settings are."""
        overrides = {_ALIASES.get(k, k): v for k, v in overrides.items() if not k.startswith("ls_")}
        check_settings(params)
        check_settings(overrides)
        model = overrides.pop("model", None)
        context = overrides.pop("context", None) or params.get("context") or "auto"
        store = overrides.pop("store", None) or params.get("store")
        if model is not None and model != params.get("model"):
            engine = get_engine(model, device=params.get("device", "auto"), dtype=params.get("dtype"))
        elif engine is None:
            engine = get_engine(params.get("model"), device=params.get("device", "auto"), dtype=params.get("dtype"))
        settings: dict[str, Any] = {k: params[k] for k in SETTING_KEYS if params.get(k) is not None}
        settings.update(params.get("engine_kwargs") or {})
        for k, v in overrides.items():
            if k not in ENGINE_SETTINGS:
                raise InvalidInputError(f"unknown generation setting {k!r}")
            settings[k] = v
        stops = list(settings.get("stop") or []) + list(stop or [])
        settings["stop"] = tuple(dict.fromkeys(stops))
        if settings.get("spec") is None:
            settings.pop("spec", None)

        reg = registry or PASSAGES
        found = resolve(list(passages or []) + list(handles), store=store, registry=reg)
        recognized = 0
        if not found and params.get("recognize_passages", True) and len(reg):
            prompt, found = _recognize(prompt, reg)
            recognized = len(found)
        if context == "auto":
            context = "none" if not found else _auto_context(engine, settings, found)
        if context != "none":
            settings["context"] = context
        return cls(engine=engine, prompt=prompt, passages=found, settings=settings,
                   model_name=model_label(engine, model or params.get("model")), context=context,
                   recognized=recognized)

    def stream(self) -> Any:
        """The engine's :class:`~refrag_rasd_core.engine.GenerationStream` for this request."""
        return self.engine.stream(self.prompt, passages=self.passages or None, **self.settings)

    def metadata(self, stats: Any) -> dict[str, Any]:
        """``response_metadata`` for LangChain / ``raw`` for LlamaIndex: the model, why it stopped and the speed
        statistics (time to first token, accepted tokens per forward, tokens/s)."""
        d = stats.to_dict()
        return {
            "model_name": self.model_name,
            "finish_reason": stats.finish_reason or "stop",
            "method": d.get("method"),
            "context": self.context,
            "passages": len(self.passages),
            "passages_recognized": self.recognized,
            "time_to_first_token_s": d.get("ttft_s"),
            "decode_tokens_per_s": d.get("decode_tokens_per_s"),
            "accepted_per_forward": d.get("accepted_per_forward"),
            "stats": d,
        }


def request_for(settings: Any, prompt: str | Messages, *, passages: Sequence[Any] | None = None,
                handles: Sequence[str] = (), stop: Sequence[str] | None = None, **overrides: Any
                ) -> GenerationRequest:
    """A framework call as a :class:`GenerationRequest`: ``settings`` is the model (a
    :class:`~refrag_rasd_integrations.settings.ModelSettings`), ``overrides`` the call's keywords."""
    return GenerationRequest.build(settings.request_settings(), prompt, passages=passages, handles=handles,
                                   stop=stop, engine=settings.engine, **overrides)


def iter_pieces(req: GenerationRequest) -> Iterator[tuple[str, Any]]:
    """``(piece, None)`` for every text piece of the answer, then ``("", stats)`` once it is complete."""
    stream = req.stream()
    for piece in stream:
        yield piece, None
    yield "", stream.stats


def _auto_context(engine: Any, settings: dict[str, Any], passages: Sequence[Any]) -> str:
    """Resolve ``context="auto"`` for a request with passages to the engine's measured operating point
    (:meth:`Engine.auto_context <refrag_rasd_core.engine.Engine.auto_context>`: plain RAG unless the REFRAG
    checkpoint records a compressed setting that keeps plain RAG's answers, for all contexts or for ones as
    long as these passages); settings the caller gave win."""
    if has_refrag(engine):
        n_tokens = sum(len(ids) for ids in engine.passage_token_ids(passages))
        point = engine.auto_context(passage_tokens=n_tokens)
    else:
        point = {"context": "text"}
    for key, value in point.items():
        if key != "context":
            settings.setdefault(key, value)
    return point["context"]


def usage(stats: Any) -> dict[str, int]:
    """LangChain ``usage_metadata`` / LlamaIndex ``raw["usage"]`` of a call."""
    return {"input_tokens": int(stats.prompt_tokens), "output_tokens": int(stats.new_tokens),
            "total_tokens": int(stats.prompt_tokens + stats.new_tokens)}


def content_text(content: Any) -> str:
    """The text of a message's content (a string, or text blocks); other blocks are refused."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict):
            raise InvalidInputError(f"this model reads text only; got a {block.get('type')!r} content block")
    return "".join(parts)


def _strip(text: str, passages: list[tuple[str, Passage]]) -> str:
    for _, p in passages:
        text = text.replace(p.text.strip(), "")
    text = re.sub(r"\n{3,}", "\n\n", text)
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def _recognize(prompt: str | Messages, reg: PassageRegistry) -> tuple[str | Messages, list[Passage]]:
    if isinstance(prompt, str):
        hits = reg.find_in(prompt)
        return (_strip(prompt, hits), [p for _, p in hits]) if hits else (prompt, [])
    msgs = [dict(m) for m in prompt]
    found: list[Passage] = []
    for m in msgs:
        if m.get("role") in ("user", "system"):
            hits = reg.find_in(m["content"])
            if hits:
                m["content"] = _strip(m["content"], hits)
                found.extend(p for _, p in hits)
    msgs = [m for m in msgs if m["content"].strip() or m["role"] == "assistant"]
    if not found or not any(m["role"] == "user" for m in msgs):
        return prompt, []
    return msgs, found


def run_in_thread(make_iter: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """Drive a blocking iterator in a worker thread and yield its items on the event loop as they come.

    Leaving the ``async for`` early stops the worker at its next item (which releases the engine)."""

    async def agen() -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        done = object()

        def work() -> None:
            err: BaseException | None = None
            try:
                it = make_iter()
                try:
                    for item in it:
                        loop.call_soon_threadsafe(queue.put_nowait, (item, None))
                        if stop.is_set():
                            break
                finally:
                    close = getattr(it, "close", None)
                    if close is not None:
                        close()
            except BaseException as exc:  # handed to the consumer
                err = exc
            loop.call_soon_threadsafe(queue.put_nowait, (done, err))

        fut = loop.run_in_executor(None, work)
        try:
            while True:
                item, err = await queue.get()
                if item is done:
                    if err is not None:
                        raise err
                    return
                yield item
        finally:
            stop.set()
            await asyncio.shield(fut)

    return agen()


__all__ = ["GenerationRequest", "iter_pieces", "request_for", "run_in_thread", "usage"]
