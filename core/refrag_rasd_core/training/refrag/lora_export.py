"""peft LoRA adapters of the decoder -> the ``lora.<module>.A/B`` format of :mod:`..lora`.

peft computes ``W x + scaling * B (A x)`` with ``scaling = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with
rsLoRA); :func:`~refrag_rasd_core.refrag.lora.merge_lora_` adds ``scaling * B @ A`` to ``W``, so the merged
plain decoder computes exactly what the peft model does (no dropout at inference). Module names drop peft's
``base_model.model.`` wrapper, so they name the plain decoder's ``nn.Linear`` layers.

Example:
    >>> import torch
    >>> from peft import LoraConfig, get_peft_model
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
    >>> pm = get_peft_model(net, LoraConfig(r=2, lora_alpha=4, target_modules=["0"]))
    >>> state, scaling = peft_lora_state(pm)
    >>> sorted(state), scaling
    (['lora.0.A', 'lora.0.B'], 2.0)
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import CheckpointError
from ...refrag.lora import PREFIX

__all__ = ["peft_lora_state", "unwrap_peft"]

_WRAPPER = "base_model.model."


def unwrap_peft(model: Any) -> Any:
    """The underlying model of a peft model (its layers carry the adapters), or ``model`` itself."""
    base = getattr(model, "base_model", None)
    inner = getattr(base, "model", None)
    return inner if inner is not None and hasattr(model, "peft_config") else model


def peft_lora_state(model: Any, adapter: str = "default") -> tuple[dict[str, torch.Tensor], float]:
    """``({"lora.<module>.A": [r, in], "lora.<module>.B": [out, r]}, scaling)`` of a peft LoRA model (fp32)."""
    from peft.tuners.lora import LoraLayer

    state: dict[str, torch.Tensor] = {}
    scalings: set[float] = set()
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or adapter not in getattr(module, "lora_A", {}):
            continue
        if getattr(module, "use_dora", {}).get(adapter, False):
            raise CheckpointError("DoRA adapters cannot be stored as plain LoRA deltas")
        clean = name[len(_WRAPPER):] if name.startswith(_WRAPPER) else name
        a = module.lora_A[adapter].weight.detach().float().cpu()
        b = module.lora_B[adapter].weight.detach().float().cpu()
        if a.dim() != 2 or b.dim() != 2:
            raise CheckpointError(f"LoRA adapter of {clean!r} is not a linear adapter")
        state[f"{PREFIX}{clean}.A"] = a.clone()
        state[f"{PREFIX}{clean}.B"] = b.clone()
        scalings.add(float(module.scaling[adapter]))
    if len(scalings) > 1:
        raise CheckpointError(f"LoRA adapters with different scalings {sorted(scalings)} (rank / alpha patterns) "
                              "cannot share one scaling; train with one rank and alpha")
    return state, (scalings.pop() if scalings else 1.0)
