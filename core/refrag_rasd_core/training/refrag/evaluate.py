"""Held-out quality of a trained REFRAG model: log-perplexity of a continuation under each context mode, and
reconstruction accuracy.

For windows of ``n_chunks`` chunks of held-out documents (the odd-index Spec-Bench questions' passages),
followed by ``continuation`` tokens, the mean NLL per continuation token (log-perplexity) given:

* ``none``         no context (the start token only);
* ``full``         the context as raw tokens;
* ``compressed``   every chunk compressed (p = 0);
* ``<policy>@<p>`` a fraction p of the chunks expanded in place, chosen by ``random`` / ``similarity`` /
  ``perplexity`` / ``rl`` (:func:`~refrag_rasd_core.refrag.policy.choose_expansions`; the query is the mean
  token embedding of the context).

``none`` and ``full`` are measured with the ORIGINAL decoder (adapters off: what a user has without REFRAG)
and with the trained one (``*_trained``); ``gap_recovered[mode] = (none - mode) / (none - full)`` against the
original decoder's ``none`` and ``full``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import torch

from ...refrag.chunking import chunk_token_ids
from ...refrag.policy import choose_expansions, chunk_perplexities
from .batches import Row
from .corpus import ChunkCorpus
from .qa_rows import rag_row
from .rl import selection_nll
from .trainer_view import TrainerView

__all__ = ["evaluate_quality", "evaluate_reconstruction", "evaluate_selection", "heldout_windows"]


def heldout_windows(corpus: ChunkCorpus, n_chunks: int, continuation: int, limit: int) -> list[tuple[int, int]]:
    """Up to ``limit`` (document, first chunk) windows, non-overlapping, round-robin over the documents."""
    per_doc = []
    for d in corpus.eligible(n_chunks, continuation):
        room = corpus.doc_chunks(d) - -(-continuation // corpus.k)
        per_doc.append([(d, s) for s in range(0, room - n_chunks + 1, n_chunks + -(-continuation // corpus.k))])
    out: list[tuple[int, int]] = []
    i = 0
    while len(out) < limit and any(i < len(w) for w in per_doc):
        out.extend(w[i] for w in per_doc if i < len(w))
        i += 1
    return out[:limit]


def _adapters(tr: TrainerView, on: bool):
    return contextlib.nullcontext() if on or not tr.lora_params else tr.decoder.disable_adapter()


def _mean_nll(tr: TrainerView, rows: list[Row], projected: list[torch.Tensor], batch: int = 8) -> list[float]:
    out: list[float] = []
    for s in range(0, len(rows), batch):
        part = rows[s:s + batch]
        pr = [p for p in projected[s:s + batch] if p.numel()]
        proj = torch.cat(pr, 0) if pr else torch.zeros(0, tr.embed.weight.shape[1], device=tr.device)
        out.extend(selection_nll(tr, part, proj).tolist())
    return out


@torch.no_grad()
def evaluate_quality(tr: TrainerView, heldout: ChunkCorpus, *, samples: int = 40, n_chunks: int = 16,
                     continuation: int = 32, fractions: Sequence[float] = (0.1, 0.25),
                     policies: Sequence[str] = ("random", "similarity", "perplexity", "rl"),
                     log: Any = print) -> dict[str, Any]:
    """The log-perplexities (see the module docstring) averaged over held-out windows."""
    t0 = time.time()
    k = tr.cfg.k
    wins = heldout_windows(heldout, n_chunks, continuation, samples)
    if not wins:
        return {"error": f"no held-out document has {n_chunks} chunks + {continuation} tokens"}
    start = tr.start_ids
    data = []
    for d, s in wins:
        ctx, vecs, _, cont = heldout.window(d, s, n_chunks, continuation)
        data.append((ctx.tolist(), vecs.float().to(tr.device), cont.tolist()))
    tr.decoder.eval()
    tr.policy.eval()
    empty = torch.zeros(0)
    res: dict[str, float] = {}
    for on, suffix in [(False, "")] + ([(True, "_trained")] if tr.lora_params else []):
        with _adapters(tr, on):
            res["none" + suffix] = _avg(_mean_nll(tr, [Row(prefix=start, context=[], n_chunks=0, target=c)
                                                       for _, _, c in data], [empty] * len(data)))
            res["full" + suffix] = _avg(_mean_nll(tr, [Row(prefix=start + x, context=[], n_chunks=0, target=c)
                                                       for x, _, c in data], [empty] * len(data)))
    if not tr.lora_params:
        res["none_trained"], res["full_trained"] = res["none"], res["full"]
    projected = [tr.projector(v) for _, v, _ in data]

    def mode(expanded: list[list[int]]) -> float:
        rows = [Row(prefix=start, context=x, n_chunks=n_chunks, target=c, expanded=e)
                for (x, _, c), e in zip(data, expanded, strict=True)]
        return _avg(_mean_nll(tr, rows, projected))

    res["compressed"] = mode([[] for _ in data])
    ppl_rank = None
    for pol in policies:
        if pol == "rl" and (tr.policy.reads_question_vector or not any(
                tr.history.get(ph, {}).get("steps") for ph in ("policy", "select"))):
            continue  # untrained, or a question-aware policy (next-paragraph windows have no question)
        for p in fractions:
            m = int(p * n_chunks + 1e-9)
            sels = []
            for i, (x, v, _) in enumerate(data):
                chunks = chunk_token_ids(x, k)
                if pol == "perplexity":  # the same ranking as choose_expansions, computed once per window
                    if ppl_rank is None:
                        ppl_rank = [chunk_perplexities(tr.lm, chunk_token_ids(xx, k)) for xx, _, _ in data]
                    sels.append(sorted(ppl_rank[i].topk(m).indices.tolist()))
                    continue
                q = tr.embed(torch.tensor(x, device=tr.device)).float()
                sels.append(choose_expansions(pol, m, chunk_vectors=v, projected=projected[i], query_embeds=q,
                                              chunks=chunks, decoder=tr.lm, network=tr.policy, seed=i))
            res[f"{pol}@{p}"] = mode(sels)
    gap = res["none"] - res["full"]
    out = {"nll": {k_: round(v, 4) for k_, v in res.items()},
           "gap_recovered": {k_: round((res["none"] - v) / gap, 4) if gap > 0 else None for k_, v in res.items()
                             if k_ not in ("none", "full")},
           "windows": len(data), "n_chunks": n_chunks, "continuation": continuation, "k": k,
           "context_tokens": n_chunks * k, "eval_s": round(time.time() - t0, 1)}
    log(f"quality: {out['nll']}")
    return out


def _avg(xs: list[float]) -> float:
    return float(sum(xs) / max(1, len(xs)))


@torch.no_grad()
def evaluate_reconstruction(tr: TrainerView, heldout: ChunkCorpus, *, chunks: Sequence[int] = (1, 4),
                            samples: int = 48) -> dict[str, Any]:
    """Teacher-forced reconstruction of held-out chunks from their vectors: token accuracy and NLL, for
    windows of each size in ``chunks`` (adapters off: the reconstruction phase's frozen decoder)."""
    out: dict[str, Any] = {}
    for n in chunks:
        wins = heldout_windows(heldout, n, 0, samples)
        if not wins:
            continue
        rows, proj = [], []
        for d, s in wins:
            ctx, v, _, _ = heldout.window(d, s, n, 0)
            rows.append(Row(prefix=tr.start_ids, context=ctx.tolist(), n_chunks=n, target=ctx.tolist()))
            proj.append(tr.projector(v.float().to(tr.device)))
        hits, nlls = [], []
        with _adapters(tr, False):
            for b in range(0, len(rows), 8):
                nll, _, hit = tr.row_nll(rows[b:b + 8], torch.cat(proj[b:b + 8], 0))
                hits.append(hit.float())
                nlls.append(nll)
        out[f"{n}_chunk"] = {"token_accuracy": round(float(torch.cat(hits).mean()), 4),
                             "nll": round(float(torch.cat(nlls).mean()), 4), "windows": len(rows)}
    return out


@torch.no_grad()
def evaluate_selection(tr: TrainerView, examples: Sequence[Any], *, fractions: Sequence[float] = (0.1, 0.25),
                       policies: Sequence[str] = ("random", "rank", "similarity", "question", "rl")
                       ) -> dict[str, Any]:
    """How often each policy expands a chunk that holds a gold answer, on held-out QA examples
    (:class:`~.qa_rows.QAExample`) whose retrieved passages hold one: ``hit_rate["<policy>@<p>"]``, and the
    share of chunks that hold an answer (what a random choice of one chunk hits).

    ``hit_rate_shuffled`` is the same with each question's chunks in a random order (seeded): what a policy
    finds by reading the chunks rather than by where they stand (``rank`` falls to ``random`` there)."""
    usable = [e for e in examples if e.answer_chunks]
    if not usable:
        return {"error": "no held-out question has its answer in its retrieved passages"}
    tr.policy.eval()
    trained = any(tr.history.get(ph, {}).get("steps") for ph in ("policy", "select"))
    hits: dict[str, dict[str, list[int]]] = {"hit_rate": {}, "hit_rate_shuffled": {}}
    for i, ex in enumerate(usable):
        row = rag_row(tr.tokenizer, ex.question, ex.passages, tr.cfg.k, [])
        q = tr.embed(torch.tensor(row.between, device=tr.device))
        all_chunks = [row.chunk(j, tr.cfg.k) for j in range(row.n_chunks)]
        shuffled = torch.randperm(ex.n_chunks, generator=torch.Generator().manual_seed(i)).tolist()
        for key, order in (("hit_rate", list(range(ex.n_chunks))), ("hit_rate_shuffled", shuffled)):
            v = ex.vectors[order].to(tr.device).float()
            chunks = [all_chunks[o] for o in order]
            answer = {j for j, o in enumerate(order) if o in set(ex.answer_chunks)}
            projected = tr.projector(v)
            for pol in policies:
                if pol == "rl" and not trained:
                    continue
                for p in fractions:
                    m = max(1, int(p * ex.n_chunks + 1e-9))
                    sel = choose_expansions(pol, m, chunk_vectors=v, projected=projected, query_embeds=q,
                                            chunks=chunks, network=tr.policy, seed=i,
                                            question_vector=ex.question_vector)
                    hits[key].setdefault(f"{pol}@{p}", []).append(int(bool(set(sel) & answer)))
    out: dict[str, Any] = {key: {k_: round(_avg(v_), 4) for k_, v_ in h.items()} for key, h in hits.items()}
    return {**out, "questions": len(usable),
            "answer_chunk_share": round(_avg([len(e.answer_chunks) / e.n_chunks for e in usable]), 4)}
