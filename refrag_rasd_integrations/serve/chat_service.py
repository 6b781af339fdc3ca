"""What one server replica does for a chat-completions request, without any web framework: retrieve the
passages (with their stored token ids and chunk embeddings) from the Chroma collection, run the engine, and
give back an OpenAI ``chat.completion`` object or its server-sent events.

A replica holds one :class:`ChatService`: the engine loads once (in the constructor), stores open on first
use, one per collection, all on one Chroma client (the ``chroma run`` server every replica shares, or the
embedded folder). Calls are serialised by the engine (one decoding loop per replica).

Example:
    >>> from refrag_rasd_integrations.serve.chat_service import ChatService, ServeConfig
    >>> service = ChatService(ServeConfig(k=0, max_tokens=8), engine=engine)  # doctest: +REAL_MODEL
    >>> body = {"messages": [{"role": "user", "content": "Say hi"}], "method": "vanilla"}
    >>> out = service.complete(service.parse(body))                            # doctest: +REAL_MODEL
    >>> out["object"], out["usage"]["completion_tokens"] <= 8                  # doctest: +REAL_MODEL
    ('chat.completion', True)
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.generation_config import GenerationConfig

from ..engines import get_engine, model_label
from ..generation import GenerationRequest
from ..settings import ModelSettings
from .openai_api import (
    SSE_DONE,
    ChatCompletionRequest,
    chunk,
    completion,
    error_body,
    finish_reason,
    sse,
    usage_chunk,
)

MODEL_ALIASES = ("refrag-rasd", "default")
"""Model names every server answers to, besides its target's own name."""


