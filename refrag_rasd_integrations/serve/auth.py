"""Optional API keys, as OpenAI clients send them (``Authorization: Bearer KEY``), each with the collections
it may read. Only SHA-256 digests of the keys are kept (and handed to replicas); a key is checked by comparing
digests in constant time. Keys come from ``--api-key KEY[:coll1,coll2]`` (repeatable),
``$REFRAG_RASD_API_KEYS`` (comma-separated keys, all collections) or a keys file (JSON or TOML:
``{"keys": {"KEY": ["coll1"], "ADMIN-KEY": "*"}}``).

Example:
    >>> ring = KeyRing.parse(["sk-reader:docs,faq", "sk-admin"])
    >>> sorted(ring.check("Bearer sk-reader")), ring.check("Bearer sk-admin")
    (['docs', 'faq'], None)
    >>> ring.check("Bearer nope")
    Traceback (most recent call last):
    ...
    refrag_rasd_integrations.serve.errors.AuthenticationError: invalid API key
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from refrag_rasd_core.errors import InvalidInputError

from .errors import AuthenticationError, PermissionDeniedError

ENV_KEYS = "REFRAG_RASD_API_KEYS"


def digest(key: str) -> str:
    """The stored form of a key: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyRing:
    """Key digests and the collections each key may read (``None``: every collection)."""

    def __init__(self, digests: Mapping[str, Iterable[str] | None] | None = None) -> None:
        self._keys: dict[str, frozenset[str] | None] = {
            d: (None if colls is None else frozenset(colls)) for d, colls in (digests or {}).items()}

    @classmethod
    def parse(cls, specs: Iterable[str] = (), file: str | os.PathLike | None = None,
              env: Mapping[str, str] | None = None) -> KeyRing:
        """Keys from ``KEY[:coll1,coll2]`` specs, a keys file and ``$REFRAG_RASD_API_KEYS`` (``env``)."""
        keys: dict[str, list[str] | None] = {}
        for spec in specs:
            key, _, colls = spec.partition(":")
            keys[_checked(key)] = [c.strip() for c in colls.split(",") if c.strip()] if colls else None
        for key in (env or {}).get(ENV_KEYS, "").split(","):
            if key.strip():
                keys[_checked(key.strip())] = None
        if file is not None:
            keys.update(_read_keys_file(Path(file)))
        return cls({digest(k): v for k, v in keys.items()})

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def digests(self) -> dict[str, list[str] | None]:
        """The ring as :class:`~refrag_rasd_integrations.serve.config.ServeConfig` ``api_keys`` (no keys)."""
        return {d: (None if c is None else sorted(c)) for d, c in self._keys.items()}

    def check(self, authorization: str | None) -> frozenset[str] | None:
        """The collections the ``Authorization`` header's key may read (``None``: all); raises
        :class:`AuthenticationError` without a valid key. Every stored digest is compared (constant time)."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("missing API key: send 'Authorization: Bearer KEY'")
        given = digest(token.strip())
        found, allowed = False, None
        for stored, colls in self._keys.items():
            if hmac.compare_digest(stored, given):
                found, allowed = True, colls
        if not found:
            raise AuthenticationError("invalid API key")
        return allowed


def check_collection(allowed: frozenset[str] | None, collection: str | None) -> None:
    """Raise :class:`PermissionDeniedError` when a key limited to ``allowed`` asks for ``collection``."""
    if collection and allowed is not None and collection not in allowed:
        raise PermissionDeniedError(f"this API key may not read collection {collection!r}", param="collection")


def _checked(key: str) -> str:
    key = key.strip()
    if len(key) < 8 or any(c.isspace() for c in key):
        raise InvalidInputError("an API key needs at least 8 characters and no spaces")
    return key


def _read_keys_file(path: Path) -> dict[str, list[str] | None]:
    """``{"keys": {KEY: [collections] | "*"}}`` from a JSON or TOML file."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError as exc:  # Python 3.10
                raise InvalidInputError("a TOML keys file needs Python 3.11+: use a JSON one") from exc
            data: Any = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read the API keys file {str(path)!r}: {exc}") from exc
    table = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise InvalidInputError(f"{str(path)!r}: expected a 'keys' table of KEY = [collections] or '*'")
    out: dict[str, list[str] | None] = {}
    for key, colls in table.items():
        if colls == "*" or colls is None:
            out[_checked(key)] = None
        elif isinstance(colls, list) and all(isinstance(c, str) for c in colls):
            out[_checked(key)] = list(colls)
        else:
            raise InvalidInputError(f"{str(path)!r}: the collections of a key are a list of names or '*'")
    return out


__all__ = ["ENV_KEYS", "KeyRing", "check_collection", "digest"]
