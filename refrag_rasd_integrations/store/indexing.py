"""The writing half of indexing: passage records into a collection a batch at a time, skipping the ids it
holds already (so a killed run, run again, fills exactly the gaps); replacing records whole; deleting ids a
batch at a time and dropping a collection; with :class:`IndexReport`, what a run did.

Two Chroma 1.5.9 behaviours these work around (found by ``tests/unit/test_store_properties.py``): an
``upsert`` over an existing id MERGES the metadata (a key the new record lacks keeps its old value), so
:func:`replace_rows` deletes the ids it replaces first; and dropping a collection leaves its records'
list-valued metadata behind, which then shows up in records of later collections, so :func:`drop_collection`
deletes the records before the collection.

Example:
    >>> report = IndexReport(passages=3, added=2, skipped=1, seconds=0.5)
    >>> report.passages_per_s
    4.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import chroma_failure
from .records import PassageRecord

__all__ = ["IndexReport", "delete_ids", "drop_collection", "replace_rows", "write_missing"]

_DELETE_BATCH = 500


@dataclass
class IndexReport:
    """What :meth:`RefragChromaStore.add_documents` did: ``passages`` in the batch, ``added`` (new),
    ``skipped`` (there already), ``deleted`` (by the clean-up), ``skipped_files`` (``(path, why)``)."""

    passages: int = 0
    added: int = 0
    skipped: int = 0
    deleted: int = 0
    seconds: float = 0.0
    ids: list[str] = field(default_factory=list)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)

    @property
    def passages_per_s(self) -> float:
        return self.added / self.seconds if self.seconds > 0 else 0.0


def write_missing(col: Any, records: Sequence[PassageRecord], encode: Callable[[list[PassageRecord]], dict],
                  report: IndexReport, *, batch_size: int, progress: bool = False,
                  on_batch: Callable[[int, int], None] | None = None) -> None:
    """Upsert the ``records`` whose ids ``col`` lacks, ``batch_size`` at a time (``encode`` makes a batch's
    upsert arguments), counting them in ``report``; a tqdm bar with ``progress``, ``on_batch(done, total)``
    after each batch."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(records), desc=f"indexing {col.name}", unit="passage")
    try:
        for start in range(0, len(records), batch_size):
            batch = records[start:start + batch_size]
            try:
                have = set(col.get(ids=[r.id for r in batch], include=[])["ids"])
            except Exception as exc:
                raise chroma_failure(exc, f"reading collection {col.name!r}") from exc
            todo = [r for r in batch if r.id not in have]
            if todo:
                rows = encode(todo)
                try:
                    col.upsert(**rows)
                except Exception as exc:
                    raise chroma_failure(exc, f"writing to collection {col.name!r}") from exc
            report.added += len(todo)
            report.skipped += len(batch) - len(todo)
            if bar is not None:
                bar.update(len(batch))
            if on_batch is not None:
                on_batch(start + len(batch), len(records))
    finally:
        if bar is not None:
            bar.close()


def delete_ids(col: Any, ids: Sequence[str], where: dict[str, Any] | None = None) -> int:
    """Delete these passage ids from ``col`` a batch at a time (and the passages matching ``where``, a Chroma
    metadata filter, when given); returns how many ids were asked."""
    ids = list(ids)
    try:
        for start in range(0, len(ids), _DELETE_BATCH):
            col.delete(ids=ids[start:start + _DELETE_BATCH])
        if where:
            col.delete(where=where)
    except Exception as exc:
        raise chroma_failure(exc, f"deleting from collection {col.name!r}") from exc
    return len(ids)


def replace_rows(col: Any, rows: dict[str, Any]) -> None:
    """Write records (``upsert`` arguments) replacing whole whatever their ids held (the old metadata's keys
    included: Chroma's upsert would keep those the new record lacks)."""
    try:
        have = col.get(ids=list(rows["ids"]), include=[])["ids"]
        if have:
            col.delete(ids=have)
        col.upsert(**rows)
    except Exception as exc:
        raise chroma_failure(exc, f"writing to collection {col.name!r}") from exc


def drop_collection(client: Any, col: Any) -> None:
    """Drop the collection ``col`` (``None``: nothing to drop), deleting its records first (Chroma 1.5.9
    leaves a dropped collection's list-valued metadata behind for later records to pick up)."""
    if col is None:
        return
    delete_ids(col, col.get(include=[])["ids"])
    try:
        client.delete_collection(col.name)
    except Exception as exc:
        if "does not exist" not in str(exc) and type(exc).__name__ != "NotFoundError":
            raise chroma_failure(exc, f"dropping collection {col.name!r}") from exc
