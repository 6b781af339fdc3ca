"""TokenTree: trie building, top-N selection, pruning, fusion, mask and positions (property tests)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.rasd.token_tree import (
    SOURCE_DATASTORE,
    SOURCE_DRAFT,
    SOURCE_PROMPT,
    TokenTree,
)

seq_st = st.lists(st.integers(0, 4), min_size=0, max_size=6)
seqs_st = st.lists(seq_st, min_size=0, max_size=12)
weights_st = st.lists(st.integers(1, 9), min_size=12, max_size=12)


def prefixes(tree: TokenTree) -> dict[tuple[int, ...], int]:
    """path tokens (root excluded) -> node index."""
    return {tuple(tree.path_tokens(i)): i for i in range(len(tree))}


def check_structure(tree: TokenTree) -> None:
    n = len(tree)
    assert tree.parents[0] == -1 and tree.depths[0] == 0 and tree.scores[0] == 1.0
    for i in range(1, n):
        p = tree.parents[i]
        assert 0 <= p < i, "a parent precedes its child"
        assert tree.depths[i] == tree.depths[p] + 1
        assert tree.depths[i - 1] <= tree.depths[i], "BFS order"
    for i in range(n):
        kids = tree.children(i)
        toks = [tree.tokens[c] for c in kids]
        assert len(toks) == len(set(toks)), "no duplicate sibling tokens"
        assert all(tree.parents[c] == i for c in kids)
        assert all(tree.child(i, tree.tokens[c]) == c for c in kids)
    assert sum(len(tree.children(i)) for i in range(n)) == n - 1
    assert len(prefixes(tree)) == n, "no duplicate paths"


def brute_scores(seqs, weights, max_depth=None) -> dict[tuple[int, ...], float]:
    out: dict[tuple[int, ...], float] = {}
    for s, w in zip(seqs, weights, strict=True):
        s = s if max_depth is None else s[:max_depth]
        for d in range(1, len(s) + 1):
            out[tuple(s[:d])] = out.get(tuple(s[:d]), 0) + w
    return out


@settings(max_examples=400, deadline=None)
@given(seqs_st, weights_st, st.one_of(st.none(), st.integers(0, 6)))
def test_trie_matches_brute_force(seqs, weights, max_depth):
    w = weights[: len(seqs)]
    tree = TokenTree.from_sequences(9, seqs, w, max_depth=max_depth)
    check_structure(tree)
    want = brute_scores(seqs, w, max_depth)
    got = {k: tree.scores[i] for k, i in prefixes(tree).items() if k}
    assert got == pytest.approx(want)
    assert all(s == SOURCE_DATASTORE for s in tree.sources[1:])


@settings(max_examples=400, deadline=None)
@given(seqs_st, weights_st, st.integers(1, 12), st.one_of(st.none(), st.integers(1, 4)))
def test_top_keeps_best_ancestor_closed(seqs, weights, max_nodes, max_depth):
    w = weights[: len(seqs)]
    full = TokenTree.from_sequences(9, seqs, w)
    tree = TokenTree.from_sequences(9, seqs, w, max_nodes=max_nodes, max_depth=max_depth)
    check_structure(tree)
    allp = {k: full.scores[i] for k, i in prefixes(full).items() if k}
    if max_depth is not None:
        allp = {k: v for k, v in allp.items() if len(k) <= max_depth}
    kept = {k for k in prefixes(tree) if k}
    assert kept <= set(allp)
    assert len(tree) == min(max_nodes, len(allp) + 1)
    dropped = set(allp) - kept
    if kept and dropped:
        assert max(allp[k] for k in dropped) <= min(allp[k] for k in kept)


@settings(max_examples=300, deadline=None)
@given(seqs_st, st.sets(st.integers(0, 4)))
def test_prune_keeps_exactly_allowed_branches(seqs, allowed):
    tree = TokenTree.from_sequences(9, seqs)
    pruned = tree.prune(allowed)
    check_structure(pruned)
    want = {k for k in prefixes(tree) if not k or k[0] in allowed}
    assert set(prefixes(pruned)) == want
    assert set(prefixes(tree.prune(lambda t: t in allowed))) == want


@settings(max_examples=300, deadline=None)
@given(
    seqs_st,
    st.lists(st.floats(-8.0, 0.0), min_size=5, max_size=5),
    st.one_of(st.none(), st.integers(0, 5)),
    st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_prune_by_draft(seqs, lps, top_k, min_prob):
    tree = TokenTree.from_sequences(9, seqs)
    lps = sorted(lps, reverse=True)
    ids = [3, 0, 4, 1, 2]
    pruned = tree.prune_by_draft(torch.tensor(lps), torch.tensor(ids), top_k=top_k, min_prob=min_prob)
    k = len(ids) if top_k is None else top_k
    allowed = {
        t
        for r, (t, lp) in enumerate(zip(ids, lps, strict=True))
        if r < k and (min_prob is None or math.exp(lp) >= min_prob * (1 - 1e-12))
    }
    firsts = {pruned.tokens[c] for c in pruned.children(0)}
    assert firsts == {tree.tokens[c] for c in tree.children(0)} & allowed


@settings(max_examples=400, deadline=None)
@given(seqs_st, seqs_st, weights_st, st.one_of(st.none(), st.integers(1, 15)))
def test_fuse(seqs_a, seqs_b, weights, max_nodes):
    a = TokenTree.from_sequences(9, seqs_a, [x / 10 for x in weights[: len(seqs_a)]], sources=SOURCE_PROMPT)
    b = TokenTree.from_sequences(9, seqs_b, [x / 20 for x in weights[: len(seqs_b)]], sources=SOURCE_DRAFT)
    fused = a.fuse(b, max_nodes=max_nodes)
    check_structure(fused)
    pa, pb, pf = prefixes(a), prefixes(b), prefixes(fused)
    union = set(pa) | set(pb)
    assert set(pf) <= union
    if max_nodes is None:
        assert set(pf) == union
    else:
        assert len(fused) == min(max_nodes, len(union))
    for k, i in pf.items():
        if not k:
            continue
        want_score = max(a.scores[pa[k]] if k in pa else 0.0, b.scores[pb[k]] if k in pb else 0.0)
        want_src = (SOURCE_PROMPT if k in pa else 0) | (SOURCE_DRAFT if k in pb else 0)
        assert fused.scores[i] == pytest.approx(want_score)
        assert fused.sources[i] == want_src


@settings(max_examples=300, deadline=None)
@given(seqs_st, st.integers(0, 7))
def test_mask_positions_paths(seqs, ctx):
    tree = TokenTree.from_sequences(9, seqs)
    n = len(tree)
    mask = tree.attention_mask(ctx, dtype=torch.float32)
    assert mask.shape == (1, 1, n, ctx + n) and mask.dtype == torch.float32
    neg = torch.finfo(torch.float32).min
    for i in range(n):
        anc = set()
        j = i
        while j >= 0:
            anc.add(j)
            j = tree.parents[j]
        for c in range(ctx + n):
            allowed = c < ctx or (c - ctx) in anc
            assert mask[0, 0, i, c].item() == (0.0 if allowed else neg)
    assert tree.position_ids(ctx).tolist() == [[ctx + d for d in tree.depths]]
    tokens, parents, depths = tree.as_tensors()
    assert tokens.dtype == torch.long and tokens.tolist() == tree.tokens
    assert parents.tolist() == tree.parents and depths.tolist() == tree.depths
    paths = tree.paths()
    leaves = [i for i in range(n) if not tree.children(i)]
    assert [p[-1] for p in paths] == leaves
    for p in paths:
        assert p[0] == 0 and all(tree.parents[p[d]] == p[d - 1] for d in range(1, len(p)))
    assert {i for p in paths for i in p} == set(range(n))


def test_mask_half_precision_and_root_only():
    tree = TokenTree(3)
    m = tree.attention_mask(2, dtype=torch.float16)
    assert m.dtype == torch.float16 and m.tolist() == [[[[0.0, 0.0, 0.0]]]]
    assert tree.paths() == [[0]] and tree.position_ids(5).tolist() == [[5]]
    chain = TokenTree.from_sequences(3, [[4, 5]])
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        m = chain.attention_mask(1, dtype=dtype)
        neg = torch.finfo(dtype).min
        assert m.dtype == dtype and m[0, 0].tolist() == [[0, 0, neg, neg], [0, 0, 0, neg], [0, 0, 0, 0]]


def test_add_merges_duplicates():
    t = TokenTree(1)
    a = t.add(0, 5, 0.5, SOURCE_PROMPT)
    assert t.add(0, 5, 0.7, SOURCE_DRAFT) == a
    assert t.scores[a] == 0.7 and t.sources[a] == SOURCE_PROMPT | SOURCE_DRAFT and len(t) == 2
    assert t.count_sources() == {"prompt": 1, "datastore": 0, "draft": 1, "both": 1}
    assert "5" in t.format()


def test_errors():
    with pytest.raises(InvalidInputError):
        TokenTree(-1)
    with pytest.raises(InvalidInputError):
        TokenTree(1).fuse(TokenTree(2))
    with pytest.raises(InvalidInputError):
        TokenTree.from_sequences(1, [[2]], max_nodes=0)
    with pytest.raises(InvalidInputError):
        TokenTree.from_sequences(1, [[2]], weights=[1, 2])
    with pytest.raises(InvalidInputError):
        TokenTree(1).attention_mask(-1)
    with pytest.raises(InvalidInputError):
        TokenTree(1).add(0, -3)
