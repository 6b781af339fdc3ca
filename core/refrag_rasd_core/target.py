"""The target model as the decoding loops see it: one forward over new positions with a KV cache.

`TargetRunner` hides the few things that differ between a plain step, a prefill and a tree verify
(which positions get logits, whether hidden states come back, an explicit 4D mask and position ids) and
the transformers 5.x cache API (``DynamicCache``; compaction to an accepted tree path).

Example:
    >>> import torch
    >>> runner = TargetRunner(engine.model)                                            # doctest: +REAL_MODEL
    >>> cache = runner.new_cache()                                                     # doctest: +REAL_MODEL
    >>> logits, hidden = runner.forward(torch.tensor([[1, 2, 3]]), cache, logits_at=-1)  # doctest: +REAL_MODEL
    >>> tuple(logits.shape), hidden                                                    # doctest: +REAL_MODEL
    ((1, 49152), None)
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import DynamicCache

from .attention import use_gqa_sdpa
from .lean.cache import LeanCache


class TargetRunner:
    """Runs a Hugging Face causal LM's decoder and LM head separately, so logits are paid only where needed."""

    def __init__(self, model: Any, *, lean_attention: bool = True) -> None:
        """``lean_attention``: switch a grouped-query ``sdpa`` model to the copy-free kernel of
        :mod:`refrag_rasd_core.attention` (numerically the same; saves ~8% of a tree verify on CPU)."""
        if lean_attention:
            use_gqa_sdpa(model)
        self.model = model
        self.decoder = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.config = model.config
        self.device = next(model.parameters()).device
        # transformers renamed the forward argument ``past_key_values`` to ``cache`` (5.x deprecation)
        params = inspect.signature((self.decoder or model).forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        # models whose CausalLM forward does more than decoder + head (soft-capping, scaling) run whole
        self._plain = self.decoder is not None and self.head is not None and not any(
            getattr(model.config, a, None) for a in ("final_logit_softcapping", "logit_scale")
        )

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.config)

    def sibling(self, model: Any) -> TargetRunner:
        """A runner of the same kind over another weight set (the REFRAG-adapted copy)."""
        return TargetRunner(model)

    def describe(self) -> str:
        """One line: what runs the forward."""
        return f"transformers forward ({self.config._attn_implementation} attention)"

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor | None,
        cache: DynamicCache,
        *,
        logits_at: int | torch.Tensor | None = -1,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        want_hidden: bool = False,
        adapter: Any = None,
        adapter_rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One forward of ``input_ids`` ``[1, n]`` (or ``inputs_embeds``) appended to ``cache``.

        ``logits_at``: ``-1`` for the last position only, ``None`` for all, an index tensor for some.
        ``adapter`` (a :class:`~refrag_rasd_core.refrag.scoped_lora.RowScopedLora`): its deltas are added at
        the new positions ``adapter_rows`` only. Returns ``(logits [m, V] float, hidden [n, H] or None)``.
        """
        if adapter is not None and adapter_rows is not None:
            with adapter.hooks(self.model, adapter_rows):
                return self.forward(input_ids, cache, logits_at=logits_at, attention_mask=attention_mask,
                                    position_ids=position_ids, inputs_embeds=inputs_embeds,
                                    want_hidden=want_hidden)
        kwargs: dict[str, Any] = {self._cache_kw: cache, "use_cache": True}
        if inputs_embeds is not None:
            kwargs["inputs_embeds"] = inputs_embeds
        else:
            kwargs["input_ids"] = input_ids
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if self._plain:
            hidden = self.decoder(**kwargs).last_hidden_state[0]
            if logits_at is None:
                sel = hidden
            elif isinstance(logits_at, int):
                sel = hidden[logits_at:][:1] if logits_at != -1 else hidden[-1:]
            else:
                sel = hidden.index_select(0, logits_at)
            logits = self.head(sel).float()
            return logits, (hidden if want_hidden else None)
        out = self.model(**kwargs, output_hidden_states=want_hidden)
        logits = out.logits[0]
        if isinstance(logits_at, int):
            logits = logits[-1:] if logits_at == -1 else logits[logits_at:][:1]
        elif logits_at is not None:
            logits = logits.index_select(0, logits_at)
        return logits.float(), (out.hidden_states[-1][0] if want_hidden else None)


@torch.inference_mode()
def keep_cache_path(cache: DynamicCache | LeanCache, context_len: int, keep: torch.Tensor) -> None:
    """Keep the cache's first ``context_len`` positions plus the tree nodes ``keep`` (offsets from
    ``context_len``, ascending), dropping the rest: the KV compaction after a tree verify.

    A path that is already contiguous (``keep == 0..L``) is a crop; otherwise only the kept nodes are
    moved into place (``O(L)`` copies, not ``O(context)``). A :class:`~refrag_rasd_core.lean.LeanCache`
    does it itself.
    """
    if isinstance(cache, LeanCache):
        cache.keep_path(context_len, keep)
        return
    n_keep = int(keep.numel())
    contiguous = bool((keep == torch.arange(n_keep, device=keep.device)).all()) if n_keep else True
    if not contiguous:
        src = keep + context_len
        for layer in cache.layers:
            layer.keys[:, :, context_len:context_len + n_keep] = layer.keys.index_select(2, src)
            layer.values[:, :, context_len:context_len + n_keep] = layer.values.index_select(2, src)
    truncate_cache(cache, context_len + n_keep)


def truncate_cache(cache: DynamicCache | LeanCache, length: int) -> None:
    """Drop every cached position from ``length`` on (works on every layer, whatever the cache version)."""
    if isinstance(cache, LeanCache):
        cache.truncate(length)
        return
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel() and layer.keys.shape[-2] > length:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]
