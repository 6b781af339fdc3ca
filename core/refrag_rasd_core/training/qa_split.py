"""QA files as training data for both trainers: the training / held-out split, and top-k passage retrieval.

QA files (NQ-open / SQuAD style, :mod:`refrag_rasd_core.qa_file`) are read at run time; the project ships
none. The first ``holdout`` questions of each file are held out: never trained on, and their gold passages
are left out of the training retrieval corpus too (so held-out text stays unseen; the qa suite's dev
questions are the first lines of these files). A training question retrieves its ``top_k`` passages from
its file's remaining passages by cosine similarity of mean-pooled encoder vectors (what the store's
retriever does), in rank order, as the engine would receive them.

Used by the REFRAG QA rows (:mod:`refrag_rasd_core.training.refrag.qa_rows`) and the draft head's RAG
prompts (:mod:`refrag_rasd_core.training.eagle.rag_prompts`).

Example:
    >>> import json, pathlib, tempfile
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "qa.jsonl"
    >>> _ = f.write_text("\\n".join(json.dumps({"id": f"q{i}", "question": f"Q{i}?", "answers": ["a"],
    ...                                          "passage": f"passage {i}"}) for i in range(3)))
    >>> train, held, corpus = load_qa_split([f], holdout=1)[0]
    >>> [it.qid for it in train], [it.qid for it in held], corpus
    (['q1', 'q2'], ['q0'], ['passage 1', 'passage 2'])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidInputError
from ..qa_file import QAItem, load_qa_file

__all__ = ["RETRIEVAL_MAX_LENGTH", "encoder_vectors", "load_qa_split", "retrieve_top_k"]

RETRIEVAL_MAX_LENGTH = 256  # encoder tokens read per passage for retrieval (all-MiniLM-L6-v2's own limit)


def load_qa_split(paths: Sequence[str | Path], holdout: int) -> list[tuple[list[QAItem], list[QAItem], list[str]]]:
    """Per file: (training questions, held-out questions, the training retrieval corpus: every distinct
    passage of the file except the held-out questions' gold passages)."""
    out = []
    for path in paths:
        items, passages = load_qa_file(path)
        if holdout >= len(items):
            raise InvalidInputError(f"{path}: {len(items)} questions, all held out by --qa-holdout {holdout}")
        held, train = items[:holdout], items[holdout:]
        unseen = {g for it in held for g in it.gold}
        out.append((train, held, [p for p in passages if p not in unseen]))
    return out


@torch.inference_mode()
def encoder_vectors(encoder: Any, texts: Sequence[str], *, batch: int = 32, **kw: Any) -> torch.Tensor:
    """``encoder(texts, **kw)`` in batches of ``batch``, on the CPU: ``[len(texts), encoder.dim]``."""
    out = [encoder(list(texts[s:s + batch]), **kw).cpu() for s in range(0, len(texts), batch)]
    return torch.cat(out, 0) if out else torch.empty(0, encoder.dim)


def retrieve_top_k(encoder: Any, questions: Sequence[str], corpus: Sequence[str], top_k: int) -> list[list[int]]:
    """Per question, the indices of its ``top_k`` passages of ``corpus`` in rank order: cosine similarity of
    mean-pooled encoder vectors (what the store's retriever does)."""
    pvec = torch.nn.functional.normalize(
        encoder_vectors(encoder, corpus, pooling="mean", max_length=RETRIEVAL_MAX_LENGTH), dim=-1)
    qvec = torch.nn.functional.normalize(
        encoder_vectors(encoder, questions, pooling="mean", max_length=RETRIEVAL_MAX_LENGTH), dim=-1)
    return (qvec @ pvec.T).topk(min(top_k, len(corpus)), dim=-1).indices.tolist()
