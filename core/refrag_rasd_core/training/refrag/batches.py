"""Training samples of REFRAG's phases and their decoder input (the engine's layout: one position per
compressed chunk, an expanded chunk's k token embeddings IN PLACE).

A :class:`Row` is ``prefix`` (raw tokens, e.g. the start token) + the context's chunks (compressed, except the
``expanded`` ones) + ``between`` (raw tokens, e.g. a question) + ``target`` (raw, teacher-forced; the loss is
the target's next-token cross-entropy):

* reconstruction: target = the context's own tokens (the decoder rebuilds what the vectors hold);
* continuation (CPT, mixed, policy reward, evaluation): target = the next ``o`` tokens of the document;
* SFT: a RAG prompt (:func:`~refrag_rasd_core.refrag.context.layout_prompt`) with an answer as target.

:func:`curriculum_chunks` is the paper's curriculum: the number of chunks per sample grows from 1 to the
maximum over a phase (without it reconstruction of many chunks does not train).

Example:
    >>> r = Row(prefix=[1], context=[5, 6, 7, 8], n_chunks=2, target=[9], expanded=[1])
    >>> r.slots(k=2, vec_index=0)
    ([1, -1, 7, 8, 9], 4)
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .corpus import ChunkCorpus

__all__ = ["Batch", "Row", "WindowSampler", "assemble", "curriculum_chunks", "expansion_sample"]


@dataclass
class Row:
    """One sample: ``prefix`` + ``n_chunks`` chunks of ``context`` + ``between`` + ``target``.

    Chunk ``j`` is ``context[j*k:(j+1)*k]``, or ``context[bounds[j]:bounds[j+1]]`` when ``bounds`` is given
    (several passages, each ending in a short chunk); ``breaks[j]`` are raw tokens placed before chunk ``j``
    (the separator between two passages of a RAG prompt)."""

    prefix: list[int]
    context: list[int]
    n_chunks: int
    target: list[int]
    expanded: list[int] = field(default_factory=list)
    between: list[int] = field(default_factory=list)
    doc: int = -1
    start: int = 0
    bounds: list[int] | None = None
    breaks: dict[int, list[int]] = field(default_factory=dict)

    def chunk(self, j: int, k: int) -> list[int]:
        """The tokens of chunk ``j``."""
        if self.bounds is not None:
            return self.context[self.bounds[j]:self.bounds[j + 1]]
        return self.context[j * k:(j + 1) * k]

    def prompt_ids(self, k: int) -> list[int]:
        """The row's input with every chunk as raw tokens (plain RAG's prompt), without the target."""
        out = list(self.prefix)
        for j in range(self.n_chunks):
            out.extend(self.breaks.get(j, ()))
            out.extend(self.chunk(j, k))
        return out + list(self.between)

    def slots(self, k: int, vec_index: int) -> tuple[list[int], int]:
        """Token ids of the row, with ``-(i + 1)`` for the i-th vector of the batch; and where the target starts."""
        out = list(self.prefix)
        exp = set(self.expanded)
        for j in range(self.n_chunks):
            out.extend(self.breaks.get(j, ()))
            if j in exp:
                out.extend(self.chunk(j, k))
            else:
                out.append(-(vec_index + j) - 1)
        out.extend(self.between)
        return out + list(self.target), len(out)


@dataclass
class Batch:
    """Rows and their chunk vectors (encoder space, rows' chunks concatenated in order) and texts."""

    rows: list[Row]
    vectors: torch.Tensor
    texts: list[str] = field(default_factory=list)

    @property
    def n_targets(self) -> int:
        return sum(len(r.target) for r in self.rows)


def assemble(rows: Sequence[Row], projected: torch.Tensor, embed: Any, k: int) -> dict[str, torch.Tensor]:
    """Decoder input of ``rows``: ``inputs_embeds`` ``[B, L, H]`` (right-padded), ``attention_mask``,
    ``vector_mask`` (``[B, L]``, True at compressed-chunk positions), and the
    (row, position) that PREDICTS each target token with the token ids (``pred_rows``, ``pred_pos``, ``labels``).

    ``projected``: the rows' chunk vectors in decoder space ``[sum n_chunks, H]`` (rows in order)."""
    weight = embed.weight
    seqs, starts = [], []
    v = 0
    for r in rows:
        s, t0 = r.slots(k, v)
        v += r.n_chunks
        seqs.append(s)
        starts.append(t0)
    L = max(len(s) for s in seqs)
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, :len(s)] = 1
    ids, mask = ids.to(weight.device), mask.to(weight.device)
    is_vec = ids < 0
    tok_emb = embed(ids.clamp(min=0))
    if bool(is_vec.any()):
        vec_idx = (-ids - 1).clamp(min=0)
        proj = projected.to(device=weight.device, dtype=tok_emb.dtype)
        tok_emb = torch.where(is_vec[..., None], proj[vec_idx.clamp(max=proj.shape[0] - 1)], tok_emb)
    pred_rows, pred_pos, labels = [], [], []
    for b, (r, t0) in enumerate(zip(rows, starts, strict=True)):
        n = len(r.target)
        pred_rows.extend([b] * n)
        pred_pos.extend(range(t0 - 1, t0 - 1 + n))
        labels.extend(r.target)
    dev = weight.device
    return {"inputs_embeds": tok_emb, "attention_mask": mask, "vector_mask": is_vec,
            "pred_rows": torch.tensor(pred_rows, dtype=torch.long, device=dev),
            "pred_pos": torch.tensor(pred_pos, dtype=torch.long, device=dev),
            "labels": torch.tensor(labels, dtype=torch.long, device=dev)}


