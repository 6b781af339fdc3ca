"""Q4_1 / Q8_0 weights times int8 activations: the decoding-step kernels of the int4 path.

The default target's decoder linears are GGUF Q4_1 blocks (32 weights ``w = d * q + m``, ``q`` in 0..15) and its LM
head Q8_0 (``w = d * q``). As llama.cpp does, ``csrc/q4_rows.cpp`` quantizes each row of activations per block of
32 to int8 (``x ~ dx * xq``) and computes each block as an exact integer dot times ``d * dx`` (plus
``m * dx * sum(xq)`` for Q4_1): AVX-512 VNNI's ``vpdpbusd`` (or AVX2's ``vpmaddubsw`` + ``vpmaddwd``, the same
integers), 16 output rows per vector (each lane one row), then a fixed sequence of float operations per output.
So a step reads 5 bits per decoder weight, and a row's outputs are the same bits alone and among any number of
rows, on either instruction set (batch-invariant, as speculative decoding needs). llama.cpp stops at one int8
level, ~0.5% relative error per linear, enough to change ~5% of the default model's short answers against the
fp32 arithmetic on the same weights; by default (``fine=True``) the kernels quantize each block's remainder
again (``x ~ dx * xq + dr * xr``, ``dr = dx / 254``) and add its integer dot: the activations then carry ~16 bits
(2e-5 relative error per linear) for twice the integer work. ``fine=False`` is llama.cpp's arithmetic (the EAGLE
head's :class:`Q8Linear`, a proposer, runs that way).

:func:`q4_pack` / :func:`q8_pack` lay weights out for the kernels in tiles of 16 rows (zero rows pad the last);
:class:`Q8Linear` runs any ``nn.Linear`` that way (the EAGLE head beside an int4 target).

Example:
    >>> import torch
    >>> from refrag_rasd_core.lean.invariant import kernels
    >>> q = torch.randint(0, 16, (20, 64))
    >>> d, m = torch.rand(20, 2) * 0.01, -torch.rand(20, 2) * 0.05
    >>> packed, dp, mp, n = q4_pack(q, d, m)
    >>> tuple(packed.shape), tuple(dp.shape), tuple(mp.shape), n
    ((2, 2, 256), (2, 2, 16), (2, 2, 16), 20)
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

__all__ = ["TILE", "Q8Linear", "int8_linears", "q4_pack", "q8_pack", "q8_quantize"]

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


def q8_quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q int8 [N, K], d fp32 [N, K / 32])``: ``weight`` rounded to a Q8_0 grid as ggml quantizes
    (``d = max |w| / 127`` per block of 32 inputs, ``q = round(w / d)``)."""
    n, k = weight.shape
    g = weight.detach().float().reshape(n, k // 32, 32)
    d = g.abs().amax(-1) / 127
    q = (g / torch.where(d > 0, d, torch.ones_like(d))[..., None]).round_().clamp_(-127, 127)
    return q.to(torch.int8).reshape(n, k), d.contiguous()


class Q8Linear(torch.nn.Module):
    """An ``nn.Linear`` run as Q8_0 weights times int8 activations (``rows_linear_q8x``) for calls of up to
    ``max_rows`` rows, its own fp32 weights beyond (a long prefill): a quarter of the bytes per decoding call,
    for a small model beside the target (the EAGLE draft head). ``weight`` / ``bias`` stay the module's."""

    def __init__(self, linear: torch.nn.Linear, ops: object, max_rows: int = 64) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.ops, self.max_rows = ops, max_rows
        self.packed = q8_pack(*q8_quantize(linear.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] > self.max_rows or flat.dtype != torch.float32 or flat.device.type != "cpu":
            return torch.nn.functional.linear(x, self.weight, self.bias)
        y = self.ops.rows_linear_q8x(flat, *self.packed, self.bias, False)  # type: ignore[attr-defined]
        return y.reshape(*x.shape[:-1], y.shape[-1])


def int8_linears(module: torch.nn.Module, ops: object) -> int:
    """Replace every ``nn.Linear`` under ``module`` whose inputs are a multiple of 32 by a :class:`Q8Linear`;
    returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear) and child.in_features % 32 == 0 and child.weight.device.type == "cpu":
            setattr(module, name, Q8Linear(child, ops))
            count += 1
        else:
            count += int8_linears(child, ops)
    return count
