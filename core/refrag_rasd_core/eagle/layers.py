"""The draft head's shapes (:class:`DraftHeadConfig`) and its building blocks: one LLaMA decoder layer
(:class:`DecoderLayer`, weight names as HF / EAGLE) and rotary position embedding (:func:`apply_rope`).

The head that stacks them, with its KV cache and tree drafting, is :mod:`refrag_rasd_core.eagle.head`.

Example:
    >>> from transformers import LlamaConfig
    >>> c = DraftHeadConfig.from_target_config(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
    ...     num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2), draft_vocab_size=16)
    >>> c.head_dim, c.draft_vocab_size, sorted(n for n, _ in DecoderLayer(c).named_children())
    (8, 16, ['mlp', 'post_attention_layernorm', 'self_attn'])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "Attention", "DecoderLayer", "DraftHeadConfig", "RMSNorm", "apply_rope"]


@dataclass
class DraftHeadConfig:
    """Shapes of a draft head; derived from the target's config by :meth:`from_target_config`."""

    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    target_vocab_size: int
    draft_vocab_size: int
    rms_norm_eps: float = 1e-5
    rope_parameters: dict[str, Any] = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 1e4})
    max_position_embeddings: int = 4096
    fc_bias: bool = True
    attention_bias: bool = False
    mlp_bias: bool = False
    input_norm: bool = False
    hidden_act: str = "silu"

    @classmethod
    def from_target_config(cls, cfg, draft_vocab_size: int | None = None, **overrides) -> DraftHeadConfig:
        """Copy the LLaMA-family shapes of ``cfg`` (a transformers config)."""
        heads = cfg.num_attention_heads
        rope = getattr(cfg, "rope_parameters", None)
        if not rope:
            rope = {"rope_type": "default", "rope_theta": float(getattr(cfg, "rope_theta", 1e4))}
            if getattr(cfg, "rope_scaling", None):
                rope.update(cfg.rope_scaling)
                rope["rope_type"] = rope.get("rope_type", rope.get("type", "default"))
        kw = dict(
            hidden_size=cfg.hidden_size,
            num_attention_heads=heads,
            num_key_value_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            intermediate_size=cfg.intermediate_size,
            target_vocab_size=cfg.vocab_size,
            draft_vocab_size=draft_vocab_size or cfg.vocab_size,
            rms_norm_eps=float(getattr(cfg, "rms_norm_eps", 1e-5)),
            rope_parameters=dict(rope),
            max_position_embeddings=int(getattr(cfg, "max_position_embeddings", 4096)),
            attention_bias=bool(getattr(cfg, "attention_bias", False)),
            mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
            hidden_act=getattr(cfg, "hidden_act", "silu"),
        )
        kw.update(overrides)
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DraftHeadConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def llama_config(self):
        """A transformers ``LlamaConfig`` with these shapes (used for RoPE parameters)."""
        from transformers import LlamaConfig

        return LlamaConfig(
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            vocab_size=self.target_vocab_size,
            max_position_embeddings=self.max_position_embeddings,
            rope_parameters=dict(self.rope_parameters),
        )


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, c: DraftHeadConfig):
        super().__init__()
        self.nh, self.nkv, self.hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        H = c.hidden_size
        self.q_proj = nn.Linear(H, self.nh * self.hd, bias=c.attention_bias)
        self.k_proj = nn.Linear(H, self.nkv * self.hd, bias=c.attention_bias)
        self.v_proj = nn.Linear(H, self.nkv * self.hd, bias=c.attention_bias)
        self.o_proj = nn.Linear(self.nh * self.hd, H, bias=c.attention_bias)


class MLP(nn.Module):
    def __init__(self, c: DraftHeadConfig):
        super().__init__()
        H, inter = c.hidden_size, c.intermediate_size
        self.gate_proj = nn.Linear(H, inter, bias=c.mlp_bias)
        self.up_proj = nn.Linear(H, inter, bias=c.mlp_bias)
        self.down_proj = nn.Linear(inter, H, bias=c.mlp_bias)
        self.act = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}.get(c.hidden_act, F.silu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """A LLaMA decoder layer (weight names as HF / EAGLE: ``self_attn.q_proj``, ``mlp.gate_proj``...)."""

    def __init__(self, c: DraftHeadConfig):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        if c.input_norm:
            self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., T, hd]; cos / sin [T, hd]."""
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin
