"""One engine per configuration per process, shared by every model instance (LangChain, LlamaIndex, the
store, the CLI).

Weights load lazily, on the first call that needs them, and once: a module-level cache keyed by
``(model, device, dtype)`` behind a lock, so two threads asking at the same time get the same engine.
Calls on one engine are serialised by the engine itself, so sharing is safe from threads and asyncio.

Example:
    >>> from refrag_rasd_integrations.engines import get_engine
    >>> e1 = get_engine()            # doctest: +REAL_MODEL
    >>> e1 is get_engine(None)       # doctest: +REAL_MODEL
    True
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from refrag_rasd_core.engine import DEFAULT_WEIGHTS, Engine

DEFAULT_K = 16
DEFAULT_PREFIX_CACHE_MB = 512
"""The shared engines' prefix cache (``$REFRAG_RASD_PREFIX_CACHE_MB``; 0 turns it off): earlier requests'
prefill KV, reused by a request that starts the same way (a conversation's next turn)."""
_ENGINES: dict[tuple[str | None, str, str | None, str], Engine] = {}
_LOCK = threading.Lock()
_DEFAULT_ENCODERS: weakref.WeakKeyDictionary[Engine, Any] = weakref.WeakKeyDictionary()
_ENCODER_LOCK = threading.Lock()


def _key(model: str | None, device: str, dtype: str | None, weights: str) -> tuple[str | None, str, str | None, str]:
    """A configuration's place in the shared engines (``None`` and ``"default"`` name the same model)."""
    return (None if model in (None, "default") else str(model), str(device), dtype, str(weights))


def get_engine(model: str | None = None, *, device: str = "auto", dtype: str | None = None,
               weights: str = DEFAULT_WEIGHTS) -> Engine:
    """The shared :class:`~refrag_rasd_core.engine.Engine` for a configuration (loaded on first use;
    ``weights``: the engine's, ``auto`` = as the model is stored)."""
    key = _key(model, device, dtype, weights)
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = Engine.load(key[0], device=device, dtype=dtype, weights=weights,
                                 prefix_cache=prefix_cache_bytes())
            _ENGINES[key] = engine
        return engine


def prefix_cache_bytes() -> int | None:
    """The shared engines' prefix-cache budget in bytes (``None``: off)."""
    import os

    from refrag_rasd_core.errors import InvalidInputError

    raw = os.environ.get("REFRAG_RASD_PREFIX_CACHE_MB", str(DEFAULT_PREFIX_CACHE_MB))
    try:
        mb = float(raw)
    except ValueError as exc:
        raise InvalidInputError(f"REFRAG_RASD_PREFIX_CACHE_MB must be a number of MB, got {raw!r}") from exc
    return int(mb * (1 << 20)) if mb > 0 else None


def register_engine(engine: Engine, model: str | None = None, *, device: str = "auto", dtype: str | None = None,
                    weights: str = DEFAULT_WEIGHTS) -> None:
    """Make ``engine`` the shared one for a configuration (e.g. an engine built on a custom drafter)."""
    with _LOCK:
        _ENGINES[_key(model, device, dtype, weights)] = engine


def clear_engines() -> None:
    """Forget every cached engine (their memory is freed once no model instance holds them)."""
    with _LOCK:
        _ENGINES.clear()


def model_label(engine: Engine, fallback: str | None = None) -> str:
    """The name to report as ``model_name`` for an engine."""
    return str(engine.name or fallback or "SmolLM2-135M-Instruct")


def chunk_encoder_of(engine: Engine) -> Any:
    """The chunk encoder whose vectors ``engine`` reads: its REFRAG checkpoint's (``engine.refrag_encoder()``),
    or, for an engine without a checkpoint, the default encoder (all-MiniLM-L6-v2, CLS pooling, k=16) over
    the engine's tokenizer, so a store can be indexed before a checkpoint exists (``context="text"`` reads it)."""
    if engine.has_chunk_encoder:
        return engine.refrag_encoder()
    with _ENCODER_LOCK:
        enc = _DEFAULT_ENCODERS.get(engine)
        if enc is None:
            from refrag_rasd_core.refrag import ChunkEncoder

            enc = _DEFAULT_ENCODERS[engine] = ChunkEncoder.load(tokenizer=engine.tokenizer, k=DEFAULT_K)
    return enc


def signature_of(engine: Engine) -> dict[str, Any]:
    """The configuration a store must match to feed ``engine`` (core's ``engine.refrag_signature()``)."""
    if engine.has_refrag:
        return dict(engine.refrag_signature())
    return dict(chunk_encoder_of(engine).signature)


__all__ = ["DEFAULT_PREFIX_CACHE_MB", "chunk_encoder_of", "clear_engines", "get_engine", "model_label",
           "prefix_cache_bytes", "register_engine", "signature_of"]
