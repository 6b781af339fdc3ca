"""Offline text for REFRAG training, and the chunk vectors of the frozen encoder, computed once per corpus.

Built-in corpus names:

* ``spec_bench_train``  the PASSAGES (never a reference answer) of the Spec-Bench training split: the even index
  within each category of a ``spec_bench_dev.jsonl`` read at run time (``spec_bench=`` / ``--spec-bench``,
  default ``../shared/data/spec_bench_dev.jsonl`` when it exists; the package ships no copy): the passages of
  a ``rag`` question joined as one document (they share a topic), the article of a ``summarization`` one;

and, on every machine (no download):

* ``pydoc``             the Python documentation topics (``pydoc_data.topics``);
* ``docstrings``        module / class / function docstrings of the standard library;
* ``packages``          docstrings of a few installed packages (numpy, tqdm, safetensors, tokenizers, ...).

Held-out text for evaluation: :func:`heldout_documents` reads the ODD-index questions of a
``spec_bench_dev.jsonl`` (never trained on).

:class:`ChunkCorpus` keeps every document's decoder tokens and its k-token chunks' encoder vectors (float16)
in flat tensors, cached as safetensors + json in the run folder, so the (frozen) encoder reads each chunk
once per run instead of once per step.

Example:
    >>> docs = load_documents(["pydoc"], limit_docs=2)
    >>> len(docs), docs[0].source
    (2, 'pydoc')
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...errors import InvalidInputError
from ...refrag.chunking import chunk_texts
from ...text_corpus import module_docstrings, pydoc_topics, stdlib_names
from ..spec_bench import TRAIN_PARITY, spec_bench_prompts

BUILTIN_CORPORA = ("spec_bench_train", "pydoc", "docstrings", "packages")
PACKAGES = ("numpy", "tqdm", "safetensors", "tokenizers", "packaging", "jinja2", "pydantic", "yaml", "requests")
TEXT_CATEGORIES = ("rag", "summarization")

__all__ = ["BUILTIN_CORPORA", "ChunkCorpus", "Document", "heldout_documents", "load_documents",
           "record_passages"]


@dataclass
class Document:
    """One training / evaluation text: where it comes from and its text (tokenized later)."""

    text: str
    source: str
    query: str | None = None  # the question that came with the passages, if any


def record_passages(rec: dict[str, Any]) -> tuple[str, str | None] | None:
    """The passages of a Spec-Bench record (``rag``: all lines but the last, which is the question;
    ``summarization``: the article), and its question; ``None`` for other categories."""
    text = str(rec["turns"][0])
    if rec.get("category") == "rag":
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if len(lines) < 2:
            return None
        return "\n".join(lines[:-1]), lines[-1]
    if rec.get("category") == "summarization":
        return text.removeprefix("Summarize:").strip(), None
    return None


def _spec_bench_docs(path: str | Path | None, parity: int | None, exclude_ids: set | None = None) -> Iterator[Document]:
    for rec in spec_bench_prompts(path, parity=parity):
        if exclude_ids and rec.get("question_id") in exclude_ids:
            continue
        got = record_passages(rec)
        if got is not None:
            yield Document(got[0], f"spec_bench:{rec.get('category')}:{rec.get('question_id')}", got[1])


def load_documents(names: Iterable[str], *, limit_docs: int | None = None,
                   spec_bench: str | Path | None = None) -> list[Document]:
    """The documents of built-in corpus names or paths (``.jsonl`` with a ``text`` field, or plain text with
    documents separated by two blank lines); ``spec_bench`` is the Spec-Bench dev file behind
    ``spec_bench_train`` (default: ``../shared/data/spec_bench_dev.jsonl``, an error when it is missing)."""
    out: list[Document] = []
    for name in names:
        if name == "spec_bench_train":
            docs: Iterable[Document] = _spec_bench_docs(spec_bench, parity=TRAIN_PARITY)
        elif name == "pydoc":
            docs = (Document(t, "pydoc") for t in pydoc_topics())
        elif name == "docstrings":
            docs = (Document(t, "docstrings") for t in module_docstrings(stdlib_names()))
        elif name == "packages":
            docs = (Document(t, "packages") for t in module_docstrings(PACKAGES))
        else:
            p = Path(name)
            if not p.is_file():
                raise InvalidInputError(f"unknown corpus {name!r}: use one of {BUILTIN_CORPORA} or a file path")
            if p.suffix == ".jsonl":
                with p.open(encoding="utf-8") as fh:
                    rows = [json.loads(line) for line in fh if line.strip()]
                docs = (Document(str(r["text"]), p.name) for r in rows if r.get("text"))
            else:
                docs = (Document(b, p.name) for b in p.read_text(encoding="utf-8").split("\n\n\n") if b.strip())
        for i, d in enumerate(docs):
            if limit_docs is not None and i >= limit_docs:
                break
            out.append(d)
    return out


def heldout_documents(path: str | Path) -> list[Document]:
    """Held-out passages: the ODD-index ``rag`` / ``summarization`` questions of a Spec-Bench dev file (the
    training split is the even index)."""
    return list(_spec_bench_docs(path, parity=1 - TRAIN_PARITY))


class ChunkCorpus:
    """Tokens and k-token chunk vectors of a list of documents, in flat tensors.

    ``tokens[tok_off[d]:tok_off[d+1]]`` are document ``d``'s decoder tokens; ``vectors[ch_off[d]:ch_off[d+1]]``
    its FULL k-token chunks' encoder vectors (a trailing partial chunk is not used for training); ``texts``
    the chunk texts (kept for an encoder that trains).
    """

    def __init__(self, tokens: torch.Tensor, tok_off: torch.Tensor, vectors: torch.Tensor | None,
                 ch_off: torch.Tensor, texts: list[str], k: int, meta: dict[str, Any] | None = None) -> None:
        self.tokens, self.tok_off, self.vectors, self.ch_off = tokens, tok_off, vectors, ch_off
        self.texts, self.k, self.meta = texts, int(k), dict(meta or {})

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, documents: Sequence[Document], tokenizer: Any, k: int, *, encoder: Any = None,
              max_chunks: int | None = None, min_chunks: int = 1, batch_size: int = 64,
              progress: bool = False) -> ChunkCorpus:
        """Tokenize ``documents`` with the DECODER's ``tokenizer``, keep those with ``min_chunks`` full chunks
        (up to ``max_chunks`` in all), and encode every chunk with ``encoder`` (a :class:`ChunkEncoder`;
        ``None`` keeps only the texts)."""
        toks: list[list[int]] = []
        sources: list[str] = []
        texts: list[str] = []
        n_total = 0
        for doc in documents:
            ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
            n = len(ids) // k
            if n < min_chunks:
                continue
            if max_chunks is not None and n_total + n > max_chunks:
                n = max_chunks - n_total
                if n < min_chunks:
                    break
            ids = ids[:n * k]
            toks.append(ids)
            sources.append(doc.source)
            texts.extend(chunk_texts(tokenizer, ids, k))
            n_total += n
        if not toks:
            raise InvalidInputError(f"no document has {min_chunks} full chunks of k={k} tokens")
        tok_off = torch.tensor([0] + [len(t) for t in toks]).cumsum(0)
        ch_off = tok_off // k
        tokens = torch.tensor([t for ids in toks for t in ids], dtype=torch.long)
        vectors = None
        meta: dict[str, Any] = {"k": k, "documents": len(toks), "chunks": int(ch_off[-1]), "tokens": int(tok_off[-1]),
                                "sources": sources}
        if encoder is not None:
            vectors = encoder.encode_chunks(texts, batch_size=batch_size, progress=progress).to(torch.float16)
            meta.update(encoder=encoder.name, pooling=encoder.pooling)
        return cls(tokens, tok_off, vectors, ch_off, texts, k, meta)

    @classmethod
    def cached(cls, path: str | Path, documents: Sequence[Document], tokenizer: Any, k: int, *, encoder: Any = None,
               max_chunks: int | None = None, min_chunks: int = 1, progress: bool = False,
               log: Any = None) -> ChunkCorpus:
        """:meth:`build`, or read it back from ``path`` (.safetensors + .json) when the same inputs made it."""
        path = Path(path)
        key = hashlib.sha256(json.dumps({
            "docs": [hashlib.sha256(d.text.encode()).hexdigest()[:16] for d in documents], "k": k,
            "tok": getattr(tokenizer, "name_or_path", ""), "vocab": len(tokenizer), "max": max_chunks,
            "min": min_chunks, "enc": getattr(encoder, "name", None), "pool": getattr(encoder, "pooling", None),
        }).encode()).hexdigest()[:20]
        if path.exists() and path.with_suffix(".json").exists():
            meta = json.loads(path.with_suffix(".json").read_text())
            if meta.get("key") == key:
                return cls.load(path)
        if log:
            log(f"encoding corpus {path.name} (once; cached afterwards)")
        corpus = cls.build(documents, tokenizer, k, encoder=encoder, max_chunks=max_chunks, min_chunks=min_chunks,
                           progress=progress)
        corpus.meta["key"] = key
        corpus.save(path)
        return corpus

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"tokens": self.tokens, "tok_off": self.tok_off, "ch_off": self.ch_off}
        if self.vectors is not None:
            state["vectors"] = self.vectors
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        tmp.replace(path)
        path.with_suffix(".json").write_text(json.dumps({**self.meta, "texts": self.texts}))

    @classmethod
    def load(cls, path: str | Path) -> ChunkCorpus:
        from safetensors.torch import load_file

        path = Path(path)
        st = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text())
        texts = meta.pop("texts")
        return cls(st["tokens"], st["tok_off"], st.get("vectors"), st["ch_off"], texts, int(meta["k"]), meta)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.tok_off) - 1

    @property
    def n_chunks(self) -> int:
        return int(self.ch_off[-1])

    @property
    def sources(self) -> list[str]:
        return list(self.meta.get("sources") or ["?"] * len(self))

    def doc_chunks(self, d: int) -> int:
        return int(self.ch_off[d + 1] - self.ch_off[d])

    def doc_tokens(self, d: int) -> torch.Tensor:
        return self.tokens[int(self.tok_off[d]):int(self.tok_off[d + 1])]

    def window(self, d: int, start: int, n: int,
               continuation: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]:
        """Chunks ``start .. start+n-1`` of document ``d``: (their tokens ``[n*k]``, their vectors ``[n, dim]``,
        their texts, the next ``continuation`` tokens)."""
        k = self.k
        toks = self.doc_tokens(d)
        c0 = int(self.ch_off[d]) + start
        vecs = self.vectors[c0:c0 + n] if self.vectors is not None else torch.empty(n, 0)
        ctx = toks[start * k:(start + n) * k]
        cont = toks[(start + n) * k:(start + n) * k + continuation]
        return ctx, vecs, self.texts[c0:c0 + n], cont

    def eligible(self, n: int, continuation: int = 0) -> list[int]:
        """Documents with room for ``n`` chunks followed by ``continuation`` tokens."""
        need = n * self.k + continuation
        return [d for d in range(len(self)) if int(self.tok_off[d + 1] - self.tok_off[d]) >= need]
