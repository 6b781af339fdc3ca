"""One process, no Ray: the same FastAPI app as a Serve replica, under uvicorn (``refrag-rasd serve
--no-ray``), for development and tests. Same options, limits and keys; one engine, so one replica.

Example:
    >>> from refrag_rasd_integrations.serve import ServeConfig
    >>> run_local(ServeConfig(k=0, port=8080))  # doctest: +SKIP
"""

from __future__ import annotations

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import RefragRasdError

from .chat_service import ChatService
from .config import ServeConfig


def run_local(config: ServeConfig, *, engine: Engine | None = None, log_level: str = "info") -> None:
    """Load the engine (or serve ``engine``) and answer on ``config.host:config.port`` until interrupted."""
    try:
        import uvicorn
    except ImportError as exc:
        raise RefragRasdError("serving needs uvicorn: pip install 'refrag-rasd-integrations[serve]'") from exc
    from .http_api import make_api

    api = make_api(ChatService(config, engine=engine))
    uvicorn.run(api, host=config.host, port=config.port, log_level=log_level, server_header=False,
                date_header=False, proxy_headers=False)


__all__ = ["run_local"]
