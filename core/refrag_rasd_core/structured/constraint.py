"""Grammar-constrained decoding with xgrammar, composed with speculation.

:class:`Grammars` compiles a :class:`~refrag_rasd_core.structured.response_format.ResponseFormat` for one
target's vocabulary (once per tokenizer; compiled grammars are cached by xgrammar). A request gets a
:class:`GrammarConstraint`, which the decoding loop asks three things:

* ``choose(logits)``: the next token of a plain step, drawn from the logits masked to what the grammar allows
  (greedy: the allowed argmax), and fed to the grammar;
* ``shape(tree)``: the proposer's candidate tree before the budget picks from it: branches the grammar forbids
  are cut (a verify never spends a row on an invalid token), and the span the grammar forces next (keys,
  braces, the rest of an enum value: xgrammar's jump-forward tokens) is added as a branch of its own, at the
  root and after the best leaves (a candidate that closes a string is followed by the next key), so the verify
  accepts it in the same forward when the target agrees;
* ``tree_masks(tree)``: one allowed-token mask per tree node (xgrammar's ``traverse_draft_tree``), applied to
  the verify logits before acceptance. Greedy and sampled acceptance then run on the constrained
  distribution, so speculation stays exact for it: greedy output equals constrained plain decoding's.

:data:`UNCONSTRAINED` stands in when a request has no format (every call is the plain one).

Example:
    >>> grammars = Grammars(engine.tokenizer, 49152, engine.eos_ids)                 # doctest: +REAL_MODEL
    >>> c = grammars.constraint(ResponseFormat.of({"type": "choice", "choices": ["yes", "no"]}))  # doctest: +REAL_MODEL
    >>> tok = c.choose(torch.zeros(49152), SamplingParams(), None)                   # doctest: +REAL_MODEL
    >>> engine.tokenizer.decode([tok]) in ("y", "yes", "n", "no")                   # doctest: +REAL_MODEL
    True
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInputError
from ..rasd.token_tree import SOURCE_GRAMMAR, TokenTree
from ..sampling import SamplingParams, choose_token
from .response_format import ResponseFormat
from .unconstrained import UNCONSTRAINED, Unconstrained

__all__ = ["UNCONSTRAINED", "GrammarConstraint", "Grammars", "Unconstrained"]

JUMP_SCORE = 0.95
"""The score of each token of a forced span in the candidate tree (per token, multiplied down the chain)."""
JUMP_LEAVES = 4
"""How many of the best candidate leaves get the span the grammar forces after them."""


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError:  # pragma: no cover - the structured extra is part of every install of the project
        raise InvalidInputError(
            "structured output (response_format, tools) needs xgrammar: pip install 'refrag-rasd-core[structured]'"
        ) from None
    return xgrammar




class Grammars:
    """One target's grammar compiler: its tokenizer's vocabulary as xgrammar sees it (built once, ~0.2 s) and
    the compiled grammars (cached)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Iterable[int]) -> None:
        xgr = _xgrammar()
        self.vocab_size = int(vocab_size)
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=self.vocab_size,
                                                       stop_token_ids=sorted(int(t) for t in stop_ids))
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=2, cache_limit_bytes=64 << 20)

    def compile(self, fmt: ResponseFormat) -> Any:
        """The compiled grammar of ``fmt`` (JSON is compact: ``{"a": 1, "b": [2, 3]}``, so keys and separators
        are forced spans). A format xgrammar cannot compile is refused with its reason."""
        c = self.compiler
        try:
            if fmt.kind == "json_schema":
                return c.compile_json_schema(fmt.spec, any_whitespace=False, strict_mode=True)
            if fmt.kind == "json_object":
                return c.compile_json_schema('{"type": "object"}', any_whitespace=False)
            if fmt.kind == "regex":
                return c.compile_regex(fmt.spec)
            if fmt.kind == "choice":
                alts = " | ".join(json.dumps(s, ensure_ascii=False) for s in json.loads(fmt.spec))
                return c.compile_grammar(f"root ::= {alts}")
            if fmt.kind == "grammar":
                return c.compile_grammar(fmt.spec)
            return c.compile_structural_tag(fmt.spec)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise InvalidInputError(f"the {fmt.kind} response format does not compile: {exc}"[:2000]) from None

    def constraint(self, fmt: ResponseFormat | None) -> GrammarConstraint | Unconstrained:
        """A fresh per-request constraint (:data:`UNCONSTRAINED` for ``None``)."""
        if fmt is None:
            return UNCONSTRAINED
        return GrammarConstraint(self.compile(fmt), self.vocab_size)


