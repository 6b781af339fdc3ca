"""Linear layers that run, per row count, whichever matmul backend measured fastest here.

Plain ``F.linear`` (sgemm) re-packs the weight matrix on every call. Two CPU alternatives keep a prepared
copy of the weight instead: MKL packs it for exactly ``M`` rows (``torch.ops.mkl._mkl_reorder_linear_weight``
then ``torch.ops.mkl._mkl_linear``), and oneDNN takes it in its own layout for any row count
(``weight.to_mkldnn()`` then ``torch.ops.mkldnn._linear_pointwise``). Which wins depends on the machine
and the row count (on a 2-core AVX-512 Xeon MKL's packed copy was 3x faster at 16 rows; on a 2-core AMD
EPYC AVX2 box MKL gained only at 1-2 rows and oneDNN at most sizes), and sgemm itself can be slower at 4
rows than at 8. So the engine's row counts are put in buckets (1, 2, 4, 8, 16, 32; a row count in between
may be padded up) and :func:`measure_pack_plans` times every backend at every bucket on the model's own
weights at load (about a second for a 135M model) and writes the choice into a :class:`PackPlan`.

Example:
    >>> import torch
    >>> w = torch.randn(32, 16)
    >>> plan = PackPlan(rows={1: (1, "mkl"), 2: (2, "onednn"), 3: (8, "plain")}, long="plain")
    >>> lin = PackedLinear(w, None, plan)
    >>> for n in (1, 2, 3, 5, 40):
    ...     x = torch.randn(n, 16)
    ...     torch.testing.assert_close(lin(x), x @ w.T)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["BACKENDS", "BLOCK", "BUCKETS", "NO_PACKING", "PackPlan", "PackedLinear", "measure_pack_plans",
           "mkl_available", "onednn_available"]

BUCKETS = (1, 2, 4, 8, 16, 32)
"""Row counts timed at load; a row count in between runs as the bucket above it says."""
BLOCK = 128
"""Rows per block when a long forward (a prefill) runs on MKL's packed copy (timed at this size)."""
BACKENDS = ("plain", "mkl", "onednn")
_MARGIN = 0.95  # another backend (or padding) must be at least 5% faster than plain to be taken


def mkl_available() -> bool:
    """Whether this torch build has MKL's packed linear ops."""
    try:
        return bool(torch.backends.mkl.is_available()) and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")
    except (AttributeError, RuntimeError):
        return False


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's linear op."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def _available(backend: str) -> bool:
    return backend == "plain" or (mkl_available() if backend == "mkl" else onednn_available())


@dataclass(frozen=True)
class PackPlan:
    """How a forward of ``n`` rows runs its linears: ``rows[n] = (m, backend)`` pads ``n`` up to ``m`` rows
    and runs ``backend`` (``"plain"``, ``"mkl"``, ``"onednn"``); a row count not listed runs plain
    ``F.linear`` when ``n <= 32`` and ``long`` beyond (``"mkl"`` in blocks of :data:`BLOCK` rows).
    ``timings``: what the choice was made from (ms per sample pass, per backend and row count)."""

    rows: dict[int, tuple[int, str]] = field(default_factory=dict)
    long: str = "plain"
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def prepared(self) -> tuple[tuple[str, int], ...]:
        """The prepared weight copies this plan needs: ``("mkl", rows)`` per packed size, ``("onednn", 0)``."""
        need = {(b, m if b == "mkl" else 0) for m, b in self.rows.values() if b != "plain"}
        if self.long != "plain":
            need.add((self.long, BLOCK if self.long == "mkl" else 0))
        return tuple(sorted(need))

    def describe(self) -> str:
        """One line: which backend runs which row counts (``3-4:onednn@4``: 3 and 4 rows, padded to 4)."""
        parts: list[str] = []
        run: list[Any] = []  # [first n, last n, (m, backend)]
        for n, how in sorted(self.rows.items()):
            if run and run[1] == n - 1 and run[2] == how:
                run[1] = n
                continue
            if run:
                parts.append(_span(*run))
            run = [n, n, how]
        if run:
            parts.append(_span(*run))
        if self.long != "plain":
            parts.append(f">32:{self.long}")
        return "plain F.linear at every size" if not parts else "M " + ", ".join(parts) + "; plain otherwise"


def _span(first: int, last: int, how: tuple[int, str]) -> str:
    m, backend = how
    rows = f"{first}" if first == last else f"{first}-{last}"
    return f"{rows}:{backend}" + ("" if first == last == m else f"@{m}")


NO_PACKING = PackPlan()


