"""``RefragChromaStore``: a Chroma collection of passages, each with its retrieval vector, its decoder token
ids and its REFRAG chunk embeddings; framework-free (the LangChain and LlamaIndex faces wrap it).

Indexing splits documents into passages, encodes them and upserts them as records, batched and resumable:
passage ids are deterministic (a document's content hash + the passage's index) and each batch computes only
the ids Chroma lacks, so an interrupted run, run again, leaves no gaps and no duplicates. ``cleanup`` then
replaces changed sources and drops removed ones as LangChain's indexing API does (:mod:`.sources`). A search
returns :class:`Passage` s with their arrays, each registered in the process's passage registry under a handle
(``metadata["refrag_passage"]``).

Example:
    >>> from refrag_rasd_integrations.store import RefragChromaStore
    >>> store = RefragChromaStore("wiki")                       # doctest: +REAL_MODEL
    >>> store.add_texts(["Paris is the capital of France.", "Rome is in Italy."],
    ...                 metadatas=[{"source": "a"}, {"source": "b"}]).added                    # doctest: +REAL_MODEL
    2
    >>> [(p.text, p.chunk_embeddings.shape)
    ...  for p, score in store.search("capital of France", k=1)]                           # doctest: +REAL_MODEL
    [('Paris is the capital of France.', (1, 384))]
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError

from ..errors import CollectionNotFoundError, StoreError
from ..passages import DOC_KEY, HANDLE_KEY, INDEX_KEY, PASSAGES, SOURCE_KEY, Passage, PassageRegistry, is_handle
from .client import make_client
from .code_documents import iter_code_documents
from .configuration import check_collection, collection_metadata
from .corpus_datastore import CorpusDatastore, store_datastore
from .documents import document_source, iter_file_documents, passage_records
from .embedder import DEFAULT_EMBEDDER, default_embedder
from .errors import chroma_failure
from .faces import FrameworkFaces
from .indexing import IndexReport, delete_ids, drop_collection, replace_rows, write_missing
from .records import PassageRecord, decode_passage, encode_arrays, flat_metadata, token_dtype_for
from .sources import check_cleanup, delete_source, file_source, source_counts, stale_ids
from .splitting import DEFAULT_PASSAGE_TOKENS, PassageSplitter, check_passage_tokens

__all__ = ["DEFAULT_COLLECTION", "IndexReport", "RefragChromaStore"]

DEFAULT_COLLECTION = "refrag-rasd"
"""The collection a store opens when none is named."""


class RefragChromaStore(FrameworkFaces):
    """A Chroma collection of passages with retrieval vectors, token ids and REFRAG chunk embeddings.

    The database: ``client`` (any chromadb client), else a ``chroma run`` server at ``url`` or ``host`` /
    ``port``, else the embedded folder ``path``, else ``$REFRAG_RASD_CHROMA_URL`` (a server), else
    ``$REFRAG_RASD_CHROMA_DIR`` (see :func:`make_client`).

    Components load lazily: ``engine`` (default: the shared engine of ``model``) gives the decoder tokenizer,
    the chunk encoder (``engine.refrag_encoder()``) and the signature the collection must match; pass
    ``tokenizer`` + ``chunk_encoder`` (+ ``signature``) instead to index without loading a decoder.
    ``embedder`` is any object with sentence-transformers' ``encode(texts, normalize_embeddings=True)``.
    ``datastore``: keep a corpus datastore (REST's suffix index over every passage's token ids) in step with the
    collection, in the folder given or beside the collection with ``True`` (:meth:`datastore`).

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
                 url: str | None = None, engine: Engine | None = None, model: str | None = None, device: str = "auto",
                 chunk_encoder: Any = None, tokenizer: Any = None, signature: dict[str, Any] | None = None,
                 embedder: Any = None, embedder_name: str | None = None, passage_tokens: int | None = None,
                 registry: PassageRegistry | None = None, datastore: bool | str | os.PathLike = False) -> None:
        if passage_tokens is not None:
            check_passage_tokens(passage_tokens)
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
        self._passage_tokens = passage_tokens
        self.registry = registry or PASSAGES
        self._collection: Any = None
        self._lock = threading.RLock()
        self._datastore_opt, self._datastore = datastore, None

    # ---- lazy components ---------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            path, host, port, url = self._client_args
            self._client = make_client(path, host=host, port=port, url=url)
        return self._client

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from ..engines import get_engine

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
            from ..engines import chunk_encoder_of

            self._chunk_encoder = chunk_encoder_of(self.engine)
        return self._chunk_encoder

    @property
    def signature(self) -> dict[str, Any]:
        """The chunk-embedding configuration this store reads and writes (what the collection must match)."""
        if self._signature is None:
            if self._chunk_encoder is not None or self._engine is None and self._tokenizer is not None:
                self._signature = dict(self.chunk_encoder.signature)
            else:
                from ..engines import signature_of

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
    def passage_tokens(self) -> int:
        """The longest passage in tokens: the one asked for, else the opened collection's, else 256."""
        return self._passage_tokens or DEFAULT_PASSAGE_TOKENS

    @property
    def token_dtype(self) -> str:
        return token_dtype_for(len(self.tokenizer))

    # ---- the collection ----------------------------------------------------------------------------------
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
                        self.collection_name, metadata=collection_metadata(
                            self.signature, embedder=self.embedder_name, token_dtype=self.token_dtype,
                            passage_tokens=self.passage_tokens), embedding_function=None,
                        configuration={"hnsw": {"space": "cosine"}})
                except Exception as exc:  # created concurrently by another process / thread
                    col = self._get_existing()
                    if col is None:
                        raise StoreError(f"cannot create collection {self.collection_name!r}: {exc}") from exc
            meta = dict(col.metadata or {})
            check_collection(self.collection_name, meta, self.signature, embedder=self.embedder_name,
                             passage_tokens=self._passage_tokens)
            if self._passage_tokens is None and meta.get("refrag_passage_tokens"):
                self._passage_tokens = int(meta["refrag_passage_tokens"])
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

    def exists(self) -> bool:
        """Whether the collection exists in the database."""
        return self._get_existing() is not None

    def recorded(self) -> dict[str, Any]:
        """What the collection records about its build (``{}``: no collection); unchecked, no model."""
        return {} if (col := self._get_existing()) is None else dict(col.metadata or {})

    def _get(self, where: dict[str, Any] | None, include: list[str]) -> dict[str, Any]:
        if not self.exists():
            return {"ids": [], "documents": [], "metadatas": []}
        return self.collection(create=False).get(where=where or None, include=include)

    def ids(self, where: dict[str, Any] | None = None) -> list[str]:
        """The ids of every passage (matching a metadata filter when ``where`` is given)."""
        return list(self._get(where, [])["ids"])

    def count(self) -> int:
        """Number of passages in the collection."""
        return int(self.collection().count())

    def info(self) -> dict[str, Any]:
        """The collection's name, size and recorded configuration."""
        col = self.collection()
        return {"collection": self.collection_name, "passages": int(col.count()), **dict(col.metadata or {})}

    def delete_collection(self) -> None:
        """Drop the whole collection (its records first: see :func:`~.indexing.drop_collection`)."""
        with self._lock:
            drop_collection(self.client, self._get_existing())
            self._collection = None
            if self._datastore_opt:
                self.datastore(sync=False).clear()

    def delete(self, ids: Sequence[str] | None = None, where: dict[str, Any] | None = None) -> None:
        """Delete passages by id or by a metadata filter (e.g. ``{"source": "a.txt"}``)."""
        delete_ids(self.collection(), ids or [], where=None if ids else where)
        self._datastore_changed()

    def delete_source(self, source: str | os.PathLike) -> int:
        """Delete every passage of a source (a file's path, resolved as indexing records it, or an id);
        returns how many. Needs no model."""
        n = 0 if (col := self._get_existing()) is None else delete_source(col, source)
        self._datastore_changed()
        return n

    def sources(self) -> dict[str, int]:
        """``{source: number of passages}`` over the collection (``""``: passages without one); no model."""
        return {} if (col := self._get_existing()) is None else source_counts(col)

    # ---- indexing ----------------------------------------------------------------------------------------
    def split(self, text: str) -> list[str]:
        """The passages of one document's text (at most ``passage_tokens`` decoder tokens each)."""
        return PassageSplitter(self.tokenizer, self.passage_tokens)(text)

    def passage_records(self, documents: Iterable[Any]) -> list[PassageRecord]:
        """Split documents (LangChain ``Document`` s, LlamaIndex nodes / documents, ``(text, metadata)`` pairs,
        or strings) into passages with deterministic ids."""
        return passage_records(documents, self.split)

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
        metas = [{**r.metadata, **encode_arrays(ids, ch, self.token_dtype, self.k, self.dim)}
                 for r, ids, ch in zip(records, token_lists, chunks, strict=True)]
        return {"ids": [r.id for r in records], "documents": texts, "embeddings": vecs, "metadatas": metas}

    def add_documents(self, documents: Iterable[Any], *, batch_size: int = 64, progress: bool = False,
                      on_batch: Callable[[int, int], None] | None = None, cleanup: str | None = None
                      ) -> IndexReport:
        """Index documents; resumable (existing passage ids are skipped), batched, with an optional tqdm bar.

        ``cleanup`` (LangChain's indexing API's modes, :mod:`.sources`), once all is written: ``None``
        deletes nothing, ``"incremental"`` the passages of this batch's sources it did not produce (a changed
        document's old ones; each document needs a ``source`` or an id), ``"full"`` every passage it did not
        produce.
        ``on_batch(done, total)`` is called after every batch is written."""
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        check_cleanup(cleanup)
        t0 = time.perf_counter()
        documents = list(documents)
        sources = {document_source(d) for d in documents}
        if cleanup == "incremental" and "" in sources:
            raise InvalidInputError("cleanup='incremental' needs a source for every document: give each one "
                                    "a 'source' in its metadata (or an id), or use cleanup='full'")
        col = self.collection()
        records = self.passage_records(documents)
        report = IndexReport(passages=len(records), ids=[r.id for r in records])
        write_missing(col, records, self.encode_records, report, batch_size=batch_size, progress=progress,
                      on_batch=on_batch)
        report.deleted = delete_ids(col, stale_ids(col, cleanup, sorted(sources - {""}), report.ids))
        report.seconds = time.perf_counter() - t0
        self._datastore_changed()
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
            records = [PassageRecord(id=i, text=t, metadata=flat_metadata(m))
                       for i, t, m in zip(ids[part], texts[part], metas[part], strict=True)]
            replace_rows(col, self.encode_records(records, None if vectors is None else vectors[part]))
        self._datastore_changed()
        return ids

    def add_files(self, paths: Iterable[str | os.PathLike], *, encoding: str = "utf-8",
                  cleanup: str | None = None, **kwargs: Any) -> IndexReport:
        """Index text files (folders walked for ``.txt``, ``.md``, ``.rst``, ``.jsonl``; a ``.jsonl`` line is
        one document), each under its resolved path as source; binary files are skipped (the report's
        ``skipped_files``). ``cleanup`` as in :meth:`add_documents` (``"full"``: also the files not given)."""
        skipped: list[tuple[str, str]] = []
        docs = list(iter_file_documents(paths, encoding=encoding, on_skip=lambda *f: skipped.append(f)))
        report = self.add_documents(docs, cleanup=cleanup, **kwargs)
        report.skipped_files = skipped
        return report

    def add_code(self, paths: Iterable[str | os.PathLike], **kwargs: Any) -> IndexReport:
        """Index source files (folders walked for code suffixes) split at function and class boundaries, with
        ``path``, ``symbol`` and lines in each passage's metadata (:mod:`.code_documents`); as :meth:`add_documents`."""
        count = lambda t: len(self.tokenizer(t, add_special_tokens=False)["input_ids"])  # noqa: E731
        return self.add_documents(list(iter_code_documents(paths, count, self.passage_tokens)), **kwargs)

    # ---- the corpus datastore (:mod:`.corpus_datastore`) ---------------------------------------------------
    def datastore(self, sync: bool = True) -> CorpusDatastore:
        """The collection's corpus datastore for RASD / REST (``ChatRefragRasd(datastore=...)``,
        ``engine.generate(..., datastore=...)``), brought up to date first unless ``sync=False``; built on first
        call when the store was not opened with ``datastore=``."""
        return store_datastore(self, sync=sync)

    def _datastore_changed(self) -> None:
        if self._datastore_opt:
            self.datastore()

    # ---- reading -----------------------------------------------------------------------------------------
    def _passage(self, pid: str, text: str, meta: dict[str, Any]) -> Passage:
        p = decode_passage(pid, text, meta, self.token_dtype, self.k, self.dim)
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

    def passages_where(self, where: dict[str, Any] | None = None) -> list[Passage]:
        """Every passage matching a metadata filter (all of them when ``where`` is ``None``), with its arrays."""
        res = self._get(where, ["documents", "metadatas"])
        return [self._passage(pid, text or "", dict(meta or {}))
                for pid, text, meta in zip(res["ids"], res["documents"], res["metadatas"], strict=True)]

    def document_passages(self, source: str | os.PathLike | None = None, *,
                          where: dict[str, Any] | None = None) -> list[Passage]:
        """Every passage of a document, in the document's order, with its token ids and chunk embeddings (no
        encoder runs): the passages of ``source`` (as given, or a file's resolved path, as indexing records it),
        or of a metadata filter ``where``, or of the whole collection. Several documents come one after the
        other (in the order the collection returns them, each in its own order). What "summarize this indexed
        document" reads (:mod:`~refrag_rasd_integrations.long_documents`).

        Example:
            >>> ps = store.document_passages("hamlet")                   # doctest: +REAL_MODEL
            >>> [p.metadata["refrag_index"] for p in ps]                 # doctest: +REAL_MODEL
            [0]
        """
        if source is not None:
            names = sorted({str(source), file_source(source)} if isinstance(source, os.PathLike)
                           or os.sep in str(source) or os.path.exists(str(source)) else {str(source)})
            by_source: dict[str, Any] = {SOURCE_KEY: names[0]} if len(names) == 1 else {SOURCE_KEY: {"$in": names}}
            where = {"$and": [where, by_source]} if where else by_source
        self.collection(create=False)  # a missing collection: CollectionNotFoundError
        passages = self.passages_where(where)
        first: dict[str, int] = {}
        for p in passages:
            first.setdefault(str(p.metadata.get(DOC_KEY, "")), len(first))
        return sorted(passages, key=lambda p: (first[str(p.metadata.get(DOC_KEY, ""))],
                                               int(p.metadata.get(INDEX_KEY, 0))))

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
