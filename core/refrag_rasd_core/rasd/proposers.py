"""The speculative methods: each proposes, every step, a token tree rooted at the last committed token.

* ``pld``   prompt lookup: one chain, the most frequent continuation of the longest suffix match in the
            prompt and the text generated so far;
* ``rest``  REST: a retrieval trie from a datastore over the request's passages (plus an optional shared
            corpus-level datastore);
* ``draft`` the draft model's EAGLE-2 dynamic tree;
* ``rasd``  RASD: the retrieval trie of PLD + REST, its branches pruned by the draft's confidence in their
            first token, fused with the draft tree by longest-prefix matching.

Every proposer passes its tree through a :class:`~refrag_rasd_core.rasd.budget.TreeBudget`, which keeps the
part worth a wide verify forward on this hardware, or nothing (a plain step).

Example:
    >>> engine.generate(question, passages=passages, method="rasd")    # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from ..errors import InvalidInputError
from .budget import DraftGate, TreeBudget
from .datastore import PromptLookup, RestDatastore, merge_retrievals
from .draft_tree import build_draft_tree, draft_probe
from .token_tree import SOURCE_DRAFT, TokenTree

__all__ = ["SpecOptions", "Proposer", "make_proposer"]


@dataclass
class SpecOptions:
    """Speculation settings (``GenerationConfig.spec``); defaults chosen by measurement on the 2-core CPU.

    ``max_nodes`` bounds a tree before the budget trims it; ``retrieval_len`` is how far a retrieved
    continuation reaches; ``draft_depth`` / ``draft_top_k`` / ``draft_nodes`` shape the EAGLE-2 draft tree, which stops growing
    once no frontier path has a draft probability of ``draft_min_prob``;
    ``prune_top_k`` / ``prune_min_prob`` are RASD's pruning rule (a retrieval branch survives when its first
    token is in the draft's top-k with at least that probability), applied when the retrieval match is at
    most ``prune_max_match`` tokens long (longer suffix matches are trusted over a small draft); ``adaptive`` turns the budget off
    (verify the whole tree every step) when False.
    """

    max_nodes: int = 32
    retrieval_len: int = 8
    min_suffix: int = 1
    max_occurrences: int = 64
    draft_depth: int = 5
    draft_top_k: int = 4
    draft_nodes: int = 16
    draft_min_prob: float = 0.1
    prune_top_k: int = 8
    prune_min_prob: float = 0.01
    prune_max_match: int = 2
    adaptive: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SpecOptions:
        if d is not None and not isinstance(d, dict):
            raise InvalidInputError(f"spec must be a dict of speculation options, got {type(d).__name__}")
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InvalidInputError(f"unknown speculation option(s): {', '.join(sorted(unknown))}; "
                                    f"known: {', '.join(sorted(names))}")
        opts = cls(**d)
        for name in ("max_nodes", "retrieval_len", "min_suffix", "max_occurrences", "draft_depth",
                     "draft_top_k", "draft_nodes"):
            value = getattr(opts, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"speculation option {name} must be an integer >= 1, got {value!r}")
        return opts


class Proposer:
    """Base: keeps the PLD store in step with the committed tokens and applies the budget."""

    uses_target_hidden = False

    def __init__(self, engine: Any, prompt_ids: list[int], opts: SpecOptions, budget: TreeBudget | None) -> None:
        self.opts = opts
        self.budget = budget
        self.engine = engine
        self._seen = 0
        self.bucket = 0  # the budget's calibration context for this step (matched suffix length, capped)
        self.retrieval_s = 0.0  # time spent in datastore / prompt lookups (part of the proposal time)

    def observe(self, committed: list[int], hidden: torch.Tensor | None) -> None:
        """Called before each step with all committed tokens and the target's hidden states of the positions
        cached by the last forward."""
        self._on_commit(committed[self._seen:], committed, hidden)
        self._seen = len(committed)

    def _on_commit(self, new: list[int], committed: list[int], hidden: torch.Tensor | None) -> None:
        pass

    def candidates(self, committed: list[int]) -> TokenTree | None:
        raise NotImplementedError

    def propose(self, committed: list[int]) -> TokenTree | None:
        tree = self.candidates(committed)
        if tree is None or len(tree) <= 1:
            return None
        if self.budget is None or not self.opts.adaptive:
            return tree
        return self.budget.select(tree, self.bucket)

    def feedback(self, tree: TokenTree | None, path: list[int]) -> None:
        """After each step: the verified tree (``None`` for a plain step) and the accepted path."""
        if self.budget is not None and tree is not None:
            self.budget.update(tree, path, self.bucket)


class PldProposer(Proposer):
    """A chain: the best continuation of the longest suffix match in prompt + generated text."""

    def __init__(self, engine: Any, prompt_ids: list[int], opts: SpecOptions, budget: TreeBudget | None) -> None:
        super().__init__(engine, prompt_ids, opts, budget)
        self.pld = PromptLookup((), max_suffix=8)

    def _on_commit(self, new: list[int], committed: list[int], hidden: torch.Tensor | None) -> None:
        self.pld.extend(new)

    def candidates(self, committed: list[int]) -> TokenTree | None:
        o = self.opts
        t0 = time.perf_counter()
        r = self.pld.candidates(max_len=o.retrieval_len, min_suffix=o.min_suffix,
                                max_occurrences=o.max_occurrences)
        self.retrieval_s += time.perf_counter() - t0
        self.bucket = min(r.suffix_len, 3)
        if not r.continuations:
            return None
        total = r.n_read
        best = max(r.continuations, key=lambda sc: (sc[1], len(sc[0])))
        # chain scores: the share of occurrences agreeing with each prefix of the best continuation
        scores = [sum(c for s, c in r.continuations if s[:d] == best[0][:d]) / total
                  for d in range(1, len(best[0]) + 1)]
        tree = TokenTree(committed[-1])
        node = 0
        for tok, sc in zip(best[0], scores, strict=True):
            node = tree.add(node, tok, sc, self.pld.source)
        return tree


class RestProposer(Proposer):
    """A retrieval trie from the passages' datastore (and the engine's shared datastore, if any)."""

    use_prompt = False

    def __init__(self, engine: Any, prompt_ids: list[int], opts: SpecOptions, budget: TreeBudget | None,
                 passages: list[list[int]]) -> None:
        super().__init__(engine, prompt_ids, opts, budget)
        self.stores: list[Any] = []
        if self.use_prompt:
            self.pld = PromptLookup((), max_suffix=8)
            self.stores.append(self.pld)
        passages = [p for p in passages if p]
        if passages:
            self.stores.append(RestDatastore.build(passages))
        if engine.datastore is not None:
            self.stores.append(engine.datastore)

    def _on_commit(self, new: list[int], committed: list[int], hidden: torch.Tensor | None) -> None:
        if self.use_prompt:
            self.pld.extend(new)

    def candidates(self, committed: list[int]) -> TokenTree | None:
        if not self.stores:
            return None
        o = self.opts
        suffix = committed[-16:]
        t0 = time.perf_counter()
        results = [(st.source, st.candidates(suffix, max_len=o.retrieval_len, min_suffix=o.min_suffix,
                                             max_occurrences=o.max_occurrences)) for st in self.stores]
        self.retrieval_s += time.perf_counter() - t0
        self.bucket = min(max(r.suffix_len for _, r in results), 3)
        return merge_retrievals(committed[-1], results, max_nodes=o.max_nodes)


class DraftProposer(Proposer):
    """The draft model's EAGLE-2 dynamic tree."""

    def __init__(self, engine: Any, prompt_ids: list[int], opts: SpecOptions, budget: TreeBudget | None) -> None:
        super().__init__(engine, prompt_ids, opts, budget)
        if engine.drafter is None:
            raise InvalidInputError(
                "method 'draft' needs a draft model: pass drafter=... to the Engine (an EAGLE head or a "
                "small causal LM sharing the target's tokenizer), or use 'pld' / 'rest' / 'rasd'"
            )
        self.drafter = engine.drafter
        self.uses_target_hidden = bool(self.drafter.uses_target_hidden)
        self.drafter.reset()

    def _on_commit(self, new: list[int], committed: list[int], hidden: torch.Tensor | None) -> None:
        ids = torch.tensor(committed, dtype=torch.long)
        self.drafter.sync(ids, hidden if self.uses_target_hidden else None)

    def draft_tree(self, root: int) -> TokenTree:
        o = self.opts
        return build_draft_tree(self.drafter, root, depth=o.draft_depth, top_k=o.draft_top_k,
                                total_tokens=o.draft_nodes, min_prob=o.draft_min_prob)

    def candidates(self, committed: list[int]) -> TokenTree | None:
        return self.draft_tree(committed[-1])


