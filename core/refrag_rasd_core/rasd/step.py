"""One RASD decoding step: propose -> select -> one verify forward -> accept -> compact.

:func:`speculative_step` is the whole step, in order:

1. **propose**: the proposer sees the tokens committed so far (and the target's features of the positions
   the last forward cached) and returns its candidate tree, rooted at the last committed token;
2. **select**: the proposer's budget keeps the part of the tree worth a wide forward here (or nothing: a
   plain step);
3. **verify**: one target forward over the tree's nodes, each attending to the cache and its own ancestors
   (the tree attention mask and per-node positions);
4. **accept**: the longest path the target agrees with (greedy: its argmax; sampling: lossless rejection
   sampling, :mod:`~refrag_rasd_core.rasd.verify`), plus the target's own bonus token;
5. **compact**: the KV cache keeps the accepted path's entries only; the proposer learns what was accepted.

The caller commits the returned tokens (stopping at EOS, a stop string or the token limit).

Example:
    >>> import torch
    >>> from refrag_rasd_core.rasd.proposers import make_proposer
    >>> from refrag_rasd_core.sampling import SamplingParams
    >>> from refrag_rasd_core.target import TargetRunner
    >>> runner = TargetRunner(engine.model)                                                  # doctest: +REAL_MODEL
    >>> committed = engine.tokenizer(
    ...     "one two three four, one two three four, one two")["input_ids"]                   # doctest: +REAL_MODEL
    >>> cache = runner.new_cache()                                                           # doctest: +REAL_MODEL
    >>> _ = runner.forward(torch.tensor([committed[:-1]]), cache)        # the prefill          # doctest: +REAL_MODEL
    >>> step = speculative_step(runner, make_proposer("pld"), cache, committed, None,
    ...                         SamplingParams())                                            # doctest: +REAL_MODEL
    >>> committed += step.tokens                 # the accepted candidates, then the bonus token  # doctest: +REAL_MODEL
    >>> len(step.tokens) >= 1, step.tree_nodes > 1                                           # doctest: +REAL_MODEL
    (True, True)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..sampling import SamplingParams
from ..structured.unconstrained import UNCONSTRAINED
from ..target import keep_cache_path
from .token_tree import TokenTree
from .verify import accept_greedy, accept_sampled

if TYPE_CHECKING:
    from ..forward import Runner

__all__ = ["StepResult", "speculative_step"]


@dataclass
class StepResult:
    """What one step accepted and what it cost."""

    tokens: list[int]               # to commit, in order: the accepted candidates, then the bonus token
    hidden: torch.Tensor | None     # the target's features of the positions this step cached (for the drafter)
    tree_nodes: int                 # nodes verified (0: a plain step)
    propose_s: float                # proposal: retrieval + drafting + budget
    verify_s: float                 # the verify forward, acceptance and cache compaction
    tree: TokenTree | None = None   # the verified tree (None: a plain step)
    path: list[int] = field(default_factory=lambda: [0])  # its accepted nodes, from the root


def speculative_step(runner: Runner, proposer: Any, cache: Any, committed: list[int], hidden: torch.Tensor | None,
                     params: SamplingParams, generator: torch.Generator | None = None, *,
                     shift: int = 0, constraint: Any = UNCONSTRAINED) -> StepResult:
    """One step of speculative decoding (see the module docstring). ``runner``: the target's
    :class:`~refrag_rasd_core.target.TargetRunner`; ``cache``: its KV cache holding every committed position
    but the last; ``shift``: cached positions that are not tokens (REFRAG's compressed chunks count one
    each, so a position is ``len(committed) - 1 + shift``); ``constraint``: the request's grammar
    (:mod:`~refrag_rasd_core.structured.constraint`): every node's logits are masked by it before acceptance,
    and it takes the emitted tokens."""
    device = runner.device
    ctx = len(committed) - 1 + shift  # cached positions: the root (the last committed token) is not cached yet
    t0 = time.perf_counter()
    proposer.observe(committed, hidden)
    tree, bucket = proposer.propose(committed)
    t1 = time.perf_counter()
    want_hidden = proposer.uses_target_hidden
    if tree is None:  # a plain step
        logits, hidden = runner.forward(torch.tensor([[committed[-1]]], device=device), cache, logits_at=None,
                                        want_hidden=want_hidden)
        path, tokens = [0], [constraint.choose(logits[0], params, generator)]
        nodes = 0
    else:
        logits, hidden = runner.forward(torch.tensor([tree.tokens], device=device), cache, logits_at=None,
                                        attention_mask=tree.attention_mask(ctx, runner.model.dtype, device),
                                        position_ids=tree.position_ids(ctx, device), want_hidden=want_hidden)
        logits = constraint.mask_logits(logits, constraint.tree_masks(tree))
        path, tokens = (accept_greedy(tree, logits) if params.greedy
                        else accept_sampled(tree, logits, params, generator))
        constraint.accept(tokens)
        keep = torch.tensor(path, device=device)
        keep_cache_path(cache, ctx, keep)
        if hidden is not None:
            hidden = hidden.index_select(0, keep)
        nodes = len(tree)
    proposer.feedback(tree, path, bucket)
    return StepResult(tokens=tokens, hidden=hidden, tree_nodes=nodes, propose_s=t1 - t0,
                      verify_s=time.perf_counter() - t1, tree=tree, path=path)
