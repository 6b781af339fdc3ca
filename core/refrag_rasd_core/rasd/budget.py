"""How big a tree is worth verifying: the verify-cost curve and online calibration of candidate scores.

A verify forward of ``n`` tree nodes costs ``cost(n)`` plain steps (``cost(1) == 1``; on the 2-core CPU
about 1.7 at 4 nodes and 2.3 at 32; on a GPU close to 1 up to 64). A tree is worth it when the tokens
it is expected to yield per unit of cost beat a plain step:

    gain(tree) = (1 + sum over nodes of P(node accepted)) / cost(len(tree))  >  1

``P(node accepted)`` is estimated as ``alpha[source, depth] * score``: candidate scores (retrieval
frequencies, draft probabilities) are not calibrated probabilities, so the ratio of nodes accepted to
score mass verified is tracked per source and depth (exponentially decayed) and rescales them. Each
step :meth:`TreeBudget.select` keeps the prefix of nodes (best calibrated score first, ancestor-closed)
with the highest gain, or nothing (a plain step) when no prefix beats 1.

Example:
    >>> from refrag_rasd_core.rasd.token_tree import TokenTree
    >>> budget = TreeBudget(costs={1: 1.0, 2: 1.1, 4: 1.5, 8: 1.6, 16: 2.0, 32: 2.5, 64: 3.5})
    >>> sure = TokenTree.from_sequences(0, [(1, 2, 3)])
    >>> len(budget.select(sure))                      # confident chain: verified whole
    4
    >>> weak = TokenTree.from_sequences(0, [(1,), (2,), (3,), (4,)], [0.01] * 4)
    >>> budget.select(weak) is None                   # not worth a wide forward: plain step
    True
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .token_tree import SOURCE_DRAFT, SOURCE_RETRIEVAL, TokenTree

if TYPE_CHECKING:
    from ..forward import Runner

__all__ = ["DraftGate", "TreeBudget", "default_verify_costs", "measure_verify_costs", "CPU_COSTS",
           "CPU_INT4_COSTS", "GPU_COSTS"]

CPU_COSTS = {1: 1.0, 2: 1.28, 4: 1.5, 8: 1.8, 16: 2.05, 32: 2.75, 64: 4.7}
"""Default relative verify costs on a small CPU: SmolLM2-135M fp32 on the lean forward, 2-core AMD EPYC, ~700
cached positions (the calibrations of ``benchmarks/results/decode/2026-12-01-cpu2-*.json`` and
``forward-cost/2026-12-01-cpu2-exact.json``). Engines that calibrate (``Engine.calibrate_verify_costs``, the server's
replicas, the benchmarks) use their own machine's curve instead."""
CPU_INT4_COSTS = {1: 1.0, 2: 1.16, 4: 1.44, 8: 2.5, 16: 4.19, 32: 7.65, 64: 14.4}
"""The same at the 4-bit default (``weights="auto"`` on a CPU with AVX-512 VNNI: Q4_1 x two-level int8 kernels
on both cores; a plain step is ~4x cheaper than fp32's and reads memory, a verify doubles the integer work per
row, so a wide verify weighs more): the median of the calibrations at 512 cached positions of
``benchmarks/results/{decode,code}/2026-12-08-cpu2genoa-*-int4-fine.json``."""
GPU_COSTS = {1: 1.0, 2: 1.02, 4: 1.04, 8: 1.06, 16: 1.1, 32: 1.2, 64: 1.4}
"""Default relative verify costs on a datacenter GPU (a small model is launch-bound up to ~64 positions)."""


def default_verify_costs(runner: Runner) -> dict[int, float]:
    """The verify-cost table an uncalibrated engine uses for ``runner``: :data:`GPU_COSTS` on a GPU,
    :data:`CPU_INT4_COSTS` for a CPU runner whose steps run 4-bit, else :data:`CPU_COSTS`."""
    if runner.device.type == "cuda":
        return GPU_COSTS
    return CPU_INT4_COSTS if getattr(runner, "int4", False) else CPU_COSTS

_MAX_DEPTH = 16


