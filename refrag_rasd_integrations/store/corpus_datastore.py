"""The store's corpus datastore: REST's suffix index over every passage of a collection (their stored token ids),
persisted beside the collection, memory-mapped, kept in step with it, shared by every request and process.

On disk (a folder per collection, :func:`default_datastore_dir`): ``manifest.json`` names the segments, each a
:class:`~refrag_rasd_core.rasd.rest_datastore.RestDatastore` folder plus ``ids.json`` (its passage ids, in
order). :meth:`CorpusDatastore.sync` compares the segments' ids with the collection's: passages added since
become one new segment (only they are read and indexed), a deleted passage, or more than ``max_segments``
segments, rebuild the whole index in one segment. Segments are never changed once written and the manifest is
replaced atomically, so a process that mapped the old files keeps reading them, and every reader picks the new
manifest up on its next lookup (checked at most every ``refresh_s`` seconds). Lookups answer as one store
(:class:`~refrag_rasd_core.rasd.datastore_set.DatastoreSet`).

Example:
    >>> store = RefragChromaStore("docs", datastore=True)                      # doctest: +SKIP
    >>> store.add_files(["src/"])          # indexes, then brings the datastore up to date  # doctest: +SKIP
    >>> ds = store.datastore()             # a CorpusDatastore: Engine.generate(..., datastore=ds)  # doctest: +SKIP
    >>> ds.describe()["n_tokens"]                                              # doctest: +SKIP
    1234567
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from refrag_rasd_core.errors import CheckpointError, InvalidInputError
from refrag_rasd_core.rasd.datastore import DatastoreSet, RestDatastore, Retrieval
from refrag_rasd_core.rasd.retrieval import TokenSeq
from refrag_rasd_core.rasd.token_tree import SOURCE_DATASTORE

from ..passages import N_TOKENS_KEY, TOKENS_KEY
from .records import decode_array

__all__ = ["CorpusDatastore", "default_datastore_dir", "resolve_datastore", "store_datastore"]

FORMAT = "refrag-rasd-corpus-datastore"
VERSION = 1


def default_datastore_dir(chroma_path: str | os.PathLike | None, collection: str, server: str | None = None) -> Path:
    """Where a collection's datastore lives: ``<chroma folder>/refrag-datastores/<collection>`` for an embedded
    database, else ``<cache>/datastores/<server>/<collection>`` (a Chroma server keeps no files of ours)."""
    if chroma_path is not None:
        return Path(chroma_path).expanduser() / "refrag-datastores" / collection
    from refrag_rasd_core.models import cache_dir

    return cache_dir() / "datastores" / (server or "client").replace("/", "_").replace(":", "_") / collection


class CorpusDatastore:
    """A collection's corpus datastore (see the module docstring): a REST store for ``Engine(datastore=...)``,
    ``engine.generate(..., datastore=...)`` and the framework classes' ``datastore=``.

    Example:
        >>> import tempfile
        >>> ds = CorpusDatastore(tempfile.mkdtemp())
        >>> ds.write_segments([(["a-0000", "a-0001"], [[1, 2, 3, 4], [2, 3, 5]])])["segments"]
        1
        >>> ds.candidates([9, 2, 3], max_len=1).continuations
        [((4,), 1), ((5,), 1)]
    """

    source = SOURCE_DATASTORE

    def __init__(self, path: str | os.PathLike, *, max_segments: int = 8, backend: str = "auto",
                 max_suffix: int = 16, refresh_s: float = 1.0) -> None:
        if isinstance(max_segments, bool) or not isinstance(max_segments, int) or max_segments < 1:
            raise InvalidInputError(f"max_segments must be an integer >= 1, got {max_segments!r}")
        self.path = Path(path).expanduser()
        self.max_segments = max_segments
        self.backend = backend
        self.max_suffix = max_suffix
        self.refresh_s = refresh_s
        self._lock = threading.RLock()
        self._set: DatastoreSet | None = None
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self.last_build: dict[str, Any] = {}

    # ---- reading -------------------------------------------------------------------------------------------
    def _manifest(self) -> dict[str, Any]:
        f = self.path / "manifest.json"
        if not f.exists():
            return {"format": FORMAT, "version": VERSION, "segments": []}
        try:
            m = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read the datastore manifest {f}: {exc}") from exc
        if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != VERSION:
            raise CheckpointError(f"{f} is not a {FORMAT} version {VERSION} manifest")
        return m

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = (self.path / "manifest.json").stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_ino

    def current(self) -> DatastoreSet:
        """The segments as one store, memory-mapped; reopened when another writer replaced the manifest."""
        with self._lock:
            now = time.monotonic()
            if self._set is not None and now - self._checked < self.refresh_s:
                return self._set
            self._checked = now
            stamp = self._stat()
            if self._set is None or stamp != self._stamp:
                for attempt in range(3):  # a writer may replace the manifest and drop its old segments meanwhile
                    try:
                        names = [s["name"] for s in self._manifest()["segments"]]
                        self._set = DatastoreSet([RestDatastore.load(self.path / n, mmap=True) for n in names])
                        break
                    except CheckpointError:
                        if attempt == 2:
                            raise
                        time.sleep(0.05)
                self._stamp = stamp  # read before loading: a change meanwhile is picked up next time
            assert self._set is not None
            return self._set

    def candidates(self, suffix: TokenSeq, *, max_len: int = 8, min_suffix: int = 1, max_suffix: int | None = None,
                   max_occurrences: int = 64) -> Retrieval:
        """REST's longest-suffix lookup over the whole corpus (:meth:`DatastoreSet.candidates`)."""
        return self.current().candidates(suffix, max_len=max_len, min_suffix=min_suffix, max_suffix=max_suffix,
                                         max_occurrences=max_occurrences)

    def ids(self) -> set[str]:
        """The passage ids indexed now."""
        out: set[str] = set()
        for s in self._manifest()["segments"]:
            out.update(json.loads((self.path / s["name"] / "ids.json").read_text()))
        return out

    def describe(self) -> dict[str, Any]:
        """Its size: passages, tokens, segments, bytes on disk and bytes per token, and the last build's timing."""
        m = self._manifest()
        ds = self.current()
        disk = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file()) if self.path.exists() else 0
        n = ds.n_tokens
        return {"path": str(self.path), "segments": len(m["segments"]), "passages": ds.n_sequences, "n_tokens": n,
                "bytes": disk, "bytes_per_token": round(disk / n, 2) if n else None, "last_build": self.last_build}

    # ---- writing -------------------------------------------------------------------------------------------
    def write_segments(self, parts: Sequence[tuple[Sequence[str], Sequence[Sequence[int]]]], *,
                       replace: bool = False) -> dict[str, Any]:
        """Index each ``(passage ids, their token ids)`` part as a new segment and publish them (after the
        existing ones, or instead of them with ``replace``). Returns the build report."""
        self.path.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        new, n_tok = [], 0
        for ids, seqs in parts:
            if not ids:
                continue
            name = f"seg-{uuid.uuid4().hex[:12]}"
            store = RestDatastore.build([np.asarray(s, dtype=np.int64) for s in seqs], max_suffix=self.max_suffix,
                                        backend=self.backend)
            store.save(self.path / name)
            (self.path / name / "ids.json").write_text(json.dumps(list(ids)))
            new.append({"name": name, "passages": len(ids), "n_tokens": store.n_tokens})
            n_tok += store.n_tokens
        build_s = time.perf_counter() - t0
        with self._lock:
            m = self._manifest()
            old = m["segments"]
            m["segments"] = new if replace else old + new
            tmp = self.path / f"manifest.{uuid.uuid4().hex[:8]}.tmp"
            tmp.write_text(json.dumps(m, indent=1))
            os.replace(tmp, self.path / "manifest.json")
            if replace:  # mapped files stay readable where they are open (POSIX); new readers see the new set
                for s in old:
                    shutil.rmtree(self.path / s["name"], ignore_errors=True)
            self._set, self._checked = None, 0.0
        self.last_build = {"n_tokens": n_tok, "build_s": round(build_s, 4),
                           "tokens_per_s": round(n_tok / build_s) if build_s > 0 and n_tok else None}
        return {**self.last_build, "segments": len(m["segments"]), "new_segments": len(new), "replaced": replace}

    def sync(self, collection: Any, token_dtype: str, *, batch_size: int = 512) -> dict[str, Any]:
        """Bring the index in step with a Chroma ``collection`` (whose records hold token ids as
        ``token_dtype``): a segment of the passages added since, or a full rebuild after a deletion or past
        ``max_segments`` segments. Returns what it did (``added``, ``deleted``, ``rebuilt`` and the build report)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one writer at a time across processes (replicas)
            have = self.ids()
            now = list(collection.get(include=[])["ids"])
            gone = len(have - set(now))
            missing = sorted(set(now) - have)
            segments = len(self._manifest()["segments"])
            rebuild = gone > 0 or (bool(missing) and segments + 1 > self.max_segments)
            todo = sorted(now) if rebuild else missing
            if not todo and not rebuild:
                return {"added": 0, "deleted": 0, "rebuilt": False, "segments": segments}
            ids, seqs = _token_ids(collection, todo, token_dtype, batch_size)
            report = self.write_segments([(ids, seqs)], replace=rebuild)
            return {"added": len(missing), "deleted": gone, "rebuilt": rebuild, **report}

    def clear(self) -> None:
        """Delete the datastore's files."""
        with self._lock:
            shutil.rmtree(self.path, ignore_errors=True)
            self._set, self._stamp = None, None


