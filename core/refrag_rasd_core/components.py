"""The parts an :class:`~refrag_rasd_core.engine.Engine` is built from besides its target: the REFRAG
checkpoint and the draft model, resolved from the engine's arguments and checked against the target.

Example:
    >>> from refrag_rasd_core.components import load_refrag
    >>> load_refrag(target=None, refrag=None) is None
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .models import LoadedModel

__all__ = ["check_drafter_vocab", "default_drafter", "load_refrag"]


def load_refrag(target: LoadedModel, refrag: Any) -> Any:
    """Resolve the engine's ``refrag`` argument to a :class:`~refrag_rasd_core.refrag.RefragModel` (or None).
    The target is not modified: its decoder adapters apply to compressed requests only
    (:meth:`Engine.runner_for`)."""
    from .refrag.checkpoint import DEFAULT_REFRAG_CHECKPOINT, load_refrag_checkpoint
    from .refrag.refrag_model import RefragModel

    if refrag is None:
        return None
    if isinstance(refrag, str) and refrag == "auto":
        if not target.is_default or not Path(DEFAULT_REFRAG_CHECKPOINT).exists():
            return None
        refrag = DEFAULT_REFRAG_CHECKPOINT
    rm = refrag if isinstance(refrag, RefragModel) else load_refrag_checkpoint(refrag, target.model, target.tokenizer)
    rm.to(target.device)
    return rm


def load_refrag_long(target: LoadedModel, refrag_long: Any, main: Any, main_was_default: bool) -> Any:
    """Resolve the engine's ``refrag_long`` argument (the checkpoint for passages past the window) to a
    :class:`~refrag_rasd_core.refrag.RefragModel` or ``None``: ``"auto"`` is the shipped long-document checkpoint
    when the engine runs the shipped checkpoint and that file exists; none without a main checkpoint."""
    from .refrag.checkpoint import DEFAULT_LONG_REFRAG_CHECKPOINT

    if refrag_long is None or main is None:
        return None
    if isinstance(refrag_long, str) and refrag_long == "auto":
        if not main_was_default or not Path(DEFAULT_LONG_REFRAG_CHECKPOINT).exists():
            return None
        refrag_long = DEFAULT_LONG_REFRAG_CHECKPOINT
    return load_refrag(target, refrag_long)


def default_drafter(target: LoadedModel) -> Any:
    """The shipped EAGLE draft head for the default target (``None`` for any other model)."""
    if not target.is_default:
        return None
    from .eagle.checkpoint import DEFAULT_CHECKPOINT, load_default_draft_head

    if not Path(DEFAULT_CHECKPOINT).exists():
        return None
    return load_default_draft_head(target.model)


def drafter_for_weights(drafter: Any, weights: str) -> Any:
    """``drafter``, its linears run as Q8_0 x int8 when the target runs ``weights="int4"`` and the drafter is an
    EAGLE head on CPU (:meth:`~refrag_rasd_core.eagle.head.DraftHead.use_int8`): at int4 a target step is so cheap
    that the head's fp32 matmuls cost as much as the step they draft for."""
    if weights != "int4" or not hasattr(drafter, "use_int8"):
        return drafter
    from .lean.invariant import kernels

    ops = kernels()
    if ops is not None and drafter.fc.weight.device.type == "cpu" and drafter.fc.weight.dtype == torch.float32:
        drafter.use_int8(ops)
    return drafter


def check_drafter_vocab(drafter: Any, target: LoadedModel) -> None:
    """Refuse a draft model whose embedding table cannot take the target's token ids."""
    from .errors import TokenizerMismatchError

    model = getattr(drafter, "model", None)
    if model is None or not hasattr(model, "get_input_embeddings"):
        return
    n_draft, n_target = int(model.get_input_embeddings().weight.shape[0]), len(target.tokenizer)
    if n_draft < n_target:
        raise TokenizerMismatchError(
            f"the draft model embeds {n_draft} tokens but the target's tokenizer has {n_target}: a draft model "
            "must share the target's tokenizer (use a draft from the same model family, or an EAGLE head)")
