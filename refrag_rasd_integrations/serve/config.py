"""How a server is set up (:class:`ServeConfig`): the model and its defaults, the store, the deployment, and
the server's own limits and access rules (body size, caps, time budget, API keys, CORS, docs). Limits are
the server's: every generation setting is still checked by
:class:`~refrag_rasd_core.generation_config.GenerationConfig` alone.

Example:
    >>> ServeConfig(replicas=2, collection="docs").replica_cpus(cpus=2)
    1.0
    >>> cfg = ServeConfig.from_dict({"replicas": "3", "k": "2", "cors_origins": "https://a.example"})
    >>> cfg.k, cfg.cors_origins, cfg.max_body_bytes
    (2, ['https://a.example'], 1048576)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.generation_config import GenerationConfig

LOOPBACK = ("127.0.0.1", "localhost", "::1")
"""Addresses that listen on this machine only."""


@dataclass
class ServeConfig:
    """How a server is set up: the model and its defaults (every replica the same), the store, the
    deployment (replicas, queue, HTTP address) and the server's limits and access rules."""

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
    datastore: bool = False
    """Let ``rasd`` / ``rest`` read the collection's corpus datastore (kept by ``refrag-rasd index --datastore``;
    every replica maps the same files, read-only, and picks up a newer one when the index changes)."""
    chroma_url: str | None = None
    """The ``chroma run`` server every replica reads (default ``$REFRAG_RASD_CHROMA_URL``); unset: the
    embedded folder ``chroma_dir`` (one machine)."""
    chroma_dir: str | None = None
    chroma_headers: dict[str, str] | None = None
    """HTTP headers sent to the Chroma server (its authentication, e.g. ``Authorization: Bearer ...``)."""
    calibrate: bool = True
    """Measure the verify-cost curve on the replica's machine at load (steers RASD's tree budget)."""
    threads: int | None = None
    """Torch threads per replica (default: the replica's CPUs)."""
    replicas: int = 1
    max_ongoing_requests: int = 1
    """Requests a replica works on at once (1: one decoding loop; Serve queues and routes the rest)."""
    max_queued_requests: int = 64
    """Requests queued before refusing with 503 (-1: no limit)."""
    host: str = "127.0.0.1"
    """HTTP address (loopback by default; another address listens beyond this machine: use API keys)."""
    port: int = 8080
    app_name: str = "refrag-rasd"
    prefix_cache_mb: float = 512
    """The replica's prefix cache (earlier requests' prefill KV reused by a request that starts the same way,
    a conversation's next turn; usage reports ``prompt_tokens_details.cached_tokens``); 0 turns it off."""
    # ---- limits: the server's own caps (not generation settings) -----------------------------------------------
    max_body_bytes: int = 1 << 20
    """Largest request body (413 past it, checked before parsing)."""
    max_json_depth: int = 64
    """Deepest nesting of the JSON body (400 past it)."""
    max_messages: int = 256
    max_message_chars: int = 262_144
    """Characters of all messages together."""
    max_passages: int = 64
    """Passages given with one request (``passages``)."""
    max_passage_chars: int = 262_144
    """Characters of the given passages together."""
    max_stop: int = 4
    max_stop_chars: int = 256
    """Characters of one stop string."""
    max_k: int = 32
    """Passages one request may retrieve (``k``)."""
    request_timeout: float = 300.0
    """Seconds one request may take, waiting for the engine included (504 / an error event past it; 0: none)."""
    # ---- access -------------------------------------------------------------------------------------------------
    api_keys: dict[str, list[str] | None] | None = None
    """SHA-256 digests of the accepted API keys, each with the collections it may read (``None``: all); see
    :class:`~refrag_rasd_integrations.serve.auth.KeyRing`. ``None``: no keys needed (loopback use)."""
    cors_origins: list[str] | None = None
    """Origins browsers may call from (CORS); ``None``: no cross-origin access."""
    docs: bool = False
    """Serve ``/docs``, ``/redoc`` and ``/openapi.json``."""

    def __post_init__(self) -> None:
        self.generation_config()  # checks method, context and max_tokens
        for name in ("replicas", "max_ongoing_requests", "max_tokens_limit", "max_body_bytes", "max_json_depth",
                     "max_messages", "max_message_chars", "max_passages", "max_passage_chars", "max_stop",
                     "max_stop_chars", "max_k"):
            if int(getattr(self, name)) < 1:
                raise InvalidInputError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.k < 0:
            raise InvalidInputError(f"k must be >= 0, got {self.k}")
        if not self.request_timeout >= 0:
            raise InvalidInputError(f"request_timeout must be >= 0 seconds, got {self.request_timeout!r}")

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

    def loopback_only(self) -> bool:
        """Whether the HTTP address is on this machine only."""
        return self.host in LOOPBACK


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
        if base.startswith("dict"):
            return json.loads(value)
    except ValueError as exc:
        raise InvalidInputError(f"expected {base}, got {value!r}") from exc
    if base.startswith("list"):
        return [part.strip() for part in value.split(",") if part.strip()]
    if base == "bool":
        return value.strip().lower() in ("1", "true", "yes", "on")
    return value


__all__ = ["LOOPBACK", "ServeConfig"]
