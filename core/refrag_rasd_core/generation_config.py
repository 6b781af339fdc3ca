"""What one generation call asks for: :class:`GenerationConfig` (checked on construction) and the methods.

Example:
    >>> from refrag_rasd_core.generation_config import GenerationConfig, merge_config
    >>> merge_config(None, {"max_tokens": 8, "method": "pld"}).max_new_tokens
    8
    >>> GenerationConfig(method="fast")
    Traceback (most recent call last):
    ...
    refrag_rasd_core.errors.InvalidInputError: unknown method 'fast'; choose one of vanilla, pld, rest, draft, rasd
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import InvalidInputError
from .sampling import SamplingParams

__all__ = ["METHODS", "GenerationConfig", "Prompt", "merge_config"]

Prompt = str | Sequence[dict[str, str]]

METHODS = ("vanilla", "pld", "rest", "draft", "rasd")


@dataclass(frozen=True)
class GenerationConfig:
    """Generation settings. ``temperature`` 0 is greedy; ``stop`` strings end the answer (not included).

    ``method`` is one of ``vanilla``, ``pld``, ``rest``, ``draft``, ``rasd`` (see :mod:`refrag_rasd_core.rasd`).

    ``context`` says how the passages enter the decoder: ``"none"`` (the prompt is used as given; passages
    only feed the speculative datastore), ``"text"`` (plain RAG: the engine lays the passages' tokens out
    around the question) or ``"compressed"`` (REFRAG: one projected chunk vector per k tokens; a fraction
    ``expand`` of the chunks, or ``expand_tokens`` raw tokens' worth, stays raw, chosen by ``policy``:
    ``none``, ``random``, ``similarity``, ``perplexity``, ``rl`` or ``auto`` = ``rl`` when the checkpoint
    has a trained policy, else ``similarity``).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    method: str = "vanilla"
    spec: dict[str, Any] = field(default_factory=dict)
    context: str = "none"
    expand: float = 0.0
    expand_tokens: int | None = None
    policy: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise InvalidInputError(f"max_new_tokens must be an integer, got {self.max_new_tokens!r}")
        if self.max_new_tokens < 1:
            raise InvalidInputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.method not in METHODS:
            raise InvalidInputError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        from .refrag.context import CONTEXT_MODES
        from .refrag.policy import POLICIES, expansion_count

        if self.context not in CONTEXT_MODES:
            raise InvalidInputError(f"unknown context mode {self.context!r}; choose one of {', '.join(CONTEXT_MODES)}")
        if self.policy != "auto" and self.policy not in POLICIES:
            raise InvalidInputError(f"unknown expansion policy {self.policy!r}; choose auto or one of {', '.join(POLICIES)}")
        expansion_count(1, self.expand, expand_tokens=self.expand_tokens)  # validates the ranges
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        object.__setattr__(self, "stop", stop)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise InvalidInputError(f"seed must be an integer or None, got {self.seed!r}")
        self.sampling  # validates temperature / top_p / top_k  # noqa: B018

    @property
    def sampling(self) -> SamplingParams:
        try:
            t, p, k = float(self.temperature), float(self.top_p), self.top_k
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"temperature and top_p must be numbers (temperature 0 = greedy, top_p in "
                                    f"(0, 1]), got {self.temperature!r} and {self.top_p!r}") from exc
        return SamplingParams(temperature=t, top_p=p, top_k=k)


def merge_config(config: GenerationConfig | None, overrides: dict[str, Any]) -> GenerationConfig:
    """``config`` (default: the defaults) with a call's keyword ``overrides`` (``max_tokens`` is accepted
    for ``max_new_tokens``); an unknown setting raises :class:`~refrag_rasd_core.errors.InvalidInputError`."""
    cfg = config or GenerationConfig()
    if not overrides:
        return cfg
    if "max_tokens" in overrides:  # the name LangChain / OpenAI users know
        overrides["max_new_tokens"] = overrides.pop("max_tokens")
    unknown = set(overrides) - set(GenerationConfig.__dataclass_fields__)
    if unknown:
        raise InvalidInputError(f"unknown generation setting(s): {', '.join(sorted(unknown))}")
    return replace(cfg, **overrides)
