"""What can be indexed: LangChain ``Document`` s, LlamaIndex nodes / documents, :class:`Passage` s,
``(text, metadata)`` pairs and strings (:func:`document_parts`), and text files and folders
(:func:`iter_file_documents`); and documents into passage records with deterministic ids
(:func:`passage_records`). Neither framework is imported: documents are read by their attributes.

Example:
    >>> document_parts(("Paris is in France.", {"source": "fr"}))
    ('Paris is in France.', {'source': 'fr'}, None)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from refrag_rasd_core.errors import InvalidInputError

from ..passages import DOC_KEY, INDEX_KEY, SOURCE_KEY, Passage
from .records import PassageRecord, document_id, flat_metadata, passage_id

__all__ = ["TEXT_SUFFIXES", "document_parts", "iter_file_documents", "passage_records"]

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".jsonl")
"""The files a folder is walked for."""


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


def passage_records(documents: Iterable[Any], split: Callable[[str], list[str]]) -> list[PassageRecord]:
    """Each document's passages (``split`` of its text) as records: id = the document's id (a hash of its
    source and text) + the passage's index, metadata = the document's, flattened, with its ``source``, the
    document id and the index. The same document twice is indexed once; an empty one not at all.

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
        digest = document_id(source, text)
        if digest in seen:  # the same document twice: index it once
            continue
        seen.add(digest)
        flat = flat_metadata(meta)
        if SOURCE_KEY not in flat and source:
            flat[SOURCE_KEY] = source
        out.extend(PassageRecord(id=passage_id(digest, i), text=piece, metadata={**flat, DOC_KEY: digest, INDEX_KEY: i})
                   for i, piece in enumerate(split(text)))
    return out


def iter_file_documents(paths: Iterable[str | os.PathLike], *, encoding: str = "utf-8"
                        ) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(text, {"source": path, ...})`` for each file (folders walked, sorted, for a stable order). A
    ``.jsonl`` file gives one document per line from its ``text`` field (or its ``turns``)."""
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise InvalidInputError(f"no such file or folder: {path}")
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES) \
            if path.is_dir() else [path]
        for f in files:
            if f.suffix.lower() == ".jsonl":
                yield from _jsonl_documents(f, encoding)
            else:
                yield f.read_text(encoding=encoding, errors="replace"), {SOURCE_KEY: str(f)}


def _jsonl_documents(f: Path, encoding: str) -> Iterator[tuple[str, dict[str, Any]]]:
    with f.open(encoding=encoding) as fh:
        for n, line in enumerate(fh):
            if not line.strip():
                continue
            rec = json.loads(line)
            text = rec.get("text") or "\n".join(rec.get("turns") or [])
            meta = {k: v for k, v in rec.items()
                    if k not in {"text", "turns"} and isinstance(v, (str, int, float, bool))}
            yield text, {**meta, SOURCE_KEY: f"{f}#{n}"}