class GrammarConstraint:
    """One request's grammar state (an xgrammar matcher over the committed tokens); see the module docstring.
    ``mask_s``: the time spent computing masks and shaping trees."""

    active = True

    def __init__(self, compiled: Any, vocab_size: int) -> None:
        self._xgr = _xgrammar()
        self.matcher = self._xgr.GrammarMatcher(compiled)
        self.vocab_size = vocab_size
        self._row = self._xgr.allocate_token_bitmask(1, vocab_size)
        self.mask_s = 0.0

    def choose(self, logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
        """The next token from ``[V]`` logits, among the tokens the grammar allows; the grammar takes it."""
        t0 = time.perf_counter()
        self.matcher.fill_next_token_bitmask(self._row)
        masked = logits.to(torch.float32, copy=True).unsqueeze(0)
        self._xgr.apply_token_bitmask_inplace(masked, self._row, vocab_size=self.vocab_size)
        self.mask_s += time.perf_counter() - t0
        token = choose_token(masked[0], params, generator)
        self.accept([token])
        return token

    def accept(self, tokens: Iterable[int]) -> None:
        """Feed committed tokens to the grammar (up to the first stop token: nothing follows it)."""
        for tok in tokens:
            if self.matcher.is_terminated():
                return
            if not self.matcher.accept_token(int(tok)):
                raise RuntimeError(f"token {tok} was committed although the grammar forbids it")

    def tree_masks(self, tree: TokenTree) -> torch.Tensor:
        """``[len(tree), words]`` int32 allowed-token bitmasks, row i the grammar's mask after node i's path
        (the root: the committed tokens); rows of nodes the grammar forbids are all zero."""
        t0 = time.perf_counter()
        n = len(tree)
        first = np.full(n, -1, dtype=np.int64)
        sibling = np.full(n, -1, dtype=np.int64)
        for i in range(n):
            kids = tree.children(i)
            if kids:
                first[i] = kids[0]
                for a, b in zip(kids, kids[1:], strict=False):
                    sibling[a] = b
        masks = self._xgr.allocate_token_bitmask(n, self.vocab_size)
        masks.zero_()
        self.matcher.traverse_draft_tree(torch.from_numpy(first), torch.from_numpy(sibling),
                                         torch.tensor(tree.tokens, dtype=torch.int64), masks)
        self.mask_s += time.perf_counter() - t0
        return masks

    def allowed_nodes(self, tree: TokenTree, masks: torch.Tensor) -> list[int]:
        """The nodes whose whole path the grammar allows (the root always)."""
        bits = masks.numpy()
        keep = [0]
        ok = np.zeros(len(tree), dtype=bool)
        ok[0] = True
        for i in range(1, len(tree)):
            p, tok = tree.parents[i], tree.tokens[i]
            if ok[p] and (int(bits[p, tok >> 5]) >> (tok & 31)) & 1:
                ok[i] = True
                keep.append(i)
        return keep

    def shape(self, tree: TokenTree | None, root: int) -> TokenTree | None:
        """The candidate tree cut to what the grammar allows, with the forced span added at the root."""
        t0 = time.perf_counter()
        jump = self.matcher.find_jump_forward_tokens() if not self.matcher.is_terminated() else []
        self.mask_s += time.perf_counter() - t0
        if tree is None or len(tree) <= 1:
            if not jump:
                return None
            tree = TokenTree(root)
        else:
            tree = tree.subtree(self.allowed_nodes(tree, self.tree_masks(tree)))
        leaves = sorted((i for i in range(1, len(tree)) if not tree.children(i)), key=lambda i: -tree.scores[i])
        self._extend(tree, 0, jump)
        t0 = time.perf_counter()
        for leaf in leaves[:JUMP_LEAVES]:  # a candidate that ends where the grammar forces a span: the span follows
            fork = self.matcher.fork()
            if all(fork.accept_token(t) for t in tree.path_tokens(leaf)) and not fork.is_terminated():
                self._extend(tree, leaf, fork.find_jump_forward_tokens())
        self.mask_s += time.perf_counter() - t0
        return tree if len(tree) > 1 else None

    @staticmethod
    def _extend(tree: TokenTree, node: int, span: list[int]) -> None:
        """Add a forced span below ``node`` (each token's score the parent's times :data:`JUMP_SCORE`)."""
        score = tree.scores[node]
        for tok in span:
            score *= JUMP_SCORE
            node = tree.add(node, int(tok), score=score, source=SOURCE_GRAMMAR)

    def mask_logits(self, logits: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        """``[N, V]`` verify logits with each row masked by its node's grammar mask (float32)."""
        if masks is None:
            return logits
        t0 = time.perf_counter()
        out = logits.to(torch.float32, copy=True)
        ended = ~masks.any(dim=1)  # a node past the end of the grammar (a stop token): nothing follows it
        if bool(ended.any()):  # whatever is drawn there is never emitted (emission stops at the stop token)
            masks = masks.clone()
            masks[ended] = -1
        self._xgr.apply_token_bitmask_inplace(out, masks, vocab_size=self.vocab_size)
        self.mask_s += time.perf_counter() - t0
        return out
