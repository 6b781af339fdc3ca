"""A preallocated KV cache: one key and one value tensor for all layers, plus a length.

``keys`` / ``values`` are ``[layers, kv_heads, capacity, head_dim]``; positions ``0..length-1`` are
valid. A forward writes its new positions in place (no concatenation), the compaction to an accepted tree
path is one ``index_select`` over all layers, and a truncation only moves ``length``. The capacity grows
(doubling, in steps of 256 positions) when a forward needs more.

Example:
    >>> import torch
    >>> cache = LeanCache(layers=2, kv_heads=1, head_dim=4, dtype=torch.float32, device="cpu")
    >>> cache.reserve(5)
    >>> cache.keys[:, :, :5] = torch.arange(5.0)[None, None, :, None]
    >>> cache.length = 5
    >>> cache.keep_path(2, torch.tensor([0, 2]))      # keep positions 0, 1, then tree nodes 0 and 2
    >>> cache.keys[0, 0, :cache.length, 0].tolist()
    [0.0, 1.0, 2.0, 4.0]
    >>> cache.truncate(3); cache.get_seq_length()
    3
"""

from __future__ import annotations

import torch

__all__ = ["LeanCache"]

_STEP = 256


class LeanCache:
    """Static KV tensors ``[layers, kv_heads, capacity, head_dim]`` and the number of valid positions."""

    def __init__(self, *, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str, capacity: int = 0) -> None:
        self.shape = (layers, kv_heads, head_dim)
        self.dtype = dtype
        self.device = torch.device(device)
        self.length = 0
        self.keys = self._empty(capacity)
        self.values = self._empty(capacity)

    def _empty(self, capacity: int) -> torch.Tensor:
        layers, kv_heads, head_dim = self.shape
        return torch.empty(layers, kv_heads, capacity, head_dim, dtype=self.dtype, device=self.device)

    @property
    def capacity(self) -> int:
        return int(self.keys.shape[2])

    def reserve(self, total: int) -> None:
        """Make room for ``total`` positions (keeps the valid ones)."""
        if total <= self.capacity:
            return
        cap = max(total, 2 * self.capacity)
        cap = (cap + _STEP - 1) // _STEP * _STEP
        keys, values = self._empty(cap), self._empty(cap)
        if self.length:
            keys[:, :, :self.length] = self.keys[:, :, :self.length]
            values[:, :, :self.length] = self.values[:, :, :self.length]
        self.keys, self.values = keys, values

    def keep_path(self, context_len: int, keep: torch.Tensor) -> None:
        """Keep the first ``context_len`` positions plus the tree nodes ``keep`` (offsets from
        ``context_len``, ascending): the compaction after a tree verify (a crop when ``keep`` is
        ``0..n-1``)."""
        n_keep = int(keep.numel())
        if n_keep and not bool((keep == torch.arange(n_keep, device=keep.device)).all()):
            src = keep.to(self.device) + context_len
            self.keys[:, :, context_len:context_len + n_keep] = self.keys.index_select(2, src)
            self.values[:, :, context_len:context_len + n_keep] = self.values.index_select(2, src)
        self.truncate(context_len + n_keep)

    def truncate(self, length: int) -> None:
        """Drop every position from ``length`` on."""
        self.length = min(self.length, max(int(length), 0))

    def get_seq_length(self) -> int:
        """Valid positions (the name transformers' caches use)."""
        return self.length

    def kv_bytes(self) -> int:
        """Bytes the valid positions' keys and values take (not the spare capacity)."""
        layers, kv_heads, head_dim = self.shape
        return 2 * layers * kv_heads * self.length * head_dim * self.keys.element_size()
