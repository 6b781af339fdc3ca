"""Reading a request before anything trusts it: the ``Content-Type`` (JSON only), the body's size (from
``Content-Length`` and while reading, before any parsing), its JSON (nesting depth checked before the parser
runs; ``NaN``, infinities and overlong numbers refused) and the caller's request id.

Example:
    >>> parse_json(b'{"a": [1, 2.5]}', max_depth=4)
    {'a': [1, 2.5]}
    >>> parse_json(b"[" * 100 + b"]" * 100, max_depth=64)
    Traceback (most recent call last):
    ...
    refrag_rasd_integrations.serve.errors.InvalidBodyError: the JSON body is nested deeper than 64 levels
    >>> request_id("abc-123"), len(request_id("<script>"))
    ('abc-123', 32)
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

from .errors import InvalidBodyError, RequestTooLargeError, UnsupportedMediaTypeError

REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def request_id(given: str | None) -> str:
    """The caller's ``X-Request-Id`` when it is 1-64 of ``[A-Za-z0-9._-]``, else a fresh one."""
    if given is not None and REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def check_json_type(content_type: str | None) -> None:
    """Refuse a body that is not declared ``application/json`` (415): a browser's cross-origin "simple"
    request (``text/plain``, forms) never reaches the engine."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaTypeError(f"Content-Type must be application/json, got {media or 'none'!r}")


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to pass ``limit`` bytes: from its
    ``Content-Length`` before reading, else while reading."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise InvalidBodyError("Content-Length is not a number") from None
        if declared > limit:
            raise RequestTooLargeError(f"the request body ({declared} bytes) is over this server's limit "
                                       f"({limit} bytes)")
    parts: list[bytes] = []
    size = 0
    async for part in chunks:
        size += len(part)
        if size > limit:
            raise RequestTooLargeError(f"the request body is over this server's limit ({limit} bytes)")
        parts.append(part)
    return b"".join(parts)


def json_depth(data: bytes, stop_after: int) -> int:
    """How deep the JSON text's arrays and objects nest (counting stops past ``stop_after``)."""
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")  # escaped backslashes, then quotes
    outside = b"".join(unescaped.split(b'"')[::2])  # the text between strings: linear, no regex
    brackets = outside.translate(None, _NOT_BRACKET)
    depth = deepest = 0
    for c in brackets:
        depth += 1 if c in (0x5B, 0x7B) else -1
        if depth > deepest:
            deepest = depth
            if deepest > stop_after:
                break
    return deepest


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidBodyError(f"number out of range: {text[:40]}")
    return value


def _no_constant(name: str) -> Any:
    raise InvalidBodyError(f"{name} is not a JSON number")


def parse_json(data: bytes, max_depth: int = 64) -> dict[str, Any]:
    """The body as a JSON object (400 :class:`InvalidBodyError` for anything else)."""
    if json_depth(data, max_depth) > max_depth:
        raise InvalidBodyError(f"the JSON body is nested deeper than {max_depth} levels")
    try:
        value = json.loads(data, parse_float=_finite, parse_constant=_no_constant)
    except InvalidBodyError:
        raise
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, an integer of thousands of digits
        raise InvalidBodyError(f"invalid request: the body is not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(value, dict):
        raise InvalidBodyError("invalid request: the body must be a JSON object")
    return value


__all__ = ["REQUEST_ID", "check_json_type", "json_depth", "parse_json", "read_body", "request_id"]
