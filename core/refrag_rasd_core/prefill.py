"""The prefill: one forward over a request's prompt (raw tokens, or compressed chunks mixed with raw tokens)
into a new KV cache (:func:`prefill_forward`), and what :meth:`Engine.prefill
<refrag_rasd_core.engine.Engine.prefill>` returns (:class:`Prefill`).

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from refrag_rasd_core.forward import make_runner
    >>> cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
    ...                   num_attention_heads=4, num_key_value_heads=2)
    >>> runner = make_runner(LlamaForCausalLM(cfg).eval(), "hf")
    >>> cache, logits, hidden = prefill_forward(runner, [1, 2, 3], None, want_hidden=False)
    >>> tuple(logits.shape), hidden is None
    ((1, 32), True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .forward import Runner
from .stats import GenerationStats

__all__ = ["Prefill", "prefill_forward"]


def prefill_forward(runner: Runner, prompt_ids: list[int], mixed: Any,
                     want_hidden: bool, adapter: Any = None) -> tuple[Any, torch.Tensor, torch.Tensor | None]:
    """One forward over the prompt into a new KV cache: (cache, last logits, hidden of raw tokens).
    ``adapter``: row-scoped decoder adapters added at the compressed chunks' positions."""
    cache = runner.new_cache()
    if mixed is None:
        ids = torch.tensor([prompt_ids], device=runner.device)
        logits, hidden = runner.forward(ids, cache, logits_at=-1, want_hidden=want_hidden)
        return cache, logits, hidden
    rows = None
    if adapter is not None:
        rows = torch.tensor([i for i, t in enumerate(mixed.token_ids) if t is None], dtype=torch.long)
        adapter = adapter if len(rows) else None
    logits, hidden = runner.forward(None, cache, logits_at=-1, want_hidden=want_hidden,
                                    inputs_embeds=mixed.inputs_embeds, adapter=adapter, adapter_rows=rows)
    if hidden is not None:  # the draft head sees the raw-token positions only
        raw = [i for i, t in enumerate(mixed.token_ids) if t is not None]
        hidden = hidden.index_select(0, torch.tensor(raw, device=hidden.device))
    return cache, logits, hidden


@dataclass
class Prefill:
    """What :meth:`Engine.prefill` returns: the filled KV cache, the next-token logits ``[V]``, the number of
    positions the decoder read, the statistics and the decoder that filled the cache (stock or adapted)."""

    cache: Any
    logits: torch.Tensor
    positions: int
    stats: GenerationStats
    runner: Runner | None = None

    def kv_bytes(self) -> int:
        """Bytes the KV cache holds (keys and values of every layer)."""
        if hasattr(self.cache, "kv_bytes"):  # a LeanCache: its valid positions, not its spare capacity
            return int(self.cache.kv_bytes())
        return sum(t.numel() * t.element_size() for layer in self.cache.layers
                   for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None)
