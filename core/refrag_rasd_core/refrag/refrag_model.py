"""The trained REFRAG parts that sit beside a decoder: projector, expansion policy, optional LoRA and
encoder weights, and the configuration they were trained for (encoder, pooling, k).

Example:
    >>> import torch
    >>> rm = RefragModel(ChunkProjector(8, 12), k=4, encoder="tiny-bert", encoder_dim=8)
    >>> rm.project(torch.randn(3, 8)).shape
    torch.Size([3, 12])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .encoder import LAYOUT_VERSION, STORE_DTYPE, ChunkEncoder, tokenizer_fingerprint
from .policy import ExpansionPolicy
from .projector import ChunkProjector

__all__ = ["LORA_SCOPES", "RefragModel"]

LORA_SCOPES = ("all", "chunks")


class RefragModel(nn.Module):
    """Projector (+ policy, LoRA, encoder fine-tune) for one decoder, encoder and chunk size ``k``."""

    def __init__(self, projector: ChunkProjector, *, k: int, encoder: str, encoder_dim: int,
                 pooling: str = "mean", policy: ExpansionPolicy | None = None,
                 lora: dict[str, torch.Tensor] | None = None, lora_scaling: float = 1.0,
                 lora_scope: str = "all",
                 encoder_state: dict[str, torch.Tensor] | None = None, encoder_tag: str | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.projector = projector
        self.policy = policy
        self.k = int(k)
        self.encoder_name = encoder
        self.encoder_dim = int(encoder_dim)
        self.pooling = pooling
        self.lora = lora or {}
        self.lora_scaling = float(lora_scaling)
        if lora_scope not in LORA_SCOPES:
            raise ValueError(f"lora_scope must be one of {LORA_SCOPES}, got {lora_scope!r}")
        # "all": the adapters change every position of a compressed request (a second weight set decodes it);
        # "chunks": only the compressed chunks' positions, in the prefill; raw tokens and decoding stay stock
        self.lora_scope = lora_scope
        self.encoder_state = encoder_state or {}
        self.encoder_tag = encoder_tag  # set when the encoder was fine-tuned: part of the store signature
        self.meta = dict(meta or {})

    @property
    def device(self) -> torch.device:
        return self.projector.fc1.weight.device

    @property
    def encoder_id(self) -> str:
        """The encoder as stores know it (its name, plus the fine-tune's tag when it was trained)."""
        return f"{self.encoder_name}@{self.encoder_tag}" if self.encoder_tag else self.encoder_name

    def signature(self, tokenizer: Any) -> dict[str, Any]:
        """What a store's chunk embeddings must have been made with (see :attr:`ChunkEncoder.signature`)."""
        return {"encoder": self.encoder_id, "encoder_dim": self.encoder_dim, "pooling": self.pooling,
                "k": self.k, "tokenizer": tokenizer_fingerprint(tokenizer), "dtype": STORE_DTYPE,
                "layout": LAYOUT_VERSION}

    @torch.inference_mode()
    def project(self, vectors: np.ndarray | torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Encoder-space chunk vectors ``[n, d]`` -> decoder input embeddings ``[n, H]``."""
        x = torch.as_tensor(np.asarray(vectors, dtype=np.float32) if isinstance(vectors, np.ndarray) else vectors)
        out = self.projector(x.to(self.device, torch.float32))
        return out if dtype is None else out.to(dtype)

    def load_encoder(self, tokenizer: Any, *, device: str | torch.device = "cpu",
                     source: str | None = None) -> ChunkEncoder:
        """The chunk encoder this model was trained with (fine-tuned weights applied), for ``tokenizer``
        (the decoder's); ``source`` overrides where the base encoder is read from."""
        enc = ChunkEncoder.load(source or self.encoder_name, tokenizer=tokenizer, k=self.k,
                                pooling=self.pooling, device=device)
        if self.encoder_state:
            enc.model.load_state_dict({k: v.to(enc.device) for k, v in self.encoder_state.items()}, strict=True)
        enc.name = self.encoder_id
        return enc
