"""Per-step random sources of the trainers: each training step's randomness is seeded by (seed, phase, step),
so a resumed run draws exactly what an uninterrupted one would.

Example:
    >>> step_rng(0, "cpt", 5).randint(0, 9) == step_rng(0, "cpt", 5).randint(0, 9)
    True
    >>> step_seed(0, "policy", 1) == step_seed(0, "policy", 2)
    False
"""

from __future__ import annotations

import hashlib
import random

__all__ = ["step_rng", "step_seed"]


def step_rng(seed: int, phase: str, step: int) -> random.Random:
    """The random source of one training step (a resumed run draws what an uninterrupted one would)."""
    return random.Random(f"{seed}:{phase}:{step}")


def step_seed(seed: int, phase: str, step: int) -> int:
    """A torch generator seed for one training step (see :func:`step_rng`)."""
    return int(hashlib.sha256(f"{seed}:{phase}:{step}".encode()).hexdigest()[:12], 16)
