"""The server's caps on one request, checked right after parsing and before any retrieval or tokenizing:
messages (count, characters), passages (count, characters), stop strings (count, length), ``k``, the tools
(count) and the JSON of the tools and the ``response_format`` (characters), the collection's name and the
``filter``'s shape (a Chroma ``where`` filter). Each refusal is a 400 naming the
field. These are sizes, not generation settings: those are checked by ``GenerationConfig`` alone.

Example:
    >>> check_filter({"$and": [{"source": "a.txt"}, {"year": {"$gte": 2020}}]})
    >>> check_filter({"source": {"$regex": "a"}})
    Traceback (most recent call last):
    ...
    refrag_rasd_integrations.serve.errors.InvalidFilterError: filter: unknown operator '$regex' for field 'source'
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..generation import content_text
from .config import ServeConfig
from .errors import InvalidFilterError, LimitExceededError
from .openai_api import ChatCompletionRequest

COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]")
"""Chroma's collection names: 3-512 of ``[A-Za-z0-9._-]``, starting and ending with a letter or digit."""
FIELD_OPS = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"}
MAX_FILTER_DEPTH = 8
MAX_FILTER_TERMS = 64
MAX_IN_VALUES = 256
MAX_TOOLS = 128
"""Tools one request may offer."""
MAX_SCHEMA_CHARS = 100_000
"""Characters of JSON in a request's ``tools`` and ``response_format`` together (each grammar compiles per
request)."""


def check_limits(req: ChatCompletionRequest, cfg: ServeConfig) -> None:
    """Raise :class:`LimitExceededError` (400, ``param`` the field) when ``req`` passes one of ``cfg``'s caps."""
    _at_most(len(req.messages), cfg.max_messages, "messages", "messages")
    chars = sum(len(content_text(m.content or "")) + sum(len(c.function.arguments) for c in m.tool_calls or ())
                for m in req.messages)
    _at_most(chars, cfg.max_message_chars, "characters in the messages", "messages")
    passages = req.passages or []
    _at_most(len(passages), cfg.max_passages, "passages", "passages")
    _at_most(sum(len(p) for p in passages), cfg.max_passage_chars, "characters in the passages", "passages")
    stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    _at_most(len(stops), cfg.max_stop, "stop strings", "stop")
    _at_most(max((len(s) for s in stops), default=0), cfg.max_stop_chars, "characters in a stop string", "stop")
    tools = req.tools or []
    _at_most(len(tools), MAX_TOOLS, "tools", "tools")
    schemas = json.dumps([t.model_dump(exclude_none=True) for t in tools]) if tools else ""
    _at_most(len(schemas), MAX_SCHEMA_CHARS, "characters of tool definitions", "tools")
    if req.response_format is not None:
        fmt = json.dumps(req.response_format.engine_format())
        _at_most(len(schemas) + len(fmt), MAX_SCHEMA_CHARS, "characters of tools and response format",
                 "response_format")
    if req.k is not None:
        _at_most(req.k, cfg.max_k, "passages to retrieve (k)", "k")
    if req.collection is not None and not COLLECTION_NAME.fullmatch(req.collection):
        raise LimitExceededError("collection: not a collection name (3-512 of A-Z a-z 0-9 . _ -, starting and "
                                 "ending with a letter or digit)", param="collection")
    if req.filter is not None:
        check_filter(req.filter)


def _at_most(n: int, cap: int, what: str, param: str) -> None:
    if n > cap:
        raise LimitExceededError(f"{param}: {n} {what} is over this server's limit ({cap})", param=param)


def check_filter(where: Any) -> None:
    """Raise :class:`InvalidFilterError` unless ``where`` is a Chroma ``where`` filter: ``{field: value}``,
    ``{field: {op: value}}`` (``$eq $ne $gt $gte $lt $lte $in $nin``) or ``{"$and" | "$or": [filters]}``,
    values being strings, numbers or booleans."""
    terms = [0]
    _check_where(where, 0, terms)


def _check_where(where: Any, depth: int, terms: list[int]) -> None:
    if depth > MAX_FILTER_DEPTH:
        raise InvalidFilterError(f"filter: nested deeper than {MAX_FILTER_DEPTH} levels", param="filter")
    if not isinstance(where, dict) or not where:
        raise InvalidFilterError("filter: expected a non-empty object, e.g. {\"source\": \"a.txt\"}", param="filter")
    if len(where) != 1 and any(k.startswith("$") for k in where):
        raise InvalidFilterError("filter: $and / $or must be the only key of their object", param="filter")
    for key, value in where.items():
        terms[0] += 1
        if terms[0] > MAX_FILTER_TERMS:
            raise InvalidFilterError(f"filter: more than {MAX_FILTER_TERMS} terms", param="filter")
        if key in ("$and", "$or"):
            if not isinstance(value, list) or len(value) < 2:
                raise InvalidFilterError(f"filter: {key} takes a list of at least two filters", param="filter")
            for sub in value:
                _check_where(sub, depth + 1, terms)
        elif key.startswith("$") or not key:
            raise InvalidFilterError(f"filter: unknown operator {key!r}", param="filter")
        elif isinstance(value, dict):
            _check_field(key, value)
        elif not _scalar(value):
            raise InvalidFilterError(f"filter: the value of {key!r} must be a string, number or boolean",
                                     param="filter")


def _check_field(field: str, ops: dict[str, Any]) -> None:
    if len(ops) != 1:
        raise InvalidFilterError(f"filter: field {field!r} takes exactly one operator", param="filter")
    op, value = next(iter(ops.items()))
    if op not in FIELD_OPS:
        raise InvalidFilterError(f"filter: unknown operator {op!r} for field {field!r}", param="filter")
    if op in ("$in", "$nin"):
        ok = (isinstance(value, list) and 0 < len(value) <= MAX_IN_VALUES and all(_scalar(v) for v in value)
              and len({type(v) for v in value}) == 1)
    elif op in ("$gt", "$gte", "$lt", "$lte"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = _scalar(value)
    if not ok:
        raise InvalidFilterError(f"filter: bad value for {op} on field {field!r}", param="filter")


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


__all__ = ["COLLECTION_NAME", "FIELD_OPS", "MAX_SCHEMA_CHARS", "MAX_TOOLS", "check_filter", "check_limits"]
