"""Offline text corpora for training a draft head (available on every machine, no download).

Built-in names:

- ``spec_bench_train``: the Spec-Bench dev prompts with an EVEN index within their category (the
  odd-index half is kept for evaluation and never trained on); shipped in ``refrag_rasd_core/data``
  (Apache-2.0, Xia et al., Findings of ACL 2024). Yields chat-formatted prompts when a tokenizer with a
  chat template is given.
- ``spec_bench_eval``: the odd-index half, read from a ``spec_bench_dev.jsonl`` path (evaluation only).
- ``pydoc``: the Python documentation topics in ``pydoc_data.topics``.
- ``docstrings``: module / class / function docstrings of the standard library.

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
from ..text_corpus import module_docstrings, pydoc_topics, stdlib_names

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SPEC_BENCH_TRAIN = DATA_DIR / "spec_bench_train.jsonl"
BUILTIN_CORPORA = ("spec_bench_train", "pydoc", "docstrings")


def spec_bench_prompts(path: str | Path = SPEC_BENCH_TRAIN, parity: int | None = None) -> list[dict]:
    """Read Spec-Bench records; ``parity`` 0 / 1 keeps the even / odd index within each category.

    Example:
        >>> recs = spec_bench_prompts()
        >>> all(r["index_in_category"] % 2 == 0 for r in recs)
        True
    """
    out: list[dict] = []
    seen: Counter[str] = Counter()
    with open(path, encoding="utf-8") as f:
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


def iter_corpus(name: str, tokenizer=None, limit: int | None = None) -> Iterator[str]:
    """Yield the documents of a built-in corpus name or a file path (see module docstring)."""
    if name == "spec_bench_train":
        gen: Iterator[str] = (format_prompt(r["turns"][0], tokenizer) for r in spec_bench_prompts())
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
