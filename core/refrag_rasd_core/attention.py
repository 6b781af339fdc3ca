"""A lean attention kernel for tree verification: SDPA with grouped-query attention and a custom mask.

transformers' ``sdpa`` attention copies every layer's whole key/value cache (``repeat_kv``) when a
grouped-query model (SmolLM2: 9 query heads, 3 key/value heads) gets an explicit mask and more than one
query, which is exactly a tree verify forward. ``torch.nn.functional.scaled_dot_product_attention`` takes
``enable_gqa=True`` with a float mask, so this kernel skips the copy. It is registered with transformers
under the name ``"sdpa_gqa"`` and uses the ``sdpa`` mask builder; everything else is unchanged.

Example:
    >>> from refrag_rasd_core.attention import use_gqa_sdpa
    >>> from refrag_rasd_core.models import load_target
    >>> lm = load_target(device="cpu", attn_implementation="sdpa")    # doctest: +REAL_MODEL
    >>> use_gqa_sdpa(lm.model), lm.model.config._attn_implementation  # doctest: +REAL_MODEL
    (True, 'sdpa_gqa')
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NAME = "sdpa_gqa"
_registered = False


def sdpa_gqa_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                               value: torch.Tensor, attention_mask: torch.Tensor | None,
                               dropout: float = 0.0, scaling: float | None = None,
                               is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Same contract as transformers' ``sdpa_attention_forward`` (``[B, H, q, d]`` in, ``[B, q, H, d]`` out)."""
    q_len = query.shape[2]
    causal = bool(q_len > 1 and attention_mask is None and (is_causal if is_causal is not None
                                                            else getattr(module, "is_causal", True)))
    mask = attention_mask
    if mask is not None and mask.dtype != torch.bool and mask.dtype != query.dtype:
        mask = mask.to(query.dtype)
    gqa = query.shape[1] != key.shape[1]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, scale=scaling,
                                         is_causal=causal, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register the kernel with transformers (idempotent); returns its name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        AttentionInterface.register(NAME, sdpa_gqa_attention_forward)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
        _registered = True
    return NAME


def use_gqa_sdpa(model: Any) -> bool:
    """Switch ``model`` to the kernel when it uses ``sdpa`` with grouped-query attention; returns whether it did."""
    cfg = model.config
    heads, kv = getattr(cfg, "num_attention_heads", None), getattr(cfg, "num_key_value_heads", None)
    if getattr(cfg, "_attn_implementation", None) != "sdpa" or not heads or not kv or heads == kv:
        return False
    model.set_attn_implementation(register())
    return True
