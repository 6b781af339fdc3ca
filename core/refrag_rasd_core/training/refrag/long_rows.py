"""Long-document summarization as REFRAG training data (``train-refrag --long-data``, the ``long`` phase).

A long document in the engine's exact layout: the document cut into passages as the store cuts them
(:class:`~refrag_rasd_core.splitting.PassageSplitter`, 256 tokens), the chat template with the passages and then
the instruction :data:`INSTRUCTION` (:func:`.qa_rows.rag_row`, the same code as the QA rows), the first chunks
expanded as the engine's ``policy="rank"`` with an ``expand_tokens`` budget expands them (the document's lead,
:func:`~refrag_rasd_core.refrag.policy.expansion_count`), the rest compressed. The target is the reference
summary (the document's abstract) cut at a sentence end within ``summary_tokens`` tokens, then EOS.

Data: a jsonl of ``{"id", "title", "document", "summary"}`` (``../shared/data/peps_dev.jsonl``, read at run
time; the project ships none). The split is fixed: line index % :data:`HELD_OUT_EVERY` == 0 is HELD OUT (never
trained on; the long-summary evaluation reads those), the rest is trained on (:func:`held_out_split`).

The passages' chunk vectors (the run's encoder and pooling) are computed once and cached in the run folder
(safetensors + json, no pickle).

Example:
    >>> train, held = held_out_split([{"id": str(i)} for i in range(7)])
    >>> [r["id"] for r in held], [r["id"] for r in train]
    (['0', '3', '6'], ['1', '2', '4', '5'])
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...refrag.policy import choose_expansions, expansion_count
from ...splitting import PassageSplitter
from .batches import Batch, Row
from .qa_rows import rag_row

__all__ = ["HELD_OUT_EVERY", "INSTRUCTION", "LongExample", "build_long_examples", "held_out_split", "long_row",
           "load_long_records", "summary_target", "trim_to_positions"]

INSTRUCTION = "Summarize the document in a few sentences."
HELD_OUT_EVERY = 3
PASSAGE_TOKENS = 256


def load_long_records(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a long-document jsonl, in file order."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def held_out_split(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training records, held-out records): line index % :data:`HELD_OUT_EVERY` == 0 is held out."""
    train = [r for i, r in enumerate(records) if i % HELD_OUT_EVERY]
    held = [r for i, r in enumerate(records) if not i % HELD_OUT_EVERY]
    return train, held


@dataclass
class LongExample:
    """One training document: its passages' decoder tokens, their chunk vectors (in order) and the target."""

    id: str
    passages: list[list[int]]
    vectors: torch.Tensor  # [chunks, encoder_dim]
    target: list[int]


def summary_target(tokenizer: Any, summary: str, max_tokens: int) -> list[int]:
    """The summary's tokens cut at the last sentence end within ``max_tokens`` (a hard cut when no sentence
    ends there), then EOS."""
    text = " ".join(summary.split())
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) > max_tokens:
        head = tokenizer.decode(ids[:max_tokens])
        ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", head)]
        cut = head[:ends[-1]] if ends else head
        ids = tokenizer(cut, add_special_tokens=False)["input_ids"][:max_tokens]
    eos = tokenizer.eos_token_id
    return list(ids) + ([int(eos)] if eos is not None else [])


def trim_to_positions(passages: Sequence[Sequence[int]], k: int, n_expand: int, max_positions: int,
                      extra: int) -> list[list[int]]:
    """The leading passages whose compressed prompt (``n_expand`` first chunks expanded) takes at most
    ``max_positions`` decoder positions with ``extra`` raw positions around them (at least one passage)."""
    out: list[list[int]] = []
    used, chunk = extra, 0
    for i, ids in enumerate(passages):
        cost = 0
        for s in range(0, len(ids), k):
            cost += min(k, len(ids) - s) if chunk < n_expand else 1
            chunk += 1
        cost += 2 if i else 0  # the separator between passages (two tokens or fewer)
        if out and used + cost > max_positions:
            break
        out.append(list(ids))
        used += cost
    return out


