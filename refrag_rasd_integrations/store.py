"""``RefragChromaStore``: documents -> passages -> (retrieval vector, decoder token ids, REFRAG chunk
embeddings), in a Chroma collection.

Indexing splits each document into passages of at most ``passage_tokens`` decoder tokens (paragraphs, then
lines, then sentences, then words), and stores per passage:

* the text (Chroma's ``documents`` field) and the user's metadata (flattened to Chroma's types);
* a retrieval embedding (sentence-transformers, normalized; cosine space). We always pass our own vectors:
  Chroma's default embedding function would download a model;
* the decoder-tokenizer token ids, base64 of little-endian uint16 (uint32 for vocabularies over 65,535),
  under the metadata key ``refrag_tokens``;
* the REFRAG chunk embeddings (one float16 vector per k-token chunk, before projection), base64 of
  little-endian float16 ``[ceil(n_tokens / k), dim]``, under ``refrag_chunks``.

Why base64 blobs in the record's metadata (measured, see ``docs/store.md``): Chroma metadata takes no bytes or
arrays, lists of floats are ~40x slower to write, and a sidecar file would not travel to a ``chroma run``
server; a blob round-trips bit-exact, costs ~1.33x its raw size in the record, and one ``query`` returns the
passage with its arrays (no second lookup).

The collection's metadata records the configuration (encoder, its width, pooling, k, dtype, projector version,
decoder tokenizer fingerprint, retrieval embedder, layout). Opening it with another configuration raises
:class:`~refrag_rasd_integrations.errors.StoreMismatchError`.

Indexing is batched and resumable: passage ids are deterministic (a hash of the document's source and text,
plus the passage's index), each batch first asks Chroma which ids exist and computes only the missing ones,
then upserts them; an interrupted run, run again, leaves no gaps and no duplicates.

Example:
    >>> from refrag_rasd_integrations.store import RefragChromaStore
    >>> store = RefragChromaStore("wiki")                       # doctest: +REAL_MODEL
    >>> store.add_texts(["Paris is the capital of France.", "Rome is in Italy."], metadatas=[{"source": "a"}, {"source": "b"}]).added  # doctest: +REAL_MODEL
    2
    >>> [(p.text, p.chunk_embeddings.shape) for p, score in store.search("capital of France", k=1)]  # doctest: +REAL_MODEL
    [('Paris is the capital of France.', (1, 384))]
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from refrag_rasd_core.errors import InvalidInputError

from .errors import CollectionNotFoundError, StoreError, StoreMismatchError
from .passages import (
    CHUNKS_KEY,
    DOC_KEY,
    HANDLE_KEY,
    INDEX_KEY,
    N_TOKENS_KEY,
    PASSAGES,
    SOURCE_KEY,
    STORE_KEYS,
    TOKENS_KEY,
    Passage,
    PassageRegistry,
    is_handle,
)

LAYOUT = "b64-metadata-v1"
_BLOB_KEYS = frozenset({TOKENS_KEY, CHUNKS_KEY})
DEFAULT_COLLECTION = "refrag-rasd"
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


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
    folder.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(folder), settings=settings)


# ---- array <-> metadata codec ----------------------------------------------------------------------------
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
    return "<u2" if vocab_size <= 65535 else "<u4"


# ---- splitting -----------------------------------------------------------------------------------------
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def split_text(text: str, count: Callable[[str], int], max_tokens: int,
               hard_split: Callable[[str], list[str]] | None = None) -> list[str]:
    """Split ``text`` into pieces of at most ``max_tokens`` (as measured by ``count``): by blank lines, then
    lines, then sentences, then words, packing neighbours greedily; ``hard_split`` cuts what is still too
    long (a single huge word)."""
    return _split(text.strip(), count, max_tokens, ("\n\n", "\n", _SENTENCE, " "), hard_split)


def _split(text: str, count: Callable[[str], int], max_tokens: int, seps: tuple, hard_split: Any) -> list[str]:
    if not text:
        return []
    if count(text) <= max_tokens:
        return [text]
    if not seps:
        return hard_split(text) if hard_split else [text]
    sep, rest = seps[0], seps[1:]
    if isinstance(sep, str):
        pieces, joiner = [p.strip() for p in text.split(sep)], sep
    else:
        pieces, joiner = [p.strip() for p in sep.split(text)], " "
    pieces = [p for p in pieces if p]
    if len(pieces) <= 1:
        return _split(text, count, max_tokens, rest, hard_split)
    out: list[str] = []
    cur = ""
    for p in pieces:
        cand = f"{cur}{joiner}{p}" if cur else p
        if count(cand) <= max_tokens:
            cur = cand
            continue
        if cur:
            out.append(cur)
        if count(p) <= max_tokens:
            cur = p
        else:
            out.extend(_split(p, count, max_tokens, rest, hard_split))
            cur = ""
    if cur:
        out.append(cur)
    return out


def _flat_metadata(meta: dict[str, Any] | None) -> dict[str, Any]:
    """User metadata in Chroma's types: scalars kept, flat lists of one scalar type kept, the rest as JSON."""
    out: dict[str, Any] = {}
    for k, v in (meta or {}).items():
        k = str(k)
        if k in _BLOB_KEYS or k == HANDLE_KEY or v is None:
            continue
        if isinstance(v, (str, bool, int, float)):
            out[k] = v
        elif (isinstance(v, (list, tuple)) and v and all(isinstance(x, (str, int, float, bool)) for x in v)
              and len({type(x) for x in v}) == 1):
            out[k] = list(v)
        else:
            out[k] = json.dumps(v, default=str, ensure_ascii=False)
    return out


