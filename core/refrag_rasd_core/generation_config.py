"""What one generation call asks for: :class:`GenerationConfig`, the one place where every generation
setting is defaulted and checked. The engine, the LangChain and LlamaIndex classes, the server and the CLI
all build one (from keywords with :meth:`GenerationConfig.of`, or by overriding another with
:meth:`GenerationConfig.merge`) and hand it over; nothing else validates a setting.

Example:
    >>> cfg = GenerationConfig.of(max_tokens=8, method="pld")
    >>> cfg.max_tokens, cfg.method, cfg.context
    (8, 'pld', 'auto')
    >>> cfg.merge(max_new_tokens=4).max_tokens       # transformers' name for the same limit
    4
    >>> GenerationConfig(method="fast")
    Traceback (most recent call last):
    ...
    refrag_rasd_core.errors.InvalidInputError: unknown method 'fast'; choose one of vanilla, pld, rest, draft, rasd
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import InvalidInputError
from .rasd.proposers import METHODS
from .rasd.spec_options import SpecOptions
from .refrag.policy import POLICIES
from .sampling import SamplingParams
from .structured.response_format import ResponseFormat
from .structured.tool_calls import normalize_tool_choice, normalize_tools, tool_call_format

__all__ = ["CONTEXTS", "HISTORIES", "METHODS", "POLICY_CHOICES", "GenerationConfig", "Prompt", "SpecOptions"]

Prompt = str | Sequence[dict[str, Any]]
"""A string, or chat messages (``role``, ``content``; a user message may carry ``passages``)."""

CONTEXTS = ("auto", "none", "text", "compressed")
"""How passages enter the decoder: ``auto`` (the engine's measured operating point), ``none`` (the prompt as
given; passages feed RASD's datastore only), ``text`` (plain RAG) or ``compressed`` (REFRAG)."""

HISTORIES = ("auto", "text", "compressed")
"""How a conversation's earlier turns' passages enter the decoder: ``auto`` (as the question's, or the
checkpoint's measured point), ``text`` or ``compressed`` (REFRAG)."""

POLICY_CHOICES = ("auto", *POLICIES)
"""REFRAG expansion policies: ``auto`` = ``rl`` when the checkpoint has a trained policy, else ``similarity``."""

ALIASES = {"max_new_tokens": "max_tokens"}
"""Other names accepted for a setting (transformers calls the token limit ``max_new_tokens``)."""

SEED_LIMIT = 2**63
"""Seeds live in [0, 2**63): what torch's generator takes."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class GenerationConfig:
    """Generation settings, each defaulted and checked here and nowhere else.

    * ``max_tokens``: the most tokens to generate (``max_new_tokens`` is accepted for it);
    * ``temperature`` (0 = greedy), ``top_p`` in (0, 1], ``top_k`` (0 = off), ``seed``;
    * ``stop``: strings that end the answer (not included);
    * ``method``: ``vanilla`` (the plain loop) or a speculative method of
      :data:`~refrag_rasd_core.rasd.proposers.PROPOSERS`: ``pld``, ``rest``, ``draft``, ``rasd`` (default;
      greedy output is plain decoding's); ``spec``: the tree shape (:class:`SpecOptions`, or a dict of its
      fields);
    * ``context``: how passages enter the decoder, one of :data:`CONTEXTS`; ``auto`` (default) is ``none``
      without passages and the engine's measured operating point with them
      (:meth:`~refrag_rasd_core.engine.Engine.auto_context`: plain RAG unless the REFRAG checkpoint records
      a compressed setting that keeps plain RAG's answers); passages that do not fit the model's window as
      text are compressed instead of refused (a budget of raw tokens capped to what the window leaves; the
      stats' ``context_reason`` says so);
    * ``history``: how a conversation's earlier turns' passages (a user message's ``passages``) enter the
      decoder, one of :data:`HISTORIES`: ``auto`` (default: as the question's, unless the checkpoint records
      a measured history point), ``text`` or ``compressed`` (REFRAG; the question's passages as ``context``
      says);
    * ``expand`` (a fraction of the chunks) or ``expand_tokens`` (a budget of raw tokens): how much of a
      compressed context stays raw, chosen by ``policy`` (:data:`POLICY_CHOICES`); ``None`` = the auto
      operating point's, else nothing;
    * ``response_format``: the shape the answer must take (a Pydantic model or TypedDict class, a JSON
      schema, OpenAI's ``response_format``, a regex, a choice, a grammar:
      :class:`~refrag_rasd_core.structured.ResponseFormat`), enforced token by token with every method; a
      JSON schema is also shown to the model in its system message unless ``format_instruction=False``;
    * ``tools`` (OpenAI function tools), ``tool_choice`` (``auto``, ``none``, ``required`` or one tool's
      name) and ``parallel_tool_calls``: the model may (or must) answer with tool calls, in the Hermes
      format, under a grammar (:mod:`~refrag_rasd_core.structured.tool_calls`).
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    method: str = "rasd"
    spec: SpecOptions = field(default_factory=SpecOptions)
    context: str = "auto"
    history: str = "auto"
    expand: float | None = None
    expand_tokens: int | None = None
    policy: str = "auto"
    response_format: ResponseFormat | None = None
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | dict[str, Any] = "auto"
    parallel_tool_calls: bool = False
    format_instruction: bool = True

    def __post_init__(self) -> None:
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise InvalidInputError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not _is_number(self.temperature) or self.temperature < 0:
            raise InvalidInputError(f"temperature must be a number >= 0 (0 = greedy), got {self.temperature!r}")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise InvalidInputError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise InvalidInputError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < SEED_LIMIT):
            raise InvalidInputError(f"seed must be an integer in [0, 2**63) or None, got {self.seed!r}")
        object.__setattr__(self, "stop", _stop_tuple(self.stop))
        if self.method not in METHODS:
            raise InvalidInputError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        object.__setattr__(self, "spec", SpecOptions.of(self.spec))
        if self.context not in CONTEXTS:
            raise InvalidInputError(f"unknown context {self.context!r}; choose one of {', '.join(CONTEXTS)}")
        if self.history not in HISTORIES:
            raise InvalidInputError(f"unknown history {self.history!r}; choose one of {', '.join(HISTORIES)}")
        if self.expand is not None and (not _is_number(self.expand) or not 0 <= self.expand <= 1):
            raise InvalidInputError(f"expand must be a fraction in [0, 1], got {self.expand!r}")
        if self.expand_tokens is not None and (not _is_int(self.expand_tokens) or self.expand_tokens < 0):
            raise InvalidInputError(f"expand_tokens must be an integer >= 0, got {self.expand_tokens!r}")
        if self.policy not in POLICY_CHOICES:
            raise InvalidInputError(f"unknown expansion policy {self.policy!r}; choose one of "
                                    f"{', '.join(POLICY_CHOICES)}")
        object.__setattr__(self, "response_format", ResponseFormat.of(self.response_format))
        object.__setattr__(self, "tools", normalize_tools(self.tools))
        object.__setattr__(self, "tool_choice", normalize_tool_choice(self.tool_choice, self.tools))
        for flag in ("parallel_tool_calls", "format_instruction"):
            if not isinstance(getattr(self, flag), bool):
                raise InvalidInputError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.offers_tools and self.response_format is not None:
            raise InvalidInputError("response_format and tools cannot be combined: the answer is either a tool call "
                                    "or text in the format (use tool_choice='none' to keep the format)")
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))

    # ---- building ------------------------------------------------------------------------------------------
    @classmethod
    def of(cls, settings: Mapping[str, Any] | None = None, /, **kwargs: Any) -> GenerationConfig:
        """A config from settings by name (a mapping and / or keywords; ``None`` values mean "the default").
        An unknown name is refused, naming the known ones."""
        return cls().merge(settings, **kwargs)

    def merge(self, settings: Mapping[str, Any] | GenerationConfig | None = None, /,
              **kwargs: Any) -> GenerationConfig:
        """This config with the given settings changed (``None`` values leave a setting as it is); another
        config's settings that differ from the defaults win."""
        if isinstance(settings, GenerationConfig):
            settings = settings.changed()
        given = {**dict(settings or {}), **kwargs}
        changes: dict[str, Any] = {}
        for key, value in given.items():
            name = ALIASES.get(key, key)
            if name not in FIELDS:
                raise InvalidInputError(f"unknown generation setting {key!r}; known: {', '.join(FIELDS)}")
            if value is not None:
                changes[name] = value
        return replace(self, **changes) if changes else self

    def changed(self) -> dict[str, Any]:
        """The settings that differ from the defaults."""
        default = GenerationConfig()
        return {f: getattr(self, f) for f in FIELDS if getattr(self, f) != getattr(default, f)}

    def resolve_context(self, point: Mapping[str, Any] | None) -> GenerationConfig:
        """``context="auto"`` resolved for one request: ``point`` is the engine's operating point for its
        passages (``None``: it has none, so ``"none"``); the point's ``expand`` / ``expand_tokens`` /
        ``policy`` fill what the caller left at its default."""
        if self.context != "auto":
            return self
        if point is None:
            return replace(self, context="none")
        out = replace(self, context=str(point.get("context", "text")))
        for key in ("history", "expand", "expand_tokens", "policy"):
            if key in point and getattr(self, key) == getattr(GenerationConfig, key, None):
                out = replace(out, **{key: point[key]})
        return out

    # ---- reading -------------------------------------------------------------------------------------------
    @property
    def sampling(self) -> SamplingParams:
        """The sampling parameters (temperature, top-p, top-k)."""
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)

    @property
    def offers_tools(self) -> bool:
        """Whether the model may call tools in this call (tools given and ``tool_choice`` not ``none``)."""
        return bool(self.tools) and self.tool_choice != "none"

    def constraint_format(self) -> ResponseFormat | None:
        """The grammar this call decodes under: the tool-call tag when tools are offered, else
        ``response_format`` (``None``: unconstrained)."""
        if self.offers_tools:
            return tool_call_format(self.tools, self.tool_choice, self.parallel_tool_calls)
        return self.response_format

    @property
    def max_new_tokens(self) -> int:
        """``max_tokens`` under transformers' name."""
        return self.max_tokens


FIELDS = tuple(f.name for f in fields(GenerationConfig))
"""Every generation setting's name."""


def _stop_tuple(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise InvalidInputError(f"stop strings must be non-empty strings (a string or a list of them), got {stop!r}")
    return tuple(dict.fromkeys(stop))
