"""Property-based fuzzing (issue 9, part 6) against brute-force references, thousands of cases in CI time.

What ``tests/unit/test_datastore.py`` and ``test_token_tree.py`` already cover (REST / PLD candidates vs a
scan, trie / top / prune / fuse / mask / positions vs definitions) is not repeated here. This file adds:

* KV-cache compaction: :func:`keep_cache_path` and :func:`truncate_cache` on random ``DynamicCache`` s vs
  ``torch.cat`` + ``index_select`` (contiguous and scattered paths, many layers / heads / lengths);
* the whole verify step on a real (tiny) decoder: a random tree scored in ONE forward with
  ``TokenTree.attention_mask`` / ``position_ids`` gives each node the logits of running its path
  sequentially, and after compaction to a random root-to-node path the cache equals the cache of that
  path run on its own (so decoding continues exactly);
* greedy acceptance (:func:`accept_greedy`) vs "deepest path whose every token is the argmax";
* ``ancestor_matrix`` vs walking parents; masks for half-precision dtypes never NaN and never fully masked;
* ``merge_retrievals`` / ``retrieval_tree`` vs the brute-force mixture of the stores' prefix frequencies;
* ``RestDatastore.save`` -> ``load`` round trips: every query answers the same.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import DynamicCache

from refrag_rasd_core.rasd.datastore import PromptLookup, RestDatastore, merge_retrievals, retrieval_tree
from refrag_rasd_core.rasd.token_tree import SOURCE_DATASTORE, SOURCE_PROMPT, TokenTree
from refrag_rasd_core.rasd.verify import accept_greedy
from refrag_rasd_core.target import TargetRunner, keep_cache_path, truncate_cache

FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

seq_st = st.lists(st.integers(0, 5), min_size=0, max_size=6)
seqs_st = st.lists(seq_st, min_size=0, max_size=10)


# ---- KV compaction -----------------------------------------------------------------------------------------
def random_cache(layers: int, heads: int, length: int, dim: int, seed: int) -> DynamicCache:
    g = torch.Generator().manual_seed(seed)
    cache = DynamicCache()
    for i in range(layers):
        cache.update(torch.randn(1, heads, length, dim, generator=g),
                     torch.randn(1, heads, length, dim, generator=g), i)
    return cache


@st.composite
def compaction_case(draw):
    layers, heads, dim = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 8))
    ctx, tree = draw(st.integers(0, 40)), draw(st.integers(1, 24))
    kind = draw(st.sampled_from(["path", "prefix", "empty", "any"]))
    if kind == "prefix":
        keep = list(range(draw(st.integers(1, tree))))
    elif kind == "empty":
        keep = []
    else:
        keep = sorted(draw(st.sets(st.integers(1, tree - 1), max_size=tree - 1))) if tree > 1 else []
        if kind == "path":  # what a verify keeps: the root (offset 0) and an ascending chain of nodes
            keep = [0] + keep
    return layers, heads, dim, ctx, tree, keep, draw(st.integers(0, 2**31 - 1))


@settings(FAST, max_examples=1500)
@given(compaction_case())
def test_keep_cache_path_equals_index_select(case):
    layers, heads, dim, ctx, tree, keep, seed = case
    cache = random_cache(layers, heads, ctx + tree, dim, seed)
    want = []
    idx = torch.tensor(list(range(ctx)) + [ctx + k for k in keep], dtype=torch.long)
    for layer in cache.layers:
        want.append((layer.keys.index_select(2, idx).clone(), layer.values.index_select(2, idx).clone()))
    keep_cache_path(cache, ctx, torch.tensor(keep, dtype=torch.long))
    assert cache.get_seq_length() == ctx + len(keep)
    for layer, (k, v) in zip(cache.layers, want, strict=True):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)
    # the cache keeps working: one more position appends after the kept ones
    extra = torch.ones(1, heads, 1, dim)
    cache.update(extra, extra, 0)
    assert cache.layers[0].keys.shape[-2] == ctx + len(keep) + 1


@settings(FAST, max_examples=500)
@given(st.integers(1, 3), st.integers(0, 30), st.integers(0, 40), st.integers(0, 2**31 - 1))
def test_truncate_cache_equals_slicing(layers, length, cut, seed):
    cache = random_cache(layers, 2, length, 4, seed)
    want = [(lay.keys[..., :cut, :].clone(), lay.values[..., :cut, :].clone()) for lay in cache.layers]
    truncate_cache(cache, cut)
    for layer, (k, v) in zip(cache.layers, want, strict=True):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)


# ---- the verify step on a real decoder ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def runner():
    from tiny import tiny_llama

    return TargetRunner(tiny_llama(5, vocab_size=12, hidden=32, layers=2, max_positions=128, init_range=0.5))


def _sequential(runner, ids):
    """Logits at every position and the cache of running ``ids`` token by token from scratch."""
    cache = runner.new_cache()
    rows = []
    for t in ids:
        logits, _ = runner.forward(torch.tensor([[t]]), cache, logits_at=-1)
        rows.append(logits[0])
    return torch.stack(rows), cache


@st.composite
def tree_case(draw):
    ctx = draw(st.lists(st.integers(0, 11), min_size=1, max_size=12))
    seqs = draw(st.lists(st.lists(st.integers(0, 11), min_size=1, max_size=5), min_size=0, max_size=6))
    tree = TokenTree.from_sequences(ctx[-1], seqs)
    node = draw(st.integers(0, len(tree) - 1))
    return ctx, tree, node


@settings(FAST, max_examples=80)
@given(tree_case())
def test_tree_forward_and_compaction_equal_sequential_runs(runner, case):
    ctx, tree, node = case
    c = len(ctx) - 1  # cached positions: everything but the root (the last committed token)
    cache = runner.new_cache()
    if c:
        runner.forward(torch.tensor([ctx[:-1]]), cache, logits_at=-1)
    logits, _ = runner.forward(torch.tensor([tree.tokens]), cache, logits_at=None,
                               attention_mask=tree.attention_mask(c, torch.float32),
                               position_ids=tree.position_ids(c))
    # every node's logits == its path run alone (brute-force definition of tree attention)
    for i in range(len(tree)):
        seq_logits, _ = _sequential(runner, ctx + tree.path_tokens(i))
        torch.testing.assert_close(logits[i], seq_logits[-1], atol=1e-4, rtol=1e-4)
    # compact to the path root -> node; the cache must equal that path's own cache
    path = [node]
    while path[-1] > 0:
        path.append(tree.parents[path[-1]])
    path = path[::-1]
    keep_cache_path(cache, c, torch.tensor(path))
    _, want = _sequential(runner, ctx + tree.path_tokens(node))
    assert cache.get_seq_length() == want.get_seq_length()
    for a, b in zip(cache.layers, want.layers, strict=True):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.values, b.values, atol=1e-4, rtol=1e-4)


@settings(FAST, max_examples=800)
@given(seqs_st, st.data())
def test_accept_greedy_is_the_deepest_argmax_path(seqs, data):
    tree = TokenTree.from_sequences(9, seqs)
    n, vocab = len(tree), 6
    best = data.draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n))
    logits = torch.full((n, vocab), -1.0)
    logits[torch.arange(n), torch.tensor(best)] = 1.0
    path, emitted = accept_greedy(tree, logits)
    # brute force: every node whose whole path agrees with the argmax of its parent; take the deepest
    ok = [i for i in range(n) if all(best[tree.parents[j]] == tree.tokens[j]
                                     for j in _ancestors(tree, i) if j > 0)]
    deepest = max(ok, key=lambda i: tree.depths[i])
    assert path == list(reversed(_ancestors(tree, deepest)))
    assert emitted == [tree.tokens[j] for j in path[1:]] + [best[deepest]]


def _ancestors(tree, i):
    out = [i]
    while out[-1] > 0:
        out.append(tree.parents[out[-1]])
    return out


@settings(FAST, max_examples=500)
@given(seqs_st, st.integers(0, 6), st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_ancestor_matrix_and_mask_in_every_dtype(seqs, ctx, dtype):
    tree = TokenTree.from_sequences(9, seqs)
    n = len(tree)
    anc = tree.ancestor_matrix()
    for i in range(n):
        want = set(_ancestors(tree, i))
        assert {j for j in range(n) if anc[i, j]} == want
    mask = tree.attention_mask(ctx, dtype)
    assert mask.dtype == dtype and not torch.isnan(mask).any()
    allowed = mask[0, 0] == 0
    assert allowed.any(dim=1).all() and allowed[0, ctx:].sum() == 1  # no row fully masked; root sees itself
    assert torch.equal(allowed[:, ctx:], torch.from_numpy(anc))
    assert allowed[:, :ctx].all()


# ---- retrieval trees and datastore persistence -------------------------------------------------------------
docs_st = st.lists(st.lists(st.integers(0, 3), max_size=20), max_size=4)


@settings(FAST, max_examples=500)
@given(docs_st, st.lists(st.integers(0, 3), max_size=30), st.lists(st.integers(0, 3), min_size=1, max_size=6),
       st.integers(1, 4))
def test_retrieval_tree_is_the_mixture_of_the_stores(docs, prompt, suffix, max_len):
    stores = [PromptLookup(prompt), RestDatastore.build(docs)]
    tree = retrieval_tree(suffix, stores, max_len=max_len, max_nodes=None)
    results = [(st_.source, st_.candidates(suffix, max_len=max_len)) for st_ in stores]
    live = [(s, r) for s, r in results if r.continuations]
    score: dict[tuple, float] = defaultdict(float)
    source: dict[tuple, int] = defaultdict(int)
    for s, r in live:
        for seq, c in r.continuations:
            for d in range(1, len(seq) + 1):
                score[seq[:d]] += c / (r.n_read * len(live))
                source[seq[:d]] |= s
    got = {tuple(tree.path_tokens(i)): i for i in range(1, len(tree))}
    assert got.keys() == score.keys()
    for k, i in got.items():
        assert tree.scores[i] == pytest.approx(score[k])
        assert tree.sources[i] == source[k] and source[k] & (SOURCE_PROMPT | SOURCE_DATASTORE)
    assert tree.root_token == suffix[-1]
    assert merge_retrievals(suffix[-1], results, max_nodes=None).tokens == tree.tokens


@settings(FAST, max_examples=120)
@given(st.lists(st.lists(st.integers(0, 2**33), max_size=30), max_size=5),
       st.lists(st.lists(st.integers(0, 5), max_size=6), min_size=1, max_size=8), st.integers(1, 8))
def test_datastore_save_load_round_trip(docs, queries, depth):
    docs = [[x % 6 if i % 3 else x for i, x in enumerate(d)] for d in docs]  # mostly small ids, a few huge
    store = RestDatastore.build(docs, max_suffix=depth)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = RestDatastore.load(store.save(Path(tmp) / "ds"))
    assert (loaded.n_tokens, loaded.n_sequences, loaded.sort_depth) == (store.n_tokens, store.n_sequences,
                                                                        store.sort_depth)
    for q in queries:
        a, b = store.candidates(q, max_len=4), loaded.candidates(q, max_len=4)
        assert (a.suffix_len, a.occurrences, a.continuations) == (b.suffix_len, b.occurrences, b.continuations)
