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
