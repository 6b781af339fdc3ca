"""What every adapter (LangChain chat / string LLM, LlamaIndex LLM, the server, the CLI) does between a
framework call and :meth:`Engine.stream <refrag_rasd_core.engine.Engine.stream>`: pick the engine, find the
passages (handed over explicitly, or recognised in the prompt) and build the call's
:class:`~refrag_rasd_core.generation_config.GenerationConfig` from the model's settings and the call's
keywords. Settings are checked and defaulted by that config alone, and ``context="auto"`` is resolved by the
engine (its measured operating point: plain RAG unless the REFRAG checkpoint records a compressed setting that
keeps plain RAG's answers).

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

Example:
    >>> from refrag_rasd_integrations.generation import GenerationRequest
    >>> from refrag_rasd_integrations.settings import ModelSettings
    >>> req = GenerationRequest.build(ModelSettings(method="vanilla", max_tokens=4, engine=engine),
    ...                               "Hi!")                                   # doctest: +REAL_MODEL
    >>> stream = req.stream()                                                  # doctest: +REAL_MODEL
    >>> "".join(stream) != "", stream.stats.context, req.config.max_tokens     # doctest: +REAL_MODEL
    (True, 'none', 4)
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from refrag_rasd_core.engine import Engine, GenerationStream
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.generation_config import GenerationConfig
from refrag_rasd_core.stats import GenerationStats

from .engines import model_label
from .passages import PASSAGES, Passage, PassageRegistry, is_handle, resolve
from .settings import ModelSettings
from .store.corpus_datastore import resolve_datastore

Messages = list[dict[str, Any]]

@dataclass
class GenerationRequest:
    """One resolved call: the engine, the prompt, the passages and the generation config."""

    engine: Engine
    prompt: str | Messages
    passages: list[Passage]
    config: GenerationConfig
    model_name: str
    recognized: int = 0
    datastore: Any = None

    @classmethod
    def build(cls, settings: ModelSettings, prompt: str | Messages, *, passages: Sequence[Any] | None = None,
              handles: Sequence[str] = (), stop: Sequence[str] | None = None,
              registry: PassageRegistry | None = None, **overrides: Any) -> GenerationRequest:
        """``settings``: the model; ``overrides``: the call's keywords (``model``, ``store``, or any generation
        setting such as ``expand``; LangChain's tracing keywords ``ls_*`` are dropped)."""
        overrides = {k: v for k, v in overrides.items() if not k.startswith("ls_")}
        model = overrides.pop("model", None)
        store = overrides.pop("store", None) or settings.store
        datastore = resolve_datastore(overrides.pop("datastore", settings.datastore), store)
        config = settings.generation_config().merge(overrides)
        if stop:
            config = config.merge(stop=[*config.stop, *stop])
        engine = settings.resolve_engine(model)
        reg = registry or PASSAGES
        found = resolve(list(passages or []) + list(handles), store=store, registry=reg)
        if not isinstance(prompt, str):  # earlier turns' passages, laid out in their own messages
            prompt = [{**m, "passages": resolve(m["passages"], store=store, registry=reg)} if m.get("passages")
                      else m for m in prompt]
            users = [i for i, m in enumerate(prompt) if m.get("role") == "user"]
            if users and prompt[users[-1]].get("passages"):  # the question's own: handed over with the rest
                question = dict(prompt[users[-1]])
                found = found + list(question.pop("passages"))
                prompt = [*prompt[:users[-1]], question, *prompt[users[-1] + 1:]]
        recognized = 0
        if not found and settings.recognize_passages and len(reg):
            prompt, found = _recognize(prompt, reg)
            recognized = len(found)
        return cls(engine=engine, prompt=prompt, passages=found, config=config,
                   model_name=model_label(engine, model or settings.model), recognized=recognized,
                   datastore=datastore)

    def passage_refs(self) -> list[str]:
        """The question's passages as a message carries them: handles (or the text of a passage that came
        without one)."""
        return [p.id if p.id and is_handle(p.id) else p.text for p in self.passages]

    def stream(self) -> GenerationStream:
        """The engine's :class:`~refrag_rasd_core.engine.GenerationStream` for this request."""
        return self.engine.stream(self.prompt, passages=self.passages or None, config=self.config,
                                  datastore=self.datastore)

    def metadata(self, stats: GenerationStats) -> dict[str, Any]:
        """``response_metadata`` for LangChain / ``raw`` for LlamaIndex: the model, why it stopped, how the
        passages were read (``context``, as the engine resolved it) and the speed statistics (time to first
        token, accepted tokens per forward, tokens/s)."""
        d = stats.to_dict()
        return {
            "model_name": self.model_name,
            "finish_reason": stats.finish_reason or "stop",
            "method": d.get("method"),
            "context": stats.context,
            "passages": len(self.passages),
            "passages_recognized": self.recognized,
            "time_to_first_token_s": d.get("ttft_s"),
            "decode_tokens_per_s": d.get("decode_tokens_per_s"),
            "accepted_per_forward": d.get("accepted_per_forward"),
            "stats": d,
        }


def usage(stats: GenerationStats) -> dict[str, Any]:
    """LangChain ``usage_metadata`` / LlamaIndex ``raw["usage"]`` of a call (``input_token_details.cache_read``:
    prefill positions that came from the engine's prefix cache)."""
    return {"input_tokens": int(stats.prompt_tokens), "output_tokens": int(stats.new_tokens),
            "total_tokens": int(stats.prompt_tokens + stats.new_tokens),
            "input_token_details": {"cache_read": int(stats.cached_tokens)}}


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
        elif isinstance(block, dict) and block.get("type") in ("tool_use", "tool_call"):
            continue  # a call in the content: the message's tool_calls carry it
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


__all__ = ["GenerationRequest", "content_text", "run_in_thread", "usage"]
