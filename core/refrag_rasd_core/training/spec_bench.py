"""The Spec-Bench dev file (``spec_bench_dev.jsonl``) both trainers read, and its split by parity.

Within each category, the EVEN index is the training half (:data:`TRAIN_PARITY`) and the odd index is held
out (evaluation only, never trained on). The file is not part of the package (Apache-2.0, Xia et al.,
Findings of ACL 2024): it is read at run time from the path given (``--spec-bench``), by default
``../shared/data/spec_bench_dev.jsonl`` when that exists.

Example:
    >>> TRAIN_PARITY, 1 - TRAIN_PARITY     # training half, held-out half
    (0, 1)
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..shared_data import SPEC_BENCH_DEV, file_sha256, resolve_data_path

__all__ = ["TRAIN_PARITY", "spec_bench_path", "spec_bench_prompts", "spec_bench_training_record"]

TRAIN_PARITY = 0  # the even index within each category is the training half; the odd one is held out


def spec_bench_path(path: str | Path | None = None) -> Path:
    """The Spec-Bench dev file to read: ``path``, else ``../shared/data/spec_bench_dev.jsonl`` when it exists
    (a clear error otherwise)."""
    return resolve_data_path(path, SPEC_BENCH_DEV, what="Spec-Bench questions", flag="--spec-bench")


def spec_bench_prompts(path: str | Path | None = None, parity: int | None = None) -> list[dict]:
    """Read Spec-Bench records (``path``: see :func:`spec_bench_path`); ``parity`` 0 / 1 keeps the even / odd
    index within each category.

    Example:
        >>> import json, tempfile
        >>> f = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)
        >>> _ = f.write("\\n".join(json.dumps({"question_id": i, "category": "qa", "turns": [f"q{i}"]})
        ...                       for i in range(4)))
        >>> f.close()
        >>> [r["question_id"] for r in spec_bench_prompts(f.name, parity=0)]
        [0, 2]
    """
    out: list[dict] = []
    seen: Counter[str] = Counter()
    with open(spec_bench_path(path), encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            cat = rec.get("category", "")
            idx = rec.get("index_in_category", seen[cat])
            seen[cat] += 1
            rec["index_in_category"] = idx
            if parity is None or idx % 2 == parity:
                out.append(rec)
    return out


def spec_bench_training_record(path: str | Path | None = None) -> dict:
    """What a checkpoint trained on the ``spec_bench_train`` half records about it: the source file's name and
    sha256, the selection, and the question ids (never any text)."""
    p = spec_bench_path(path)
    return {"data": p.name, "sha256": file_sha256(p), "selection": "even index within each category",
            "question_ids": [r["question_id"] for r in spec_bench_prompts(p, parity=TRAIN_PARITY)]}
