r"""Question-answering data files: NQ-open / SQuAD style or Spec-Bench ``rag`` lines, read at run time.

NQ-open / SQuAD lines are ``{"id"?, "question", "answers": [...], "passage", "title"?}``; a passage's text is
``title + "\n" + passage`` (what a store indexes). Spec-Bench ``rag`` lines carry their passages inside the
prompt (every line but the last, which is the question) and the answers in ``reference``. Other Spec-Bench
categories are skipped. The benchmark harness and the REFRAG trainer read QA files through this one reader.

Example:
    >>> import json, tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "qa.jsonl"
    >>> _ = f.write_text(json.dumps({"question": "Who?", "answers": ["Ada"], "passage": "Ada did.", "title": "T"}))
    >>> items, passages = load_qa_file(f)
    >>> items[0].answers, passages
    (['Ada'], ['T\nAda did.'])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidInputError

__all__ = ["QAItem", "corpus_passages", "load_qa_file"]


@dataclass
class QAItem:
    """One question: its gold answers and the text of its gold passages (empty when unknown)."""

    qid: str
    question: str
    answers: list[str]
    gold: list[str] = field(default_factory=list)


def _passage_text(row: dict[str, Any]) -> str:
    title, passage = str(row.get("title") or "").strip(), str(row.get("passage") or "").strip()
    return f"{title}\n{passage}" if title and passage else passage


def load_qa_file(path: str | Path) -> tuple[list[QAItem], list[str]]:
    """Questions and the distinct passages of a QA file (NQ-open / SQuAD style or Spec-Bench ``rag``)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"QA data file not found: {path} (the project's benchmark data lives in "
                                "../shared/data/ beside a checkout; pass --data)")
    items: list[QAItem] = []
    passages: dict[str, None] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if "turns" in row:  # Spec-Bench: passages inside the prompt
                if row.get("category") != "rag":
                    continue
                lines = [ln.strip() for ln in row["turns"][0].split("\n") if ln.strip()]
                ref = list(row.get("reference") or [])
                if ref and isinstance(ref[0], list):
                    ref = list(ref[0])
                gold = lines[:-1]
                item = QAItem(str(row["question_id"]), lines[-1], [str(r) for r in ref], [])
            else:
                gold = [_passage_text(row)] if row.get("passage") else []
                item = QAItem(str(row.get("id", n)), str(row["question"]), [str(a) for a in row["answers"]], gold)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise InvalidInputError(f"{path}:{n}: not a QA line (question/answers/passage) nor a Spec-Bench "
                                    f"line ({exc})") from exc
        for g in gold:
            passages.setdefault(g, None)
        items.append(item)
    if not items:
        raise InvalidInputError(f"no questions in {path}")
    return items, list(passages)


def corpus_passages(path: str | Path) -> list[str]:
    """The distinct passages of a corpus file (same formats as :func:`load_qa_file`)."""
    return load_qa_file(path)[1]
