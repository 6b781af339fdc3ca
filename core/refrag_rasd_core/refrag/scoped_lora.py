"""Decoder adapters that act on the compressed chunks' positions only (a checkpoint's ``lora.scope: "chunks"``).

A REFRAG checkpoint trained with ``--lora-scope chunks`` adapts the decoder where it reads a chunk vector and
nowhere else: in a compressed request's prefill, each adapted linear adds ``scaling * B @ A @ x`` to the rows of
the chunk positions, and the raw tokens (the instructions, the question, expanded chunks) and every decoding
step run the stock decoder. So a request whose chunks are all expanded is plain RAG exactly, the draft head
drafts for the decoder that verifies, and no second weight set is held.

:class:`RowScopedLora` applies the deltas in both forwards the engine has: transformers' (forward hooks on the
adapted ``nn.Linear`` modules, :meth:`RowScopedLora.hooks`) and the lean one (the deltas of each layer fused as
its linears are, :meth:`RowScopedLora.lean_layers`).

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False))
    >>> lora = RowScopedLora({"lora.0.A": torch.ones(1, 4), "lora.0.B": torch.ones(3, 1)}, scaling=0.5)
    >>> x = torch.zeros(1, 2, 4); x[0, 1] = 1.0
    >>> with lora.hooks(net, torch.tensor([1])):
    ...     y = net(x)
    >>> bool(torch.allclose(y[0, 1], net(x)[0, 1] + 2.0)), bool(torch.equal(y[0, 0], net(x)[0, 0]))
    (True, True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import CheckpointError
from .lora import PREFIX, lora_modules

__all__ = ["LeanLayerDeltas", "RowDelta", "RowScopedLora"]


@dataclass
class RowDelta:
    """One (possibly fused) linear's low-rank delta: ``y[rows] += (x[rows] @ a.T) @ b.T`` (``b`` scaled)."""

    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]

    def add_(self, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``y`` with the delta added at ``rows`` (of the second-to-last axis), in place; returns ``y``."""
        xs = x.index_select(-2, rows).to(self.a.dtype)
        delta = (xs @ self.a.T) @ self.b.T
        y.index_add_(y.dim() - 2, rows, delta.to(y.dtype))
        return y


@dataclass
class LeanLayerDeltas:
    """A lean layer's deltas, fused as its linears are (q/k/v and gate/up); ``None`` where nothing adapts."""

    qkv: RowDelta | None
    o: RowDelta | None
    gate_up: RowDelta | None
    down: RowDelta | None


class RowScopedLora:
    """A checkpoint's LoRA state (``lora.<module>.A`` ``[r, in]`` / ``.B`` ``[out, r]``) applied to chosen rows."""

    def __init__(self, state: dict[str, torch.Tensor], scaling: float) -> None:
        self.names = lora_modules(state)
        self.scaling = float(scaling)
        self._state = state
        self._lean: dict[int, list[LeanLayerDeltas]] = {}
        self._by_device: dict[tuple[str, torch.dtype], dict[str, RowDelta]] = {}

    def deltas(self, device: torch.device, dtype: torch.dtype = torch.float32) -> dict[str, RowDelta]:
        """Each adapted module's :class:`RowDelta` (``b`` pre-scaled), on ``device``."""
        key = (str(device), dtype)
        if key not in self._by_device:
            out = {}
            for name in self.names:
                a, b = self._state.get(f"{PREFIX}{name}.A"), self._state.get(f"{PREFIX}{name}.B")
                if a is None or b is None or a.shape[0] != b.shape[1]:
                    raise CheckpointError(f"LoRA adapter for {name!r} is incomplete or has mismatched ranks")
                out[name] = RowDelta(a.to(device, dtype), (self.scaling * b.float()).to(device, dtype))
            self._by_device[key] = out
        return self._by_device[key]

    @contextlib.contextmanager
    def hooks(self, model: Any, rows: torch.Tensor) -> Iterator[None]:
        """While inside, the adapted linears of ``model`` (transformers' modules, by name) add their delta at
        ``rows`` of each ``[batch, positions, features]`` input."""
        modules = dict(model.named_modules())
        missing = [n for n in self.names if not isinstance(modules.get(n), torch.nn.Linear)]
        if missing:
            raise CheckpointError(f"LoRA adapters for {missing[:3]} do not fit this decoder")
        weight = next(model.parameters())
        table = self.deltas(weight.device)
        rows = rows.to(weight.device)
        handles = []

        def hook(delta: RowDelta) -> Any:
            return lambda mod, args, out: delta.add_(args[0], out, rows)

        try:
            for name in self.names:
                handles.append(modules[name].register_forward_hook(hook(table[name])))
            yield
        finally:
            for h in handles:
                h.remove()

    def lean_layers(self, model: Any, device: torch.device) -> list[LeanLayerDeltas]:
        """The deltas per decoder layer of ``model`` (a LLaMA-family transformers model), fused as the lean
        forward fuses its linears: q/k/v stacked (``a`` concatenated, ``b`` block-diagonal), gate/up likewise."""
        key = id(model)
        if key not in self._lean:
            table = self.deltas(device)
            modules = dict(model.named_modules())
            prefix = _layers_prefix(model)
            unused = set(self.names)
            layers = []
            for i in range(len(model.model.layers)):
                def pick(*parts: str, i: int = i) -> RowDelta | None:
                    got = [table.get(f"{prefix}{i}.{p}") for p in parts]
                    unused.difference_update(f"{prefix}{i}.{p}" for p in parts)
                    if all(d is None for d in got):
                        return None
                    return _stacked(got, [int(modules[f"{prefix}{i}.{p}"].weight.shape[0]) for p in parts])
                layers.append(LeanLayerDeltas(
                    qkv=pick("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                    o=pick("self_attn.o_proj"), gate_up=pick("mlp.gate_proj", "mlp.up_proj"),
                    down=pick("mlp.down_proj")))
            if unused:
                raise CheckpointError(f"LoRA adapters for {sorted(unused)[:3]} are not decoder-layer linears the "
                                      "lean forward runs")
            self._lean[key] = layers
        return self._lean[key]


def _layers_prefix(model: Any) -> str:
    for name, mod in model.named_modules():
        if mod is model.model.layers:
            return f"{name}."
    raise CheckpointError("the decoder has no model.layers")


def _stacked(deltas: list[RowDelta | None], outs: list[int]) -> RowDelta:
    """One delta for linears fused along their outputs (a missing one contributes zeros)."""
    ref = next(d for d in deltas if d is not None)
    a_parts, ranks = [], []
    for d in deltas:
        a_parts.append(d.a if d is not None else ref.a[:0])
        ranks.append(0 if d is None else d.a.shape[0])
    b = torch.zeros(sum(outs), sum(ranks), dtype=ref.b.dtype, device=ref.b.device)
    r0 = o0 = 0
    for d, r, o in zip(deltas, ranks, outs, strict=True):
        if d is not None:
            b[o0:o0 + o, r0:r0 + r] = d.b
        r0, o0 = r0 + r, o0 + o
    return RowDelta(torch.cat(a_parts, 0), b)