class TreeBudget:
    """Chooses, every step, how much of a candidate tree to verify (see the module docstring).

    Calibration is kept per (candidate kind, bucket, depth): kind 0 = retrieval candidates, 1 = draft-only
    candidates; ``bucket`` is the caller's context for retrieval (the matched suffix length, capped at 3:
    a 1-token match is far less reliable than a 3-token one). Every step the statistics relax toward the
    prior (time constant ``1 / (1 - decay)`` steps), so a source that went quiet is retried later.
    """

    def __init__(self, costs: Mapping[int, float] | None = None, *, max_nodes: int = 64,
                 prior_alpha: float = 0.6, prior_weight: float = 2.0, decay: float = 0.995) -> None:
        table = dict(costs or CPU_COSTS)
        self._sizes = sorted(table)
        self._costs = [float(table[s]) / float(table[self._sizes[0]]) for s in self._sizes]
        self.max_nodes = max_nodes
        self.decay = decay
        self._prior = (prior_weight, prior_weight * prior_alpha)
        # per (kind, bucket): decayed sums, per depth, of the score verified and of the nodes accepted
        self._scored: dict[tuple[int, int], list[float]] = {}
        self._accepted: dict[tuple[int, int], list[float]] = {}

    def cost(self, n: int) -> float:
        """Relative cost of verifying ``n`` nodes (piecewise-linear in the measured table)."""
        s, c = self._sizes, self._costs
        if n <= s[0]:
            return c[0]
        if n >= s[-1]:
            return c[-1] * n / s[-1]
        j = bisect.bisect_left(s, n)
        if s[j] == n:
            return c[j]
        f = (n - s[j - 1]) / (s[j] - s[j - 1])
        return c[j - 1] + f * (c[j] - c[j - 1])

    def _sums(self, key: tuple[int, int]) -> tuple[list[float], list[float]]:
        if key not in self._scored:
            self._scored[key] = [self._prior[0]] * _MAX_DEPTH
            self._accepted[key] = [self._prior[1]] * _MAX_DEPTH
        return self._scored[key], self._accepted[key]

    def alpha(self, source: int, depth: int, bucket: int = 0) -> float:
        """Nodes accepted per unit of score verified, for this kind of candidate at this depth."""
        kind = _kind(source)
        scored, accepted = self._sums((kind, bucket if kind == 0 else 0))
        d = min(depth, _MAX_DEPTH) - 1
        return accepted[d] / scored[d]

    def calibrated(self, tree: TokenTree, bucket: int = 0) -> list[float]:
        """Estimated acceptance probability of every node (root: 1), non-increasing along paths."""
        p = [1.0] * len(tree)
        for i in range(1, len(tree)):
            est = min(1.0, self.alpha(tree.sources[i], tree.depths[i], bucket) * tree.scores[i])
            p[i] = min(est, p[tree.parents[i]])
        return p

    def select(self, tree: TokenTree | None, bucket: int = 0) -> TokenTree | None:
        """The most profitable ancestor-closed part of ``tree``, or ``None`` for a plain step.

        Call once per decoding step (it also ages the statistics toward the prior)."""
        self._relax()
        if tree is None or len(tree) <= 1:
            return None
        p = self.calibrated(tree, bucket)
        order = sorted(range(1, len(tree)), key=lambda i: (-p[i], tree.depths[i], i))
        # best-first prefix of an order where parents come first (p is non-increasing along paths)
        best_n, best_gain, mass = 0, 1.0, 1.0
        for n, i in enumerate(order[: self.max_nodes - 1], start=1):
            mass += p[i]
            gain = mass / self.cost(n + 1)
            if gain > best_gain:
                best_n, best_gain = n, gain
        if best_n == 0:
            return None
        keep = [0, *order[:best_n]]
        closed = set(keep)
        for i in keep:  # ties in p may put a child before its parent: close the set over ancestors
            j = tree.parents[i]
            while j > 0 and j not in closed:
                closed.add(j)
                j = tree.parents[j]
        return tree._subset(closed)

    def update(self, tree: TokenTree, path: list[int], bucket: int = 0) -> None:
        """Learn from one verified tree and the accepted path (node indices, root first)."""
        on_path = set(path)
        for i in range(1, len(tree)):
            kind = _kind(tree.sources[i])
            scored, accepted = self._sums((kind, bucket if kind == 0 else 0))
            d = min(tree.depths[i], _MAX_DEPTH) - 1
            scored[d] += tree.scores[i]
            if i in on_path:
                accepted[d] += 1.0

    def _relax(self) -> None:
        g, (w0, a0) = self.decay, self._prior
        for key, scored in self._scored.items():
            accepted = self._accepted[key]
            for d in range(_MAX_DEPTH):
                scored[d] = g * scored[d] + (1 - g) * w0
                accepted[d] = g * accepted[d] + (1 - g) * a0


def _kind(source: int) -> int:
    """0: retrieval candidates (possibly confirmed by the draft); 1: draft-only candidates."""
    return 0 if source & SOURCE_RETRIEVAL else (1 if source & SOURCE_DRAFT else 0)


