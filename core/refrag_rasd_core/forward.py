"""Which forward runs the target: the lean one (:mod:`refrag_rasd_core.lean`) or transformers' own.

``forward="auto"`` (the default) picks the lean forward for the architectures it supports (LLaMA, Qwen2,
Mistral without a sliding window) on CPU and CUDA, and transformers' forward
(:class:`~refrag_rasd_core.target.TargetRunner`) otherwise; ``"lean"`` insists on the lean forward (an
error names why a model cannot have it); ``"hf"`` always runs transformers' forward. Both runners have the
same interface, so the engine and the speculative step do not care which one they hold.

Example:
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)).eval()
    >>> type(make_runner(model, "auto")).__name__, type(make_runner(model, "hf")).__name__
    ('LeanRunner', 'TargetRunner')
    >>> isinstance(make_runner(model, "hf"), Runner)
    True
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from .errors import InvalidInputError
from .lean import LeanRunner, unsupported_reason
from .target import TargetRunner

__all__ = ["FORWARDS", "Runner", "int4_problem", "make_runner", "resolve_weights", "runner_kind", "sync_device"]


@runtime_checkable
class Runner(Protocol):
    """What runs the target for the engine and the speculative step: transformers' forward
    (:class:`~refrag_rasd_core.target.TargetRunner`) or the lean one
    (:class:`~refrag_rasd_core.lean.LeanRunner`). Anything with this interface can be handed to
    :func:`~refrag_rasd_core.rasd.step.speculative_step` or
    :func:`~refrag_rasd_core.rasd.budget.runner_verify_costs`.
    """

    model: Any
    device: torch.device
    max_positions: int | None
    """The model's window (``None``: unbounded)."""

    def new_cache(self) -> Any:
        """An empty KV cache this runner's :meth:`forward` fills."""
        ...

    def sibling(self, model: Any) -> Runner:
        """The same kind of runner over another weight set of the same architecture."""
        ...

    def describe(self) -> str:
        """What this runner measured and chose at load (for results files)."""
        ...

    def forward(self, input_ids: torch.Tensor | None, cache: Any, *, logits_at: int | torch.Tensor | None = -1,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, want_hidden: bool = False, adapter: Any = None,
                adapter_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One forward appended to ``cache``: ``(logits, hidden or None)``."""
        ...

FORWARDS = ("auto", "lean", "hf")
_LEAN_DEVICES = ("cpu", "cuda")


def int4_problem(model: Any, forward: str = "auto") -> str | None:
    """Why ``model`` cannot run ``weights="int4"`` under ``forward`` (``None``: it can)."""
    from .lean.int4 import int4_available

    reason = unsupported_reason(model)
    device = next(model.parameters()).device
    return ("forward='hf' was asked" if forward == "hf" else reason if reason is not None
            else f"the model is on {device.type}" if device.type != "cpu"
            else "this torch build lacks the CPU int4 kernels" if not int4_available() else None)


def resolve_weights(model: Any, forward: str = "auto", weights: str = "auto") -> str:
    """``"int4"`` or ``"exact"``: what ``weights`` means for ``model``. ``"auto"`` is ``"int4"`` when the model's
    decoder linears are stored on a 4-bit grid (the default model's Q4_1: its own values), the lean forward runs
    it on CPU, and the batch-invariant kernels load (so speculation stays exact at int4); otherwise
    ``"exact"`` (a full-precision checkpoint, a GPU, ``forward="hf"``, no C++ compiler)."""
    if weights != "auto":
        return weights
    if int4_problem(model, forward) is not None:
        return "exact"
    from .lean.int4 import int4_grid
    from .lean.invariant import kernels

    first = model.model.layers[0].self_attn.o_proj.weight
    return "int4" if int4_grid(first) is not None and kernels() is not None else "exact"


def make_runner(model: Any, forward: str = "auto", **lean_options: Any) -> Runner:
    """The runner for ``model`` under the ``forward`` setting (see the module docstring); ``lean_options`` go
    to :class:`~refrag_rasd_core.lean.LeanRunner` (``prepack=False`` turns MKL prepacking off, ``int4=True``
    runs 4-bit weights with the int4 kernel: it needs the lean forward on CPU)."""
    if forward not in FORWARDS:
        raise InvalidInputError(f"forward must be one of {FORWARDS}, got {forward!r}")
    if lean_options.get("int4"):
        problem = int4_problem(model, forward)
        if problem is not None:
            raise InvalidInputError(f"weights='int4' runs on the lean forward on CPU only ({problem})")
        return LeanRunner(model, **lean_options)
    if forward == "hf":
        return TargetRunner(model)
    reason = unsupported_reason(model)
    device = next(model.parameters()).device
    if forward == "lean":
        if reason is not None:
            raise InvalidInputError(f"forward='lean' cannot run this model ({reason}): use forward='auto' or 'hf'")
        return LeanRunner(model, **lean_options)
    if reason is None and device.type in _LEAN_DEVICES:
        return LeanRunner(model, **lean_options)
    return TargetRunner(model)


def runner_kind(runner: Any) -> str:
    """``"lean"`` or ``"hf"``: which forward a runner is."""
    return "lean" if isinstance(runner, LeanRunner) else "hf"


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so a timer reads the work done; nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
