"""Selective expansion: which chunks stay raw tokens (expanded) and which stay compressed vectors.

Policies, all choosing ``n`` of a prompt's chunks:

* ``none``        keep every chunk compressed (p = 0);
* ``random``      a seeded random choice (the paper's baseline);
* ``rank``        the first chunks in prompt order: passages come in retrieval order, so the best-ranked
                  passages are expanded whole first and the lower-ranked ones stay compressed (free);
* ``similarity``  the chunks whose projected vector is closest (cosine) to the question's mean token
                  embedding, in the decoder's input space (no encoder needed at query time);
* ``question``    the chunks whose encoder vector is closest (cosine) to the question's vector from the same
                  encoder (what a retriever does, per chunk; one encoder call on the question);
* ``perplexity``  the chunks the decoder finds hardest to predict on their own (highest token
                  perplexity; costs one batched decoder forward over the raw chunks: a quality baseline,
                  not a fast path);
* ``rl``          REFRAG's learned policy (:class:`ExpansionPolicy`): a 2-layer transformer over the
                  chunk embeddings, one logit per chunk, choosing chunks one after another with the
                  chosen ones masked (trained with PPO + a group baseline, see :mod:`.train`). A policy
                  built with ``query_dim = encoder_dim`` reads the question's ENCODER vector and each chunk's
                  cosine to it (a question-aware policy, trained on RAG questions); an older one reads the
                  question's mean decoder token embedding.

The number chosen comes from an expansion fraction ``p`` of the chunks or a raw-token budget
(:func:`expansion_count`).

Example:
    >>> expansion_count(10, expand=0.25)
    2
    >>> expansion_count(10, expand_tokens=40, k=16)
    2
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError

POLICIES = ("none", "random", "rank", "similarity", "question", "perplexity", "rl")

__all__ = ["POLICIES", "ExpansionPolicy", "expansion_count", "choose_expansions", "chunk_perplexities"]


def expansion_count(n_chunks: int, expand: float | None = None, *, expand_tokens: int | None = None,
                    k: int = 16) -> int:
    """How many of ``n_chunks`` to expand: ``floor(p * n)`` for a fraction, or ``budget // k`` for a
    token budget (the smaller when both are given)."""
    n = n_chunks
    if expand is not None:
        if not 0.0 <= float(expand) <= 1.0:
            raise InvalidInputError(f"expand must be a fraction in [0, 1], got {expand!r}")
        n = min(n, int(float(expand) * n_chunks + 1e-9))
    if expand_tokens is not None:
        if int(expand_tokens) < 0:
            raise InvalidInputError(f"expand_tokens must be >= 0, got {expand_tokens!r}")
        n = min(n, int(expand_tokens) // k)
    if expand is None and expand_tokens is None:
        n = 0
    return max(0, n)


class ExpansionPolicy(nn.Module):
    """REFRAG's expansion policy: a 2-layer transformer encoder over the chunk vectors (encoder space),
    with the question's mean token embedding (decoder space) as a leading token; one logit per chunk.

    Example:
        >>> pol = ExpansionPolicy(encoder_dim=8, decoder_dim=12, width=16, heads=2)
        >>> logits = pol(torch.randn(5, 8), torch.randn(12))
        >>> logits.shape
        torch.Size([5])
        >>> sorted(pol.select(logits, 2))
        [...]
    """

    def __init__(self, encoder_dim: int, decoder_dim: int, *, width: int = 128, heads: int = 4,
                 layers: int = 2, max_chunks: int = 4096, query_dim: int | None = None) -> None:
        super().__init__()
        self.encoder_dim, self.decoder_dim, self.width = int(encoder_dim), int(decoder_dim), int(width)
        self.heads, self.layers = int(heads), int(layers)
        self.query_dim = int(query_dim or decoder_dim)
        self.chunk_in = nn.Linear(encoder_dim, width)
        self.query_in = nn.Linear(self.query_dim, width)
        self.pos = nn.Embedding(max_chunks, width)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(width, 1)
        if self.reads_question_vector:
            # each chunk's cosine to the question, as an input feature and as a learned share of the logit
            self.sim_in = nn.Linear(1, width)
            self.sim_gain = nn.Parameter(torch.tensor(10.0))

    @property
    def reads_question_vector(self) -> bool:
        """Whether the query is the question's ENCODER vector (else its mean decoder token embedding)."""
        return self.query_dim == self.encoder_dim and self.query_dim != self.decoder_dim

    @property
    def config(self) -> dict[str, int]:
        cfg = {"encoder_dim": self.encoder_dim, "decoder_dim": self.decoder_dim, "width": self.width,
               "heads": self.heads, "layers": self.layers, "max_chunks": self.pos.num_embeddings}
        if self.query_dim != self.decoder_dim:
            cfg["query_dim"] = self.query_dim
        return cfg

    def forward(self, chunk_vectors: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``chunk_vectors`` ``[n, encoder_dim]``, ``query`` ``[query_dim]`` -> logits ``[n]``."""
        n = chunk_vectors.shape[0]
        dt = self.chunk_in.weight.dtype
        pos = torch.arange(n, device=chunk_vectors.device).clamp(max=self.pos.num_embeddings - 1)
        x = self.chunk_in(chunk_vectors.to(dt)) + self.pos(pos)
        sim = None
        if self.reads_question_vector:
            sim = torch.nn.functional.cosine_similarity(chunk_vectors.to(dt), query.to(dt)[None], dim=-1)
            x = x + self.sim_in(sim[:, None])
        q = self.query_in(query.to(dt)).reshape(1, -1)
        h = self.encoder(torch.cat([q, x], 0)[None])[0, 1:]
        logits = self.out(h).squeeze(-1)
        if sim is not None:
            logits = logits + self.sim_gain * sim
        return logits.float()

    @staticmethod
    def select(logits: torch.Tensor, n: int, *, sample: bool = False,
               generator: torch.Generator | None = None) -> list[int]:
        """Choose ``n`` chunks one after another, each from a softmax over those not chosen yet."""
        chosen: list[int] = []
        masked = logits.detach().clone().float()
        for _ in range(min(n, logits.shape[0])):
            if sample:
                i = int(torch.multinomial(torch.softmax(masked, -1), 1, generator=generator))
            else:
                i = int(masked.argmax())
            chosen.append(i)
            masked[i] = float("-inf")
        return chosen

    @staticmethod
    def log_prob(logits: torch.Tensor, chosen: Sequence[int]) -> torch.Tensor:
        """Log-probability of choosing ``chosen`` in that order (sequential, chosen ones masked)."""
        total = logits.new_zeros(())
        mask = torch.zeros_like(logits, dtype=torch.bool)
        for i in chosen:
            lp = torch.log_softmax(logits.masked_fill(mask, float("-inf")), -1)
            total = total + lp[i]
            mask = mask.clone()
            mask[i] = True
        return total


@torch.inference_mode()
def chunk_perplexities(model: Any, chunks: Sequence[Sequence[int]], batch_size: int = 32) -> torch.Tensor:
    """Mean token negative log-likelihood of each chunk read on its own by the decoder ``model``."""
    device = next(model.parameters()).device
    out = torch.zeros(len(chunks))
    for s in range(0, len(chunks), batch_size):
        part = chunks[s:s + batch_size]
        width = max(len(c) for c in part)
        ids = torch.zeros(len(part), width, dtype=torch.long)
        mask = torch.zeros(len(part), width, dtype=torch.long)
        for j, c in enumerate(part):
            ids[j, :len(c)] = torch.tensor(c)
            mask[j, :len(c)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(device))[..., 0]
        m = mask[:, 1:].to(device).float()
        nll = -(lp * m).sum(1) / m.sum(1).clamp(min=1.0)
        out[s:s + len(part)] = nll.cpu()
    return out


def choose_expansions(policy: str, n: int, *, chunk_vectors: torch.Tensor, projected: torch.Tensor,
                      query_embeds: torch.Tensor, chunks: Sequence[Sequence[int]], decoder: Any = None,
                      network: ExpansionPolicy | None = None, seed: int | None = None,
                      question_vector: torch.Tensor | Callable[[], torch.Tensor] | None = None) -> list[int]:
    """The indices (into the prompt's chunks) of the ``n`` chunks ``policy`` expands.

    ``query_embeds``: the question's decoder token embeddings ``[t, H]``; ``question_vector``: its encoder
    vector ``[encoder_dim]`` (or a function computing it, called only by the policies that read it:
    ``question`` and a question-aware ``rl``)."""
    if policy not in POLICIES:
        raise InvalidInputError(f"unknown expansion policy {policy!r}; choose one of {', '.join(POLICIES)}")
    total = len(chunks)
    n = min(int(n), total)
    if n <= 0 or policy == "none":
        return []
    if policy == "random":
        g = torch.Generator().manual_seed(0 if seed is None else int(seed))
        return sorted(torch.randperm(total, generator=g)[:n].tolist())
    if policy == "rank":
        return list(range(n))
    if policy == "similarity":
        q = query_embeds.float().mean(0)
        sims = torch.nn.functional.cosine_similarity(projected.float(), q[None], dim=-1)
        return sorted(sims.topk(n).indices.tolist())
    if policy == "question":
        qv = _question_vector(question_vector)
        sims = torch.nn.functional.cosine_similarity(chunk_vectors.float(), qv.float().to(chunk_vectors.device)[None],
                                                     dim=-1)
        return sorted(sims.topk(n).indices.tolist())
    if policy == "perplexity":
        if decoder is None:
            raise InvalidInputError("the perplexity policy needs the decoder")
        return sorted(chunk_perplexities(decoder, chunks).topk(n).indices.tolist())
    if network is None:
        raise InvalidInputError(
            "the rl policy needs a trained expansion policy in the REFRAG checkpoint (train one with "
            "`refrag-rasd train-refrag --phases policy`), or use policy='similarity' / 'perplexity' / 'random'"
        )
    device = next(network.parameters()).device
    query = (_question_vector(question_vector) if network.reads_question_vector
             else query_embeds.float().mean(0))
    with torch.inference_mode():
        logits = network(chunk_vectors.to(device), query.to(device))
    return sorted(network.select(logits, n))


def _question_vector(question_vector: torch.Tensor | Callable[[], torch.Tensor] | None) -> torch.Tensor:
    if question_vector is None:
        raise InvalidInputError("this expansion policy reads the question's encoder vector; none was given")
    qv = question_vector() if callable(question_vector) else question_vector
    return torch.as_tensor(qv, dtype=torch.float32).reshape(-1)
