"""REFRAG's prefill input for one request: the passages' chunk vectors (stored, or encoded now), projected
into the decoder's embedding space, with the chunks the expansion policy chooses kept as raw tokens.

Example:
    >>> from refrag_rasd_core.refrag.compress import mixed_input
    >>> from refrag_rasd_core.refrag.context import layout_prompt
    >>> layout = layout_prompt(engine.tokenizer, question, [p.token_ids for p in passages])   # doctest: +REAL_MODEL
    >>> mixed = mixed_input(engine.refrag, engine.model, layout, passages, expand=0.25, policy="rl",
    ...                     encoder=engine.refrag_encoder, question=question)                # doctest: +REAL_MODEL
    >>> mixed.length < len(layout.full_ids()), len(mixed.expanded) > 0                       # doctest: +REAL_MODEL
    (True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInputError
from .chunking import chunk_token_ids, num_chunks
from .context import build_compressed_input
from .policy import choose_expansions, expansion_count

__all__ = ["chunk_vectors", "mixed_input"]


def chunk_vectors(refrag: Any, passages: Sequence[Any], ids: Sequence[Sequence[int]],
                  encoder: Callable[[], Any]) -> list[Any]:
    """Each passage's chunk embeddings: the stored ones when a passage carries them (checked against the
    checkpoint's k and encoder width), else encoded now by ``encoder()`` (called only if one is missing)."""
    given = [getattr(p, "chunk_embeddings", None) for p in passages]
    out: list[Any] = [None] * len(ids)
    missing = []
    for i, (vec, toks) in enumerate(zip(given, ids, strict=True)):
        if vec is None:
            missing.append(i)
            continue
        want = (num_chunks(len(toks), refrag.k), refrag.encoder_dim)
        if tuple(np.shape(vec)) != want:
            raise InvalidInputError(
                f"passage {i}: chunk embeddings of shape {tuple(np.shape(vec))}, expected {want} for "
                f"{len(toks)} tokens at k={refrag.k} with a {refrag.encoder_dim}-wide encoder: the store was built "
                "with another encoder or chunk size; re-index it"
            )
        out[i] = vec
    if missing:
        for i, vec in zip(missing, encoder().encode_passages([list(ids[i]) for i in missing]), strict=True):
            out[i] = vec
    return out


def mixed_input(refrag: Any, decoder: Any, layout: Any, passages: Sequence[Any], *, expand: float | None = None,
                expand_tokens: int | None = None, policy: str = "auto", seed: int | None = None,
                encoder: Callable[[], Any], question: str = "", raw_passages: Sequence[int] = ()) -> Any:
    """The decoder input of a compressed request (:func:`~refrag_rasd_core.refrag.context.build_compressed_input`):
    ``refrag`` a :class:`~refrag_rasd_core.refrag.RefragModel`, ``decoder`` the target model, ``layout`` the
    request's :class:`~refrag_rasd_core.refrag.context.PromptLayout`, ``passages`` what the caller gave (their
    stored chunk embeddings are used); ``policy="auto"`` is the checkpoint's trained policy, else
    ``similarity``. A question-aware policy reads ``encoder().encode_question(question)``. ``raw_passages``:
    passages (layout order) whose chunks all stay raw whatever the policy says (a conversation's passages read
    as text); the expansion share applies to the other chunks."""
    vectors = chunk_vectors(refrag, passages, layout.passages, encoder)
    dtype = decoder.dtype
    device = next(decoder.parameters()).device
    projected = [refrag.project(v, dtype=dtype) if len(v) else
                 torch.empty(0, decoder.config.hidden_size, dtype=dtype, device=refrag.device) for v in vectors]
    counts = [num_chunks(len(p), refrag.k) for p in layout.passages]
    starts = [sum(counts[:i]) for i in range(len(counts) + 1)]
    forced = {c for i in raw_passages for c in range(starts[i], starts[i + 1])}
    name = policy if policy != "auto" else ("rl" if refrag.policy is not None else "similarity")
    embed = decoder.get_input_embeddings()
    chunks = [c for p in layout.passages for c in chunk_token_ids(p, refrag.k)]
    flat = torch.cat([torch.as_tensor(v, dtype=torch.float32) for v in vectors]) if vectors else None
    all_projected = torch.cat(projected) if projected else None
    # each block (a turn's passages) is chosen for on its own, with its own question, exactly as in its own
    # turn: a turn's passages read the same in every later turn (the prefix cache reuses them)
    sizes = list(getattr(layout, "block_sizes", None) or [len(layout.passages)])
    queries = list(getattr(layout, "block_queries", None) or [layout.suffix])
    texts = list(getattr(layout, "block_questions", None) or [question])
    if len(queries) != len(sizes):
        queries, texts, sizes = [layout.suffix], [question], [len(layout.passages)]
    chosen: list[int] = []
    p0 = c0 = 0
    for size, query_ids, text in zip(sizes, queries, texts, strict=True):
        c1 = starts[p0 + size]
        mine = {i - c0 for i in forced if c0 <= i < c1}
        n = expansion_count(c1 - c0 - len(mine), expand, expand_tokens=expand_tokens, k=refrag.k)
        if n and len(mine) < c1 - c0:
            with torch.inference_mode():
                query = embed(torch.tensor(query_ids, device=device))
            got = choose_expansions(name, min(c1 - c0, n + len(mine)), chunk_vectors=flat[c0:c1],
                                    projected=all_projected[c0:c1], query_embeds=query, chunks=chunks[c0:c1],
                                    decoder=decoder, network=refrag.policy, seed=seed,
                                    question_vector=lambda t=text: encoder().encode_question(t))
            chosen += [c0 + i for i in got if i not in mine][:n]
        p0, c0 = p0 + size, c1
    with torch.inference_mode():
        return build_compressed_input(layout, embed, projected, refrag.k, sorted({*chosen, *forced}))