def measure_verify_costs(forward: Callable[[int], None], sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64),
                         repeats: int = 3) -> dict[int, float]:
    """Time ``forward(n)`` (one verify forward of ``n`` nodes) and return relative costs, for
    :class:`TreeBudget` on hardware the defaults do not describe.

    Robust to a busy machine: the sizes are timed round-robin ``repeats`` times and each keeps its fastest
    run (a burst of load then hits every size alike instead of one), and the costs are made non-decreasing
    in ``n`` (a wider forward never costs less than a narrower one).

    Example:
        >>> import time
        >>> costs = measure_verify_costs(lambda n: time.sleep(0.001 * (1 + n / 8)), sizes=(1, 8, 16), repeats=2)
        >>> costs[1], costs[16] >= costs[8] >= 1.0
        (1.0, True)
    """
    forward(sizes[0])  # warm-up
    best: dict[int, float] = {n: float("inf") for n in sizes}
    for _ in range(max(1, repeats)):
        for n in sizes:
            t = time.perf_counter()
            forward(n)
            best[n] = min(best[n], time.perf_counter() - t)
    base = best[sizes[0]]
    out: dict[int, float] = {}
    running = 1.0
    for n in sizes:
        running = max(running, best[n] / base)
        out[n] = running
    return out


class DraftGate:
    """Whether running the draft model pays this step (RASD with a weak or costly draft).

    Keeps, as exponential averages, the tokens committed per step and the seconds per step (drafting, verifying
    the bigger fused tree, committing), separately for steps that drafted and steps that did not, and drafts
    when drafting steps have committed tokens at least as fast per second. A draft token the target accepts
    saves only a fraction of a step when retrieval already proposes well, while the draft's forwards and its
    extra tree nodes cost on every step: comparing the two throughputs counts both. Every ``explore_every``
    steps the gate takes the other choice, so both estimates stay current.

    Example:
        >>> gate = DraftGate()
        >>> gate.should_draft()                               # measure drafting first
        True
        >>> gate.record(drafted=True, tokens=3, step_s=0.12)
        >>> gate.should_draft()                               # then not drafting
        False
        >>> for _ in range(20):
        ...     gate.record(drafted=True, tokens=3, step_s=0.12)   # 25 tokens/s with the draft
        ...     gate.record(drafted=False, tokens=2, step_s=0.1)   # 20 tokens/s without
        >>> gate.should_draft()
        True
        >>> for _ in range(40):
        ...     gate.record(drafted=True, tokens=2, step_s=0.12)   # the draft stopped helping
        >>> gate.should_draft()
        False
    """

    def __init__(self, explore_every: int = 16, decay: float = 0.9) -> None:
        self.explore_every = explore_every
        self.decay = decay
        self._avg: dict[bool, tuple[float, float] | None] = {True: None, False: None}  # (tokens, seconds)
        self._n = 0

    def rate(self, drafted: bool) -> float | None:
        """Committed tokens per second of the steps that drafted (``True``) or did not; ``None`` unmeasured."""
        avg = self._avg[drafted]
        return None if avg is None or avg[1] <= 0 else avg[0] / avg[1]

    def should_draft(self) -> bool:
        self._n += 1
        with_draft, without = self.rate(True), self.rate(False)
        if with_draft is None or without is None:
            return with_draft is None  # measure each choice once before comparing
        choice = with_draft >= without
        return (not choice) if self._n % self.explore_every == 0 else choice

    def record(self, *, drafted: bool, tokens: int, step_s: float) -> None:
        """One step: whether it drafted, the tokens it committed and its seconds."""
        avg, g = self._avg[drafted], self.decay
        self._avg[drafted] = (float(tokens), step_s) if avg is None else (
            g * avg[0] + (1 - g) * tokens, g * avg[1] + (1 - g) * step_s)


def runner_verify_costs(runner: Runner, *, context_len: int = 512, repeats: int = 3) -> dict[int, float]:
    """:func:`measure_verify_costs` of a target (a :class:`~refrag_rasd_core.target.TargetRunner`): bushy
    trees of n nodes verified over a ``context_len``-token cache, which is cut back after each forward."""
    import torch

    from ..target import truncate_cache

    device = runner.device
    vocab = int(runner.model.config.vocab_size)
    cache = runner.new_cache()
    runner.forward(torch.arange(context_len, device=device)[None] % vocab, cache)

    def forward(n: int) -> None:
        tree = TokenTree(1)
        for i in range(n - 1):  # a bushy tree: half the nodes hang off the root
            tree.add(0 if i % 2 == 0 else len(tree) - 1, 2 + i, 0.5, 1)
        mask = tree.attention_mask(context_len, runner.model.dtype, device) if n > 1 else None
        runner.forward(torch.tensor([tree.tokens], device=device), cache, logits_at=None,
                       attention_mask=mask, position_ids=tree.position_ids(context_len, device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        truncate_cache(cache, context_len)

    return measure_verify_costs(forward, repeats=repeats)
