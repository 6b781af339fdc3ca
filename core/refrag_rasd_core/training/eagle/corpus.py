"""Offline text corpora for training a draft head.

Built-in names:

- ``spec_bench_train``: the prompts of a Spec-Bench dev file (``spec_bench_dev.jsonl``) with an EVEN index
  within their category (the odd-index half is kept for evaluation and never trained on; the file and its
  split: :mod:`refrag_rasd_core.training.spec_bench`). Yields chat-formatted prompts when a tokenizer with
  a chat template is given.
- ``pydoc``: the Python documentation topics in ``pydoc_data.topics`` (every machine has them).
- ``docstrings``: module / class / function docstrings of the standard library (every machine has them).

Any other name is read as a path: ``.jsonl`` (a ``text`` field, or Spec-Bench ``turns``) or plain text
(one document per blank-line-separated block).

Example:
    >>> from refrag_rasd_core.training.eagle.corpus import iter_corpus
    >>> docs = list(iter_corpus("pydoc", limit=2))
    >>> len(docs)
    2
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ...errors import InvalidInputError
from ...text_corpus import module_docstrings, pydoc_topics, stdlib_names
from ..spec_bench import TRAIN_PARITY, spec_bench_prompts

__all__ = ["BUILTIN_CORPORA", "format_prompt", "iter_corpus"]

BUILTIN_CORPORA = ("spec_bench_train", "pydoc", "docstrings")


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
