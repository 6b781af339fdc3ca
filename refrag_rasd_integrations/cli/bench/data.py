"""Spec-Bench question files: ``{"question_id", "category", "turns": [prompt], "reference"?}`` per line.

Example:
    >>> q = BenchQuestion(question_id=1, category="rag", prompt="passage one\\npassage two\\nWho?")
    >>> q.passages
    ['passage one', 'passage two']
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from refrag_rasd_core.errors import InvalidInputError


@dataclass
class BenchQuestion:
    question_id: int | str
    category: str
    prompt: str
    reference: list[str] = field(default_factory=list)

    @property
    def messages(self) -> list[dict[str, str]]:
        """The question as one user message (sent through the model's chat template)."""
        return [{"role": "user", "content": self.prompt}]

    @property
    def passages(self) -> list[str]:
        """For ``rag`` questions: the passages (every line but the last, which is the question)."""
        if self.category != "rag":
            return []
        lines = [ln for ln in self.prompt.split("\n") if ln.strip()]
        return lines[:-1]


def training_question_ids() -> set:
    """Ids of the Spec-Bench questions the shipped checkpoints were trained on (kept out of benchmarks): each
    checkpoint's json sidecar records them (``recipe.trained_on``: the source file's sha256 and the question
    ids, no text)."""
    from importlib import resources

    ids: set = set()
    folder = resources.files("refrag_rasd_core") / "checkpoints"
    for entry in folder.iterdir() if folder.is_dir() else ():
        if not entry.name.endswith(".json"):
            continue
        try:
            meta = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue
        ids.update((meta.get("recipe") or {}).get("trained_on", {}).get("question_ids") or [])
    return ids


def trained_ids() -> set[str]:
    """Ids of the QA questions and long documents the shipped REFRAG checkpoints were trained on (their json
    sidecars' ``recipe.qa_trained_on`` / ``recipe.long_trained_on`` entries: ``trained_ids`` per source file)."""
    from importlib import resources

    ids: set[str] = set()
    folder = resources.files("refrag_rasd_core") / "checkpoints"
    for entry in folder.iterdir() if folder.is_dir() else ():
        if not entry.name.endswith(".json"):
            continue
        try:
            recipe = json.loads(entry.read_text()).get("recipe") or {}
        except (OSError, ValueError, AttributeError):
            continue
        for key in ("qa_trained_on", "long_trained_on"):
            sources = recipe.get(key) or []
            for source in sources if isinstance(sources, list) else [sources]:  # one source file, or a list
                if isinstance(source, dict):
                    ids.update(str(i) for i in source.get("trained_ids") or [])
    return ids


def load_questions(path: str | Path, category: str | None = None, limit: int | None = None,
                   exclude_ids: set | None = None) -> list[BenchQuestion]:
    """Read a Spec-Bench jsonl file, keeping ``category`` (comma-separated allowed) and the first ``limit``
    questions of each category, skipping ``exclude_ids``."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"benchmark data file not found: {path}")
    wanted = set(category.split(",")) if category else None
    out: list[BenchQuestion] = []
    per_cat: dict[str, int] = {}
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ref = list(row.get("reference") or [])
                if ref and isinstance(ref[0], list):  # one list of answers per turn: the first turn's
                    ref = list(ref[0])
                q = BenchQuestion(row["question_id"], row["category"], row["turns"][0], [str(r) for r in ref])
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise InvalidInputError(f"{path}:{n}: not a Spec-Bench question line ({exc})") from exc
            if wanted and q.category not in wanted:
                continue
            if exclude_ids and q.question_id in exclude_ids:
                continue
            if limit is not None and per_cat.get(q.category, 0) >= limit:
                continue
            per_cat[q.category] = per_cat.get(q.category, 0) + 1
            out.append(q)
    if not out:
        raise InvalidInputError(f"no questions in {path} for category {category!r}")
    return out
