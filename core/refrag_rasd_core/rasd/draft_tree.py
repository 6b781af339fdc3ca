"""Draft token trees: EAGLE-2-style dynamic trees from any draft that can score tree nodes.

A :class:`Drafter` keeps whatever state it needs (a KV cache, the target's hidden states) across the
decoding steps of one request. Each step the engine calls, in this order:

1. ``drafter.sync(committed_ids, target_hidden)``: all committed tokens so far (the last one is the
   tree root); drops the speculative state of the previous step's tree.
2. ``drafter.expand_root(top_k)`` (:func:`draft_probe`): the draft's distribution of the root's next
   token, used to prune retrieval branches (:meth:`TokenTree.prune_by_draft`).
3. ``build_draft_tree(drafter, root, ...)``: repeated ``drafter.expand(...)`` calls, one per depth.

Node numbering inside one step: the nodes passed to ``expand`` are numbered 0, 1, 2, ... in the order
passed, across all ``expand`` calls since the last ``sync``; ``parents[i]`` names an earlier node of that
numbering, or -1 for the root.

Example (a tiny random LLaMA as the draft):
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> _ = torch.manual_seed(0)
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                   num_attention_heads=4, num_key_value_heads=2)
    >>> drafter = CausalLMDrafter(LlamaForCausalLM(cfg))
    >>> drafter.sync(torch.tensor([1, 5, 9]))
    >>> tree = build_draft_tree(drafter, 9, depth=3, top_k=2, total_tokens=6)
    >>> len(tree), tree.tokens[0], tree.max_depth <= 3
    (6, 9, True)
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Protocol, runtime_checkable

import torch

from ..errors import InvalidInputError
from ..models import check_same_tokenizer
from .token_tree import SOURCE_DRAFT, TokenTree, tree_attention_mask

__all__ = [
    "CausalLMDrafter",
    "Drafter",
    "build_draft_tree",
    "check_same_tokenizer",
    "draft_probe",
]


@runtime_checkable
class Drafter(Protocol):
    """A draft model that scores token-tree nodes (a small causal LM, an EAGLE head, ...)."""

    uses_target_hidden: bool
    """True when :meth:`sync` needs the target's hidden states (an EAGLE head)."""

    def reset(self) -> None:
        """Forget everything: a new request starts."""
        ...

    def sync(self, token_ids: torch.Tensor, target_hidden: torch.Tensor | None = None) -> None:
        """Catch up with the committed tokens and drop the previous step's speculative state.

        ``token_ids``: 1-D LongTensor of ALL committed tokens (prompt + accepted); the last one is the
        root of the next tree (committed, not yet in the target's KV cache). ``target_hidden``: the
        target's last hidden states [n, H] for the committed positions the drafter has not seen yet, or
        None.
        """
        ...

    def expand_root(self, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_probs [top_k], token_ids [top_k])`` of the root's next token, sorted descending."""
        ...

    def expand(
        self, tokens: torch.Tensor, parents: torch.Tensor, top_k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score m tree nodes in one forward: ``(log_probs [m, top_k], token_ids [m, top_k])``.

        Node i carries ``tokens[i]``; ``parents[i]`` is an earlier node of this step's numbering (see
        the module docstring) or -1 for the root. Each row is the node's next-token distribution's
        top ``top_k``, sorted descending.
        """
        ...


def draft_probe(drafter: Drafter, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The draft's ``(log_probs, token_ids)`` for the root's children, for pruning retrieval branches.

    Call after ``drafter.sync``. Example: ``retrieved.prune_by_draft(*draft_probe(d, 8), min_prob=0.02)``.
    """
    if top_k < 1:
        raise InvalidInputError(f"top_k must be >= 1, got {top_k}")
    return drafter.expand_root(top_k)


def build_draft_tree(
    drafter: Drafter, root_token: int, *, depth: int, top_k: int, total_tokens: int, min_prob: float = 0.0
) -> TokenTree:
    """EAGLE-2 dynamic draft tree of at most ``total_tokens`` nodes (root included) and ``depth`` levels.

    Level 1: the root's ``top_k`` children. For each further level: the ``top_k`` nodes of the previous
    level with the highest cumulative log-prob are expanded in ONE ``drafter.expand`` call, each keeping
    its ``top_k`` children. Finally every candidate is reranked globally by cumulative log-prob and the
    best ``total_tokens - 1`` are kept (ancestor-closed, since a child never beats its parent). Expansion
    stops early once no frontier node has a cumulative probability of at least ``min_prob``. Node
    scores are ``exp(cumulative log-prob)``; sources are :data:`SOURCE_DRAFT`.

    Call after ``drafter.sync`` (whose last token must be ``root_token``).
    """
    if depth < 1 or top_k < 1 or total_tokens < 1:
        raise InvalidInputError(
            f"depth, top_k and total_tokens must be >= 1, got {depth}, {top_k}, {total_tokens}"
        )
    tree = TokenTree(root_token)
    if total_tokens == 1:
        return tree
    lp, ids = drafter.expand_root(top_k)
    lps, toks = lp.tolist(), ids.tolist()
    # candidates: tree node index, cumulative log-prob; level = the newest candidates
    cum: list[float] = [0.0]
    level: list[int] = []
    for t, v in zip(toks, lps, strict=True):
        level.append(tree.add(0, t, 0.0, SOURCE_DRAFT))
        cum.append(v)
    expanded: dict[int, int] = {}  # tree node -> drafter node number
    n_expanded = 0
    min_lp = math.log(min_prob) if min_prob > 0 else -math.inf
    for _ in range(depth - 1):
        sel = sorted(level, key=lambda i: -cum[i])[:top_k]
        if cum[sel[0]] < min_lp:  # dynamic depth: nothing left worth a draft forward
            break
        par = [expanded.get(tree.parents[i], -1) for i in sel]
        for j, i in enumerate(sel):
            expanded[i] = n_expanded + j
        n_expanded += len(sel)
        lp, ids = drafter.expand(
            torch.tensor([tree.tokens[i] for i in sel], dtype=torch.long),
            torch.tensor(par, dtype=torch.long),
            top_k,
        )
        lps, toks = lp.tolist(), ids.tolist()
        level = []
        for i, row_lp, row_tok in zip(sel, lps, toks, strict=True):
            base = cum[i]
            for t, v in zip(row_tok, row_lp, strict=True):
                level.append(tree.add(i, t, 0.0, SOURCE_DRAFT))
                cum.append(base + v)
    scores = tree.scores
    for i in range(1, len(scores)):
        scores[i] = math.exp(cum[i])
    return tree.top(total_tokens)


