"""The speculative methods: each proposes, every step, a token tree rooted at the last committed token.

* ``pld``   prompt lookup: one chain, the most frequent continuation of the longest suffix match in the
            prompt and the text generated so far;
* ``rest``  REST: a retrieval trie from a datastore over the request's passages (plus an optional shared
            corpus-level datastore);
* ``draft`` the draft model's EAGLE-2 dynamic tree;
* ``rasd``  RASD: the retrieval trie of PLD + REST, its branches pruned by the draft's confidence in their
            first token, fused with the draft tree by longest-prefix matching.

Every proposer passes its tree through a :class:`~refrag_rasd_core.rasd.budget.TreeBudget`, which keeps the
part worth a wide verify forward on this hardware, or nothing (a plain step). A proposer is given what it
uses (the budget, the draft gate, the shared datastore, the drafter, the passages' token ids) and nothing
else: it works without an engine. :func:`~refrag_rasd_core.rasd.step.speculative_step` drives it.

Example:
    >>> p = make_proposer("pld")
    >>> p.observe([5, 6, 7, 5, 6], None)
    >>> tree, bucket = p.propose([5, 6, 7, 5, 6])     # the suffix [5, 6] was seen before: 7 follows
    >>> tree.tokens[:2], bucket
    ([6, 7], 2)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InvalidInputError
from .budget import DraftGate, TreeBudget
from .datastore import PromptLookup, RestDatastore, merge_retrievals
from .draft_tree import Drafter, build_draft_tree, draft_probe
from .spec_options import SpecOptions
from .token_tree import TokenTree

__all__ = ["METHODS", "PROPOSERS", "Proposer", "ProposerEntry", "SpecOptions", "make_proposer"]


class Proposer:
    """Base: applies the budget. ``propose`` returns the step's tree (``None``: a plain step) and its
    *bucket* (the budget's calibration context: the retrieval's matched suffix length, capped at 3), which
    goes back with ``feedback``."""

    uses_target_hidden = False

    def __init__(self, opts: SpecOptions, budget: TreeBudget | None = None) -> None:
        self.opts = opts
        self.budget = budget
        self.constraint: Any = None  # a request's grammar (structured output): shapes the candidates
        self._seen = 0
        self.retrieval_s = 0.0  # time spent in datastore / prompt lookups (part of the proposal time)

    def observe(self, committed: list[int], hidden: torch.Tensor | None) -> None:
        """Called before each step with all committed tokens and the target's hidden states of the positions
        cached by the last forward."""
        self._on_commit(committed[self._seen:], committed, hidden)
        self._seen = len(committed)

    def _on_commit(self, new: list[int], committed: list[int], hidden: torch.Tensor | None) -> None:
        pass

    def candidates(self, committed: list[int]) -> tuple[TokenTree | None, int]:
        """The step's full candidate tree and its bucket."""
        raise NotImplementedError

    def propose(self, committed: list[int]) -> tuple[TokenTree | None, int]:
        """The tree to verify (what the budget keeps of the candidates; ``None``: a plain step) and its bucket."""
        tree, bucket = self.candidates(committed)
        if self.constraint is not None:  # cut what the grammar forbids, add the span it forces
            tree = self.constraint.shape(tree, committed[-1])
        if tree is None or len(tree) <= 1:
            return None, bucket
        if self.budget is not None and self.opts.adaptive:
            tree = self.budget.select(tree, bucket)
        return (tree if tree is not None and len(tree) > 1 else None), bucket

    def feedback(self, tree: TokenTree | None, path: list[int], bucket: int) -> None:
        """After each step: the verified tree (``None`` for a plain step), the accepted path, the bucket."""
        if self.budget is not None and tree is not None:
            self.budget.update(tree, path, bucket)


class PldProposer(Proposer):
    """A chain: the best continuation of the longest suffix match in prompt + generated text."""

    def __init__(self, opts: SpecOptions, budget: TreeBudget | None = None) -> None:
        super().__init__(opts, budget)
        self.pld = PromptLookup((), max_suffix=8)

    def _on_commit(self, new: list[int], committed: list[int], hidden: torch.Tensor | None) -> None:
        self.pld.extend(new)

    def candidates(self, committed: list[int]) -> tuple[TokenTree | None, int]:
        o = self.opts
        t0 = time.perf_counter()
        r = self.pld.candidates(max_len=o.retrieval_len, min_suffix=o.min_suffix,
                                max_occurrences=o.max_occurrences)
        self.retrieval_s += time.perf_counter() - t0
        bucket = min(r.suffix_len, 3)
        if not r.continuations:
            return None, bucket
        total = r.n_read
        best = max(r.continuations, key=lambda sc: (sc[1], len(sc[0])))
        # chain scores: the share of occurrences agreeing with each prefix of the best continuation
        scores = [sum(c for s, c in r.continuations if s[:d] == best[0][:d]) / total
                  for d in range(1, len(best[0]) + 1)]
        tree = TokenTree(committed[-1])
        node = 0
        for tok, sc in zip(best[0], scores, strict=True):
            node = tree.add(node, tok, sc, self.pld.source)
        return tree, bucket


