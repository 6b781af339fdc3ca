"""Serving past one process: the engine behind Ray Serve, with an OpenAI-compatible HTTP API
(``pip install 'refrag-rasd-integrations[serve]'``; see docs/scaling.md).

* :class:`ServeConfig`: the model, its defaults, the store (``REFRAG_RASD_CHROMA_URL``) and the deployment;
* :func:`start` / ``refrag-rasd serve --replicas N --collection NAME``: a local Ray instance with N replicas;
* :func:`app_builder`: for Ray's own ``serve run`` / ``serve deploy`` on a cluster;
* :class:`ChatService` and :func:`make_api`: one replica's logic and its FastAPI app (no Ray needed);
* :func:`run_local` / ``refrag-rasd serve --no-ray``: that app in one process under uvicorn;
* :class:`KeyRing`: optional API keys (``--api-key``); see docs/security.md for what is exposed and how to
  run it safely.

Example:
    >>> from refrag_rasd_integrations.serve import ServeConfig
    >>> ServeConfig(replicas=2, collection="docs", chroma_url="http://127.0.0.1:8000").replicas
    2
"""

from __future__ import annotations

from typing import Any

from .auth import KeyRing
from .chat_service import ChatService
from .config import ServeConfig
from .deployment import app_builder, build_app, kill_replica, replica_states, shutdown, start, wait_ready


def make_api(service: ChatService) -> Any:
    """The FastAPI app of one replica (see :mod:`refrag_rasd_integrations.serve.http_api`)."""
    from .http_api import make_api as _make_api

    return _make_api(service)


def run_local(config: ServeConfig, **kwargs: Any) -> None:
    """The app in one process under uvicorn (see :mod:`refrag_rasd_integrations.serve.local`)."""
    from .local import run_local as _run_local

    _run_local(config, **kwargs)


__all__ = ["ChatService", "KeyRing", "ServeConfig", "app_builder", "build_app", "kill_replica", "make_api",
           "replica_states", "run_local", "shutdown", "start", "wait_ready"]