def curriculum_chunks(progress: float, max_chunks: int, rng: random.Random, min_chunks: int = 1) -> int:
    """Chunks per sample at ``progress`` (0..1) of a phase: stage ``s`` grows linearly from ``min_chunks`` to
    ``max_chunks``; half of the samples use ``s``, the rest a uniform draw from the easier ``min_chunks..s``
    (the paper's data mixture: harder samples take a growing share, easy ones stay)."""
    span = max_chunks - min_chunks + 1
    stage = min_chunks + min(span - 1, int(max(0.0, progress) * span))
    if rng.random() < 0.5:
        return stage
    return rng.randint(min_chunks, stage)


def expansion_sample(n_chunks: int, fraction: float, rng: random.Random) -> int:
    """How many of ``n_chunks`` to leave uncompressed at ``fraction`` (randomized rounding, so the mean is
    exactly ``fraction * n_chunks``)."""
    x = fraction * n_chunks
    base = math.floor(x)
    return int(min(n_chunks, base + (1 if rng.random() < x - base else 0)))


class WindowSampler:
    """Random chunk-aligned windows of a :class:`ChunkCorpus` (documents weighted by their number of windows,
    times ``source_weights`` for documents whose source starts with a key)."""

    def __init__(self, corpus: ChunkCorpus, source_weights: dict[str, float] | None = None) -> None:
        self.corpus = corpus
        self.source_weights = dict(source_weights or {})
        self._cache: dict[tuple[int, int], tuple[list[int], list[float]]] = {}
        srcs = corpus.sources
        self._doc_w = [next((w for p, w in self.source_weights.items() if s.startswith(p)), 1.0) for s in srcs]

    def _eligible(self, n: int, continuation: int) -> tuple[list[int], list[float]]:
        key = (n, continuation)
        if key not in self._cache:
            docs = self.corpus.eligible(n, continuation)
            k = self.corpus.k
            w = [self._doc_w[d] * (self.corpus.doc_chunks(d) - n - (-(-continuation // k)) + 1) for d in docs]
            self._cache[key] = (docs, [max(x, 1e-9) for x in w])
        return self._cache[key]

    def max_chunks(self, continuation: int = 0) -> int:
        """The longest window (in chunks) some document allows with ``continuation`` tokens after it."""
        k = self.corpus.k
        return max((self.corpus.doc_chunks(d) - (-(-continuation // k)) for d in range(len(self.corpus))), default=0)

    def sample(self, rng: random.Random, n: int, continuation: int = 0) -> tuple[int, int]:
        """A (document, first chunk) with ``n`` chunks and ``continuation`` tokens after them."""
        docs, w = self._eligible(n, continuation)
        if not docs:
            raise ValueError(f"no document has {n} chunks + {continuation} tokens")
        d = rng.choices(docs, weights=w, k=1)[0]
        k = self.corpus.k
        last = self.corpus.doc_chunks(d) - n - (-(-continuation // k))
        return d, rng.randint(0, max(0, last))

    def rows(self, rng: random.Random, count: int, n: int, *, continuation: int = 0, prefix: Sequence[int] = (),
             n_expand: int = 0, reconstruct: bool = False) -> Batch:
        """``count`` rows of ``n`` chunks each: reconstruction rows (target = context) or continuation rows
        (target = the next ``continuation`` tokens), with ``n_expand`` random chunks per row uncompressed."""
        rows, vecs, texts = [], [], []
        for _ in range(count):
            d, s = self.sample(rng, n, 0 if reconstruct else continuation)
            ctx, v, t, cont = self.corpus.window(d, s, n, 0 if reconstruct else continuation)
            ctx_l = ctx.tolist()
            exp = sorted(rng.sample(range(n), n_expand)) if n_expand else []
            rows.append(Row(prefix=list(prefix), context=ctx_l, n_chunks=n, expanded=exp,
                            target=ctx_l if reconstruct else cont.tolist(), doc=d, start=s))
            vecs.append(v)
            texts.extend(t)
        return Batch(rows=rows, vectors=torch.cat(vecs, 0).float(), texts=texts)
