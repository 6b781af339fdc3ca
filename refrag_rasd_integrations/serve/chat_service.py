"""What one server replica does for a chat-completions request, without any web framework: retrieve the
passages (with their stored token ids and chunk embeddings) from the Chroma collection, run the engine, and
give back an OpenAI ``chat.completion`` object or its server-sent events.

A replica holds one :class:`ChatService`: the engine loads once (in the constructor), stores open on first
use, one per collection, all on one Chroma client (the ``chroma run`` server every replica shares, or the
embedded folder). Calls are serialised by the engine (one decoding loop per replica) behind a gate
(:mod:`.gate`): a request is checked against the server's caps (:mod:`.limits`), retrieved and tokenized
before it takes the engine, waits at most its time budget, and releases the engine when it ends, fails, runs
past its budget or its client leaves.

Example:
    >>> from refrag_rasd_integrations.serve.chat_service import ChatService, ServeConfig
    >>> service = ChatService(ServeConfig(k=0, max_tokens=8), engine=engine)  # doctest: +REAL_MODEL
    >>> body = {"messages": [{"role": "user", "content": "Say hi"}], "method": "vanilla"}
    >>> out = service.complete(service.parse(body))                            # doctest: +REAL_MODEL
    >>> out["object"], out["usage"]["completion_tokens"] <= 8                  # doctest: +REAL_MODEL
    ('chat.completion', True)
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.prefix_cache import PrefixCache
from refrag_rasd_core.structured.tool_stream import ToolCallStream

from ..engines import get_engine, model_label
from ..errors import StoreError
from ..generation import GenerationRequest
from ..settings import ModelSettings
from .auth import check_collection
from .body import request_id
from .config import ServeConfig
from .errors import InvalidFilterError, ServeError
from .gate import Budget, EngineGate
from .limits import check_limits
from .openai_api import (
    SSE_DONE,
    ChatCompletionRequest,
    chunk,
    completion,
    error_body,
    finish_reason,
    sse,
    stream_deltas,
    usage_chunk,
)

MODEL_ALIASES = ("refrag-rasd", "default")
"""Model names every server answers to, besides its target's own name."""

log = logging.getLogger("refrag_rasd_integrations.serve")


