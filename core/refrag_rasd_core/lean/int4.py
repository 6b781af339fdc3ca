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
from the fp32 model's where two tokens are close. The kernel computes each row alone, in k order, so its rows do
not depend on how many share a call (measured bit-identical for 1..64 rows); with the batch-invariant attention
and LM head of :mod:`refrag_rasd_core.lean.invariant` a tree verify scores every node exactly as the plain step
that would decode it, and speculative decoding equals the int4 engine's plain decoding token for token. (Without
them, torch's attention and LM head round differently at 1 and at M rows, the bf16 rounding of each int4 linear's
input amplifies that to ~0.1 in the logits, and 128-token answers equalled plain int4 decoding on 40-80% of
prompts.) Matrices that are not on a 4-bit grid keep their own precision (the LM head, a REFRAG-adapted copy).

The kernel pays off where reading the weights bounds the matmul (a step, a tree verify); with hundreds of rows
(a prefill) it is compute-bound and, on an AVX2 CPU without bf16 instructions, about 2x slower than the fp32
copy of the same weights (measured on a 2-core AMD EPYC: 56 ms against 27 ms for one 3072 x 576 matrix at 770
rows). So forwards of up to :data:`DECODE_ROWS` rows always run int4 (a verify and a plain step read the same
weights), and longer ones run whichever of the two :func:`measure_prefill` found faster at load on the
machine at hand; both hold the same values, the fp32 path only skips the bf16 rounding.

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

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["DECODE_ROWS", "GROUP", "PREFILL_ROWS", "Int4Linear", "int4_available", "int4_grid", "measure_prefill"]

GROUP = 32
"""Values per block (GGUF's Q4_0 / Q4_1 block size; one of the kernel's group sizes)."""
DECODE_ROWS = 64
"""Forwards of up to this many rows (a plain step; a verify: token trees hold at most 64 nodes) always run
the int4 kernel."""
PREFILL_ROWS = 256
"""Row count at which :func:`measure_prefill` times the int4 kernel against the fp32 weights."""
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
    :class:`~refrag_rasd_core.lean.linear.PackedLinear` in the lean forward: fp32 (or bf16) in; out, the
    kernel's bf16 (fp32 with a bias, or from the fp32 weights), which the forward's float arithmetic promotes,
    so the MLP's activations pass from gate/up to down without two conversions."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, q: torch.Tensor,
                 scales_and_zeros: torch.Tensor) -> None:
        self.weight = weight  # kept for shape / device (the model's own parameter: no copy)
        self.bias = bias
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        self.scales_and_zeros = scales_and_zeros.to(torch.bfloat16)
        self.long: Callable[[torch.Tensor], torch.Tensor] | None = None
        """What runs forwards of more than :data:`DECODE_ROWS` rows instead of the kernel (the fp32 weights'
        linear, when :func:`measure_prefill` found it faster), or ``None``."""
        self.q4: tuple[Any, tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] | None = None
        """``(ops, packed weights)`` when forwards of up to :data:`DECODE_ROWS` rows run the int8-activation
        kernel of :mod:`refrag_rasd_core.lean.q4` instead (set by :meth:`settle`)."""
        self._grid: tuple[torch.Tensor, torch.Tensor] | None = (q, scales_and_zeros)
        """The grid (``q`` int32 ``[N, K]``: 4 bytes per weight) until :meth:`settle` packs or drops it."""
        self.bf16: torch.Tensor | None = None
        """The weights in bfloat16 when prompts are read that way (:meth:`prompt`), else ``None``."""

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
        if x.shape[0] > DECODE_ROWS:
            return self.long(x) if self.long is not None else self.int4(x)
        if self.q4 is not None:
            return self.q4[0].rows_linear_q4(x, *self.q4[1], self.bias)
        return self.int4(x)

    def prompt(self, x: torch.Tensor) -> torch.Tensor:
        """How a prompt is read, at any row count: bf16 weights and activations with fp32 output where
        :func:`measure_prefill` found them faster (AVX-512 BF16), else the fp32 weights (the model's own values)."""
        if self.bf16 is not None:
            b = None if self.bias is None else self.bias.to(torch.bfloat16)
            return torch.nn.functional.linear(x.to(torch.bfloat16), self.bf16, b).float()
        if self.long is not None:
            return self.long(x)
        return torch.nn.functional.linear(x.to(self.weight.dtype), self.weight, self.bias)

    def settle(self, ops: Any) -> None:
        """Decide the decoding kernel once: with ``ops``, forwards of up to :data:`DECODE_ROWS` rows run
        ``ops.rows_linear_q4`` (int8 activations); without, torch's int4 kernel. Either way the int32 grid is
        released (it is as large as the fp32 weights). Later calls (a shared linear) change nothing."""
        if self._grid is None:
            return
        if ops is not None:
            from .q4 import q4_pack

            q, sz = self._grid
            self.q4 = (ops, q4_pack(q, sz[..., 0].T, (sz[..., 1] - 8 * sz[..., 0]).T))
        self._grid = None

    def int4(self, x: torch.Tensor) -> torch.Tensor:
        """The int4 kernel at any row count."""
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16).contiguous(), self.packed, GROUP,
                                                      self.scales_and_zeros)
        return y if self.bias is None else y + self.bias


@torch.inference_mode()
def measure_prefill(pairs: Sequence[tuple[Int4Linear, Callable[[torch.Tensor], torch.Tensor]]], *,
                    rows: int = PREFILL_ROWS, repeats: int = 2) -> dict[str, Any]:
    """Time ``rows``-row forwards through a sample of a model's linears, each as the int4 kernel and as its fp32
    alternative (``pairs``: ``(int4 linear, fp32 linear)``, a few layers' worth); the faster of each repeat's
    pass is kept; bf16 weights and activations too. Returns ``{"rows", "int4_ms", "fp32_ms", "bf16_ms", "long":
    "fp32" | "int4", "prompt": "bf16" | "fp32"}``: the choice for forwards longer than :data:`DECODE_ROWS` rows,
    and how prompts are read (bf16 where at least 1.25x faster than the better of the two).

    Example:
        >>> q = torch.randint(0, 16, (64, 64)).float()
        >>> q[:, 0::32], q[:, 1::32] = 0, 15
        >>> w = q * 0.01 - 0.08
        >>> lin = Int4Linear.from_weight(w, None)
        >>> measure_prefill([(lin, lambda x: x @ w.T)], rows=8, repeats=1)["long"] in ("fp32", "int4")
        True
    """
    best = {"int4": float("inf"), "fp32": float("inf"), "bf16": float("inf")}
    xs = [torch.randn(rows, lin.weight.shape[1]) for lin, _ in pairs]
    wb = [lin.weight.detach().to(torch.bfloat16) for lin, _ in pairs]
    for rep in range(max(1, repeats) + 1):  # the first round warms up
        for name in best:
            t0 = time.perf_counter()
            for (lin, fp32), x, w in zip(pairs, xs, wb, strict=True):
                if name == "int4":
                    lin.int4(x)
                elif name == "fp32":
                    fp32(x)
                else:
                    torch.nn.functional.linear(x.to(torch.bfloat16), w).float()
            if rep:
                best[name] = min(best[name], time.perf_counter() - t0)
    long = "fp32" if best["fp32"] < best["int4"] else "int4"
    return {"rows": rows, "int4_ms": round(best["int4"] * 1e3, 3), "fp32_ms": round(best["fp32"] * 1e3, 3),
            "bf16_ms": round(best["bf16"] * 1e3, 3), "long": long,
            "prompt": "bf16" if best["bf16"] < 0.8 * min(best["fp32"], best["int4"]) else "fp32"}
