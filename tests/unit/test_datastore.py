"""REST datastore and PLD prompt lookup against a brute-force scan of every position."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from refrag_rasd_core.errors import CheckpointError, InvalidInputError
from refrag_rasd_core.rasd.datastore import (
    SEPARATOR,
    PromptLookup,
    RestDatastore,
    Retrieval,
    retrieval_tree,
)
from refrag_rasd_core.rasd.token_tree import SOURCE_DATASTORE, SOURCE_PROMPT

# ------------------------------------------------------------------------------------------ references


def _counted(conts):
    return sorted(Counter(tuple(c) for c in conts).items(), key=lambda kv: (-kv[1], kv[0]))


def ref_rest(seqs, suffix, *, max_len, min_suffix, max_suffix, max_occ, depth, cap=None):
    """Scan every position; order the occurrences as the suffix array does, sample the same slots."""
    t: list[int] = []
    for i, s in enumerate(seqs):
        if i:
            t.append(SEPARATOR)
        t.extend(s)
    n = len(t)
    s = list(suffix)[-min(max_suffix, cap or depth) :] if suffix else []
    for length in range(len(s), min_suffix - 1, -1):
        p = s[len(s) - length :]
        ends = [e for e in range(length, n) if t[e - length : e] == p and t[e] != SEPARATOR]
        if not ends:
            continue
        if depth is None:  # the full suffix order (libdivsufsort): a suffix that ends first sorts first
            ends.sort(key=lambda e: tuple(t[e - 1 - i] for i in range(e)))
        else:  # sorted to ``depth`` tokens (numpy prefix doubling), ties by position
            ends.sort(key=lambda e: (tuple(t[e - 1 - i] if e - 1 - i >= 0 else -2 for i in range(depth)), n - e))
        v = len(ends)
        k = min(v, max_occ)
        conts = []
        for j in range(k):
            e = ends[(j * v) // k]
            c = []
            for x in t[e : e + max_len]:
                if x == SEPARATOR:
                    break
                c.append(x)
            conts.append(c)
        return length, v, _counted(conts)
    return 0, 0, []


def ref_pld(tokens, suffix, *, max_len, min_suffix, max_suffix, max_occ):
    n = len(tokens)
    s = list(suffix)[-max_suffix:] if suffix else []
    for length in range(len(s), min_suffix - 1, -1):
        p = s[len(s) - length :]
        ends = [e for e in range(length, n) if tokens[e - length : e] == p]
        if ends:
            recent = ends[-max_occ:]
            return length, len(ends), _counted([tokens[e : e + max_len] for e in recent])
    return 0, 0, []


def as_tuple(r: Retrieval):
    return r.suffix_len, r.occurrences, r.continuations


# ------------------------------------------------------------------------------------------ strategies

OFFSETS = [0, 70_000, 2**33]  # small ids, ids above 65,536 (int32 storage), ids above 2**31 (int64)
docs_st = st.lists(st.lists(st.integers(0, 3), max_size=25), max_size=5)
query_st = st.lists(st.integers(0, 3), max_size=8)
params_st = st.fixed_dictionaries(
    {
        "max_len": st.integers(1, 5),
        "min_suffix": st.integers(1, 3),
        "max_suffix": st.integers(1, 7),
        "max_occ": st.integers(1, 6),
    }
)


@settings(max_examples=600, deadline=None)
@given(docs_st, query_st, params_st, st.sampled_from(OFFSETS), st.integers(1, 8),
       st.sampled_from(["divsufsort", "numpy"]))
def test_rest_equals_brute_force(docs, query, prm, offset, depth, backend):
    docs = [[x + offset for x in d] for d in docs]
    query = [x + offset for x in query]
    store = RestDatastore.build(docs, max_suffix=depth, backend=backend)
    assert store.sort_depth >= depth
    got = store.candidates(
        query,
        max_len=prm["max_len"],
        min_suffix=prm["min_suffix"],
        max_suffix=prm["max_suffix"],
        max_occurrences=prm["max_occ"],
    )
    want = ref_rest(
        docs,
        query,
        max_len=prm["max_len"],
        min_suffix=prm["min_suffix"],
        max_suffix=prm["max_suffix"],
        max_occ=prm["max_occ"],
        depth=None if backend == "divsufsort" else store.sort_depth,
        cap=store.sort_depth,
    )
    assert as_tuple(got) == want
    assert store.n_tokens == sum(len(d) for d in docs) and store.n_sequences == len(docs)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=40), query_st, params_st, st.sampled_from(OFFSETS), st.data())
def test_pld_equals_brute_force_and_grows(tokens, query, prm, offset, data):
    tokens = [x + offset for x in tokens]
    query = [x + offset for x in query]
    # grow the store in random chunks
    cut = sorted(data.draw(st.lists(st.integers(0, len(tokens)), max_size=4)))
    pld = PromptLookup(tokens[: cut[0]] if cut else tokens, max_suffix=prm["max_suffix"])
    for a, b in zip(cut, cut[1:] + [len(tokens)], strict=False):
        pld.extend(np.array(tokens[a:b], dtype=np.int64))
    assert pld.tokens == tokens
    kw = dict(max_len=prm["max_len"], min_suffix=prm["min_suffix"], max_occurrences=prm["max_occ"])
    ref_kw = dict(max_len=prm["max_len"], min_suffix=prm["min_suffix"], max_occ=prm["max_occ"])
    got = pld.candidates(query, **kw)
    assert as_tuple(got) == ref_pld(tokens, query, max_suffix=prm["max_suffix"], **ref_kw)
    # default query: the store's own tail (the occurrence at the very end is never a match)
    own = pld.candidates(**kw)
    assert as_tuple(own) == ref_pld(tokens, tokens, max_suffix=prm["max_suffix"], **ref_kw)


@settings(max_examples=200, deadline=None)
@given(docs_st, query_st.filter(bool), st.integers(1, 10))
def test_lookup_tree_scores_are_frequencies(docs, query, max_nodes):
    store = RestDatastore.build(docs)
    r = store.candidates(query, max_len=4)
    tree = store.lookup(query, max_len=4, max_nodes=max_nodes)
    assert tree.root_token == query[-1] and len(tree) <= max_nodes
    total = r.n_read
    for i in range(1, len(tree)):
        path = tuple(tree.path_tokens(i))
        count = sum(c for s, c in r.continuations if s[: len(path)] == path)
        assert tree.scores[i] == pytest.approx(count / total)
        assert tree.sources[i] == SOURCE_DATASTORE


def test_boundaries_are_never_crossed():
    store = RestDatastore.build([[1, 2], [3, 4], [2]])
    assert as_tuple(store.candidates([2])) == (0, 0, [])  # "2" only ends sequences
    assert as_tuple(store.candidates([2, 3])) == (1, 1, [((4,), 1)])  # no "2 3" across the boundary
    assert as_tuple(store.candidates([3], max_len=5)) == (1, 1, [((4,), 1)])  # continuation stops
    pld = PromptLookup([1, 2, 3])
    assert as_tuple(pld.candidates([2, 3])) == (0, 0, [])  # the end of the text is not a match
    assert as_tuple(pld.candidates([2])) == (1, 1, [((3,), 1)])


def test_suffix_longer_than_any_match_and_caps():
    store = RestDatastore.build([[5, 6, 7, 8]], max_suffix=4)
    r = store.candidates([1, 2, 3, 4, 9, 9, 5, 6], max_len=3)
    assert as_tuple(r) == (2, 1, [((7, 8), 1)])
    assert store.candidates([4, 5, 6], min_suffix=3).suffix_len == 0
    assert as_tuple(store.candidates([5, 6], max_suffix=1)) == (1, 1, [((7, 8), 1)])
    assert store.sort_depth >= 4  # all suffixes distinct early: the order is complete, depth is not cut


def test_empty_stores():
    for store in (RestDatastore.build([]), RestDatastore.build([[], []])):
        assert as_tuple(store.candidates([1, 2])) == (0, 0, [])
        assert store.lookup([1]).tokens == [1]
        assert store.n_tokens == 0
    assert as_tuple(PromptLookup().candidates([1])) == (0, 0, [])
    assert as_tuple(PromptLookup().candidates()) == (0, 0, [])
    assert as_tuple(RestDatastore.build([[1, 2]]).candidates([])) == (0, 0, [])


def test_tensor_and_array_inputs():
    store = RestDatastore.build([torch.tensor([1, 2, 3]), np.array([1, 2, 4])])
    want = (2, 2, [((3,), 1), ((4,), 1)])
    assert as_tuple(store.candidates(torch.tensor([0, 1, 2]), max_len=1)) == want
    assert as_tuple(store.candidates(np.array([0, 1, 2], dtype=np.int32), max_len=1)) == want


def test_sampling_is_even_when_capped():
    # 100 occurrences of "7" with continuations 0..99 in suffix-array order (all preceded by nothing)
    docs = [[7, i] for i in range(100)]
    store = RestDatastore.build(docs)
    r = store.candidates([7], max_len=1, max_occurrences=10)
    assert r.occurrences == 100 and r.n_read == 10
    assert sorted(s[0] for s, _ in r.continuations) == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]


def test_large_ids_use_compact_storage():
    assert RestDatastore.build([[70_000, 1]])._r.dtype == np.int32
    assert RestDatastore.build([[2**40, 1]])._r.dtype == np.int64


def test_retrieval_tree_merges_stores():
    pld = PromptLookup([1, 2, 3, 1, 2, 3])
    rest = RestDatastore.build([[1, 2, 4], [1, 2, 3, 5]])
    tree = retrieval_tree([0, 1, 2], [pld, rest], max_len=2, max_nodes=None)
    paths = {tuple(tree.path_tokens(i)): i for i in range(1, len(tree))}
    # pld: "3 1" (1 of 1); rest: "4" and "3 5" (1 of 2 each); equal weight per store
    assert paths.keys() == {(3,), (3, 1), (3, 5), (4,)}
    assert tree.scores[paths[(3,)]] == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    assert tree.scores[paths[(4,)]] == pytest.approx(0.25)
    assert tree.sources[paths[(3,)]] == SOURCE_PROMPT | SOURCE_DATASTORE
    assert tree.sources[paths[(3, 1)]] == SOURCE_PROMPT
    assert tree.sources[paths[(4,)]] == SOURCE_DATASTORE
    assert len(retrieval_tree([0, 1, 2], [pld, rest], max_len=2, max_nodes=3)) == 3
    assert retrieval_tree([9], [pld, rest]).tokens == [9]


def test_save_load_round_trip_and_corruption(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 50, size=int(rng.integers(0, 200))) for _ in range(20)]
    store = RestDatastore.build(docs, max_suffix=8)
    store.save(tmp_path / "ds")
    loaded = RestDatastore.load(tmp_path / "ds")
    assert (loaded.n_tokens, loaded.n_sequences, loaded.sort_depth) == (
        store.n_tokens,
        store.n_sequences,
        store.sort_depth,
    )
    mapped = RestDatastore.load(tmp_path / "ds", mmap=True)
    assert isinstance(mapped._sa, np.memmap) and isinstance(mapped._r, np.memmap)
    for _ in range(50):
        q = rng.integers(0, 50, size=6).tolist()
        assert as_tuple(loaded.candidates(q)) == as_tuple(store.candidates(q)) == as_tuple(mapped.candidates(q))
    del mapped

    with pytest.raises(CheckpointError):
        RestDatastore.load(tmp_path / "missing")
    # a flipped byte in the data
    sa = tmp_path / "ds" / "suffix_array.npy"
    raw = bytearray(sa.read_bytes())
    raw[-3] ^= 0xFF
    sa.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        RestDatastore.load(tmp_path / "ds")
    # a truncated file
    store.save(tmp_path / "ds")
    tok = tmp_path / "ds" / "reversed_tokens.npy"
    tok.write_bytes(tok.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        RestDatastore.load(tmp_path / "ds")
    # another format version, another file kind
    store.save(tmp_path / "ds")
    hdr = tmp_path / "ds" / "header.json"
    h = json.loads(hdr.read_text())
    hdr.write_text(json.dumps({**h, "version": 99}))
    with pytest.raises(CheckpointError, match="version"):
        RestDatastore.load(tmp_path / "ds")
    hdr.write_text(json.dumps({**h, "format": "something-else"}))
    with pytest.raises(CheckpointError):
        RestDatastore.load(tmp_path / "ds")
    hdr.write_text("{not json")
    with pytest.raises(CheckpointError):
        RestDatastore.load(tmp_path / "ds")


def test_load_reads_format_version_1(tmp_path):
    """A datastore written by the first format (forward tokens + suffix array only) still loads."""
    import zlib

    store = RestDatastore.build([[1, 2, 3, 4], [9, 2, 3, 5]], max_suffix=4)
    d = tmp_path / "v1"
    d.mkdir()
    tokens = np.ascontiguousarray(store._r[::-1])
    np.save(d / "tokens.npy", tokens)
    np.save(d / "suffix_array.npy", store._sa)
    (d / "header.json").write_text(json.dumps({
        "format": RestDatastore.FORMAT, "version": 1, "n_entries": len(tokens), "n_sequences": 2, "sort_depth": 4,
        "tokens_dtype": str(tokens.dtype), "suffix_array_dtype": str(store._sa.dtype),
        "tokens_crc32": zlib.crc32(tokens.tobytes()), "suffix_array_crc32": zlib.crc32(store._sa.tobytes())}))
    assert as_tuple(RestDatastore.load(d).candidates([7, 2, 3], max_len=1)) == (2, 2, [((4,), 1), ((5,), 1)])


def test_backends_agree_on_longest_match():
    """libdivsufsort (full order) and numpy prefix doubling find the same match and occurrence count."""
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 70_000, size=300) % 9 for _ in range(10)]
    a = RestDatastore.build(docs, backend="divsufsort")
    b = RestDatastore.build(docs, backend="numpy")
    for _ in range(100):
        q = rng.integers(0, 9, size=10).tolist()
        ra, rb = a.candidates(q, max_occurrences=10_000), b.candidates(q, max_occurrences=10_000)
        assert (ra.suffix_len, ra.occurrences, ra.continuations) == (rb.suffix_len, rb.occurrences, rb.continuations)
    with pytest.raises(InvalidInputError, match="backend"):
        RestDatastore.build(docs, backend="sais")


def test_bad_input():
    with pytest.raises(InvalidInputError):
        RestDatastore.build([[1, -2]])
    with pytest.raises(InvalidInputError):
        RestDatastore.build([np.array([[1, 2]])])
    with pytest.raises(InvalidInputError):
        RestDatastore.build([[1.5, 2.0]])
    with pytest.raises(InvalidInputError):
        PromptLookup([1, -1])
    store = RestDatastore.build([[1, 2, 3]])
    with pytest.raises(InvalidInputError):
        store.candidates([1, -5])
    with pytest.raises(InvalidInputError):
        store.candidates(torch.tensor([[1, 2]]))
    with pytest.raises(InvalidInputError):
        store.candidates(torch.tensor([1.0, 2.0]))
    with pytest.raises(InvalidInputError):
        store.candidates([1, 2], max_len=0)
    with pytest.raises(InvalidInputError):
        store.candidates([1, 2], min_suffix=0)
    with pytest.raises(InvalidInputError):
        store.lookup([])
    with pytest.raises(InvalidInputError):
        PromptLookup().lookup()