@dataclass
class ServeConfig:
    """How a server is set up: the model and its defaults (every replica the same), the store, and the
    deployment (replicas, queue, HTTP address).

    Example:
        >>> ServeConfig(replicas=2, collection="docs").replica_cpus(cpus=2)
        1.0
        >>> ServeConfig.from_dict({"replicas": "3", "k": "2"}).k
        2
    """

    model: str | None = None
    device: str = "auto"
    dtype: str | None = None
    refrag: str | None = "auto"
    """REFRAG checkpoint: ``auto`` (the shipped one for the default model), a path, or ``None`` for none."""
    method: str = "rasd"
    context: str = "auto"
    max_tokens: int = 256
    """Default answer length (a request's ``max_tokens`` wins, up to ``max_tokens_limit``)."""
    max_tokens_limit: int = 2048
    collection: str | None = None
    """Default collection to retrieve from (a request may name another, or send ``k=0``)."""
    k: int = 4
    chroma_url: str | None = None
    """The ``chroma run`` server every replica reads (default ``$REFRAG_RASD_CHROMA_URL``); unset: the
    embedded folder ``chroma_dir`` (one machine)."""
    chroma_dir: str | None = None
    calibrate: bool = True
    """Measure the verify-cost curve on the replica's machine at load (steers RASD's tree budget)."""
    threads: int | None = None
    """Torch threads per replica (default: the replica's CPUs)."""
    replicas: int = 1
    max_ongoing_requests: int = 1
    """Requests a replica works on at once (1: one decoding loop; Serve queues and routes the rest)."""
    max_queued_requests: int = 64
    """Requests Serve queues per caller before refusing with 503 (-1: no limit)."""
    host: str = "127.0.0.1"
    port: int = 8080
    app_name: str = "refrag-rasd"

    def __post_init__(self) -> None:
        self.generation_config()  # checks method, context and max_tokens
        for name in ("replicas", "max_ongoing_requests", "max_tokens_limit"):
            if int(getattr(self, name)) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.k < 0:
            raise InvalidInputError(f"k must be >= 0, got {self.k}")

    def generation_config(self) -> GenerationConfig:
        """The server's default generation settings (a request's own win)."""
        return GenerationConfig.of(method=self.method, context=self.context, max_tokens=self.max_tokens)

    @classmethod
    def from_dict(cls, args: dict[str, Any]) -> ServeConfig:
        """From ``serve run`` / config-file arguments (strings are converted to the field's type)."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise InvalidInputError(f"unknown server setting(s): {', '.join(unknown)}")
        return cls(**{key: _from_text(str(known[key].type), value) for key, value in args.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolved_chroma_url(self) -> str | None:
        return self.chroma_url or os.environ.get("REFRAG_RASD_CHROMA_URL") or None

    def replica_cpus(self, cpus: int | None = None) -> float:
        """CPUs each replica reserves: the machine's share (at least one where there are enough)."""
        cpus = cpus or os.cpu_count() or 1
        return float(max(cpus // self.replicas, 1)) if self.replicas <= cpus else cpus / self.replicas


def _from_text(kind: str, value: Any) -> Any:
    """A setting given as text (a command line, a config file) converted to its field's type ``kind``."""
    if not isinstance(value, str):
        return value
    if "None" in kind and value.strip().lower() in ("", "none", "null"):
        return None
    base = kind.split("|")[0].strip()
    try:
        if base == "int":
            return int(value)
        if base == "float":
            return float(value)
    except ValueError as exc:
        raise InvalidInputError(f"expected a number, got {value!r}") from exc
    if base == "bool":
        return value.strip().lower() in ("1", "true", "yes", "on")
    return value


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
        self.engine = engine
        self.settings = ModelSettings(engine=engine, method=config.method, context=config.context,
                                      max_tokens=config.max_tokens, recognize_passages=False)
        self.model_name = model_label(engine, config.model)
        self._client = client
        self._stores: dict[str, Any] = dict(stores or {})
        self._lock = threading.Lock()
        self.replica = f"{os.uname().nodename}:{os.getpid()}"

    # ---- store ---------------------------------------------------------------------------------------------
    def client(self) -> Any:
        from ..store import make_client

        if self._client is None:
            url = self.config.resolved_chroma_url()
            self._client = make_client(None if url else self.config.chroma_dir, url=url)
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
        return {"status": "ok", "model": self.model_name, "replica": self.replica,
                "collection": self.config.collection, "chroma_url": self.config.resolved_chroma_url()}

    def models(self) -> dict[str, Any]:
        """``GET /v1/models``."""
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "refrag-rasd"}
                                           for name in (self.model_name, *MODEL_ALIASES)]}

    # ---- requests ------------------------------------------------------------------------------------------
    def parse(self, body: dict[str, Any] | ChatCompletionRequest) -> ChatCompletionRequest:
        req = body if isinstance(body, ChatCompletionRequest) else ChatCompletionRequest.model_validate(body)
        req.check_supported()
        if req.model and req.model not in (self.model_name, *MODEL_ALIASES):
            raise ModelNotServedError(f"this server serves {self.model_name!r} (also as "
                                      f"{' / '.join(MODEL_ALIASES)}), not {req.model!r}")
        return req

    def prepare(self, req: ChatCompletionRequest) -> tuple[GenerationRequest, list[dict[str, Any]]]:
        """Retrieve and resolve: the engine request and the sources (id, source, score) it reads."""
        cfg = self.config
        settings = req.generation_settings()
        if int(settings.get("max_tokens", 0)) > cfg.max_tokens_limit:
            raise InvalidInputError(f"max_tokens {settings['max_tokens']} is over this server's limit "
                                    f"({cfg.max_tokens_limit})")
        collection, k = req.retrieval(cfg.collection, cfg.k)
        sources: list[dict[str, Any]] = []
        passages: list[Any] = list(req.passages or [])
        if collection:
            hits = self.store(collection).search(req.question(), k=k, filter=req.filter)
            passages = [p for p, _ in hits]
            sources = [{"id": p.id, "source": p.metadata.get("source"), "score": round(float(s), 4)}
                       for p, s in hits]
        gen = GenerationRequest.build(self.settings, req.engine_messages(), passages=passages or None, **settings)
        return gen, sources

    def _extra(self, gen: GenerationRequest, stats: Any, sources: list[dict[str, Any]]) -> dict[str, Any]:
        meta = gen.metadata(stats)
        return {"method": meta["method"], "context": meta["context"], "sources": sources,
                "time_to_first_token_s": meta["time_to_first_token_s"],
                "decode_tokens_per_s": meta["decode_tokens_per_s"],
                "accepted_per_forward": meta["accepted_per_forward"], "replica": self.replica}

    def complete(self, req: ChatCompletionRequest, request_id: str | None = None) -> dict[str, Any]:
        """The whole ``chat.completion`` object."""
        gen, sources = self.prepare(req)
        stream = gen.stream()
        text = "".join(stream)
        return completion(request_id or new_request_id(), self.model_name, text, stream.stats,
                          self._extra(gen, stream.stats, sources))

    def events(self, req: ChatCompletionRequest, request_id: str | None = None) -> Iterator[str]:
        """Server-sent events of a streamed answer. The request is resolved (retrieval, checks, prompt) before
        the first event, so bad input raises here; a failure after that ends the stream with an error event."""
        gen, sources = self.prepare(req)
        stream = gen.stream()
        return self._events(gen, stream, sources, req.include_usage(), request_id or new_request_id())

    def _events(self, gen: GenerationRequest, stream: Any, sources: list[dict[str, Any]], include_usage: bool,
                rid: str) -> Iterator[str]:
        created, model = int(time.time()), self.model_name
        try:
            yield sse(chunk(rid, model, created, {"role": "assistant", "content": ""}))
            for piece in stream:
                if piece:
                    yield sse(chunk(rid, model, created, {"content": piece}))
            stats = stream.stats
            yield sse(chunk(rid, model, created, {}, finish_reason(stats),
                            refrag_rasd=self._extra(gen, stats, sources)))
            if include_usage:
                yield sse(usage_chunk(rid, model, created, stats))
        except Exception as exc:  # the stream has started: report in-band, as OpenAI-compatible servers do
            yield sse(error_body(f"generation failed: {exc}", "server_error"))
        finally:
            stream.close()
        yield SSE_DONE


class ModelNotServedError(InvalidInputError, LookupError):
    """The request names a model this server does not serve (HTTP 404)."""


def new_request_id(given: str | None = None) -> str:
    """``chatcmpl-<id>``: the caller's request id when it sent one (``X-Request-Id``), else a fresh one."""
    return f"chatcmpl-{given or uuid.uuid4().hex}"


__all__ = ["MODEL_ALIASES", "ChatService", "ModelNotServedError", "ServeConfig", "new_request_id"]
