"""4-bit weights run as 4-bit: an opt-in linear for matrices whose values already lie on a 4-bit grid.

The default target comes from a Q4_1 GGUF file: every decoder linear is stored as blocks of 32 values
``w = d * q + m`` (q in 0..15), dequantized to fp32 at load. The same values fit torch's groupwise int4 layout
(group 32, ``w = (q - 8) * s + z`` with ``s = d``, ``z = m + 8 d``) in an eighth of the bytes, and a decoding
step on a CPU is bound by reading the weights. :func:`int4_grid` finds that grid (or says the matrix is not on
one: a full-precision model is never quantized here), :class:`Int4Linear` runs
``torch.ops.aten._weight_int4pack_mm_for_cpu`` on it.

This torch build's int4 kernel is vectorized for bfloat16 activations only (with fp32 activations it is about
15x slower than fp32 ``F.linear``), so an :class:`Int4Linear` rounds its input, the block scales and its output
to bfloat16: outputs differ from the fp32 model's by up to ~1% relative per linear, and greedy text can differ
from the fp32 model's where two tokens are close. That is why it is opt-in (``Engine(..., weights="int4")``).
Speculative decoding is not bit-exact against the engine's own plain decoding either: a verify of many rows and
a step of one run the fp32 parts (attention, the LM head) through different kernels, and the bf16 rounding of
each int4 linear's input amplifies those last-bit differences to ~0.1 in the logits, so at a near-tie the
other token can win (measured on the default model: 128-token answers equal to plain int4 decoding on 40-80%
of prompts; every divergence at a top-2 margin under 0.15). With the default exact weights speculation is
lossless. Matrices that are not on a 4-bit grid (the LM head, a REFRAG-adapted copy) keep fp32.

Example:
    >>> import torch
    >>> q = torch.randint(0, 16, (64, 64)).float()
    >>> q[:, 0::32], q[:, 1::32] = 0, 15                      # each block spans its 16 levels (as Q4_1's do)
    >>> w = q * 0.01 - 0.08                                   # a 4-bit grid: one scale and offset per 32 values
    >>> lin = Int4Linear.from_weight(w, None)
    >>> lin is not None and int4_grid(torch.randn(64, 64)) is None
    True
    >>> x = torch.randn(3, 64)
    >>> bool(((lin(x) - x @ w.T).abs().max() < 0.05 * (x @ w.T).abs().max()))
    True
"""

from __future__ import annotations

import torch

__all__ = ["GROUP", "Int4Linear", "int4_available", "int4_grid"]

GROUP = 32
"""Values per block (GGUF's Q4_0 / Q4_1 block size; one of the kernel's group sizes)."""
_REL_TOL = 1e-4  # a value is on the grid if within this fraction of its block's step


def int4_available() -> bool:
    """Whether this torch build has the CPU int4 kernels."""
    ops = torch.ops.aten
    return hasattr(ops, "_weight_int4pack_mm_for_cpu") and hasattr(ops, "_convert_weight_to_int4pack_for_cpu")


@torch.no_grad()
def int4_grid(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(q int32 [N, K] in 0..15, scales_and_zeros fp32 [K / 32, N, 2])`` when every block of 32 values of
    ``weight`` (along the input dimension) is ``lo + step * q`` with ``q`` in 0..15, ``lo`` its minimum and
    ``lo + 15 step`` its maximum (how Q4_1 quantizers place the grid), else ``None``."""
    if weight.dim() != 2 or weight.shape[1] % GROUP or not torch.is_floating_point(weight):
        return None
    n, k = weight.shape
    g = weight.detach().float().reshape(n, k // GROUP, GROUP)
    lo, hi = g.amin(-1), g.amax(-1)
    step = (hi - lo) / 15
    safe = torch.where(step > 0, step, torch.ones_like(step))
    q = ((g - lo[..., None]) / safe[..., None]).round_().clamp_(0, 15)
    off = (q * step[..., None] + lo[..., None] - g).abs().amax(-1)
    if bool((off > _REL_TOL * safe + 1e-12).any()):
        return None
    zeros = lo + 8 * step
    return q.reshape(n, k).to(torch.int32), torch.stack([step, zeros], -1).transpose(0, 1).contiguous()


class Int4Linear:
    """``y = x @ W.T + bias`` with ``W`` held as groupwise int4 (see the module docstring); a drop-in for
    :class:`~refrag_rasd_core.lean.linear.PackedLinear` (same call, fp32 in and out)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, q: torch.Tensor,
                 scales_and_zeros: torch.Tensor) -> None:
        self.weight = weight  # kept for shape / device (the model's own parameter: no copy)
        self.bias = bias
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        self.scales_and_zeros = scales_and_zeros.to(torch.bfloat16)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> Int4Linear | None:
        """An :class:`Int4Linear` for ``weight`` if it lies on a 4-bit grid and the kernel takes it, else ``None``."""
        if weight.device.type != "cpu" or not int4_available():
            return None
        grid = int4_grid(weight)
        if grid is None:
            return None
        try:
            return cls(weight, bias, *grid)
        except RuntimeError:  # a shape the kernel does not take
            return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16).contiguous(), self.packed, GROUP,
                                                      self.scales_and_zeros).to(x.dtype)
        return y if self.bias is None else y + self.bias
