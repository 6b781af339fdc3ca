"""Sampling settings and the logits -> probabilities transform shared by every decoding method.

Greedy decoding is ``temperature == 0``. Otherwise temperature, then top-k, then top-p (nucleus) are applied
to the logits, in that order (as transformers' ``generate`` does), and the result is a probability
distribution. Speculative verification applies the same transform to the target's logits, so sampled
speculative output keeps exactly the distribution of sampled vanilla output.

Example:
    >>> import torch
    >>> from refrag_rasd_core.sampling import SamplingParams, logits_to_probs
    >>> p = logits_to_probs(torch.tensor([[2.0, 1.0, 0.0]]), SamplingParams(temperature=1.0, top_k=2))
    >>> p[0, 2].item()
    0.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import InvalidInputError


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen: ``temperature`` 0 is greedy; ``top_k`` 0 and ``top_p`` 1 disable them."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or math.isnan(self.temperature) or self.temperature < 0:
            raise InvalidInputError(f"temperature must be a number >= 0 (0 = greedy), got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not (0.0 < self.top_p <= 1.0):
            raise InvalidInputError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise InvalidInputError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def logits_to_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Turn ``[..., V]`` logits into sampling probabilities (float32) under ``params`` (not for greedy)."""
    logits = logits.float() / max(params.temperature, 1e-6)
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cum <= (1.0 - params.top_p)
        remove_sorted[..., -1] = False  # always keep the most likely token
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits.softmax(dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """Draw one token id from a ``[V]`` probability vector."""
    return int(torch.multinomial(probs, 1, generator=generator).item())


def choose_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """The next token from ``[V]`` logits: the argmax when greedy, else a draw under ``params``."""
    if params.greedy:
        return int(logits.argmax())
    return sample(logits_to_probs(logits, params), generator)


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A torch generator seeded with ``seed`` on ``device`` (``None`` = the global RNG)."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen
