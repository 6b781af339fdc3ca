"""Sources: what a passage came from, and the clean-up of passages whose source changed or went away.

Every passage records its document's normalized ``source`` (a file's resolved absolute path, so
``docs/a.md`` and ``/home/me/docs/a.md`` are one source; otherwise the caller's id, as given) and
``refrag_doc``, the content hash of its document (source, text and metadata). A passage's id is that hash
plus the passage's index, so re-indexing an unchanged document finds its ids there and skips it, and a
changed document gets new ids.

Clean-up follows LangChain's indexing API (``langchain_core.indexing.index``), with the collection itself as
the record of what is indexed (no second database):

* ``None``: only add; passages of a changed document stay beside the new ones;
* ``"incremental"``: after the batch is written, delete the passages of every source in the batch that the
  batch did not produce (a changed file's old passages);
* ``"full"``: after the batch is written, delete every passage the batch did not produce (also the sources
  missing from the batch: a deleted file).

Deleting comes last, so a run killed mid-way never leaves a source with nothing, and running it again
finishes the job (the new passages written are skipped, the old ones deleted).

Example:
    >>> file_source("docs/../docs/a.md") == file_source("docs/a.md")
    True
    >>> check_cleanup("sometimes")
    Traceback (most recent call last):
    ...
    refrag_rasd_core.errors.InvalidInputError: cleanup must be None, 'incremental' or 'full', got 'sometimes'
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from refrag_rasd_core.errors import InvalidInputError

from ..passages import SOURCE_KEY
from .errors import chroma_failure
from .indexing import delete_ids

__all__ = ["CLEANUP_MODES", "all_ids", "check_cleanup", "delete_source", "file_source", "source_counts",
           "source_passage_ids", "stale_ids"]

CLEANUP_MODES = (None, "incremental", "full")
"""What an indexing run may delete afterwards (LangChain's indexing API's modes)."""
_PAGE = 500  # ids / metadatas read from Chroma at a time
_IN = 100    # sources per ``$in`` filter


def check_cleanup(cleanup: str | None) -> str | None:
    """``cleanup`` if it is one of :data:`CLEANUP_MODES`, else :class:`InvalidInputError`."""
    if cleanup not in CLEANUP_MODES:
        raise InvalidInputError(f"cleanup must be None, 'incremental' or 'full', got {cleanup!r}")
    return cleanup


def file_source(path: str | os.PathLike) -> str:
    """A file's source id: its absolute path with ``~``, ``..`` and symbolic links resolved."""
    return str(Path(path).expanduser().resolve())


def _pages(col: Any, where: dict[str, Any] | None, include: list[str]) -> Iterator[dict[str, Any]]:
    offset = 0
    while True:
        try:
            page = col.get(where=where or None, include=include, limit=_PAGE, offset=offset)
        except Exception as exc:
            raise chroma_failure(exc, f"reading collection {col.name!r}") from exc
        if not page["ids"]:
            return
        yield page
        offset += len(page["ids"])


def all_ids(col: Any) -> list[str]:
    """Every passage id in the collection (read a page at a time)."""
    return [i for page in _pages(col, None, []) for i in page["ids"]]


def source_passage_ids(col: Any, sources: Iterable[str]) -> list[str]:
    """The ids of every passage whose ``source`` is one of ``sources``."""
    wanted = sorted(set(sources))
    out: list[str] = []
    for start in range(0, len(wanted), _IN):
        part = wanted[start:start + _IN]
        where = {SOURCE_KEY: part[0]} if len(part) == 1 else {SOURCE_KEY: {"$in": part}}
        out.extend(i for page in _pages(col, where, []) for i in page["ids"])
    return out


def stale_ids(col: Any, cleanup: str | None, sources: Sequence[str], keep: Iterable[str]) -> list[str]:
    """What ``cleanup`` deletes once a batch that produced the passage ids ``keep`` from ``sources`` is
    written: nothing (``None``), the other passages of those sources (``"incremental"``), or every other
    passage (``"full"``)."""
    if check_cleanup(cleanup) is None:
        return []
    have = all_ids(col) if cleanup == "full" else source_passage_ids(col, sources)
    keep = set(keep)
    return [i for i in have if i not in keep]


def source_counts(col: Any) -> dict[str, int]:
    """``{source: passages}`` over the collection (passages without a source under ``""``), by source."""
    counts: dict[str, int] = {}
    for page in _pages(col, None, ["metadatas"]):
        for meta in page["metadatas"]:
            src = str((meta or {}).get(SOURCE_KEY, ""))
            counts[src] = counts.get(src, 0) + 1
    return dict(sorted(counts.items()))


def delete_source(col: Any, source: str | os.PathLike) -> int:
    """Delete every passage of ``source`` (as given, and, when it names a file, by its resolved path, as
    indexing records it); returns how many were deleted."""
    names = {str(source)}
    if isinstance(source, os.PathLike) or os.sep in str(source) or Path(str(source)).exists():
        names.add(file_source(source))
    return delete_ids(col, source_passage_ids(col, names))
