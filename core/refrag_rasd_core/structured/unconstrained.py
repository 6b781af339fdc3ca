"""The stand-in for a request without a response format: every call of the constraint interface is the
plain one (:mod:`~refrag_rasd_core.structured.constraint` has the real one). Kept apart from xgrammar so the
decoding step imports nothing it does not use.

Example:
    >>> import torch
    >>> from refrag_rasd_core.sampling import SamplingParams
    >>> UNCONSTRAINED.choose(torch.tensor([0.0, 2.0, 1.0]), SamplingParams(), None)
    1
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..sampling import SamplingParams, choose_token

__all__ = ["UNCONSTRAINED", "Unconstrained"]


class Unconstrained:
    """No format: plain choice, candidate trees as proposed, no masks."""

    active = False
    mask_s = 0.0

    def choose(self, logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
        return choose_token(logits, params, generator)

    def shape(self, tree: Any, root: int) -> Any:
        return tree

    def tree_masks(self, tree: Any) -> torch.Tensor | None:
        return None

    def mask_logits(self, logits: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        return logits

    def accept(self, tokens: Iterable[int]) -> None:
        pass


UNCONSTRAINED = Unconstrained()