class RasdProposer(RestProposer):
    """RASD: PLD + REST retrieval trie, pruned by the draft's confidence, fused with the draft tree.

    A :class:`~refrag_rasd_core.rasd.budget.DraftGate` (the engine's, shared across requests) skips the
    draft on steps where its accepted tokens have not been paying for its cost; such a step uses the
    retrieval trie alone, unpruned.
    """

    use_prompt = True

    def __init__(self, engine: Any, prompt_ids: list[int], opts: SpecOptions, budget: TreeBudget | None,
                 passages: list[list[int]], gate: DraftGate | None = None) -> None:
        super().__init__(engine, prompt_ids, opts, budget, passages)
        self.draft = DraftProposer(engine, prompt_ids, opts, None) if engine.drafter is not None else None
        self.uses_target_hidden = bool(self.draft and self.draft.uses_target_hidden)
        self.gate = gate if opts.adaptive else None
        self._drafted_s: float | None = None
        self._step_t0: float | None = None

    def _on_commit(self, new: list[int], committed: list[int], hidden: torch.Tensor | None) -> None:
        super()._on_commit(new, committed, hidden)
        if self.draft is not None:
            self.draft._on_commit(new, committed, hidden)

    def candidates(self, committed: list[int]) -> TokenTree | None:
        t0 = time.perf_counter()
        self._step_t0 = t0
        retrieved = super().candidates(committed)
        self._drafted_s = None
        if self.draft is None or (self.gate is not None and not self.gate.should_draft()):
            return retrieved
        o = self.opts
        if retrieved is None or len(retrieved) <= 1:
            tree = self.draft.draft_tree(committed[-1])
        else:
            if self.bucket <= o.prune_max_match:
                lp, ids = draft_probe(self.draft.drafter, o.prune_top_k)
                retrieved = retrieved.prune_by_draft(lp, ids, top_k=o.prune_top_k, min_prob=o.prune_min_prob)
            tree = retrieved.fuse(self.draft.draft_tree(committed[-1]), max_nodes=o.max_nodes)
        self._drafted_s = time.perf_counter() - t0
        return tree

    def feedback(self, tree: TokenTree | None, path: list[int]) -> None:
        super().feedback(tree, path)
        if self.gate is not None and self._step_t0 is not None:
            draft_only = 0 if tree is None else sum(1 for i in path[1:] if tree.sources[i] == SOURCE_DRAFT)
            self.gate.record(draft_s=self._drafted_s, draft_tokens=draft_only if self._drafted_s else None,
                             step_s=time.perf_counter() - self._step_t0)


def make_proposer(method: str, *, engine: Any, prompt_ids: list[int], passages: Sequence[Any] | None,
                  options: dict[str, Any] | None) -> Proposer:
    """The proposer of ``method`` for one request (fresh per request; the budget is the engine's)."""
    opts = SpecOptions.from_dict(options)
    budget = engine.tree_budget(method)
    if method == "pld":
        return PldProposer(engine, prompt_ids, opts, budget)
    if method == "rest":
        return RestProposer(engine, prompt_ids, opts, budget, engine.passage_token_ids(passages))
    if method == "draft":
        return DraftProposer(engine, prompt_ids, opts, budget)
    if method == "rasd":
        return RasdProposer(engine, prompt_ids, opts, budget, engine.passage_token_ids(passages),
                            gate=engine.draft_gate())
    raise InvalidInputError(f"unknown speculative method {method!r}")
