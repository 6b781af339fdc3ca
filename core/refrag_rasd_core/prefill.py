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
    >>> out = prefill_forward(runner, [1, 2, 3], None, want_hidden=False)
    >>> tuple(out.logits.shape), out.hidden is None, out.cached
    ((1, 32), True, 0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import InvalidInputError
from .forward import Runner
from .prefix_cache import KVSnapshot, PrefixCache, PrefixHit, position_keys
from .stats import GenerationStats

__all__ = ["KeptAnswer", "Prefill", "PrefillOutput", "prefill_forward"]


@dataclass
class PrefillOutput:
    """A prefill's KV cache, the last position's logits, the hidden states of the raw-token positions (when
    asked for) and how many leading positions came from the prefix cache."""

    cache: Any
    logits: torch.Tensor
    hidden: torch.Tensor | None
    cached: int = 0
    keys: list[Any] | None = None  # the prefix-cache keys of the prefilled positions (with a prefix cache)
    namespace: Any = None
    all_hidden: torch.Tensor | None = None  # hidden states of every prefilled position (when computed)


class KeptAnswer:
    """What a generation leaves in the prefix cache when it ends: its prompt *and its answer* (the next turn
    of a conversation starts with both), as vLLM's prefix cache keeps a finished sequence. The decoding loop
    sets ``prefill`` (whose cache it goes on filling) and appends the target's hidden states of the answer's
    cached positions, step by step, to ``hidden`` (the draft head reads them: without them, when the prompt's
    were kept, nothing is kept past the prompt). Kept when the loop ends or its stream is closed, not when it
    fails.

    Example:
        >>> with KeptAnswer(None, []) as kept:      # no prefix cache: nothing to keep
        ...     kept.prefill is None
        True
    """

    def __init__(self, prefix: PrefixCache | None, answer_ids: list[int]) -> None:
        self.prefix = prefix
        self.answer_ids = answer_ids
        self.prefill: PrefillOutput | None = None
        self.hidden: list[torch.Tensor] = []

    def __enter__(self) -> KeptAnswer:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None or kind is GeneratorExit:
            self.keep()

    def keep(self) -> None:
        """Store the prompt and the answer's emitted, cached positions."""
        pre = self.prefill
        if self.prefix is None or pre is None or pre.keys is None:
            return
        length = min(int(pre.cache.get_seq_length()), len(pre.keys) + len(self.answer_ids))
        feats = pre.all_hidden
        if feats is not None and length > len(pre.keys):
            feats = torch.cat([feats, *self.hidden])[:length] if self.hidden else None
            if feats is None or feats.shape[0] < length:  # the answer's features are missing: the prompt only
                length, feats = len(pre.keys), pre.all_hidden
        keys = pre.keys + [int(t) for t in self.answer_ids[:length - len(pre.keys)]]
        self.prefix.store(pre.namespace, keys, KVSnapshot.of_cache(pre.cache, length), feats)


def prefill_forward(runner: Runner, prompt_ids: list[int], mixed: Any, want_hidden: bool, adapter: Any = None,
                    *, prefix: PrefixCache | None = None) -> PrefillOutput:
    """One forward over the prompt (``prompt_ids``, or the ``mixed`` compressed input) into a new KV cache.
    ``adapter``: row-scoped decoder adapters added at the compressed chunks' positions. With a ``prefix``
    cache, the longest prefix an earlier request read comes from there and only the rest is computed; the
    output carries what storing this request needs, which :class:`KeptAnswer` does once it has answered."""
    positions = list(prompt_ids) if mixed is None else list(mixed.token_ids)
    embeds = None if mixed is None else mixed.inputs_embeds
    namespace = (id(runner), adapter is not None)
    keys = position_keys(positions, embeds, tag=adapter is not None) if prefix is not None else []
    hit = prefix.lookup(namespace, keys, need_hidden=want_hidden) if prefix is not None else PrefixHit()
    start = hit.length
    cache = hit.kv.restore(runner, start) if hit.kv is not None else runner.new_cache()
    read = {"prompt": True} if getattr(runner, "int4", False) else {}  # int4 weights: prompts read wide (bf16/fp32)
    if mixed is None:
        ids = torch.tensor([positions[start:]], device=runner.device)
        logits, hidden = runner.forward(ids, cache, logits_at=-1, want_hidden=want_hidden, **read)
    else:
        assert embeds is not None
        rows = None
        if adapter is not None:
            rows = torch.tensor([i - start for i, t in enumerate(positions) if t is None and i >= start],
                                dtype=torch.long)
            adapter = adapter if len(rows) else None
        logits, hidden = runner.forward(None, cache, logits_at=-1, want_hidden=want_hidden,
                                        inputs_embeds=embeds[:, start:], adapter=adapter, adapter_rows=rows, **read)
    if hidden is not None and hit.hidden is not None and start:
        hidden = torch.cat([hit.hidden[:start].to(hidden.device, hidden.dtype), hidden])
    out = PrefillOutput(cache, logits, hidden, start, keys if prefix is not None else None, namespace, hidden)
    if hidden is not None and mixed is not None:  # the draft head sees the raw-token positions only
        raw = [i for i, t in enumerate(positions) if t is not None]
        out.hidden = hidden.index_select(0, torch.tensor(raw, device=hidden.device))
    return out


@dataclass
class Prefill:
    """What :meth:`Engine.prefill` returns: the filled KV cache, the next-token logits ``[V]``, the number of
    positions the decoder read, the statistics and the decoder that filled the cache (stock or adapted)."""

    cache: Any
    logits: torch.Tensor
    positions: int
    stats: GenerationStats
    runner: Runner | None = None

    def continuation_nll(self, token_ids: Sequence[int], runner: Runner | None = None) -> float:
        """Mean negative log-likelihood per token of ``token_ids`` following this prefill (consumes its cache;
        ``runner``: the decoder, when the prefill does not name one). The first token is scored by the
        prefill's own logits."""
        ids = [int(t) for t in token_ids]
        if not ids:
            raise InvalidInputError("the continuation is empty")
        lps = [torch.log_softmax(self.logits.float(), -1)[ids[0]]]
        if len(ids) > 1:
            run = self.runner or runner
            assert run is not None, "a prefill without its decoder needs one"
            logits, _ = run.forward(torch.tensor([ids[:-1]], device=run.device), self.cache, logits_at=None)
            lp = torch.log_softmax(logits.float(), -1)
            lps.extend(lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:], device=lp.device)])
        return float(-torch.stack([x.to(lps[0].device) for x in lps]).mean())

    def kv_bytes(self) -> int:
        """Bytes the KV cache holds (keys and values of every layer)."""
        if hasattr(self.cache, "kv_bytes"):  # a LeanCache: its valid positions, not its spare capacity
            return int(self.cache.kv_bytes())
        return sum(t.numel() * t.element_size() for layer in self.cache.layers
                   for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None)
