"""RAG requests as draft-head training prompts: what users send the engine, laid out the way it lays them out.

A draft head learns the target's next feature from the target's own text, so the closer its training text is
to real requests, the more it accepts. The engine's most common request is a question over retrieved
passages; this module turns the training questions of NQ-open / SQuAD style files (read at run time, never
shipped) into such requests: each question retrieves its ``top_k`` passages from its file's training corpus
(:func:`~refrag_rasd_core.training.qa_split.retrieve_top_k`, what the store's retriever does) and is laid
out by :func:`~refrag_rasd_core.refrag.context.layout_prompt` exactly as a plain-RAG request is. The target
then answers them (self-distillation, :func:`~refrag_rasd_core.training.eagle.features.generate_self_distill`).

The first ``holdout`` questions of each file, and their gold passages, are left out, as the REFRAG QA training
and the qa suite leave them out (:func:`~refrag_rasd_core.training.qa_split.load_qa_split`).

Example:
    >>> import pathlib, tempfile
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "qa.jsonl"
    >>> _ = f.write_text("")
    >>> rag_training_record([f], holdout=300, top_k=4, limit=320)[0]["selection"]
    'questions 300..619 of the file (the first 300 and their gold passages held out)'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...shared_data import file_sha256

__all__ = ["rag_training_prompts", "rag_training_record"]


def rag_training_prompts(tokenizer: Any, files: Sequence[str | Path], encoder: Any, *, holdout: int = 300,
                         top_k: int = 4, limit: int | None = None) -> list[list[int]]:
    """Token ids of plain-RAG requests for the training questions of ``files`` (the first ``limit`` per file
    after the ``holdout`` held-out ones), each over its ``top_k`` retrieved passages in rank order."""
    from ...refrag.context import layout_prompt
    from ..qa_split import load_qa_split, retrieve_top_k

    prompts: list[list[int]] = []
    for train, _, corpus in load_qa_split(list(files), holdout):
        train = train[:limit]
        top = retrieve_top_k(encoder, [it.question for it in train], corpus, top_k)
        used = sorted({i for t in top for i in t})
        ids = {i: tokenizer(corpus[i], add_special_tokens=False)["input_ids"] for i in used}
        for it, t in zip(train, top, strict=True):
            prompts.append(layout_prompt(tokenizer, it.question, [ids[i] for i in t]).full_ids())
    return prompts


def rag_training_record(files: Sequence[str | Path], *, holdout: int, top_k: int, limit: int | None) -> list[dict]:
    """What a head trained on these prompts records: each file's name and sha256 and the selection (no text)."""
    return [{"file": Path(f).name, "sha256": file_sha256(f), "top_k": top_k,
             "selection": f"questions {holdout}..{'' if limit is None else holdout + limit - 1} of the file "
                          f"(the first {holdout} and their gold passages held out)"} for f in files]
