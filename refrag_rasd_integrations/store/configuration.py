"""What a collection records about how it was built, and the check that whoever opens it matches.

The collection's metadata holds the chunk-embedding signature (encoder, its width, pooling, k, dtype, projector
version, decoder tokenizer fingerprint: the engine's ``refrag_signature()``) as JSON and its scalar fields one
by one, the retrieval embedder, the record layout, the token dtype and the passage length. Opening it with
another signature or embedder, or writing passages of another length into it, raises
:class:`~refrag_rasd_integrations.errors.StoreMismatchError` naming each differing field, both values and the
fix: stored chunk embeddings only feed the model they were made for, and passages of two lengths would mix.

Example:
    >>> meta = collection_metadata({"k": 16, "encoder": "e"}, embedder="m", token_dtype="<u2", passage_tokens=256)
    >>> check_collection("docs", meta, {"k": 8, "encoder": "e"}, embedder="m")
    Traceback (most recent call last):
    ...
    refrag_rasd_integrations.errors.StoreMismatchError: collection 'docs' was indexed with another configuration
    (k: stored 16, this model 8). ...
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import StoreMismatchError
from .records import LAYOUT

__all__ = ["check_collection", "check_passage_size", "collection_metadata"]

_SCALAR_FIELDS = ("encoder", "encoder_dim", "k", "dtype", "pooling", "tokenizer", "projector", "version")


def collection_metadata(signature: dict[str, Any], *, embedder: str, token_dtype: str,
                        passage_tokens: int) -> dict[str, Any]:
    """The metadata a new collection is created with."""
    meta: dict[str, Any] = {
        "refrag_signature": json.dumps(signature, sort_keys=True, default=str),
        "refrag_layout": LAYOUT,
        "refrag_embedder": embedder,
        "refrag_token_dtype": token_dtype,
        "refrag_passage_tokens": passage_tokens,
    }
    for key in _SCALAR_FIELDS:
        if key in signature and isinstance(signature[key], (str, int, float, bool)):
            meta[f"refrag_{key}"] = signature[key]
    return meta


def check_collection(name: str, stored: dict[str, Any], signature: dict[str, Any], *, embedder: str,
                     passage_tokens: int | None = None) -> None:
    """Raise :class:`StoreMismatchError` unless the collection ``name`` with metadata ``stored`` was built with
    ``signature`` and ``embedder`` (and by refrag-rasd at all), and, when ``passage_tokens`` is given, with
    passages of that size. The message names both values of each field and the fix."""
    stored_sig = json.loads(stored.get("refrag_signature", "{}") or "{}")
    if not stored_sig:
        raise StoreMismatchError(
            f"collection {name!r} was not made by refrag-rasd (no chunk-embedding signature in its metadata): "
            "use another collection name")
    diff = {k: (stored_sig.get(k), signature.get(k)) for k in sorted(set(stored_sig) | set(signature))
            if json.dumps(stored_sig.get(k), default=str) != json.dumps(signature.get(k), default=str)}
    for key, ours in (("refrag_embedder", embedder), ("refrag_layout", LAYOUT)):
        if stored.get(key) is not None and stored.get(key) != ours:
            diff[key.removeprefix("refrag_")] = (stored.get(key), ours)
    fix = (f"re-index: `refrag-rasd index PATH... --collection {name} --rebuild` drops it and indexes again, "
           "or name another --collection")
    if diff:
        lines = "; ".join(f"{k}: stored {a!r}, this model {b!r}" for k, (a, b) in diff.items())
        raise StoreMismatchError(
            f"collection {name!r} was indexed with another configuration ({lines}). Its chunk embeddings cannot "
            "feed this model: open it with the configuration it was built with, or re-index into a new "
            f"collection ({fix})")
    check_passage_size(name, stored, passage_tokens)


def check_passage_size(name: str, stored: dict[str, Any], passage_tokens: int | None) -> None:
    """Raise :class:`StoreMismatchError` when ``passage_tokens`` is given and the collection ``name``
    (metadata ``stored``) records passages of another size: the two sizes would mix (needs no model)."""
    have = stored.get("refrag_passage_tokens")
    if passage_tokens is not None and have is not None and int(have) != int(passage_tokens):
        raise StoreMismatchError(
            f"collection {name!r} was indexed with passages of at most {have} tokens, this run asks for "
            f"{passage_tokens} (passage_tokens: stored {have}, asked {passage_tokens}): mixing the two sizes "
            f"would keep the old passages beside the new. Index with --passage-tokens {have}, or re-index: "
            f"`refrag-rasd index PATH... --collection {name} --rebuild` drops it and indexes again, or name "
            "another --collection")
