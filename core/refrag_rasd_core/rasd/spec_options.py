"""The speculation settings of a request, :class:`SpecOptions`: the shape of the token trees every
speculative method builds. Checked once, on construction (a typo fails at the call, not in the loop).

Example:
    >>> SpecOptions.of({"max_nodes": 16}).max_nodes
    16
    >>> SpecOptions.of({"max_node": 16})
    Traceback (most recent call last):
    ...
    refrag_rasd_core.errors.InvalidInputError: unknown speculation option(s): max_node; known: adaptive, ...
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import InvalidInputError

__all__ = ["SpecOptions"]

_POSITIVE_INTS = ("max_nodes", "retrieval_len", "min_suffix", "max_occurrences", "draft_depth", "draft_top_k",
                  "draft_nodes", "prune_top_k")
_PROBABILITIES = ("draft_min_prob", "prune_min_prob")


@dataclass(frozen=True)
class SpecOptions:
    """Speculation settings (``GenerationConfig.spec``); defaults chosen by measurement on the 2-core CPU.

    ``max_nodes`` bounds a tree before the budget trims it; ``retrieval_len`` is how far a retrieved
    continuation reaches; ``draft_depth`` / ``draft_top_k`` / ``draft_nodes`` shape the EAGLE-2 draft tree,
    which stops growing once no frontier path has a draft probability of ``draft_min_prob``;
    ``prune_top_k`` / ``prune_min_prob`` are RASD's pruning rule (a retrieval branch survives when its first
    token is in the draft's top-k with at least that probability), applied when the retrieval match is at
    most ``prune_max_match`` tokens long (longer suffix matches are trusted over a small draft);
    ``adaptive`` turns the budget off (verify the whole tree every step) when False.
    """

    max_nodes: int = 32
    retrieval_len: int = 8
    min_suffix: int = 1
    max_occurrences: int = 64
    draft_depth: int = 5
    draft_top_k: int = 4
    draft_nodes: int = 16
    draft_min_prob: float = 0.1
    prune_top_k: int = 8
    prune_min_prob: float = 0.01
    prune_max_match: int = 2
    adaptive: bool = True

    def __post_init__(self) -> None:
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"speculation option {name} must be an integer >= 1, got {value!r}")
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise InvalidInputError(f"speculation option {name} must be a probability in [0, 1], got {value!r}")
        if isinstance(self.prune_max_match, bool) or not isinstance(self.prune_max_match, int) \
                or self.prune_max_match < 0:
            raise InvalidInputError(f"speculation option prune_max_match must be an integer >= 0, "
                                    f"got {self.prune_max_match!r}")
        if not isinstance(self.adaptive, bool):
            raise InvalidInputError(f"speculation option adaptive must be true or false, got {self.adaptive!r}")

    @classmethod
    def of(cls, spec: SpecOptions | Mapping[str, Any] | None) -> SpecOptions:
        """``spec`` as options: a :class:`SpecOptions` as it is, a mapping of option names (unknown names are
        refused, naming the known ones), ``None`` for the defaults."""
        if spec is None:
            return cls()
        if isinstance(spec, SpecOptions):
            return spec
        if not isinstance(spec, Mapping):
            raise InvalidInputError(f"spec must be a dict of speculation options, got {type(spec).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = set(spec) - names
        if unknown:
            raise InvalidInputError(f"unknown speculation option(s): {', '.join(sorted(map(str, unknown)))}; "
                                    f"known: {', '.join(sorted(names))}")
        return cls(**spec)

    def changed(self) -> dict[str, Any]:
        """The options that differ from the defaults (what a results file or a trace records)."""
        default = SpecOptions()
        return {k: v for k, v in asdict(self).items() if getattr(default, k) != v}
