"""A KV cache across requests: :class:`PrefixCache` keeps the prefill KV of earlier requests and gives a new
request the longest prefix of its prefill input it has already read, so only the rest is computed (what
vLLM's automatic prefix caching, SGLang's RadixAttention and llama.cpp's ``cache_prompt`` do).

A prefill input is a sequence of positions, each a token id or, in a compressed (REFRAG) prefill, a chunk
vector (keyed by a digest of its bytes). Positions are hashed in blocks of ``block`` positions, each block's
hash chained to the one before, so a lookup walks the new request's chain and stops at the first block no
earlier request shared; the entry found is checked position by position before it is used. Entries are whole
prompts (their KV and, when computed, the target's hidden states for the draft head), evicted least recently
used past a byte budget; an entry that a newer one extends is replaced by it. Thread-safe.

Example:
    >>> cache = PrefixCache(max_bytes=1 << 20, block=2)
    >>> kv = KVSnapshot.of_tensors(torch.zeros(1, 1, 5, 4), torch.zeros(1, 1, 5, 4))
    >>> cache.store("ns", [1, 2, 3, 4, 5], kv)
    >>> hit = cache.lookup("ns", [1, 2, 3, 4, 9, 9])      # the first 4 positions were read before
    >>> hit.length, cache.lookup("ns", [1, 2, 3, 4, 5, 6]).length, cache.lookup("ns", [7, 7, 7]).length
    (4, 5, 0)
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["KVSnapshot", "PrefixCache", "PrefixHit", "position_keys"]

DEFAULT_BLOCK = 16


@dataclass
class KVSnapshot:
    """The keys and values of a cache's first positions: one ``[layers, kv_heads, positions, head_dim]`` pair
    (a copy: the request that made it goes on changing its own cache)."""

    keys: torch.Tensor
    values: torch.Tensor

    @classmethod
    def of_tensors(cls, keys: torch.Tensor, values: torch.Tensor) -> KVSnapshot:
        return cls(keys.detach().clone(), values.detach().clone())

    @classmethod
    def of_cache(cls, cache: Any, length: int) -> KVSnapshot:
        """The first ``length`` positions of a :class:`~refrag_rasd_core.lean.LeanCache` or a transformers
        ``DynamicCache``."""
        if hasattr(cache, "keep_path"):  # LeanCache: [layers, kv_heads, capacity, head_dim]
            return cls.of_tensors(cache.keys[:, :, :length], cache.values[:, :, :length])
        keys = torch.stack([layer.keys[0, :, :length] for layer in cache.layers])
        values = torch.stack([layer.values[0, :, :length] for layer in cache.layers])
        return cls(keys, values)

    @property
    def length(self) -> int:
        return int(self.keys.shape[2])

    @property
    def nbytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()

    def restore(self, runner: Any, length: int) -> Any:
        """A new cache of ``runner`` holding this snapshot's first ``length`` positions."""
        cache = runner.new_cache()
        if hasattr(cache, "keep_path"):
            cache.reserve(length + 64)
            cache.keys[:, :, :length] = self.keys[:, :, :length]
            cache.values[:, :, :length] = self.values[:, :, :length]
            cache.length = length
            return cache
        for i in range(self.keys.shape[0]):
            cache.update(self.keys[i, None, :, :length].clone(), self.values[i, None, :, :length].clone(), i)
        return cache


@dataclass
class PrefixHit:
    """What a lookup found: ``length`` positions already read (0: none), their KV and hidden states."""

    length: int = 0
    kv: KVSnapshot | None = None
    hidden: torch.Tensor | None = None


@dataclass
class _Entry:
    namespace: Hashable
    keys: list[Hashable]
    kv: KVSnapshot
    hidden: torch.Tensor | None
    hashes: list[int] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        extra = self.hidden.numel() * self.hidden.element_size() if self.hidden is not None else 0
        return self.kv.nbytes + extra


