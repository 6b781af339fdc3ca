"""LoRA deltas of the decoder, stored in a REFRAG checkpoint.

A checkpoint keeps only the adapters (``lora.<module>.A`` ``[r, in]`` and ``lora.<module>.B``
``[out, r]``, where ``<module>`` is the name of a ``nn.Linear`` in the target), so it stays small.
The engine scopes them to compressed requests: :func:`adapted_copy` builds a second weight set in which
only the adapted linears are new (``W + scaling * B @ A``, merged, so an adapted forward costs exactly what
a plain one costs) and every other parameter (embeddings, norms, LM head) is the stock model's own tensor;
requests without compressed positions keep running the stock weights.

Example:
    >>> import torch
    >>> lin = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False))
    >>> w0 = lin[0].weight.detach().clone()
    >>> merge_lora_(lin, {"lora.0.A": torch.ones(1, 4), "lora.0.B": torch.ones(3, 1)}, scaling=0.5)
    1
    >>> bool(torch.allclose(lin[0].weight, w0 + 0.5))
    True
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..errors import CheckpointError

PREFIX = "lora."


def lora_modules(state: dict[str, torch.Tensor]) -> list[str]:
    """The module names a LoRA state adapts."""
    return sorted({k[len(PREFIX):-2] for k in state if k.startswith(PREFIX) and k.endswith((".A", ".B"))})


@torch.no_grad()
def merge_lora_(model: Any, state: dict[str, torch.Tensor], scaling: float) -> int:
    """Add ``scaling * B @ A`` to each adapted linear layer of ``model`` in place; returns how many."""
    modules = dict(model.named_modules())
    names = lora_modules(state)
    for name in names:
        layer = modules.get(name)
        a, b = state.get(f"{PREFIX}{name}.A"), state.get(f"{PREFIX}{name}.B")
        if layer is None or not hasattr(layer, "weight") or a is None or b is None:
            raise CheckpointError(f"LoRA adapter for {name!r} does not fit this decoder")
        if (b.shape[0], a.shape[1]) != tuple(layer.weight.shape) or a.shape[0] != b.shape[1]:
            raise CheckpointError(f"LoRA adapter for {name!r} has shapes {tuple(b.shape)} x {tuple(a.shape)}, "
                                  f"the layer is {tuple(layer.weight.shape)}")
    for name in names:
        layer = modules[name]
        a = state[f"{PREFIX}{name}.A"].to(layer.weight.device, torch.float32)
        b = state[f"{PREFIX}{name}.B"].to(layer.weight.device, torch.float32)
        layer.weight.add_((float(scaling) * (b @ a)).to(layer.weight.dtype))
    return len(names)


@torch.no_grad()
def adapted_copy(model: Any, state: dict[str, torch.Tensor], scaling: float) -> Any:
    """A copy of ``model`` with the adapters merged into its own copies of the adapted linears; every other
    parameter and buffer is shared with ``model`` (not copied), and ``model`` itself is left unchanged.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False), torch.nn.Linear(3, 2))
        >>> twin = adapted_copy(net, {"lora.0.A": torch.ones(1, 4), "lora.0.B": torch.ones(3, 1)}, 0.5)
        >>> bool(torch.allclose(twin[0].weight, net[0].weight + 0.5)), twin[1].weight is net[1].weight
        (True, True)
    """
    adapted = {f"{name}.weight" for name in lora_modules(state)}
    memo: dict[int, Any] = {id(t): t for name, t in (*model.named_parameters(), *model.named_buffers())
                            if name not in adapted}
    twin = copy.deepcopy(model, memo)
    merge_lora_(twin, state, scaling)
    return twin