class CausalLMDrafter:
    """A :class:`Drafter` over a small Hugging Face causal LM sharing the target's tokenizer.

    Keeps its own ``DynamicCache``: committed tokens stay cached across steps; the nodes of a step's
    tree are appended after them (tree attention through a 4D float mask, explicit position ids) and
    cropped away by the next :meth:`sync`.

    Example:
        ``drafter = CausalLMDrafter(small_lm, tokenizer=small_tok, target_tokenizer=target_tok)``
    """

    uses_target_hidden = False

    def __init__(self, model: Any, *, tokenizer: Any = None, target_tokenizer: Any = None) -> None:
        if tokenizer is not None and target_tokenizer is not None:
            check_same_tokenizer(tokenizer, target_tokenizer)
        self.model = model.eval()
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        # transformers 5.24 renamed the forward's ``past_key_values`` to ``cache`` (the old name warns)
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self.reset()

    def reset(self) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache()
        self._ids = torch.zeros(0, dtype=torch.long)  # committed tokens held in the cache
        self._root_lp: torch.Tensor | None = None
        self._anc = torch.zeros(0, 0, dtype=torch.bool)  # ancestor-or-self relation of this step's nodes
        self._depths: list[int] = []

    def _crop(self, n: int) -> None:
        cur = self.cache.get_seq_length()
        if n < cur:
            self.cache.crop(n - cur)

    @torch.inference_mode()
    def sync(self, token_ids: torch.Tensor, target_hidden: torch.Tensor | None = None) -> None:
        ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1).cpu()
        n = len(ids)
        if n == 0:
            raise InvalidInputError("sync needs at least one committed token (the root)")
        m = min(len(self._ids), n)
        common = m
        if m:
            diff = torch.nonzero(self._ids[:m] != ids[:m])
            if len(diff):
                common = int(diff[0, 0])
        common = min(common, n - 1)  # always run the root to get its next-token distribution
        self._crop(common)
        out = self.model(
            input_ids=ids[common:][None].to(self.device),
            position_ids=torch.arange(common, n, device=self.device)[None],
            **{self._cache_kw: self.cache},
            use_cache=True,
            logits_to_keep=1,
        )
        self._root_lp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        self._ids = ids.clone()
        self._anc = torch.zeros(0, 0, dtype=torch.bool)
        self._depths = []

    def expand_root(self, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._root_lp is None:
            raise InvalidInputError("call sync(...) before expand_root(...)")
        return torch.topk(self._root_lp, min(top_k, self._root_lp.numel()))

    @torch.inference_mode()
    def expand(
        self, tokens: torch.Tensor, parents: torch.Tensor, top_k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._root_lp is None:
            raise InvalidInputError("call sync(...) before expand(...)")
        toks = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
        par = torch.as_tensor(parents, dtype=torch.long).reshape(-1).tolist()
        m = len(par)
        if m == 0 or len(toks) != m:
            raise InvalidInputError(f"expand needs as many tokens as parents (>= 1), got {len(toks)} and {m}")
        base = len(self._depths)
        tot = base + m
        anc = torch.zeros(tot, tot, dtype=torch.bool)
        anc[:base, :base] = self._anc
        depths = self._depths
        for i, p in enumerate(par):
            j = base + i
            if not -1 <= p < j:
                raise InvalidInputError(f"node {j}: parent {p} is not -1 (root) or an earlier node")
            if p >= 0:
                anc[j] = anc[p]
            anc[j, j] = True
            depths.append(depths[p] + 1 if p >= 0 else 1)
        self._anc = anc
        ctx = len(self._ids)  # committed tokens in the cache, the root (position ctx - 1) included
        mask = tree_attention_mask(anc[base:].numpy(), ctx, self.dtype)
        pos = torch.tensor(depths[base:], dtype=torch.long) + (ctx - 1)
        out = self.model(
            input_ids=toks[None].to(self.device),
            position_ids=pos[None].to(self.device),
            attention_mask=mask.to(self.device),
            **{self._cache_kw: self.cache},
            use_cache=True,
        )
        lp = torch.log_softmax(out.logits[0].float(), dim=-1)
        return torch.topk(lp, min(top_k, lp.shape[-1]), dim=-1)