def position_keys(token_ids: Sequence[int | None], embeds: torch.Tensor | None = None,
                  tag: Hashable = None) -> list[Hashable]:
    """The cache keys of a prefill input: each raw position's token id; each compressed position (``None``
    in ``token_ids``) a digest of its vector in ``embeds`` ``[1, L, H]``, tagged with ``tag`` (e.g. the
    adapters that act at chunk positions)."""
    out: list[Hashable] = []
    for i, tok in enumerate(token_ids):
        if tok is not None:
            out.append(int(tok))
            continue
        if embeds is None:
            raise ValueError("a compressed position needs its vector")
        row = embeds[0, i].detach().to("cpu").contiguous()
        out.append(("chunk", tag, hashlib.blake2b(row.numpy().tobytes(), digest_size=16).digest()))
    return out


class PrefixCache:
    """Earlier requests' prefill KV, by prefix, within ``max_bytes`` (see the module docstring)."""

    def __init__(self, max_bytes: int, block: int = DEFAULT_BLOCK) -> None:
        if int(max_bytes) < 0 or int(block) < 1:
            raise ValueError("max_bytes must be >= 0 and block >= 1")
        self.max_bytes = int(max_bytes)
        self.block = int(block)
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # id -> entry, least recently used first
        self._index: dict[int, int] = {}  # chained block hash -> entry id
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.lookups = 0

    @property
    def nbytes(self) -> int:
        """Bytes the cached KV (and hidden states) take now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def _hashes(self, namespace: Hashable, keys: Sequence[Hashable]) -> list[int]:
        out, h = [], hash(("prefix", namespace))
        for start in range(0, len(keys) - len(keys) % self.block, self.block):
            h = hash((h, tuple(keys[start:start + self.block])))
            out.append(h)
        return out

    def lookup(self, namespace: Hashable, keys: Sequence[Hashable], *, need_hidden: bool = False) -> PrefixHit:
        """The longest prefix of ``keys`` (at most ``len(keys) - 1`` positions: the last one is always computed,
        its logits are the request's first token) read by an earlier request: found by whole blocks, then
        extended position by position into the entry's next, partly shared block."""
        with self._lock:
            self.lookups += 1
            best: _Entry | None = None
            blocks = 0
            for n, h in enumerate(self._hashes(namespace, keys[:max(len(keys) - 1, 0)]), 1):
                entry = self._entries.get(self._index.get(h, -1))
                if entry is None or (need_hidden and entry.hidden is None):
                    break
                best, blocks = entry, n
            if best is None:
                return PrefixHit()
            length = blocks * self.block
            if list(best.keys[:length]) != list(keys[:length]):  # a hash collision: never use it
                return PrefixHit()
            most = min(len(best.keys), len(keys) - 1)
            while length < most and best.keys[length] == keys[length]:
                length += 1
            self._entries.move_to_end(id(best))
            self.hits += 1
            return PrefixHit(length, best.kv, best.hidden)

    def store(self, namespace: Hashable, keys: Sequence[Hashable], kv: KVSnapshot,
              hidden: torch.Tensor | None = None) -> None:
        """Keep a request's prefill KV (``kv`` covers ``keys``); entries it extends are dropped."""
        if len(keys) < self.block:
            return
        entry = _Entry(namespace, list(keys), kv, None if hidden is None else hidden.detach().clone())
        if entry.nbytes > self.max_bytes:
            return
        entry.hashes = self._hashes(namespace, entry.keys)
        with self._lock:
            for h in entry.hashes:  # older entries whose every block this one has: it replaces them
                old = self._entries.get(self._index.get(h, -1))
                if old is not None and len(old.hashes) <= len(entry.hashes) and old.hashes[-1] in entry.hashes:
                    self._drop(old)
            self._entries[id(entry)] = entry
            self._bytes += entry.nbytes
            for h in entry.hashes:
                self._index[h] = id(entry)
            while self._bytes > self.max_bytes and self._entries:
                self._drop(next(iter(self._entries.values())))

    def _drop(self, entry: _Entry) -> None:
        if self._entries.pop(id(entry), None) is None:
            return
        self._bytes -= entry.nbytes
        for h in entry.hashes:
            if self._index.get(h) == id(entry):
                del self._index[h]

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()
            self._index.clear()
            self._bytes = 0
