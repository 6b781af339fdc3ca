"""The long suite's tasks: whole documents to summarize or to answer questions about, read from a data file at
run time and split into passages with their chunk embeddings, as a store would hold them.

* a summarization file (``{"id", "document", "summary"}`` lines, e.g. long PEPs with their abstracts): one task
  per document, the reference being its summary;
* a SQuAD-style file (``{"title", "paragraph", "question", "answers", "passage"}`` lines): each article's
  paragraphs joined into its text, consecutive articles joined into documents of at least ``min_words`` words
  (past an 8,192-token window at the default), and every question of a document asked of the whole document.

Example:
    >>> kind_of({"document": "...", "summary": "..."}), kind_of({"question": "?", "paragraph": 0})
    ('summary', 'qa')
    >>> [len(d) for d in join_articles({"a": ["x " * 5], "b": ["y " * 5], "c": ["z " * 5]}, min_words=8)]
    [2, 1]
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.refrag import Passage

from ...long_documents import SUMMARIZE_INSTRUCTION, document_passages

__all__ = ["LongTask", "join_articles", "kind_of", "load_long_tasks", "split_document"]


@dataclass
class LongTask:
    """One request of the suite: an instruction (summaries) or a question (QA) over a whole document."""

    id: str
    kind: str  # "summary" | "qa"
    prompt: str
    document_id: str
    references: list[str]
    passages: list[Passage] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        """The document's length in decoder tokens."""
        return sum(len(p.token_ids) for p in self.passages)


def kind_of(row: Mapping[str, Any]) -> str:
    """``summary`` for a line with a document and its summary, ``qa`` for a SQuAD-style line."""
    if "document" in row and "summary" in row:
        return "summary"
    if "question" in row and "paragraph" in row:
        return "qa"
    raise InvalidInputError("the long suite reads summarization lines ({'document', 'summary'}) or SQuAD-style "
                            "lines ({'title', 'paragraph', 'question', 'answers', 'passage'})")


def join_articles(articles: Mapping[str, Sequence[str]], min_words: int) -> list[list[str]]:
    """Consecutive articles (title -> paragraphs) grouped until a group holds ``min_words`` words (the last
    group may hold fewer)."""
    groups: list[list[str]] = [[]]
    words = 0
    for title, paragraphs in articles.items():
        if words >= min_words:
            groups.append([])
            words = 0
        groups[-1].append(title)
        words += sum(len(p.split()) for p in paragraphs)
    return [g for g in groups if g]


def split_document(engine: Engine, text: str, passage_tokens: int = 256) -> tuple[list[Passage], float]:
    """A document as passages of at most ``passage_tokens`` tokens with their token ids and chunk embeddings, and
    the seconds the embeddings took (the indexing cost a store pays once, outside any request)."""
    passages = document_passages([text], engine.tokenizer, passage_tokens=passage_tokens)
    ids = [engine.tokenizer(p.text, add_special_tokens=False)["input_ids"] for p in passages]
    t0 = time.perf_counter()
    vectors = engine.refrag_encoder().encode_passages(ids) if engine.has_chunk_encoder else [None] * len(ids)
    return [replace(p, token_ids=i, chunk_embeddings=v) for p, i, v in zip(passages, ids, vectors, strict=True)], \
        time.perf_counter() - t0


def load_long_tasks(path: str | Path, engine: Engine, *, limit: int | None = None, min_tokens: int = 0,
                    max_tokens: int | None = None, questions_per_document: int = 4, min_words: int = 7000,
                    passage_tokens: int = 256, exclude_ids: set[str] | None = None
                    ) -> tuple[list[LongTask], dict[str, float]]:
    """The tasks of a data file (see the module docstring) whose documents hold ``min_tokens`` to ``max_tokens``
    tokens, at most ``limit`` documents (the longest first), and the indexing seconds per document. ``exclude_ids``:
    documents (summaries) or questions (QA) left out, e.g. what a shipped checkpoint was trained on."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows:
        raise InvalidInputError(f"{path}: no lines")
    kind = kind_of(rows[0])
    def kept(r: Mapping[str, Any]) -> bool:
        return not exclude_ids or str(r.get("id")) not in exclude_ids
    docs: list[tuple[str, str, list[dict[str, Any]]]] = []  # (document id, text, its question rows)
    if kind == "summary":
        docs = [(str(r["id"]), str(r["document"]), [r]) for r in rows if kept(r)]
    else:
        articles: dict[str, dict[int, str]] = {}
        for r in rows:
            articles.setdefault(str(r["title"]), {})[int(r["paragraph"])] = str(r["passage"])
        texts = {t: [ps[i] for i in sorted(ps)] for t, ps in articles.items()}
        for group in join_articles(texts, min_words):
            text = "\n\n".join(f"# {t.replace('_', ' ')}\n\n" + "\n\n".join(texts[t]) for t in group)
            qs = [r for r in rows if str(r["title"]) in group and kept(r)]  # every paragraph stays in the text
            if not qs:
                continue
            step = max(len(qs) // max(questions_per_document, 1), 1)
            docs.append(("+".join(group), text, qs[::step][:questions_per_document]))
    lengths = {d[0]: len(engine.tokenizer(d[1], add_special_tokens=False)["input_ids"]) for d in docs}
    docs = sorted((d for d in docs if min_tokens <= lengths[d[0]] <= (max_tokens or lengths[d[0]])),
                  key=lambda d: -lengths[d[0]])[:limit]
    tasks: list[LongTask] = []
    index_s: dict[str, float] = {}
    for doc_id, text, qrows in docs:
        passages, index_s[doc_id] = split_document(engine, text, passage_tokens)
        if kind == "summary":
            tasks.append(LongTask(doc_id, "summary", SUMMARIZE_INSTRUCTION, doc_id, [str(qrows[0]["summary"])],
                                  passages))
        else:
            tasks += [LongTask(str(r["id"]), "qa", str(r["question"]), doc_id, [str(a) for a in r["answers"]],
                               passages) for r in qrows]
    return tasks, index_s