@dataclass
class PassageRecord:
    """One passage to index: deterministic id, text and flat metadata."""

    id: str
    text: str
    metadata: dict[str, Any]


@dataclass
class IndexReport:
    """What :meth:`RefragChromaStore.add_documents` did."""

    passages: int = 0
    added: int = 0
    skipped: int = 0
    seconds: float = 0.0
    ids: list[str] = field(default_factory=list)

    @property
    def passages_per_s(self) -> float:
        return self.added / self.seconds if self.seconds > 0 else 0.0


_EMBEDDERS: dict[str, Any] = {}
_EMBEDDER_LOCK = threading.Lock()


def default_embedder(name: str | None = None) -> Any:
    """The shared sentence-transformers retrieval embedder (``None`` = all-MiniLM-L6-v2, offline)."""
    from refrag_rasd_core.models import load_encoder

    key = name or DEFAULT_EMBEDDER
    with _EMBEDDER_LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = load_encoder(name, device="cpu")
        return _EMBEDDERS[key]


class RefragChromaStore:
    """A Chroma collection of passages with retrieval vectors, token ids and REFRAG chunk embeddings.

    The database: ``client`` (any chromadb client), else a ``chroma run`` server at ``url`` or ``host`` /
    ``port``, else the embedded folder ``path``, else ``$REFRAG_RASD_CHROMA_URL`` (a server), else
    ``$REFRAG_RASD_CHROMA_DIR`` (see :func:`make_client`).

    Components load lazily: ``engine`` (default: the shared engine of ``model``) gives the decoder tokenizer,
    the chunk encoder (``engine.refrag_encoder()``) and the signature the collection must match; pass
    ``tokenizer`` + ``chunk_encoder`` (+ ``signature``) instead to index without loading a decoder.
    ``embedder`` is any object with sentence-transformers' ``encode(texts, normalize_embeddings=True)``.

    Example:
        >>> docs = RefragChromaStore("docs")             # under $REFRAG_RASD_CHROMA_DIR  # doctest: +REAL_MODEL
        >>> docs.add_texts(["refrag-rasd answers questions from your documents."]).added  # doctest: +REAL_MODEL
        1
        >>> retriever = docs.as_retriever(k=4)           # LangChain           # doctest: +REAL_MODEL
        >>> query_engine = docs.as_query_engine()        # LlamaIndex          # doctest: +REAL_MODEL
        >>> remote = RefragChromaStore("docs", url="http://127.0.0.1:8000")   # a `chroma run` server  # doctest: +SKIP
    """

    def __init__(self, collection_name: str = DEFAULT_COLLECTION, *, client: Any = None,
                 path: str | os.PathLike | None = None, host: str | None = None, port: int = 8000,
                 url: str | None = None, engine: Any = None, model: str | None = None, device: str = "auto",
                 chunk_encoder: Any = None, tokenizer: Any = None, signature: dict[str, Any] | None = None,
                 embedder: Any = None, embedder_name: str | None = None, passage_tokens: int = 256,
                 registry: PassageRegistry | None = None) -> None:
        if passage_tokens < 1:
            raise InvalidInputError(f"passage_tokens must be >= 1, got {passage_tokens}")
        self.collection_name = collection_name
        self._client = client
        self._client_args = (path, host, port, url)
        self._engine = engine
        self.model = model
        self.device = device
        self._chunk_encoder = chunk_encoder
        self._tokenizer = tokenizer
        self._signature = dict(signature) if signature else None
        self._embedder = embedder
        self.embedder_name = embedder_name or (DEFAULT_EMBEDDER if embedder is None else
                                               str(getattr(embedder, "name", type(embedder).__name__)))
        self.passage_tokens = passage_tokens
        self.registry = registry or PASSAGES
        self._collection: Any = None
        self._lock = threading.RLock()

    # ---- lazy components ---------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            path, host, port, url = self._client_args
            self._client = make_client(path, host=host, port=port, url=url)
        return self._client

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from .engines import get_engine

            self._engine = get_engine(self.model, device=self.device)
        return self._engine

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = (self._chunk_encoder.decoder_tokenizer
                               if getattr(self._chunk_encoder, "decoder_tokenizer", None) is not None
                               else self.engine.tokenizer)
        return self._tokenizer

    @property
    def chunk_encoder(self) -> Any:
        if self._chunk_encoder is None:
            from .engines import chunk_encoder_of

            self._chunk_encoder = chunk_encoder_of(self.engine)
        return self._chunk_encoder

    @property
    def signature(self) -> dict[str, Any]:
        """The chunk-embedding configuration this store reads and writes (what the collection must match)."""
        if self._signature is None:
            if self._chunk_encoder is not None or self._engine is None and self._tokenizer is not None:
                self._signature = dict(self.chunk_encoder.signature)
            else:
                from .engines import signature_of

                self._signature = signature_of(self.engine)
        return self._signature

    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            self._embedder = default_embedder(None if self.embedder_name == DEFAULT_EMBEDDER else self.embedder_name)
        return self._embedder

    @property
    def k(self) -> int:
        return int(self.signature.get("k", getattr(self._chunk_encoder, "k", 16)))

    @property
    def dim(self) -> int:
        return int(self.signature.get("encoder_dim", getattr(self._chunk_encoder, "dim", 0)))

    @property
    def token_dtype(self) -> str:
        return token_dtype_for(len(self.tokenizer))

    # ---- the collection ----------------------------------------------------------------------------------
    def _expected_metadata(self) -> dict[str, Any]:
        sig = self.signature
        meta: dict[str, Any] = {
            "refrag_signature": json.dumps(sig, sort_keys=True, default=str),
            "refrag_layout": LAYOUT,
            "refrag_embedder": self.embedder_name,
            "refrag_token_dtype": self.token_dtype,
            "refrag_passage_tokens": self.passage_tokens,
        }
        for key in ("encoder", "encoder_dim", "k", "dtype", "pooling", "tokenizer", "projector", "version"):
            if key in sig and isinstance(sig[key], (str, int, float, bool)):
                meta[f"refrag_{key}"] = sig[key]
        return meta

    def _check(self, meta: dict[str, Any]) -> None:
        stored_sig = json.loads(meta.get("refrag_signature", "{}") or "{}")
        want = self.signature
        diff = {k: (stored_sig.get(k), want.get(k)) for k in sorted(set(stored_sig) | set(want))
                if json.dumps(stored_sig.get(k), default=str) != json.dumps(want.get(k), default=str)}
        for key, ours in (("refrag_embedder", self.embedder_name), ("refrag_layout", LAYOUT)):
            if meta.get(key) is not None and meta.get(key) != ours:
                diff[key.removeprefix("refrag_")] = (meta.get(key), ours)
        if not stored_sig:
            raise StoreMismatchError(
                f"collection {self.collection_name!r} was not made by refrag-rasd (no chunk-embedding "
                "signature in its metadata): use another collection name")
        if diff:
            lines = "; ".join(f"{k}: stored {a!r}, this model {b!r}" for k, (a, b) in diff.items())
            raise StoreMismatchError(
                f"collection {self.collection_name!r} was indexed with another configuration ({lines}). Its chunk "
                "embeddings cannot feed this model: open it with the configuration it was built with, or "
                "re-index into a new collection")

    def collection(self, create: bool = True) -> Any:
        """The Chroma collection (created with our metadata on first use; checked against it otherwise)."""
        with self._lock:
            if self._collection is not None:
                return self._collection
            col = self._get_existing()
            if col is None:
                if not create:
                    raise CollectionNotFoundError(
                        f"no collection {self.collection_name!r} in this Chroma database: index documents first "
                        f"(`refrag-rasd index PATH --collection {self.collection_name}`)")
                try:
                    col = self.client.create_collection(
                        self.collection_name, metadata=self._expected_metadata(), embedding_function=None,
                        configuration={"hnsw": {"space": "cosine"}})
                except Exception as exc:  # created concurrently by another process / thread
                    col = self._get_existing()
                    if col is None:
                        raise StoreError(f"cannot create collection {self.collection_name!r}: {exc}") from exc
            self._check(dict(col.metadata or {}))
            self._collection = col
            return col

    def _get_existing(self) -> Any:
        try:
            return self.client.get_collection(self.collection_name, embedding_function=None)
        except Exception as exc:
            if type(exc).__name__ in {"NotFoundError", "InvalidCollectionException"} or "does not exist" in str(exc):
                return None
            raise chroma_failure(exc, f"opening collection {self.collection_name!r}", "check that the store path "
                                 "is readable and writable (or that the server is running), then open it again"
                                 ) from exc

    def count(self) -> int:
        """Number of passages in the collection."""
        return int(self.collection().count())

    def info(self) -> dict[str, Any]:
        """The collection's name, size and recorded configuration."""
        col = self.collection()
        return {"collection": self.collection_name, "passages": int(col.count()), **dict(col.metadata or {})}

    def delete_collection(self) -> None:
        """Drop the whole collection."""
        with self._lock:
            try:
                self.client.delete_collection(self.collection_name)
            except Exception as exc:
                if "does not exist" not in str(exc) and type(exc).__name__ != "NotFoundError":
                    raise StoreError(str(exc)) from exc
            self._collection = None

    def delete(self, ids: Sequence[str] | None = None, where: dict[str, Any] | None = None) -> None:
        """Delete passages by id or by a metadata filter (e.g. ``{"source": "a.txt"}``)."""
        self.collection().delete(ids=list(ids) if ids else None, where=where)

    # ---- indexing ----------------------------------------------------------------------------------------
    def _count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _hard_split(self, text: str) -> list[str]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        n = self.passage_tokens
        return [s for s in (self.tokenizer.decode(ids[i:i + n]).strip() for i in range(0, len(ids), n)) if s]

    def split(self, text: str) -> list[str]:
        """The passages of one document's text (at most ``passage_tokens`` decoder tokens each)."""
        return split_text(text, self._count_tokens, self.passage_tokens, self._hard_split)

    def passage_records(self, documents: Iterable[Any]) -> list[PassageRecord]:
        """Split documents (LangChain ``Document`` s, LlamaIndex nodes / documents, ``(text, metadata)`` pairs,
        or strings) into passages with deterministic ids."""
        out: list[PassageRecord] = []
        seen: set[str] = set()
        for doc in documents:
            text, meta, doc_id = _document_parts(doc)
            if not text.strip():
                continue
            source = str(meta.get(SOURCE_KEY) or doc_id or "")
            digest = hashlib.sha256(f"{source}\0{text}".encode()).hexdigest()[:20]
            flat = _flat_metadata(meta)
            if SOURCE_KEY not in flat and source:
                flat[SOURCE_KEY] = source
            if digest in seen:  # the same document twice: index it once
                continue
            seen.add(digest)
            for i, piece in enumerate(self.split(text)):
                out.append(PassageRecord(id=f"{digest}-{i:04d}", text=piece,
                                         metadata={**flat, DOC_KEY: digest, INDEX_KEY: i}))
        return out

    def encode_records(self, records: Sequence[PassageRecord], vectors: Sequence[Sequence[float]] | None = None
                       ) -> dict[str, list[Any]]:
        """Token ids, chunk embeddings and retrieval vectors of passages (``vectors`` when the caller embedded
        them already), as Chroma ``upsert`` arguments."""
        texts = [r.text for r in records]
        token_lists = [list(map(int, ids)) for ids in
                       self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        chunks = self.chunk_encoder.encode_passages(token_lists)
        vecs = np.asarray(self.embedder.encode(texts, normalize_embeddings=True) if vectors is None else vectors,
                          dtype=np.float32)
        tdt = self.token_dtype
        metas = []
        for r, ids, ch in zip(records, token_lists, chunks, strict=True):
            ch = np.asarray(ch, dtype=np.float16)
            if ch.shape != (-(-len(ids) // self.k), self.dim):
                raise StoreError(f"the chunk encoder returned {ch.shape} for a {len(ids)}-token passage; expected "
                                 f"{(-(-len(ids) // self.k), self.dim)} (k={self.k}, dim={self.dim})")
            metas.append({**r.metadata, N_TOKENS_KEY: len(ids), TOKENS_KEY: encode_array(np.asarray(ids), tdt),
                          CHUNKS_KEY: encode_array(ch, "<f2")})
        return {"ids": [r.id for r in records], "documents": texts, "embeddings": vecs, "metadatas": metas}

    def add_documents(self, documents: Iterable[Any], *, batch_size: int = 64, progress: bool = False,
                      on_batch: Callable[[int, int], None] | None = None) -> IndexReport:
        """Index documents; resumable (existing passage ids are skipped), batched, with an optional tqdm bar.

        ``on_batch(done, total)`` is called after every batch is written (for progress reporting)."""
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        t0 = time.perf_counter()
        records = self.passage_records(documents)
        col = self.collection()
        report = IndexReport(passages=len(records), ids=[r.id for r in records])
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(records), desc=f"indexing {self.collection_name}", unit="passage")
        try:
            for start in range(0, len(records), batch_size):
                batch = records[start:start + batch_size]
                try:
                    have = set(col.get(ids=[r.id for r in batch], include=[])["ids"])
                except Exception as exc:
                    raise chroma_failure(exc, f"reading collection {self.collection_name!r}") from exc
                todo = [r for r in batch if r.id not in have]
                if todo:
                    rows = self.encode_records(todo)
                    try:
                        col.upsert(**rows)
                    except Exception as exc:
                        raise chroma_failure(exc, f"writing to collection {self.collection_name!r}") from exc
                report.added += len(todo)
                report.skipped += len(batch) - len(todo)
                if bar is not None:
                    bar.update(len(batch))
                if on_batch is not None:
                    on_batch(start + len(batch), len(records))
        finally:
            if bar is not None:
                bar.close()
        report.seconds = time.perf_counter() - t0
        return report

    def add_texts(self, texts: Iterable[str], metadatas: Sequence[dict[str, Any]] | None = None,
                  **kwargs: Any) -> IndexReport:
        """Index plain texts (``metadatas[i]`` goes with ``texts[i]``; give each a ``source`` to name it)."""
        texts = list(texts)
        metas = list(metadatas) if metadatas is not None else [{} for _ in texts]
        if len(metas) != len(texts):
            raise InvalidInputError(f"{len(texts)} texts but {len(metas)} metadatas")
        return self.add_documents(list(zip(texts, metas, strict=True)), **kwargs)

    def put_texts(self, texts: Sequence[str], metadatas: Sequence[dict[str, Any] | None], ids: Sequence[str],
                  *, vectors: Sequence[Sequence[float]] | None = None, batch_size: int = 64) -> list[str]:
        """Store each text WHOLE as one passage under its id, replacing what that id held (the frameworks'
        vector-store contract: the caller split the documents and owns the ids). Returns ``ids``.

        Unlike :meth:`add_documents` nothing is split and nothing is skipped; the metadata is stored as given
        (flattened to Chroma's types), with no ``source`` added. ``vectors``: the texts' retrieval vectors
        when the caller embedded them (a LlamaIndex index does), else the store's embedder makes them."""
        texts, ids = list(texts), [str(i) for i in ids]
        metas = [dict(m or {}) for m in metadatas]
        if not len(texts) == len(metas) == len(ids):
            raise InvalidInputError(f"{len(texts)} texts, {len(metas)} metadatas and {len(ids)} ids")
        if len(set(ids)) != len(ids):
            raise InvalidInputError("the ids of one call must be distinct")
        if any(not isinstance(t, str) or not t.strip() for t in texts):
            raise InvalidInputError("a text to store is empty")
        if vectors is not None and len(vectors) != len(texts):
            raise InvalidInputError(f"{len(texts)} texts but {len(vectors)} vectors")
        col = self.collection()
        for start in range(0, len(texts), batch_size):
            part = slice(start, start + batch_size)
            records = [PassageRecord(id=i, text=t, metadata=_flat_metadata(m))
                       for i, t, m in zip(ids[part], texts[part], metas[part], strict=True)]
            rows = self.encode_records(records, None if vectors is None else vectors[part])
            try:
                col.upsert(**rows)
            except Exception as exc:
                raise chroma_failure(exc, f"writing to collection {self.collection_name!r}") from exc
        return ids

    def add_files(self, paths: Iterable[str | os.PathLike], *, encoding: str = "utf-8", **kwargs: Any
                  ) -> IndexReport:
        """Index text files (folders are walked for ``.txt``, ``.md``, ``.rst``, ``.jsonl``). A ``.jsonl`` file
        gives one document per line from its ``text`` field (or its ``turns``)."""
        return self.add_documents(list(iter_file_documents(paths, encoding=encoding)), **kwargs)

    # ---- reading -----------------------------------------------------------------------------------------
    def _passage(self, pid: str, text: str, meta: dict[str, Any]) -> Passage:
        n = int(meta.get(N_TOKENS_KEY, 0))
        ids = decode_array(meta[TOKENS_KEY], self.token_dtype, (n,)).tolist() if TOKENS_KEY in meta else None
        chunks = (decode_array(meta[CHUNKS_KEY], "<f2", (-(-n // self.k), self.dim))
                  if CHUNKS_KEY in meta else None)
        user = {k: v for k, v in meta.items() if k not in _BLOB_KEYS}
        p = Passage(text=text, token_ids=ids, chunk_embeddings=chunks, metadata=user, id=pid)
        p.metadata[HANDLE_KEY] = self.registry.put(p, self.collection_name)
        return p

    def embed_query(self, query: str) -> list[float]:
        """The retrieval vector of a query (normalized)."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("the query is empty")
        if hasattr(self.embedder, "embed_query"):  # an embedder that embeds queries apart from documents
            return list(self.embedder.embed_query(query))
        return np.asarray(self.embedder.encode([query], normalize_embeddings=True),
                          dtype=np.float32)[0].tolist()

    def search(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
               where_document: dict[str, Any] | None = None) -> list[tuple[Passage, float]]:
        """The ``k`` passages most similar to ``query`` (cosine similarity), with their token ids and chunk
        embeddings, optionally filtered by metadata (Chroma ``where`` syntax, e.g. ``{"source": "a.txt"}``).
        Each passage's metadata also holds its ``score`` and its registry handle."""
        out = []
        for p, score in self.search_by_vector(self.embed_query(query), k, filter, where_document):
            p.metadata["score"] = score
            out.append((p, score))
        return out

    def search_by_vector(self, vector: Sequence[float], k: int = 4, filter: dict[str, Any] | None = None,
                         where_document: dict[str, Any] | None = None) -> list[tuple[Passage, float]]:
        """:meth:`search` from a retrieval vector (the embedder's space), without adding ``score`` to the
        passages' metadata."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        col = self.collection(create=False)
        try:
            res = col.query(query_embeddings=[list(map(float, vector))], n_results=k, where=filter or None,
                            where_document=where_document or None, include=["documents", "metadatas", "distances"])
        except Exception as exc:
            raise chroma_failure(exc, f"querying collection {self.collection_name!r}") from exc
        return [(self._passage(pid, text or "", dict(meta or {})), float(1.0 - dist))
                for pid, text, meta, dist in zip(res["ids"][0], res["documents"][0], res["metadatas"][0],
                                                 res["distances"][0], strict=True)]

    async def asearch(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                      where_document: dict[str, Any] | None = None) -> list[tuple[Passage, float]]:
        """:meth:`search` off the event loop."""
        return await asyncio.to_thread(self.search, query, k, filter, where_document)

    def get_passages(self, ids_or_handles: Sequence[str]) -> list[Passage]:
        """Passages by id or handle (``"<collection>/<id>"``), in the order asked (missing ones left out)."""
        ids = []
        for h in ids_or_handles:
            if is_handle(h):
                coll, _, pid = h.rpartition("/")
                if coll != self.collection_name:
                    continue
                ids.append(pid)
            else:
                ids.append(h)
        if not ids:
            return []
        res = self.collection(create=False).get(ids=list(dict.fromkeys(ids)), include=["documents", "metadatas"])
        by_id = {pid: self._passage(pid, text or "", dict(meta or {}))
                 for pid, text, meta in zip(res["ids"], res["documents"], res["metadatas"], strict=True)}
        return [by_id[i] for i in ids if i in by_id]

    # ---- framework adapters ------------------------------------------------------------------------------
    def as_retriever(self, **kwargs: Any) -> Any:
        """A LangChain retriever over this store (``k``, ``filter``)."""
        from .langchain.retrievers import RefragRetriever

        return RefragRetriever(store=self, **kwargs)

    def as_llama_index_retriever(self, **kwargs: Any) -> Any:
        """A LlamaIndex retriever over this store (``similarity_top_k``, ``filters``)."""
        from .llama_index.retrievers import RefragLlamaRetriever

        return RefragLlamaRetriever(store=self, **kwargs)

    def as_query_engine(self, llm: Any = None, *, similarity_top_k: int = 4, streaming: bool = False,
                        **llm_kwargs: Any) -> Any:
        """A LlamaIndex query engine that hands the retrieved passages, with their chunk embeddings, to the
        engine (REFRAG + RASD)."""
        from .llama_index.query_engine import RefragQueryEngine

        return RefragQueryEngine.from_store(self, llm=llm, similarity_top_k=similarity_top_k,
                                            streaming=streaming, **llm_kwargs)


def user_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """A stored passage's metadata as its owner gave it: without the store's own keys (arrays, token count,
    document index) or the registry handle.

    Example:
        >>> user_metadata({"id": 1, "refrag_n_tokens": 3, "refrag_passage": "c/p"})
        {'id': 1}
    """
    return {k: v for k, v in metadata.items() if k not in STORE_KEYS and k != HANDLE_KEY}


def chroma_failure(exc: Exception, action: str,
                   hint: str = "check the metadata filter (Chroma `where` syntax) and the collection") -> Exception:
    """A failure inside the Chroma client or server as a :class:`StoreError` naming what to check (our own
    typed errors pass through)."""
    from refrag_rasd_core.errors import RefragRasdError

    if isinstance(exc, RefragRasdError):
        return exc
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    if type(exc).__module__.split(".")[0] in {"httpx", "httpcore"} or "connect" in low:
        hint = "the Chroma server is not reachable: start it again (`chroma run --path DIR`) and retry"
    elif isinstance(exc, OSError) or any(w in low for w in ("readonly", "read-only", "disk", "i/o", "space")):
        hint = ("check that the store path is writable and its disk has room; indexing is resumable, so run it "
                "again afterwards")
    return StoreError(f"{action} failed ({text}): {hint}")


def _document_parts(doc: Any) -> tuple[str, dict[str, Any], str | None]:
    """(text, metadata, id) of a LangChain Document, a LlamaIndex node, a ``(text, metadata)`` pair or a str."""
    if isinstance(doc, str):
        return doc, {}, None
    if isinstance(doc, tuple) and len(doc) == 2:
        return str(doc[0]), dict(doc[1] or {}), None
    if isinstance(doc, Passage):
        return doc.text, dict(doc.metadata or {}), doc.id
    text = getattr(doc, "page_content", None)
    if text is not None:  # LangChain Document
        return str(text), dict(getattr(doc, "metadata", None) or {}), getattr(doc, "id", None)
    if hasattr(doc, "get_content"):  # LlamaIndex Document / TextNode
        try:
            from llama_index.core.schema import MetadataMode

            text = doc.get_content(metadata_mode=MetadataMode.NONE)
        except ImportError:  # pragma: no cover
            text = doc.get_content()
        meta = dict(getattr(doc, "metadata", None) or {})
        doc_id = getattr(doc, "ref_doc_id", None) or getattr(doc, "node_id", None)
        return str(text), meta, doc_id
    raise InvalidInputError(f"cannot index a {type(doc).__name__}: give LangChain Documents, LlamaIndex nodes, "
                            "strings or (text, metadata) pairs")


TEXT_SUFFIXES = (".txt", ".md", ".rst", ".jsonl")


def iter_file_documents(paths: Iterable[str | os.PathLike], *, encoding: str = "utf-8"
                        ) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(text, {"source": path, ...})`` for each file (folders walked, sorted, for a stable order)."""
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise InvalidInputError(f"no such file or folder: {path}")
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES) \
            if path.is_dir() else [path]
        for f in files:
            if f.suffix.lower() == ".jsonl":
                with f.open(encoding=encoding) as fh:
                    for n, line in enumerate(fh):
                        if not line.strip():
                            continue
                        rec = json.loads(line)
                        text = rec.get("text") or "\n".join(rec.get("turns") or [])
                        meta = {k: v for k, v in rec.items() if k not in {"text", "turns"} and
                                isinstance(v, (str, int, float, bool))}
                        yield text, {**meta, SOURCE_KEY: f"{f}#{n}"}
            else:
                yield f.read_text(encoding=encoding, errors="replace"), {SOURCE_KEY: str(f)}


__all__ = ["IndexReport", "PassageRecord", "RefragChromaStore", "chroma_dir", "decode_array", "default_embedder",
           "encode_array", "iter_file_documents", "make_client", "split_text"]
