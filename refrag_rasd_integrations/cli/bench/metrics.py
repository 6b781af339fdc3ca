"""Answer-quality metrics shared by the benchmark suites.

Example:
    >>> answer_recall("It was built in 1889 in Paris.", ["1889", "eighteen eighty-nine"])
    1.0
    >>> answer_recall("No idea.", ["1889"])
    0.0
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def answer_recall(output: str, references: Sequence[str]) -> float | None:
    """1.0 when any reference answer occurs in the output (case, punctuation and spacing ignored), else
    0.0; ``None`` without references."""
    refs = [_norm(r) for r in references if _norm(r)]
    if not refs:
        return None
    out = f" {_norm(output)} "
    return 1.0 if any(f" {r} " in out for r in refs) else 0.0


def first_sentence(text: str) -> str:
    """The output up to its first sentence end (or line break)."""
    text = text.strip()
    m = re.search(r"(?<=[.!?])\s|\n", text)
    return text[:m.start()] if m else text


def answer_f1(output: str, references: Sequence[str]) -> float | None:
    """Token F1 (SQuAD style, on normalized words) of the best reference against the output's first
    sentence; ``None`` without references.

    Example:
        >>> answer_f1("Paris is the capital. It is big.", ["Paris"])
        0.4
    """
    refs = [_norm(r).split() for r in references if _norm(r)]
    if not refs:
        return None
    pred = _norm(first_sentence(output)).split()
    best = 0.0
    for ref in refs:
        common = sum(min(pred.count(w), ref.count(w)) for w in set(ref))
        if common:
            p, r = common / len(pred), common / len(ref)
            best = max(best, 2 * p * r / (p + r))
    return round(best, 4)
