"""One stored passage as Chroma holds it: its id, its text and its metadata, where the arrays travel as base64.

Chroma metadata takes str / int / float / bool or flat non-empty lists, no bytes, no arrays, no ``None``.
The decoder token ids are stored as base64 of little-endian uint16 (uint32 for vocabularies over 65,535)
under ``refrag_tokens``, the REFRAG chunk embeddings as base64 of little-endian float16
``[ceil(n_tokens / k), dim]`` under ``refrag_chunks`` (:func:`encode_array`, :func:`decode_array`); the
user's metadata is flattened to Chroma's types (:func:`flat_metadata`) and read back without the store's own
keys (:func:`user_metadata`). A passage's id is its document's id (a hash of source, text and metadata,
:func:`document_id`) plus its index in the document.

Example:
    >>> import numpy as np
    >>> decode_array(encode_array(np.array([1, 2, 70000]), "<u4"), "<u4", (3,)).tolist()
    [1, 2, 70000]
    >>> flat_metadata({"source": "a.txt", "tags": ["x", "y"], "extra": {"page": 3}, "none": None})
    {'source': 'a.txt', 'tags': ['x', 'y'], 'extra': '{"page": 3}'}
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import StoreError
from ..passages import CHUNKS_KEY, HANDLE_KEY, N_TOKENS_KEY, STORE_KEYS, TOKENS_KEY, Passage

__all__ = ["BLOB_KEYS", "LAYOUT", "PassageRecord", "decode_array", "decode_passage", "document_id", "encode_array",
           "encode_arrays", "flat_metadata", "passage_id", "token_dtype_for", "user_metadata"]

LAYOUT = "b64-metadata-v1"
"""The record layout's name, recorded in the collection's metadata."""
BLOB_KEYS = frozenset({TOKENS_KEY, CHUNKS_KEY})
"""The record metadata keys that hold base64 arrays."""


@dataclass
class PassageRecord:
    """One passage to index: deterministic id, text and flat metadata."""

    id: str
    text: str
    metadata: dict[str, Any]


def encode_array(a: np.ndarray, dtype: str) -> str:
    """Base64 of ``a`` as little-endian ``dtype`` (``"<f2"``, ``"<u2"``, ``"<u4"``)."""
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.dtype(dtype)).tobytes()).decode("ascii")


def decode_array(s: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`encode_array` (a fresh writable array in native byte order)."""
    try:
        raw = np.frombuffer(base64.b64decode(s, validate=True), dtype=np.dtype(dtype))
    except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
        raise StoreError(f"a stored array is not valid base64 ({exc}): the record is damaged; re-index its "
                         "document") from exc
    expected = int(np.prod(shape)) if shape else 0
    if raw.size != expected:
        raise StoreError(f"a stored array has {raw.size} values where {expected} were expected {shape}: "
                         "the record is damaged; re-index its document")
    return raw.astype(np.dtype(dtype).newbyteorder("="), copy=True).reshape(shape)


def token_dtype_for(vocab_size: int) -> str:
    """The stored dtype of token ids: ``"<u2"`` up to 65,535, else ``"<u4"``."""
    return "<u2" if vocab_size <= 65535 else "<u4"


def encode_arrays(token_ids: Sequence[int], chunks: Any, token_dtype: str, k: int, dim: int) -> dict[str, Any]:
    """A passage's token ids and chunk embeddings as record metadata (``refrag_n_tokens``, ``refrag_tokens``,
    ``refrag_chunks``); the chunk embeddings must be ``[ceil(n_tokens / k), dim]``."""
    ch = np.asarray(chunks, dtype=np.float16)
    want = (-(-len(token_ids) // k), dim)
    if ch.shape != want:
        raise StoreError(f"the chunk encoder returned {ch.shape} for a {len(token_ids)}-token passage; expected "
                         f"{want} (k={k}, dim={dim})")
    return {N_TOKENS_KEY: len(token_ids), TOKENS_KEY: encode_array(np.asarray(token_ids), token_dtype),
            CHUNKS_KEY: encode_array(ch, "<f2")}


def decode_passage(pid: str, text: str, meta: dict[str, Any], token_dtype: str, k: int, dim: int) -> Passage:
    """The :class:`Passage` a record holds: its arrays decoded, its metadata without the base64 blobs."""
    n = int(meta.get(N_TOKENS_KEY, 0))
    ids = decode_array(meta[TOKENS_KEY], token_dtype, (n,)).tolist() if TOKENS_KEY in meta else None
    chunks = decode_array(meta[CHUNKS_KEY], "<f2", (-(-n // k), dim)) if CHUNKS_KEY in meta else None
    user = {key: v for key, v in meta.items() if key not in BLOB_KEYS}
    return Passage(text=text, token_ids=ids, chunk_embeddings=chunks, metadata=user, id=pid)


def flat_metadata(meta: dict[str, Any] | None) -> dict[str, Any]:
    """User metadata in Chroma's types: scalars kept, flat lists of one scalar type kept, the rest as JSON;
    ``None`` values, the store's own keys and the passage handle left out."""
    out: dict[str, Any] = {}
    for k, v in (meta or {}).items():
        k = str(k)
        if k in STORE_KEYS or k == HANDLE_KEY or v is None:
            continue
        if isinstance(v, (str, bool, int, float)):
            out[k] = v
        elif (isinstance(v, (list, tuple)) and v and all(isinstance(x, (str, int, float, bool)) for x in v)
              and len({type(x) for x in v}) == 1):
            out[k] = list(v)
        else:
            out[k] = json.dumps(v, default=str, ensure_ascii=False)
    return out


def user_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """A stored passage's metadata as its owner gave it: without the store's own keys (arrays, token count,
    document index) or the registry handle.

    Example:
        >>> user_metadata({"id": 1, "refrag_n_tokens": 3, "refrag_passage": "c/p"})
        {'id': 1}
    """
    return {k: v for k, v in metadata.items() if k not in STORE_KEYS and k != HANDLE_KEY}


def document_id(source: str, text: str, metadata: dict[str, Any] | None = None) -> str:
    """The id of a document, its content hash: sha256 of its source, text and (flat) metadata, 20 hex digits
    (the same document, the same id; a changed text or metadata, another id)."""
    meta = json.dumps(metadata, sort_keys=True, ensure_ascii=False, default=str) if metadata else ""
    return hashlib.sha256(f"{source}\0{text}\0{meta}".encode("utf-8", "surrogatepass")).hexdigest()[:20]


def passage_id(document: str, index: int) -> str:
    """The id of the ``index``-th passage of a document (:func:`document_id`)."""
    return f"{document}-{index:04d}"
