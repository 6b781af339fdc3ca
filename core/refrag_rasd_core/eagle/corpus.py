"""Offline text corpora for training a draft head.

Built-in names:

- ``spec_bench_train``: the prompts of a Spec-Bench dev file (``spec_bench_dev.jsonl``) with an EVEN index
  within their category (the odd-index half is kept for evaluation and never trained on). The file is not
  part of the package (Apache-2.0, Xia et al., Findings of ACL 2024): it is read at run time from the path
  given (``--spec-bench``), by default ``../shared/data/spec_bench_dev.jsonl`` when that exists. Yields
  chat-formatted prompts when a tokenizer with a chat template is given.
- ``pydoc``: the Python documentation topics in ``pydoc_data.topics`` (every machine has them).
- ``docstrings``: module / class / function docstrings of the standard library (every machine has them).

Any other name is read as a path: ``.jsonl`` (a ``text`` field, or Spec-Bench ``turns``) or plain text
(one document per blank-line-separated block).

Example:
    >>> from refrag_rasd_core.eagle.corpus import iter_corpus
    >>> docs = list(iter_corpus("pydoc", limit=2))
    >>> len(docs)
    2
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from ..errors import InvalidInputError
from ..shared_data import SPEC_BENCH_DEV, file_sha256, resolve_data_path
from ..text_corpus import module_docstrings, pydoc_topics, stdlib_names

BUILTIN_CORPORA = ("spec_bench_train", "pydoc", "docstrings")
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


def format_prompt(text: str, tokenizer=None) -> str:
    """Wrap a user prompt in the tokenizer's chat template (generation prompt added), if it has one."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text


def _read_path(path: Path, tokenizer=None) -> Iterator[str]:
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                rec = json.loads(line)
                if "text" in rec:
                    yield rec["text"]
                elif "turns" in rec:
                    yield format_prompt(rec["turns"][0], tokenizer)
    else:
        text = path.read_text(encoding="utf-8")
        for block in text.split("\n\n\n"):
            if block.strip():
                yield block


def iter_corpus(name: str, tokenizer=None, limit: int | None = None, *,
                spec_bench: str | Path | None = None) -> Iterator[str]:
    """Yield the documents of a built-in corpus name or a file path (see module docstring); ``spec_bench`` is
    the Spec-Bench dev file behind ``spec_bench_train`` (default: ``../shared/data/spec_bench_dev.jsonl``)."""
    if name == "spec_bench_train":
        gen: Iterator[str] = (format_prompt(r["turns"][0], tokenizer)
                              for r in spec_bench_prompts(spec_bench, parity=TRAIN_PARITY))
    elif name == "pydoc":
        gen = pydoc_topics()
    elif name == "docstrings":
        gen = module_docstrings(stdlib_names())
    else:
        p = Path(name)
        if not p.exists():
            raise InvalidInputError(f"unknown corpus {name!r}: use one of {BUILTIN_CORPORA} or a file path")
        gen = _read_path(p, tokenizer)
    for i, doc in enumerate(gen):
        if limit is not None and i >= limit:
            return
        yield doc