def store_datastore(store: Any, *, sync: bool = True) -> CorpusDatastore:
    """The :class:`CorpusDatastore` of a :class:`~refrag_rasd_integrations.store.RefragChromaStore` (its folder:
    the ``datastore=`` path given, else :func:`default_datastore_dir`), brought up to date with ``sync`` (or when it
    was never built)."""
    if store._datastore is None:
        opt = store._datastore_opt
        if opt is None or opt is False:
            opt = True
        if opt is True:
            path, host, port, url = store._client_args
            url = url or (os.environ.get("REFRAG_RASD_CHROMA_URL") if path is None and host is None else None)
            server = f"{host}_{port}" if host else (url if url else None)
            if store._client is not None and path is None and server is None:  # a client given: where it is
                cs = store._client.get_settings() if hasattr(store._client, "get_settings") else None
                if cs is not None and getattr(cs, "is_persistent", False) and getattr(cs, "persist_directory", None):
                    path = cs.persist_directory
                elif cs is not None and getattr(cs, "chroma_server_host", None):
                    server = f"{cs.chroma_server_host}_{cs.chroma_server_http_port}"
                else:
                    server = "client"
            if path is None and server is None:
                from .client import chroma_dir

                path = chroma_dir()
            opt = default_datastore_dir(path if server is None else None, store.collection_name, server)
        store._datastore = CorpusDatastore(opt)
    if (sync or not (store._datastore.path / "manifest.json").exists()) and store.exists():
        dtype = store.recorded().get("refrag_token_dtype") or store.token_dtype
        store._datastore.sync(store.collection(create=False), dtype)
    return store._datastore


