"""Q4_1 weights times int8 activations: the decoding-step kernel of the int4 path.

The default target's decoder linears are GGUF Q4_1 blocks (32 weights ``w = d * q + m``, ``q`` in 0..15). As
llama.cpp does, ``csrc/q4_rows.cpp`` quantizes each row of activations per block of 32 to int8 (``x ~ dx * xq``)
and computes each block as ``d * dx * (q . xq) + m * dx * sum(xq)``: the integer dot with AVX-512 VNNI's
``vpdpbusd`` (or AVX2's ``vpmaddubsw`` + ``vpmaddwd``, the same integers), then a fixed sequence of float
operations per output. So it reads 5 bits per weight, runs 64 multiply-adds per instruction, and a row's outputs
are the same bits alone and among any number of rows, on either instruction set (batch-invariant, as
speculative decoding needs). The activations' int8 rounding adds ~0.5% relative error per linear (llama.cpp's
own arithmetic for this format; torch's int4 kernel with bf16 activations: ~0.3%).

:func:`q4_pack` lays a 4-bit grid out for the kernel: per row, per pair of blocks (64 values), 32 bytes (byte
``j``: value ``j`` in the low nibble, value ``32 + j`` in the high one); rows padded to a multiple of 16 and
columns to a multiple of 64 with zero blocks; the offsets ``m`` as ``[N / 16, K / 32, 16]`` (each 16-row tile's,
block-major).

Example:
    >>> import torch
    >>> from refrag_rasd_core.lean.invariant import kernels
    >>> q = torch.randint(0, 16, (20, 64))
    >>> d, m = torch.rand(20, 2) * 0.01, -torch.rand(20, 2) * 0.05
    >>> packed, dp, mp, n = q4_pack(q, d, m)
    >>> tuple(packed.shape), tuple(dp.shape), tuple(mp.shape), n
    ((32, 32), (32, 2), (2, 2, 16), 20)
    >>> ops = kernels()
    >>> if ops is not None:
    ...     w = (q.view(20, 2, 32) * d[..., None] + m[..., None]).view(20, 64)
    ...     x = torch.randn(5, 64)
    ...     y = ops.rows_linear_q4(x, packed, dp, mp, n, None)
    ...     assert torch.equal(y[3:4], ops.rows_linear_q4(x[3:4], packed, dp, mp, n, None))
    ...     assert float((y - x @ w.T).abs().max()) < 0.05 * float((x @ w.T).abs().max())
"""

from __future__ import annotations

import torch

__all__ = ["TILE", "q4_pack", "q8_pack"]

TILE = 16
"""Weight rows per tile (the kernel sums 16 outputs at once)."""


def _tiles(x: torch.Tensor, fill: float = 0) -> torch.Tensor:
    """``x [N, ...]`` padded with ``fill`` rows to a multiple of :data:`TILE`, as ``[N / 16, 16, ...]``."""
    n = x.shape[0]
    np_ = -(-n // TILE) * TILE
    if np_ != n:
        x = torch.cat([x, x.new_full((np_ - n, *x.shape[1:]), fill)])
    return x.view(np_ // TILE, TILE, *x.shape[1:])


def _check(q: torch.Tensor, d: torch.Tensor, *others: torch.Tensor) -> tuple[int, int]:
    n, k = q.shape
    if k % 32 or d.shape != (n, k // 32) or any(o.shape != d.shape for o in others):
        raise ValueError(f"q [N, K] (K a multiple of 32) and per-block [N, K / 32] scales expected; got "
                         f"{tuple(q.shape)}, {[tuple(t.shape) for t in (d, *others)]}")
    return n, k


def q4_pack(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(w uint8 [T, K / 32, 256], d fp32 [T, K / 32, 16], m fp32 [T, K / 32, 16], N)`` for ``rows_linear_q4``:
    the Q4_1 weights ``d[n, b] * q[n, k] + m[n, b]`` (``q`` integer 0..15 ``[N, K]``, ``b = k // 32``) in tiles
    of 16 rows (``T = ceil(N / 16)``, padded with zero rows): per tile and block, 4 vectors of 64 bytes, byte
    ``4 r + v`` of vector ``j`` holding row ``r``'s value ``8 j + v`` (low nibble) and ``8 j + 4 + v`` (high)."""
    n, k = _check(q, d, m)
    b = k // 32
    g = _tiles(q.to(torch.uint8)).view(-1, TILE, b, 8, 4).permute(0, 2, 3, 1, 4)  # [T, B, group, row, 4]
    w = (g[:, :, 0::2] | (g[:, :, 1::2] << 4)).reshape(-1, b, 256).contiguous()
    return (w, _tiles(d.float()).transpose(1, 2).contiguous(), _tiles(m.float()).transpose(1, 2).contiguous(), n)


def q8_pack(q: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(w int8 [T, K / 32, 512], d fp32 [T, K / 32, 16], qsum int32 [T, K / 32, 16], N)`` for
    ``rows_linear_q8x``: the Q8_0 weights ``d[n, b] * q[n, k]`` (``q`` int8 ``[N, K]``) in tiles of 16 rows; per
    tile and block, 8 vectors of 64 bytes, byte ``4 r + v`` of vector ``g`` holding row ``r``'s value ``4 g + v``;
    ``qsum``: each row's sum of ``q`` per block."""
    n, k = _check(q, d)
    b = k // 32
    w = _tiles(q.to(torch.int8)).view(-1, TILE, b, 8, 4).permute(0, 2, 3, 1, 4).reshape(-1, b, 512).contiguous()
    qsum = q.to(torch.int32).view(n, b, 32).sum(-1, dtype=torch.int32)
    return (w, _tiles(d.float()).transpose(1, 2).contiguous(), _tiles(qsum).transpose(1, 2).contiguous(), n)
