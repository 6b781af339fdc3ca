"""Batch-invariant kernels: every row of an M-row forward gives the bits the same row gives alone.

Speculative decoding is exact only if a tree verify (M rows) scores each node exactly as a plain decoding step
(1 row) would. Float sums depend on their order, and torch's CPU kernels pick their order by the row count
(``F.linear`` runs a gemv for 1 row and a blocked gemm for more; SDPA splits keys by the query count and reads a
tree's keys where the tree put them, between masked ones), so with int4 weights the two differ in the last bits,
and the bf16 rounding of the next int4 linear's input turns those bits into ~0.1 logit differences.

The int4 kernel itself (``torch.ops.aten._weight_int4pack_mm_for_cpu``) computes each row alone, in k order
(measured bit-identical for 1..64 rows); norms, rotary (elementwise) and the MLP's elementwise ops are per row.
The two remaining parts run through a small C++ extension (``csrc/invariant.cpp``, compiled on first use with
``torch.utils.cpp_extension`` and cached under :func:`~refrag_rasd_core.models.cache_dir`) whose every output is
one fixed sequence of float operations over its own inputs only:

- :class:`InvariantHead`: the LM head, as the model's Q8_0 blocks (int8 values, one scale per 32: a quarter of
  the fp32 bytes) when the matrix lies on such a grid, else its fp32 weights.
- :func:`attend`: attention of each row over its keys in *logical* order, the context's cache slots then its
  tree ancestors and itself (:func:`tree_tails`), so a tree node reads the same key sequence as the plain step
  that would decode it after its ancestors.

Without a C++ compiler (or ``REFRAG_RASD_KERNELS=0``) :func:`kernels` says why, and the int4 path keeps torch's
kernels (not batch-invariant).

Example:
    >>> import torch
    >>> if kernels() is None:
    ...     pass  # no compiler here: nothing to show
    ... else:
    ...     w = torch.randn(40, 64)
    ...     head = InvariantHead.from_weight(w, None)
    ...     x = torch.randn(5, 64)
    ...     assert torch.equal(head(x)[2:3], head(x[2:3]))          # a row alone = the same row among five
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import torch

from .q4 import q8_pack

__all__ = ["InvariantHead", "attend", "kernels", "kernels_problem", "q8_grid", "tree_tails"]

_SOURCES = [Path(__file__).with_name("csrc") / name for name in ("invariant.cpp", "q4_rows.cpp", "layers.cpp")]
_HEADERS = [Path(__file__).with_name("csrc") / "vec.h"]
_FLAGS = ["-O3", "-march=native", "-ffp-contract=off"]
_OPENMP = ["-fopenmp"]  # ATen's parallel_for is inline: without OpenMP in the build, the kernels run on one thread
_LOCK = threading.Lock()
_STATE: dict[str, Any] = {}


def _cpu_key() -> str:
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return flags


def kernels() -> Any:
    """The compiled ops (``torch.ops.refrag_rasd_invariant``), built on first use (about 15 s) and cached per
    source, torch version and CPU; ``None`` when they cannot be built (:func:`kernels_problem` says why)."""
    with _LOCK:
        if "ops" not in _STATE:
            _STATE["ops"], _STATE["problem"] = _load()
        return _STATE["ops"]


def kernels_problem() -> str | None:
    """Why :func:`kernels` is ``None`` (``None`` when they load)."""
    kernels()
    return _STATE.get("problem")


def _load() -> tuple[Any, str | None]:
    if os.environ.get("REFRAG_RASD_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "REFRAG_RASD_KERNELS=0"
    name = "refrag_rasd_invariant"
    if hasattr(torch.ops, name) and hasattr(getattr(torch.ops, name), "decoder_layers"):
        return getattr(torch.ops, name), None
    problem = ""
    for flags in (_FLAGS + _OPENMP, _FLAGS):  # a compiler without OpenMP still builds them, single-threaded
        try:
            _build(name, flags)
            return getattr(torch.ops, name), None
        except Exception as exc:  # no compiler, no ninja, a read-only cache: the int4 path keeps torch's kernels
            problem = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    return None, problem


def _build(name: str, flags: list[str]) -> None:
    """Load the kernels built with ``flags`` (built first, about 15 s, unless cached for these sources, torch
    version, flags and CPU)."""
    from ..models import cache_dir

    parts = [*(src.read_bytes() for src in _SOURCES + _HEADERS), torch.__version__.encode(), " ".join(flags).encode()]
    key = hashlib.sha256(b"\0".join([*parts, _cpu_key().encode()])).hexdigest()[:16]
    build = cache_dir() / "kernels" / key
    build.mkdir(parents=True, exist_ok=True)
    lib = build / f"{name}.so"
    if lib.exists():
        torch.ops.load_library(str(lib))
        return
    from torch.utils.cpp_extension import load

    _ninja_on_path()
    openmp = [f for f in flags if f in _OPENMP]
    load(name=name, sources=[str(src) for src in _SOURCES], extra_cflags=flags, extra_ldflags=openmp,
         build_directory=str(build), is_python_module=False, verbose=False)


def _ninja_on_path() -> None:
    """torch's extension builder runs ``ninja`` from PATH: add the ``ninja`` wheel's (a dependency) if missing."""
    import shutil

    if shutil.which("ninja") is None:
        try:
            import ninja  # type: ignore[import-untyped]
        except ImportError:
            return
        os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"


@torch.no_grad()
def q8_grid(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(q int8 [N, K], d fp32 [N, K / 32])`` with ``weight == d * q`` exactly per block of 32 inputs (how GGUF's
    Q8_0 stores a matrix: ``d = max |w| / 127``), else ``None``."""
    if weight.dim() != 2 or weight.shape[1] % 32 or not torch.is_floating_point(weight):
        return None
    n, k = weight.shape
    g = weight.detach().float().reshape(n, k // 32, 32)
    d = g.abs().amax(-1) / 127
    safe = torch.where(d > 0, d, torch.ones_like(d))
    q = (g / safe[..., None]).round_().clamp_(-127, 127)
    if not torch.equal(q * d[..., None], g):
        return None
    return q.to(torch.int8).reshape(n, k), d.contiguous()


class InvariantHead:
    """``y = x @ W.T + bias`` (fp32 out) through the batch-invariant kernels: Q8_0 blocks when ``W`` lies on
    such a grid (:func:`q8_grid`), else the fp32 weights."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, ops: Any) -> None:
        self.weight = weight
        self.bias = bias
        self.ops = ops
        grid = q8_grid(weight)
        self.q8 = q8_pack(*grid) if grid is not None else None
        self.fp32 = weight.float().contiguous() if grid is None else None

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> InvariantHead | None:
        """An :class:`InvariantHead` for a CPU matrix when the kernels load, else ``None``."""
        ops = kernels() if weight.device.type == "cpu" and weight.dim() == 2 else None
        return None if ops is None else cls(weight, bias, ops)

    @property
    def kind(self) -> str:
        """``"q8"`` or ``"fp32"``: what the kernel reads."""
        return "q8" if self.q8 is not None else "fp32"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.q8 is not None:
            return self.ops.rows_linear_q8x(x, *self.q8, self.bias)
        return self.ops.rows_linear(x, self.fp32, self.bias)


def tree_tails(attention_mask: torch.Tensor | None, n: int, start: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(tail [n, T] int64 cache slots, tail_len [n])``: what each of ``n`` new rows reads after the ``start``
    cached positions, in slot order (a causal forward: rows ``0..i``; a tree: a node's ancestors and itself, as
    the additive or boolean ``[1, 1, n, start + n]`` mask allows). ``None`` if the mask hides a cached position
    (then the rows' key sequences are not a plain step's)."""
    if attention_mask is None:
        idx = torch.arange(n)
        vis = idx[:, None] >= idx[None]  # causal (a comparison: torch's bool tril is ~100x slower on CPU)
    else:
        m = attention_mask[0, 0]
        allowed = m if m.dtype == torch.bool else m == 0
        if start and not bool(allowed[:, :start].all()):
            return None
        vis = allowed[:, start:].cpu()
    lens = vis.sum(1)
    order = torch.argsort((~vis).to(torch.int8), dim=1, stable=True)  # visible slots first, ascending
    width = max(1, int(lens.max()))
    return (order[:, :width] + start).contiguous(), lens.contiguous()


def attend(ops: Any, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int,
           tails: tuple[torch.Tensor, torch.Tensor], scale: float) -> torch.Tensor:
    """Attention of ``q [n, heads, head_dim]`` over one layer's cache ``keys`` / ``values``
    ``[kv_heads, capacity, head_dim]``: row ``i`` reads slots ``0..start-1`` then ``tails[0][i, :tails[1][i]]``
    (:func:`tree_tails`). Returns ``[n, heads * head_dim]``."""
    out = ops.attend(q, keys, values, start, tails[0], tails[1], scale)
    return out.reshape(q.shape[0], -1)