def long_row(tokenizer: Any, passages: Sequence[Sequence[int]], k: int, target: Sequence[int],
             expand_tokens: int) -> Row:
    """The engine's compressed request for :data:`INSTRUCTION` over ``passages`` with ``policy="rank"`` and an
    ``expand_tokens`` budget, as a training row (``target`` teacher-forced)."""
    row = rag_row(tokenizer, INSTRUCTION, passages, k, target)
    n = expansion_count(row.n_chunks, expand_tokens=expand_tokens, k=k)
    row.expanded = choose_expansions("rank", n, chunk_vectors=torch.empty(0), projected=torch.empty(0),
                                     query_embeds=torch.empty(0), chunks=[[]] * row.n_chunks)
    return row


def build_long_examples(records: Sequence[dict[str, Any]], tokenizer: Any, encoder: Any, cache_dir: str | Path, *,
                        summary_tokens: int = 128, max_doc_tokens: int = 24576,
                        log: Callable[[str], None] = print) -> list[LongExample]:
    """Training examples of ``records`` (the TRAINING split), cached in ``cache_dir`` (keyed by the ids, the
    texts, the encoder, its pooling, k and the limits). A document is kept up to ``max_doc_tokens`` tokens."""
    from safetensors.torch import load_file, save_file

    k = encoder.k
    h = hashlib.sha256()
    for r in records:
        h.update((str(r["id"]) + "\x00" + r["document"] + "\x00" + r["summary"] + "\x01").encode())
    key_src = json.dumps({"data": h.hexdigest(), "enc": encoder.name, "pool": encoder.pooling, "k": k,
                          "summary_tokens": summary_tokens, "max_doc_tokens": max_doc_tokens,
                          "passage_tokens": PASSAGE_TOKENS})
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    cache = Path(cache_dir) / f"long-{key}"
    if not (cache.with_suffix(".json").exists() and cache.with_suffix(".safetensors").exists()):
        split = PassageSplitter(tokenizer, PASSAGE_TOKENS)
        rows, all_ids = [], []
        for r in records:
            ids, total = [], 0
            for t in split(r["document"]):
                p = tokenizer(t, add_special_tokens=False)["input_ids"]
                if total + len(p) > max_doc_tokens:
                    break
                ids.append(p)
                total += len(p)
            rows.append({"id": str(r["id"]), "passages": ids,
                         "target": summary_target(tokenizer, r["summary"], summary_tokens)})
            all_ids.extend(ids)
        log(f"long: encoding {len(all_ids)} passages of {len(rows)} training documents")
        vecs = encoder.encode_passages(all_ids, progress=len(all_ids) > 200)
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({"chunks": torch.from_numpy(np.concatenate(vecs, 0)).to(torch.float16).contiguous()},
                  str(cache.with_suffix(".safetensors")))
        cache.with_suffix(".json").write_text(json.dumps({"key": json.loads(key_src), "examples": rows}))
    meta = json.loads(cache.with_suffix(".json").read_text())
    chunks = load_file(str(cache.with_suffix(".safetensors")))["chunks"].float()
    out, pos = [], 0
    for r in meta["examples"]:
        n = sum(-(-len(p) // k) for p in r["passages"])
        out.append(LongExample(id=r["id"], passages=r["passages"], vectors=chunks[pos:pos + n], target=r["target"]))
        pos += n
    return out


def long_batch(examples: Sequence[LongExample], tokenizer: Any, k: int, rng: random.Random, *, rows: int,
               budgets: Sequence[int], max_positions: int) -> Batch:
    """``rows`` long rows: a random training document, a budget from ``budgets`` (tokens expanded from the
    start, ``rank``), the document's tail dropped so the prompt fits ``max_positions`` decoder positions."""
    out, vecs = [], []
    for _ in range(rows):
        ex = examples[rng.randrange(len(examples))]
        b = int(rng.choice(list(budgets)))
        probe = rag_row(tokenizer, INSTRUCTION, [[0]], k, [])
        extra = len(probe.prefix) + len(probe.between) + len(ex.target)
        keep = trim_to_positions(ex.passages, k, b // k, max_positions, extra)
        row = long_row(tokenizer, keep, k, ex.target, b)
        row.doc = -1
        out.append(row)
        vecs.append(ex.vectors[:row.n_chunks])
    return Batch(rows=out, vectors=torch.cat(vecs, 0))
