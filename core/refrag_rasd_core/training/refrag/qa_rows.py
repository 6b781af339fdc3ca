"""RAG question answering as REFRAG training data: questions with their retrieved passages in the engine's
layout, the chunks that hold a gold answer, and the decoder rows of the ``sft``, ``select`` and ``policy``
phases.

QA files are split and retrieved over by :mod:`refrag_rasd_core.training.qa_split`: the first ``holdout``
questions of each file are held out (never trained on, their gold passages left out of the retrieval corpus
too), and each training question retrieves its ``top_k`` passages from its file's remaining passages by
cosine similarity of mean-pooled encoder vectors (what the store's retriever does), in rank order, as the
engine would receive them.

Per example: the passages' decoder tokens, their chunk vectors (the checkpoint's encoder and pooling, what
a store keeps), the question's vector from the same encoder (what a question-aware policy reads), and the
global indices of the chunks holding a gold answer (case-insensitive match in the chunks' decoded text; an
answer across a chunk boundary marks both chunks: :func:`~refrag_rasd_core.refrag.chunking.answer_chunks`).
Everything is computed once per run and cached in the run folder (safetensors + json, no pickle).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...qa_file import QAItem
from ...refrag.chunking import answer_chunks, chunk_texts, chunk_token_ids
from ...refrag.context import layout_prompt
from ..qa_split import encoder_vectors, retrieve_top_k
from .batches import Row

__all__ = ["QAExample", "answer_chunks", "build_qa_examples", "rag_row"]


@dataclass
class QAExample:
    """One training question with its retrieved passages (see the module docstring)."""

    qid: str
    question: str
    answers: list[str]
    passages: list[list[int]]
    vectors: torch.Tensor           # [chunks, encoder_dim], the passages' chunks in order
    question_vector: torch.Tensor   # [encoder_dim]
    answer_chunks: list[int]
    gold_rank: int | None           # rank of the gold passage among the retrieved ones (None: not retrieved)

    @property
    def n_chunks(self) -> int:
        return int(self.vectors.shape[0])


def rag_row(tokenizer: Any, question: str, passages: Sequence[Sequence[int]], k: int, target: Sequence[int],
            expanded: Sequence[int] = ()) -> Row:
    """A training row laid out exactly as the engine lays out a RAG request (:func:`layout_prompt`): prefix,
    the passages' chunks with the separator between passages, the question and assistant turn, ``target``."""
    lay = layout_prompt(tokenizer, question, passages)
    context: list[int] = []
    bounds = [0]
    breaks: dict[int, list[int]] = {}
    for i, ids in enumerate(lay.passages):
        if i:
            breaks[len(bounds) - 1] = list(lay.separator)
        for c in chunk_token_ids(ids, k):
            context.extend(c)
            bounds.append(len(context))
    return Row(prefix=lay.prefix, context=context, n_chunks=len(bounds) - 1, target=list(target),
               expanded=sorted(expanded), between=lay.suffix, bounds=bounds, breaks=breaks)


def build_qa_examples(splits: Sequence[tuple[list[QAItem], list[QAItem], list[str]]], tokenizer: Any,
                      encoder: Any, cache_dir: str | Path, *, top_k: int = 5, limit: int | None = None,
                      log: Callable[[str], None] = print) -> list[QAExample]:
    """Training examples of :func:`~refrag_rasd_core.training.qa_split.load_qa_split`'s splits (the first ``limit``
    training questions per file), cached in ``cache_dir`` (keyed by the questions, the corpus, the encoder, its
    pooling, k and ``top_k``)."""
    from safetensors.torch import load_file, save_file

    k = encoder.k
    key_src = json.dumps({"q": [[it.qid for it in tr[:limit]] for tr, _, _ in splits],
                          "c": [hashlib.sha256("\x00".join(c).encode()).hexdigest() for _, _, c in splits],
                          "enc": encoder.name, "pool": encoder.pooling, "k": k, "top_k": top_k})
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    cache = Path(cache_dir) / f"qa-{key}"
    if not (cache.with_suffix(".json").exists() and cache.with_suffix(".safetensors").exists()):
        rows, chunk_vecs, qvecs = [], [], []
        n_chunks = 0
        for f, (train, _, corpus) in enumerate(splits):
            train = train[:limit]
            log(f"qa file {f}: {len(train)} training questions, retrieval over {len(corpus)} passages")
            qtexts = [it.question for it in train]
            top = retrieve_top_k(encoder, qtexts, corpus, top_k)
            qvecs.append(encoder_vectors(encoder, qtexts))  # the chunk pooling: what the policy compares chunks with
            used = sorted({i for t in top for i in t})
            ids = {i: tokenizer(corpus[i], add_special_tokens=False)["input_ids"] for i in used}
            vecs = encoder.encode_passages([ids[i] for i in used], progress=len(used) > 200)
            where: dict[int, tuple[int, int]] = {}
            for i, v in zip(used, vecs, strict=True):
                where[i] = (n_chunks, n_chunks + len(v))
                n_chunks += len(v)
                chunk_vecs.append(torch.from_numpy(v.astype("float32")))
            for it, t in zip(train, top, strict=True):
                texts = [c for i in t for c in chunk_texts(tokenizer, ids[i], k)]
                gold = [r for r, i in enumerate(t) if corpus[i] in it.gold]
                rows.append({"qid": it.qid, "question": it.question, "answers": it.answers,
                             "passages": [ids[i] for i in t], "chunks": [where[i] for i in t],
                             "answer_chunks": answer_chunks(texts, it.answers),
                             "gold_rank": gold[0] if gold else None})
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({"chunks": torch.cat(chunk_vecs, 0).to(torch.float16).contiguous(),
                   "questions": torch.cat(qvecs, 0).contiguous()}, str(cache.with_suffix(".safetensors")))
        cache.with_suffix(".json").write_text(json.dumps({"key": json.loads(key_src), "examples": rows}))
    meta = json.loads(cache.with_suffix(".json").read_text())
    tensors = load_file(str(cache.with_suffix(".safetensors")))
    chunks, qv = tensors["chunks"].float(), tensors["questions"].float()
    out = []
    for i, r in enumerate(meta["examples"]):
        vec = torch.cat([chunks[a:b] for a, b in r["chunks"]], 0)
        out.append(QAExample(qid=r["qid"], question=r["question"], answers=r["answers"], passages=r["passages"],
                             vectors=vec, question_vector=qv[i], answer_chunks=r["answer_chunks"],
                             gold_rank=r["gold_rank"]))
    return out