def resolve_datastore(value: Any, store: Any = None) -> Any:
    """What a framework class's ``datastore=`` names, as the store the engine reads: ``None`` / ``False`` (none),
    ``True`` (the ``store``'s), a :class:`~refrag_rasd_integrations.store.RefragChromaStore` (its datastore), or a
    store itself (anything with ``candidates``: a :class:`CorpusDatastore`, a ``RestDatastore``)."""
    if value is None or value is False:
        return None
    if value is True:
        if store is None:
            raise InvalidInputError("datastore=True needs a store: pass store=RefragChromaStore(...) too, or "
                                    "datastore=<the store>")
        value = store
    if callable(getattr(value, "datastore", None)) and hasattr(value, "collection_name"):
        return value.datastore(sync=False)
    if not callable(getattr(value, "candidates", None)):
        raise InvalidInputError(f"datastore must be True, a RefragChromaStore or a datastore (CorpusDatastore, "
                                f"RestDatastore), got {type(value).__name__}")
    return value


def _token_ids(collection: Any, ids: Sequence[str], token_dtype: str, batch_size: int
               ) -> tuple[list[str], list[np.ndarray]]:
    """The stored token ids of passages ``ids`` (in that order; passages without any left out)."""
    out_ids: list[str] = []
    out: list[np.ndarray] = []
    for start in range(0, len(ids), batch_size):
        res = collection.get(ids=list(ids[start:start + batch_size]), include=["metadatas"])
        by_id = dict(zip(res["ids"], res["metadatas"], strict=True))
        for pid in ids[start:start + batch_size]:
            meta = by_id.get(pid) or {}
            if TOKENS_KEY not in meta:
                continue
            out_ids.append(pid)
            out.append(decode_array(meta[TOKENS_KEY], token_dtype, (int(meta.get(N_TOKENS_KEY, 0)),)))
    return out_ids, out