class ChatService:
    """One replica's engine and stores, answering chat-completions requests."""

    def __init__(self, config: ServeConfig, *, engine: Engine | None = None, client: Any = None,
                 stores: dict[str, Any] | None = None) -> None:
        """``engine``: an engine to serve instead of loading ``config.model``; ``client``: a chromadb client
        instead of ``config``'s; ``stores``: already opened stores by collection name."""
        self.config = config
        if config.threads:
            import torch

            torch.set_num_threads(int(config.threads))
        if engine is None:
            if config.refrag == "auto":
                engine = get_engine(config.model, device=config.device, dtype=config.dtype)
            else:
                from refrag_rasd_core.engine import Engine

                engine = Engine.load(config.model, device=config.device, dtype=config.dtype,
                                     refrag=config.refrag)
            if config.calibrate:
                engine.calibrate_verify_costs()
        mb = float(config.prefix_cache_mb)
        engine.prefix_cache = PrefixCache(int(mb * (1 << 20))) if mb > 0 else None
        self.engine = engine
        self.settings = ModelSettings(engine=engine, method=config.method, context=config.context,
                                      max_tokens=config.max_tokens, recognize_passages=False)
        self.model_name = model_label(engine, config.model)
        self._client = client
        self._stores: dict[str, Any] = dict(stores or {})
        self._lock = threading.Lock()
        self.gate = EngineGate(config.max_ongoing_requests, config.max_queued_requests)
        self.replica = f"replica-{uuid.uuid4().hex[:12]}"
        """An opaque name of this replica (no host name or process id)."""

    # ---- store ---------------------------------------------------------------------------------------------
    def client(self) -> Any:
        from ..store import make_client

        if self._client is None:
            url = self.config.resolved_chroma_url()
            self._client = make_client(None if url else self.config.chroma_dir, url=url,
                                       headers=self.config.chroma_headers or None)
        return self._client

    def store(self, collection: str) -> Any:
        """The store of ``collection`` (opened once per replica; checked against the engine's configuration)."""
        from ..store import RefragChromaStore

        with self._lock:
            store = self._stores.get(collection)
            if store is None:
                store = RefragChromaStore(collection, client=self.client(), engine=self.engine)
                store.collection(create=False)
                self._stores[collection] = store
            return store

    def health(self) -> dict[str, Any]:
        """``GET /health``: open to everyone, so only the status and the model (no host, process or URL)."""
        return {"status": "ok", "model": self.model_name}

    def models(self) -> dict[str, Any]:
        """``GET /v1/models``."""
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "refrag-rasd"}
                                           for name in (self.model_name, *MODEL_ALIASES)]}

    # ---- requests ------------------------------------------------------------------------------------------
    def parse(self, body: dict[str, Any] | ChatCompletionRequest) -> ChatCompletionRequest:
        req = body if isinstance(body, ChatCompletionRequest) else ChatCompletionRequest.model_validate(body)
        req.check_supported()
        check_limits(req, self.config)
        if req.model and req.model not in (self.model_name, *MODEL_ALIASES):
            raise ModelNotServedError(f"this server serves {self.model_name!r} (also as "
                                      f"{' / '.join(MODEL_ALIASES)}), not {req.model!r}")
        return req

    def prepare(self, req: ChatCompletionRequest, allowed: frozenset[str] | None = None,
                ) -> tuple[GenerationRequest, list[dict[str, Any]]]:
        """Retrieve and resolve: the engine request and the sources (id, source, score) it reads; ``allowed``:
        the collections the caller's API key may read (``None``: all)."""
        cfg = self.config
        settings = req.generation_settings()
        if int(settings.get("max_tokens", 0)) > cfg.max_tokens_limit:
            raise InvalidInputError(f"max_tokens {settings['max_tokens']} is over this server's limit "
                                    f"({cfg.max_tokens_limit})")
        collection, k = req.retrieval(cfg.collection, cfg.k)
        sources: list[dict[str, Any]] = []
        passages: list[Any] = list(req.passages or [])
        check_collection(allowed, collection)
        if collection:
            hits = self._search(collection, req, k)
            passages = [p for p, _ in hits]
            sources = [{"id": p.id, "source": p.metadata.get("source"), "score": round(float(s), 4)}
                       for p, s in hits]
        if cfg.datastore and collection:
            settings["datastore"] = self.store(collection).datastore(sync=False)
        gen = GenerationRequest.build(self.settings, req.engine_messages(), passages=passages or None, **settings)
        return gen, sources

    def _search(self, collection: str, req: ChatCompletionRequest, k: int) -> list[Any]:
        store = self.store(collection)
        try:
            return store.search(req.question(), k=k, filter=req.filter)
        except StoreError as exc:  # Chroma refusing the filter is the caller's fault: 400, not 503
            cause = exc.__cause__
            if req.filter and (isinstance(cause, (ValueError, TypeError)) or "InvalidArgument" in
                               type(cause).__name__ or "where" in str(cause).lower()):
                raise InvalidFilterError(f"filter: refused by Chroma ({cause})", param="filter") from exc
            raise

    def _extra(self, gen: GenerationRequest, stats: Any, sources: list[dict[str, Any]]) -> dict[str, Any]:
        meta = gen.metadata(stats)
        return {"method": meta["method"], "context": meta["context"], "sources": sources,
                "time_to_first_token_s": meta["time_to_first_token_s"],
                "decode_tokens_per_s": meta["decode_tokens_per_s"],
                "accepted_per_forward": meta["accepted_per_forward"], "replica": self.replica}

    def complete(self, req: ChatCompletionRequest, request_id: str | None = None, *,
                 allowed: frozenset[str] | None = None, budget: Budget | None = None) -> dict[str, Any]:
        """The whole ``chat.completion`` object (``RequestTimeoutError`` past the time budget)."""
        budget = budget or Budget(self.config.request_timeout)
        gen, sources = self.prepare(req, allowed)
        stream = gen.stream()  # tokenized and checked against the window here, before the engine
        pieces: list[str] = []
        self.gate.acquire(budget)
        try:
            for piece in stream:
                pieces.append(piece)
                budget.check()
        finally:
            stream.close()
            self.gate.release()
        return completion(request_id or new_request_id(), self.model_name, "".join(pieces), stream.stats,
                          self._extra(gen, stream.stats, sources), tools=gen.config.offers_tools)

    def events(self, req: ChatCompletionRequest, request_id: str | None = None, *,
               allowed: frozenset[str] | None = None, budget: Budget | None = None) -> Iterator[str]:
        """Server-sent events of a streamed answer. The request is resolved (retrieval, checks, prompt) before
        the first event, so bad input raises here; a failure after that (the time budget spent included) ends
        the stream with an error event. Closing the iterator releases the engine."""
        budget = budget or Budget(self.config.request_timeout)
        gen, sources = self.prepare(req, allowed)
        stream = gen.stream()
        return self._events(gen, stream, sources, req.include_usage(), request_id or new_request_id(), budget)

    def _events(self, gen: GenerationRequest, stream: Any, sources: list[dict[str, Any]], include_usage: bool,
                rid: str, budget: Budget) -> Iterator[str]:
        created, model = int(time.time()), self.model_name
        held = False
        try:
            yield sse(chunk(rid, model, created, {"role": "assistant", "content": ""}))
            self.gate.acquire(budget)
            held = True
            calls = ToolCallStream() if gen.config.offers_tools else None
            for piece in stream:
                for delta in _deltas(piece, calls):
                    yield sse(chunk(rid, model, created, delta))
                budget.check()
            for delta in stream_deltas(calls.finish()) if calls is not None else []:
                yield sse(chunk(rid, model, created, delta))
            stats = stream.stats
            yield sse(chunk(rid, model, created, {}, finish_reason(stats, bool(calls and calls.calls)),
                            refrag_rasd=self._extra(gen, stats, sources)))
            if include_usage:
                yield sse(usage_chunk(rid, model, created, stats))
        except ServeError as exc:  # the stream has started: report in-band (time budget spent, server busy)
            yield sse(error_body(str(exc), exc.kind, exc.code))
        except InvalidInputError as exc:
            yield sse(error_body(str(exc)))
        except Exception:
            log.exception("request %s: generation failed", rid)
            yield sse(error_body(f"generation failed (request {rid}; see the server log)", "server_error"))
        finally:
            stream.close()
            if held:
                self.gate.release()
        yield SSE_DONE


def _deltas(piece: str, calls: ToolCallStream | None) -> list[dict[str, Any]]:
    """The ``delta`` s of one streamed piece: the text, or (tools offered) text and tool-call pieces."""
    if calls is None:
        return [{"content": piece}] if piece else []
    return stream_deltas(calls.push(piece))


class ModelNotServedError(InvalidInputError, LookupError):
    """The request names a model this server does not serve (HTTP 404)."""


def new_request_id(given: str | None = None) -> str:
    """``chatcmpl-<id>``: the caller's request id when it sent a valid one (``X-Request-Id``, 1-64 of
    ``[A-Za-z0-9._-]``), else a fresh one."""
    return f"chatcmpl-{request_id(given)}"


__all__ = ["MODEL_ALIASES", "ChatService", "ModelNotServedError", "ServeConfig", "new_request_id"]