class PackedLinear:
    """``y = x @ weight.T + bias`` for ``x [n, in]``, on the backend the plan gives for ``n`` rows."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, plan: PackPlan = NO_PACKING) -> None:
        self.weight = weight
        self.bias = bias
        self.plan = plan
        usable = weight.device.type == "cpu" and weight.dtype == torch.float32
        self.mkl: dict[int, torch.Tensor] = {}
        self.onednn: torch.Tensor | None = None
        for backend, m in plan.prepared if usable else ():
            if backend == "mkl" and mkl_available():
                self.mkl[m] = torch.ops.mkl._mkl_reorder_linear_weight(weight, m)
            elif backend == "onednn" and onednn_available():
                self.onednn = weight.to_mkldnn()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        how = self.plan.rows.get(n)
        if how is None:
            return self._run(x, n, self.plan.long if n > BUCKETS[-1] else "plain")
        m, backend = how
        if m != n:
            x = torch.cat([x, x.new_zeros(m - n, x.shape[1])])
        return self._run(x, m, backend)[:n]

    def _run(self, x: torch.Tensor, m: int, backend: str) -> torch.Tensor:
        if backend == "onednn" and self.onednn is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.onednn, self.bias, "none", [], "")
        if backend == "mkl" and m in self.mkl:
            return torch.ops.mkl._mkl_linear(x, self.mkl[m], self.weight, self.bias, m)
        if backend == "mkl" and m > BUCKETS[-1] and BLOCK in self.mkl:
            return self._mkl_blocks(x)
        return F.linear(x, self.weight, self.bias)

    def _mkl_blocks(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        pad = -n % BLOCK
        if pad:
            x = torch.cat([x, x.new_zeros(pad, x.shape[1])])
        packed = self.mkl[BLOCK]
        out = [torch.ops.mkl._mkl_linear(x[i:i + BLOCK], packed, self.weight, self.bias, BLOCK)
               for i in range(0, n + pad, BLOCK)]
        return torch.cat(out)[:n]


def measure_pack_plans(groups: dict[str, Sequence[torch.Tensor]], *, sample_bytes: int = 64 << 20,
                       repeats: int = 2, rows: Sequence[int] = BUCKETS,
                       long: Sequence[str] = ()) -> dict[str, PackPlan]:
    """Time every available backend on each group of weight matrices (the model's own, in forward order:
    the decoder's linears, the LM head) at every bucket of ``rows`` (and at :data:`BLOCK` rows for the
    groups named in ``long``), and plan, per group, the fastest way to run each row count.

    A group's timed sample is its first matrices up to ``sample_bytes`` (the decoder's sample is larger
    than a CPU's last-level cache, so weights stream from memory as in a real forward; the groups are timed
    in turn, so one evicts the other). Each size keeps its fastest of ``repeats`` passes. The row counts of
    a bucket's range (``prev < n <= b``) take the cheapest of plain at ``b`` rows (the estimate of plain at
    ``n``) and every backend padded up to any bucket ``m >= b``, if it is 5% cheaper than that.

    Example:
        >>> import torch
        >>> plans = measure_pack_plans({"decoder": [torch.randn(64, 32)]}, repeats=1)
        >>> set(plans["decoder"].rows) <= set(range(1, 33)), "plain" in plans["decoder"].timings
        (True, True)
    """
    first = next((ms[0] for ms in groups.values() if ms), None)
    if first is None or first.device.type != "cpu" or first.dtype != torch.float32:
        return {name: NO_PACKING for name in groups}
    backends = [b for b in BACKENDS if _available(b)]
    samples = {name: _sample(ms, sample_bytes) for name, ms in groups.items()}
    sizes = {name: [*rows, *([BLOCK] if name in long else [])] for name in groups}
    keys = [(g, m) for g in groups for m in sizes[g]]
    best = {(g, m, b): float("inf") for g, m in keys for b in backends}
    with torch.inference_mode():
        prepared = {}
        for g, w_list in samples.items():
            for i, w in enumerate(w_list):
                if "onednn" in backends:
                    prepared[g, i, "onednn", 0] = w.to_mkldnn()
                for m in sizes[g]:
                    if "mkl" in backends:
                        prepared[g, i, "mkl", m] = torch.ops.mkl._mkl_reorder_linear_weight(w, m)
        for rep in range(max(1, repeats) + 1):  # the first round warms up
            for g, m in keys:
                xs = [torch.randn(m, w.shape[1], dtype=w.dtype) for w in samples[g]]
                for b in backends:
                    t0 = time.perf_counter()
                    for i, (w, x) in enumerate(zip(samples[g], xs, strict=True)):
                        if b == "plain":
                            F.linear(x, w)
                        elif b == "mkl":
                            torch.ops.mkl._mkl_linear(x, prepared[g, i, "mkl", m], w, None, m)
                        else:
                            torch.ops.mkldnn._linear_pointwise(x, prepared[g, i, "onednn", 0], None, "none", [], "")
                    if rep:
                        best[g, m, b] = min(best[g, m, b], time.perf_counter() - t0)
    plans = {}
    for g in groups:
        chosen: dict[int, tuple[int, str]] = {}
        prev = 0
        for b_rows in rows:
            cost, m, backend = min((best[g, m, b], m, b) for m in rows if m >= b_rows for b in backends)
            if cost < _MARGIN * best[g, b_rows, "plain"] and (m, backend) != (b_rows, "plain"):
                chosen.update({n: (m, backend) for n in range(prev + 1, b_rows + 1)})
            prev = b_rows
        long_backend = "plain"
        if g in long:
            cost, long_backend = min((best[g, BLOCK, b], b) for b in backends)
            if cost >= _MARGIN * best[g, BLOCK, "plain"]:
                long_backend = "plain"
        timings: dict[str, Any] = {b: {m: round(best[g, m, b] * 1e3, 3) for m in sizes[g]} for b in backends}
        timings["sample_matrices"] = len(samples[g])
        plans[g] = PackPlan(rows=chosen, long=long_backend, timings=timings)
    return plans


def _sample(matrices: Sequence[torch.Tensor], sample_bytes: int) -> list[torch.Tensor]:
    out, total = [], 0
    for w in matrices:
        out.append(w)
        total += w.numel() * w.element_size()
        if total >= sample_bytes:
            break
    return out