class RestProposer(Proposer):
    """A retrieval trie from the passages' datastore (and a shared corpus-level ``datastore``, if any).

    The corpus datastore joins the trie only on steps where it matches a longer suffix than the request's own
    stores (prompt, passages): where those match as long, its continuations mostly repeat theirs as extra nodes,
    and on the 2-core CPU a verified node costs more than it yields (measured on code: with it at every step
    rasd accepted 2.85 tokens per forward against 2.62 but verified 10.5 nodes a step against 7, and ran slower).
    """

    use_prompt = False

    def __init__(self, opts: SpecOptions, budget: TreeBudget | None = None, *,
                 passages: Sequence[Sequence[int]] = (), datastore: RestDatastore | None = None) -> None:
        super().__init__(opts, budget)
        self.stores: list[Any] = []
        if self.use_prompt:
            self.pld = PromptLookup((), max_suffix=8)
            self.stores.append(self.pld)
        passages = [list(p) for p in passages if p]
        if passages:
            self.stores.append(RestDatastore.build(passages))
        self._shared = datastore is not None and bool(self.stores)  # the corpus datastore, last, as a fallback
        if datastore is not None:
            self.stores.append(datastore)

    def _on_commit(self, new: list[int], committed: list[int], hidden: torch.Tensor | None) -> None:
        if self.use_prompt:
            self.pld.extend(new)

    def candidates(self, committed: list[int]) -> tuple[TokenTree | None, int]:
        if not self.stores:
            return None, 0
        o = self.opts
        suffix = committed[-16:]
        t0 = time.perf_counter()
        results = [(st.source, st.candidates(suffix, max_len=o.retrieval_len, min_suffix=o.min_suffix,
                                             max_occurrences=o.max_occurrences)) for st in self.stores]
        if self._shared and results[-1][1].suffix_len <= max(r.suffix_len for _, r in results[:-1]):
            results.pop()
        self.retrieval_s += time.perf_counter() - t0
        bucket = min(max(r.suffix_len for _, r in results), 3)
        return merge_retrievals(committed[-1], results, max_nodes=o.max_nodes), bucket


class DraftProposer(Proposer):
    """The draft model's EAGLE-2 dynamic tree."""

    def __init__(self, opts: SpecOptions, budget: TreeBudget | None = None, *, drafter: Drafter | None) -> None:
        super().__init__(opts, budget)
        if drafter is None:
            raise InvalidInputError(
                "method 'draft' needs a draft model: pass drafter=... to the Engine (an EAGLE head or a "
                "small causal LM sharing the target's tokenizer), or use 'pld' / 'rest' / 'rasd'"
            )
        self.drafter = drafter
        self.uses_target_hidden = bool(drafter.uses_target_hidden)
        self.drafter.reset()

    def _on_commit(self, new: list[int], committed: list[int], hidden: torch.Tensor | None) -> None:
        ids = torch.tensor(committed, dtype=torch.long)
        self.drafter.sync(ids, hidden if self.uses_target_hidden else None)

    def draft_tree(self, root: int) -> TokenTree:
        o = self.opts
        return build_draft_tree(self.drafter, root, depth=o.draft_depth, top_k=o.draft_top_k,
                                total_tokens=o.draft_nodes, min_prob=o.draft_min_prob)

    def candidates(self, committed: list[int]) -> tuple[TokenTree | None, int]:
        return self.draft_tree(committed[-1]), 0


