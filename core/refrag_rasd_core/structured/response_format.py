"""What shape an answer must take: :class:`ResponseFormat`, normalized from whatever a caller hands over.

Accepted (:meth:`ResponseFormat.of`):

* a Pydantic model class or a ``TypedDict`` class (its JSON schema), or a JSON schema as a dict;
* OpenAI's ``response_format``: ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}``,
  ``{"type": "json_object"}`` (any JSON object) or ``{"type": "text"}`` (no constraint: ``None``);
* ``{"type": "regex", "pattern": ...}``, ``{"type": "choice", "choices": [...]}`` (one of these strings),
  ``{"type": "grammar", "grammar": EBNF}`` and ``{"type": "structural_tag", ...}`` (xgrammar's formats);
* a :class:`ResponseFormat`.

The grammar itself is compiled by xgrammar (:mod:`~refrag_rasd_core.structured.constraint`); here a
format is only checked and put in one canonical, hashable form.

Example:
    >>> from pydantic import BaseModel
    >>> class Answer(BaseModel):
    ...     answer: str
    ...     year: int
    >>> fmt = ResponseFormat.of(Answer)
    >>> fmt.kind, fmt.name, sorted(json.loads(fmt.spec)["properties"])
    ('json_schema', 'Answer', ['answer', 'year'])
    >>> ResponseFormat.of({"type": "choice", "choices": ["yes", "no"]}).kind
    'choice'
    >>> ResponseFormat.of({"type": "text"}) is None
    True
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError

__all__ = ["KINDS", "ResponseFormat", "json_schema_of"]

KINDS = ("json_schema", "json_object", "regex", "choice", "grammar", "structural_tag")
"""The constraint kinds (``spec``: a JSON schema, nothing, a regex, a JSON list of strings, an EBNF grammar,
a structural tag as JSON)."""

MAX_SPEC_CHARS = 1_000_000
"""The largest schema / grammar accepted (a guard against a runaway request)."""


@dataclass(frozen=True)
class ResponseFormat:
    """A constraint on the answer: its ``kind`` (one of :data:`KINDS`), its ``spec`` as text and a ``name``
    (the schema's title, for tool calls and logs)."""

    kind: str
    spec: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidInputError(f"unknown response format {self.kind!r}; choose one of {', '.join(KINDS)}")
        if not isinstance(self.spec, str) or len(self.spec) > MAX_SPEC_CHARS:
            raise InvalidInputError(f"a response format's spec must be text of at most {MAX_SPEC_CHARS} characters")
        if self.kind != "json_object" and not self.spec.strip():
            raise InvalidInputError(f"the {self.kind} response format is empty")

    @classmethod
    def of(cls, value: Any) -> ResponseFormat | None:
        """Normalize any accepted form (see the module docstring); ``None`` and ``{"type": "text"}`` mean no
        constraint."""
        if value is None or isinstance(value, ResponseFormat):
            return value
        if isinstance(value, type):
            schema = json_schema_of(value)
            return cls("json_schema", _dump(schema), str(schema.get("title") or value.__name__))
        if not isinstance(value, Mapping):
            raise InvalidInputError(
                "response_format must be a Pydantic model or TypedDict class, a JSON schema dict or an OpenAI "
                f"response_format dict, got {type(value).__name__}")
        kind = value.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            return cls("json_object")
        if kind == "json_schema" and isinstance(value.get("json_schema"), Mapping):
            inner = value["json_schema"]
            schema = inner.get("schema")
            if not isinstance(schema, Mapping):
                raise InvalidInputError("response_format json_schema needs a 'schema' object")
            return cls("json_schema", _dump(schema), str(inner.get("name") or schema.get("title") or "response"))
        if kind == "regex":
            return cls("regex", _text(value, "pattern"))
        if kind == "choice":
            choices = value.get("choices")
            if not isinstance(choices, Sequence) or isinstance(choices, str) or not choices or not all(
                    isinstance(c, str) and c for c in choices):
                raise InvalidInputError("a choice response format needs 'choices': a list of non-empty strings")
            return cls("choice", json.dumps(list(dict.fromkeys(choices))))
        if kind == "grammar":
            return cls("grammar", _text(value, "grammar"))
        if kind == "structural_tag":
            return cls("structural_tag", _dump(value))
        if kind in (None, "object", "array", "string", "number", "integer", "boolean") or any(
                k in value for k in ("properties", "anyOf", "oneOf", "$ref", "enum", "const")):
            return cls("json_schema", _dump(value), str(value.get("title") or "response"))
        raise InvalidInputError(f"unknown response_format type {kind!r}; use json_schema, json_object, text, regex, "
                                "choice, grammar or structural_tag (or pass a JSON schema)")

    def instruction(self) -> str | None:
        """What the model is told of the format in its system message (JSON formats: the schema; small models
        fill a schema they have read far better than one they only meet through the grammar's mask)."""
        if self.kind == "json_schema":
            return f"Answer with a JSON object that follows this JSON schema:\n{self.spec}"
        if self.kind == "json_object":
            return "Answer with a JSON object."
        return None

    def schema(self) -> dict[str, Any] | None:
        """The JSON schema of a ``json_schema`` format (``None`` for the other kinds)."""
        return json.loads(self.spec) if self.kind == "json_schema" else None


def json_schema_of(kind: type) -> dict[str, Any]:
    """The JSON schema of a Pydantic model class or a ``TypedDict`` class."""
    from pydantic import BaseModel, TypeAdapter

    if issubclass(kind, BaseModel):
        return kind.model_json_schema()
    if typing.is_typeddict(kind):
        if type(kind).__module__ == "typing":  # pydantic reads typing_extensions' TypedDict before Python 3.12
            import typing_extensions

            kind = typing_extensions.TypedDict(kind.__name__, typing.get_type_hints(kind),  # type: ignore[operator]
                                               total=kind.__total__)  # type: ignore[attr-defined]
        schema = TypeAdapter(kind).json_schema()
        schema.setdefault("title", kind.__name__)
        return schema
    raise InvalidInputError(f"response_format class must be a Pydantic model or a TypedDict, got {kind.__name__}")


def _dump(obj: Any) -> str:
    try:
        text = json.dumps(obj)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"the response format is not JSON-serializable: {exc}") from None
    return text


def _text(value: Mapping[str, Any], key: str) -> str:
    text = value.get(key)
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"a {value.get('type')} response format needs {key!r}: a non-empty string")
    return text
