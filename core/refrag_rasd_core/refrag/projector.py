"""REFRAG's projector: a 2-layer MLP from the encoder's space to the decoder's token-embedding space.

The hidden width equals the decoder's hidden size (as in the paper). The output is scaled to the typical
norm of the decoder's token embeddings at initialisation, so an untrained projector already produces
inputs of the right magnitude (but, as the paper says, gibberish content: training is the product).

Example:
    >>> import torch
    >>> proj = ChunkProjector(384, 576)
    >>> proj(torch.randn(3, 384)).shape
    torch.Size([3, 576])
"""

from __future__ import annotations

import torch
from torch import nn


class ChunkProjector(nn.Module):
    """``Linear(d_enc, H) -> GELU -> Linear(H, H)``: one chunk vector in, one decoder input embedding out."""

    def __init__(self, encoder_dim: int, decoder_dim: int, *, embed_norm: float | None = None) -> None:
        super().__init__()
        self.encoder_dim = int(encoder_dim)
        self.decoder_dim = int(decoder_dim)
        self.fc1 = nn.Linear(self.encoder_dim, self.decoder_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(self.decoder_dim, self.decoder_dim)
        if embed_norm is not None:  # start at the decoder's embedding scale
            with torch.no_grad():
                self.fc2.weight.mul_(float(embed_norm) / (self.decoder_dim ** 0.5 * 0.6))
                self.fc2.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.fc1.weight.dtype)
        return self.fc2(self.act(self.fc1(x)))
