"""Per-call generation statistics and results.

Example:
    >>> s = GenerationStats(method="vanilla", prompt_tokens=10, new_tokens=5, target_forwards=5)
    >>> s.accepted_per_forward
    1.0
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class GenerationStats:
    """What one generation cost. Times are seconds; ``ttft_s`` includes the prefill forward.

    ``target_forwards`` counts decoding forwards of the target after the prefill; every one of them emits
    ``accepted + 1`` tokens (``accepted`` draft tokens and the target's own bonus token), so
    ``accepted_per_forward`` (the speculative methods' "mean accepted tokens") is 1.0 for vanilla decoding.
    ``retrieval_s`` is the time in datastore / prompt lookups, ``draft_s`` the rest of proposing trees (the
    draft model, tree building, the budget), ``verify_s`` the target's decoding forwards with acceptance.
    """

    method: str = "vanilla"
    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0
    total_s: float = 0.0
    target_forwards: int = 0
    finish_reason: str = ""
    draft_s: float = 0.0
    verify_s: float = 0.0
    retrieval_s: float = 0.0
    tree_nodes: int = 0
    context: str = "none"
    context_reason: str = ""  # why ``context="auto"`` left its usual point (e.g. passages past the window)
    prefill_positions: int = 0
    cached_tokens: int = 0  # prefill positions reused from an earlier request (the engine's prefix cache)
    chunks: int = 0
    expanded_chunks: int = 0
    expanded: list[int] = field(default_factory=list)  # which chunks (global index, prompt order) stayed raw
    accepted_hist: Counter = field(default_factory=Counter)
    grammar_s: float = 0.0  # structured output: computing the grammar's masks and shaping candidate trees

    @property
    def decode_s(self) -> float:
        return max(self.total_s - self.ttft_s, 0.0)

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first one, per second of decoding (the first token comes with the prefill)."""
        n = self.new_tokens - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        """All new tokens per second of the whole call (prefill included)."""
        return self.new_tokens / self.total_s if self.total_s > 0 else 0.0

    @property
    def accepted_per_forward(self) -> float:
        """Mean tokens emitted per decoding forward of the target (1.0 = no speculation gain)."""
        n = sum(self.accepted_hist.values())
        if n == 0:
            return 1.0 if self.target_forwards else 0.0
        return sum(k * v for k, v in self.accepted_hist.items()) / n

    def count_step(self, step: Any) -> None:
        """Add one speculative step's costs (a :class:`~refrag_rasd_core.rasd.step.StepResult`)."""
        self.draft_s += step.propose_s
        self.verify_s += step.verify_s
        self.tree_nodes += step.tree_nodes
        self.target_forwards += 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accepted_hist"] = {str(k): v for k, v in sorted(self.accepted_hist.items())}
        d.update(decode_s=self.decode_s, decode_tokens_per_s=self.decode_tokens_per_s,
                 tokens_per_s=self.tokens_per_s, accepted_per_forward=self.accepted_per_forward)
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}


@dataclass
class GenerationResult:
    """The outcome of :meth:`Engine.generate`: the text, the new token ids and the statistics."""

    text: str
    token_ids: list[int]
    stats: GenerationStats
    tools: bool = False  # the call offered tools: ``tool_calls`` reads them from the text
    _parsed: tuple[str, list[dict[str, Any]]] | None = field(default=None, repr=False, compare=False)

    @property
    def finish_reason(self) -> str:
        """``stop``, ``length``, or ``tool_calls`` when the answer called a tool."""
        return "tool_calls" if self.tool_calls else self.stats.finish_reason

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """The tool calls of the answer (``id``, ``name``, ``arguments``), when the call offered tools."""
        return self._tool_parse()[1]

    @property
    def content(self) -> str:
        """The answer's text without its tool-call blocks."""
        return self._tool_parse()[0]

    def _tool_parse(self) -> tuple[str, list[dict[str, Any]]]:
        if self._parsed is None:
            from .structured.tool_calls import parse_tool_calls

            self._parsed = parse_tool_calls(self.text) if self.tools else (self.text, [])
        return self._parsed
