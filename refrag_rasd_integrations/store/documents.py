"""What can be indexed: LangChain ``Document`` s, LlamaIndex nodes / documents, :class:`Passage` s,
``(text, metadata)`` pairs and strings (:func:`document_parts`), and text files and folders
(:func:`iter_file_documents`: a file's source is its resolved path; binary files are skipped, a bad ``.jsonl``
line is an error naming the file and the line); and documents into passage records with deterministic ids
(:func:`passage_records`). Neither framework is imported: documents are read by their attributes.

Example:
    >>> document_parts(("Paris is in France.", {"source": "fr"}))
    ('Paris is in France.', {'source': 'fr'}, None)
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from refrag_rasd_core.errors import InvalidInputError

from ..passages import DOC_KEY, INDEX_KEY, SOURCE_KEY, Passage
from .records import PassageRecord, document_id, flat_metadata, passage_id
from .sources import file_source

__all__ = ["SNIFF_BYTES", "TEXT_SUFFIXES", "binary_reason", "document_parts", "document_source",
           "iter_file_documents", "jsonl_objects", "passage_records"]

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".jsonl")
"""The files a folder is walked for."""
SNIFF_BYTES = 8192
"""How much of a file is read to tell text from binary."""


def document_parts(doc: Any) -> tuple[str, dict[str, Any], str | None]:
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
    if hasattr(doc, "get_content"):  # LlamaIndex Document / TextNode ("none": MetadataMode.NONE, a str enum)
        text = doc.get_content(metadata_mode="none")
        meta = dict(getattr(doc, "metadata", None) or {})
        doc_id = getattr(doc, "ref_doc_id", None) or getattr(doc, "node_id", None)
        return str(text), meta, doc_id
    raise InvalidInputError(f"cannot index a {type(doc).__name__}: give LangChain Documents, LlamaIndex nodes, "
                            "strings or (text, metadata) pairs")


def document_source(doc: Any) -> str:
    """A document's source id: its ``source`` metadata, else its own id, else ``""`` (none)."""
    text, meta, doc_id = document_parts(doc)
    return str(meta.get(SOURCE_KEY) or doc_id or "")


def passage_records(documents: Iterable[Any], split: Callable[[str], list[str]]) -> list[PassageRecord]:
    """Each document's passages (``split`` of its text) as records: id = the document's content hash (of its
    source, text and metadata) + the passage's index, metadata = the document's, flattened, with its
    ``source``, the content hash and the index. The same document twice is indexed once; an empty one not at
    all.

    Example:
        >>> [(r.id[-4:], r.text, r.metadata["source"])
        ...  for r in passage_records([("a. b.", {"source": "s"})], str.split)]
        [('0000', 'a.', 's'), ('0001', 'b.', 's')]
    """
    out: list[PassageRecord] = []
    seen: set[str] = set()
    for doc in documents:
        text, meta, doc_id = document_parts(doc)
        if not text.strip():
            continue
        source = str(meta.get(SOURCE_KEY) or doc_id or "")
        flat = flat_metadata(meta)
        if source:
            flat[SOURCE_KEY] = source
        digest = document_id(source, text, flat)
        if digest in seen:  # the same document twice: index it once
            continue
        seen.add(digest)
        out.extend(PassageRecord(id=passage_id(digest, i), text=piece, metadata={**flat, DOC_KEY: digest, INDEX_KEY: i})
                   for i, piece in enumerate(split(text)))
    return out


def binary_reason(path: str | os.PathLike, encoding: str = "utf-8") -> str | None:
    """Why the file at ``path`` is not text (a NUL byte, or not decodable in ``encoding``, in its first
    :data:`SNIFF_BYTES`), or ``None`` when it is text; unreadable files raise :class:`InvalidInputError`."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if b"\0" in head:
        return "binary (it has NUL bytes)"
    try:  # a multi-byte character cut at the end of the sample is fine
        codecs.getincrementaldecoder(encoding)().decode(head, final=len(head) < SNIFF_BYTES)
    except UnicodeDecodeError:
        return f"binary (not {encoding} text)"
    return None


def _files(path: Path) -> list[Path]:
    if not path.exists():
        raise InvalidInputError(f"no such file or folder: {path}")
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)


def iter_file_documents(paths: Iterable[str | os.PathLike], *, encoding: str = "utf-8",
                        on_skip: Callable[[str, str], None] | None = None
                        ) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(text, {"source": resolved path, ...})`` for each file (folders walked for :data:`TEXT_SUFFIXES`,
    sorted, for a stable order). A ``.jsonl`` file gives one document per line from its ``text`` field (or its
    ``turns``), with the line's number under ``line``. A binary file is skipped: ``on_skip(path, reason)``
    is told. A missing or unreadable file, or a bad ``.jsonl`` line, raises :class:`InvalidInputError` naming
    it."""
    for raw in paths:
        for f in _files(Path(raw).expanduser()):
            reason = binary_reason(f, encoding)
            if reason is not None:
                if on_skip is not None:
                    on_skip(str(f), reason)
                continue
            source = file_source(f)
            if f.suffix.lower() == ".jsonl":
                for n, rec in jsonl_objects(f, encoding):
                    yield _jsonl_document(f, n, rec, source)
                continue
            try:
                text = f.read_text(encoding=encoding, errors="replace")
            except OSError as exc:
                raise InvalidInputError(f"cannot read {f}: {exc.strerror or exc}") from exc
            yield text, {SOURCE_KEY: source}


def jsonl_objects(f: str | os.PathLike, encoding: str = "utf-8") -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a ``.jsonl`` file (numbered from 1); a line that
    is not JSON, or not a JSON object, raises :class:`InvalidInputError` naming the file and the line."""
    try:
        with open(f, encoding=encoding, errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidInputError(f"{f}, line {n}: not valid JSON ({exc.msg}, column {exc.colno})"
                                            ) from exc
                if not isinstance(rec, dict):
                    raise InvalidInputError(f"{f}, line {n}: a JSON {type(rec).__name__} where an object "
                                            'was expected (e.g. {"text": "..."})')
                yield n, rec
    except OSError as exc:
        raise InvalidInputError(f"cannot read {f}: {exc.strerror or exc}") from exc


def _jsonl_document(f: Path, n: int, rec: dict[str, Any], source: str) -> tuple[str, dict[str, Any]]:
    text, turns = rec.get("text"), rec.get("turns")
    if text is not None and not isinstance(text, str):
        raise InvalidInputError(f"{f}, line {n}: \"text\" must be a string, not {type(text).__name__}")
    if turns is not None and (not isinstance(turns, list) or not all(isinstance(t, str) for t in turns)):
        raise InvalidInputError(f"{f}, line {n}: \"turns\" must be a list of strings")
    meta = {k: v for k, v in rec.items()
            if k not in {"text", "turns"} and isinstance(v, (str, int, float, bool))}
    return text or "\n".join(turns or []), {**meta, "line": n, SOURCE_KEY: source}
