"""Where the Chroma database is: the embedded folder (:func:`chroma_dir`), a ``chroma run`` server's URL
(:func:`parse_chroma_url`), and the chromadb client for either (:func:`make_client`).

Example:
    >>> from refrag_rasd_integrations.store.client import parse_chroma_url
    >>> parse_chroma_url("10.0.0.5:8000")
    ('10.0.0.5', 8000, False)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from refrag_rasd_core.errors import InvalidInputError

from ..errors import StoreError

__all__ = ["chroma_dir", "make_client", "parse_chroma_url"]


def chroma_dir() -> Path:
    """Folder of the embedded Chroma database: ``$REFRAG_RASD_CHROMA_DIR`` or ``<cache>/chroma``."""
    env = os.environ.get("REFRAG_RASD_CHROMA_DIR")
    if env:
        return Path(env).expanduser()
    from refrag_rasd_core.models import cache_dir

    return cache_dir() / "chroma"


def parse_chroma_url(url: str) -> tuple[str, int, bool]:
    """``(host, port, ssl)`` of a Chroma server URL: ``http://host:port``, ``https://host`` or ``host:port``.

    Example:
        >>> parse_chroma_url("http://10.0.0.5:8000"), parse_chroma_url("https://chroma.example.com")
        (('10.0.0.5', 8000, False), ('chroma.example.com', 443, True))
    """
    from urllib.parse import urlsplit

    text = url.strip()
    parts = urlsplit(text if "://" in text else f"http://{text}")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
        raise InvalidInputError(f"not a Chroma server URL: {url!r} (expected http://host:port)")
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidInputError(f"not a Chroma server URL: {url!r} ({exc})") from exc
    ssl = parts.scheme == "https"
    return parts.hostname, port or (443 if ssl else 8000), ssl


def make_client(path: str | os.PathLike | None = None, *, host: str | None = None, port: int = 8000,
                ssl: bool = False, headers: dict[str, str] | None = None, url: str | None = None) -> Any:
    """An ``HttpClient`` for a ``chroma run`` server when ``host`` or ``url`` is given, or when neither nor
    ``path`` is and ``$REFRAG_RASD_CHROMA_URL`` is set; otherwise an embedded ``PersistentClient`` (at ``path``
    or :func:`chroma_dir`). Telemetry is off."""
    if host is None and path is None:
        url = url or os.environ.get("REFRAG_RASD_CHROMA_URL") or None
    if host is None and url:
        host, port, ssl = parse_chroma_url(url)
    try:
        import chromadb
        from chromadb.config import Settings
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise StoreError("the store needs chromadb: pip install 'refrag-rasd-integrations[chroma]'") from exc
    settings = Settings(anonymized_telemetry=False)
    if host:
        try:
            return chromadb.HttpClient(host=host, port=int(port), ssl=ssl, headers=headers, settings=settings)
        except Exception as exc:
            raise StoreError(f"cannot reach the Chroma server at {host}:{port}: {exc}") from exc
    folder = Path(path).expanduser() if path is not None else chroma_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(folder), settings=settings)
    except Exception as exc:
        raise StoreError(f"cannot open the Chroma database folder {folder}: {type(exc).__name__}: {exc} "
                         "(check that it is a folder you can write to)") from exc