class RasdProposer(RestProposer):
    """RASD: PLD + REST retrieval trie, pruned by the draft's confidence, fused with the draft tree.

    A :class:`~refrag_rasd_core.rasd.budget.DraftGate` (the engine's, shared across requests) skips the
    draft while steps that draft have committed fewer tokens per second than steps that do not (the draft's
    forwards and its extra tree nodes against the tokens it adds); such a step uses the retrieval trie
    alone, unpruned. Without a ``drafter`` it is PLD + REST.
    """

    use_prompt = True

    def __init__(self, opts: SpecOptions, budget: TreeBudget | None = None, *,
                 passages: Sequence[Sequence[int]] = (), datastore: RestDatastore | None = None,
                 drafter: Drafter | None = None, gate: DraftGate | None = None) -> None:
        super().__init__(opts, budget, passages=passages, datastore=datastore)
        self.draft = DraftProposer(opts, None, drafter=drafter) if drafter is not None else None
        self.uses_target_hidden = bool(self.draft and self.draft.uses_target_hidden)
        self.gate = gate if opts.adaptive else None
        self._drafted_s: float | None = None
        self._step_t0: float | None = None
        self._unsynced: list[torch.Tensor] | None = None  # target features the draft has not seen yet

    def _on_commit(self, new: list[int], committed: list[int], hidden: torch.Tensor | None) -> None:
        super()._on_commit(new, committed, hidden)
        if self.draft is None:
            return
        # the draft catches up only when it drafts: steps the gate skips cost it nothing (EAGLE's sync takes
        # every committed position's features, so they wait here and go in as one batch)
        if self._unsynced is None:
            self._unsynced = []
        if hidden is not None and self.draft.uses_target_hidden:
            self._unsynced.append(hidden[0] if hidden.dim() == 3 else hidden)

    def _sync_draft(self, committed: list[int]) -> None:
        if self._unsynced is None or self.draft is None:
            return
        hidden = torch.cat(self._unsynced) if self._unsynced else None
        self._unsynced = None
        self.draft._on_commit([], committed, hidden)

    def candidates(self, committed: list[int]) -> tuple[TokenTree | None, int]:
        t0 = time.perf_counter()
        self._step_t0 = t0
        retrieved, bucket = super().candidates(committed)
        self._drafted_s = None
        if self.draft is None or (self.gate is not None and not self.gate.should_draft()):
            return retrieved, bucket
        self._sync_draft(committed)
        o = self.opts
        if retrieved is None or len(retrieved) <= 1:
            tree = self.draft.draft_tree(committed[-1])
        else:
            if bucket <= o.prune_max_match:
                lp, ids = draft_probe(self.draft.drafter, o.prune_top_k)
                retrieved = retrieved.prune_by_draft(lp, ids, top_k=o.prune_top_k, min_prob=o.prune_min_prob)
            tree = retrieved.fuse(self.draft.draft_tree(committed[-1]), max_nodes=o.max_nodes)
        self._drafted_s = time.perf_counter() - t0
        return tree, bucket

    def feedback(self, tree: TokenTree | None, path: list[int], bucket: int) -> None:
        super().feedback(tree, path, bucket)
        if self.gate is not None and self._step_t0 is not None:
            self.gate.record(drafted=self._drafted_s is not None, tokens=max(1, len(path)),
                             step_s=time.perf_counter() - self._step_t0)


@dataclass(frozen=True)
class ProposerEntry:
    """A speculative method in :data:`PROPOSERS`: its proposer class and what a request hands it besides the
    options and the engine's budget: the request's passages and the shared datastore (``retrieval``), the
    drafter (``drafter``), the engine's draft gate (``gate``)."""

    proposer: type[Proposer]
    retrieval: bool = False
    drafter: bool = False
    gate: bool = False

    def build(self, options: SpecOptions | dict[str, Any] | None = None, budget: TreeBudget | None = None, *,
              gate: DraftGate | None = None, datastore: RestDatastore | None = None,
              drafter: Drafter | None = None, passages: Sequence[Sequence[int]] = ()) -> Proposer:
        """A fresh proposer for one request, given only what this method uses."""
        kwargs: dict[str, Any] = {}
        if self.retrieval:
            kwargs.update(passages=passages, datastore=datastore)
        if self.drafter:
            kwargs["drafter"] = drafter
        if self.gate:
            kwargs["gate"] = gate
        return self.proposer(SpecOptions.of(options), budget, **kwargs)


PROPOSERS: dict[str, ProposerEntry] = {
    "pld": ProposerEntry(PldProposer),
    "rest": ProposerEntry(RestProposer, retrieval=True),
    "draft": ProposerEntry(DraftProposer, drafter=True),
    "rasd": ProposerEntry(RasdProposer, retrieval=True, drafter=True, gate=True),
}
"""The speculative methods by name; a new method registers here and every layer (settings, engine, bench,
server, CLI) offers it."""

METHODS: tuple[str, ...] = ("vanilla", *PROPOSERS)
"""Every decoding method: ``vanilla`` (the plain loop, no proposer) and the speculative ones."""


def make_proposer(method: str, *, options: SpecOptions | dict[str, Any] | None = None,
                  budget: TreeBudget | None = None, gate: DraftGate | None = None,
                  datastore: RestDatastore | None = None, drafter: Drafter | None = None,
                  passages: Sequence[Sequence[int]] = ()) -> Proposer:
    """The proposer of ``method`` for one request (fresh per request; ``budget`` and ``gate`` carry their
    calibration across requests, so the caller keeps them). ``passages``: the request's token-id lists."""
    entry = PROPOSERS.get(method)
    if entry is None:
        raise InvalidInputError(f"unknown speculative method {method!r}; choose one of {', '.join(PROPOSERS)}")
    return entry.build(options, budget, gate=gate, datastore=datastore, drafter=drafter, passages=passages)
