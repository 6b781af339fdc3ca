"""Property tests of re-indexing (hypothesis, :mod:`store_strategies`): for any two document sets, indexing
the first then the second with a clean-up mode leaves exactly the second's passages (``full``), or the
second's plus the first's sources it does not name (``incremental``): 0 stale, 0 duplicates, the counts right,
the metadata as flattened; and indexing the same set again changes nothing. Fake encoder and tokenizer, real
embedded Chroma; bounded to a few seconds."""

from __future__ import annotations

import itertools
import json
import math

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from integration_fakes import fake_store
from store_strategies import corpora

from refrag_rasd_integrations.store import flat_metadata, user_metadata
from refrag_rasd_integrations.store.documents import document_parts, document_source

_NAMES = itertools.count()
_SETTINGS = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


def _floats_out(v, found: list):
    """``v`` with each float replaced by a marker (appended to ``found``)."""
    if isinstance(v, float):
        found.append(v)
        return "<float>"
    return [_floats_out(x, found) for x in v] if isinstance(v, list) else v


def _key(text: str, meta: dict) -> tuple[str, str, tuple[float, ...]]:
    found: list[float] = []
    shape = {k: _floats_out(v, found) for k, v in sorted(meta.items())}
    return text, json.dumps(shape, sort_keys=True, ensure_ascii=False), tuple(found)


def _same(got: list, want: list) -> bool:
    """The same passages: texts and metadata equal, floats within a few ulps (Chroma 1.5.9 returns a float
    far from 1 off in its last bit: 8.44421851525048e-301 comes back 8.444218515250479e-301)."""
    got, want = sorted(got), sorted(want)
    return len(got) == len(want) and all(
        g[:2] == w[:2] and all(math.isclose(a, b, rel_tol=1e-14) for a, b in zip(g[2], w[2], strict=True))
        for g, w in zip(got, want, strict=True)
    )


def _expected(store, docs) -> list:
    """What a fresh index of ``docs`` holds, worked out from the documents: each distinct document (source,
    text, flattened metadata) with text, split into passages."""
    out = []
    seen = set()
    for doc in docs:
        text, meta, _ = document_parts(doc)
        flat = {**flat_metadata(meta), "source": document_source(doc)}
        ident = (text, json.dumps(flat, sort_keys=True, default=str))
        if not text.strip() or ident in seen:
            continue
        seen.add(ident)
        out.extend(_key(piece, flat) for piece in store.split(text))
    return out


def _stored(store) -> list:
    res = store.collection().get(include=["documents", "metadatas"])
    return [_key(t, user_metadata(m)) for t, m in zip(res["documents"], res["metadatas"], strict=True)]


@_SETTINGS
@given(before=corpora, after=corpora, mode=st.sampled_from(["incremental", "full"]))
def test_reindexing_leaves_exactly_the_current_passages(client, before, after, mode):
    store = fake_store(f"prop-{next(_NAMES)}", client=client)
    try:
        note(f"before: {before!r}")
        store.add_documents(before, cleanup="full", batch_size=7)
        assert _same(_stored(store), _expected(store, before))
        report = store.add_documents(after, cleanup=mode, batch_size=7)
        want = _expected(store, after)
        if mode == "incremental":  # the sources the second set does not name stay as they were
            named = {document_source(d) for d in after}
            want += _expected(store, [d for d in before if document_source(d) not in named])
        assert _same(_stored(store), want)  # 0 stale, 0 duplicates, metadata as flattened
        assert store.count() == len(want) == len(set(store.ids()))
        assert report.added + report.skipped == report.passages == len(_expected(store, after))
    finally:
        store.delete_collection()


@_SETTINGS
@given(docs=corpora, mode=st.sampled_from([None, "incremental", "full"]))
def test_indexing_the_same_documents_again_changes_nothing(client, docs, mode):
    store = fake_store(f"prop-{next(_NAMES)}", client=client)
    try:
        store.add_documents(docs, cleanup=mode, batch_size=5)
        before = _stored(store)
        encoded = store.chunk_encoder.encoded_passages
        again = store.add_documents(docs, cleanup=mode, batch_size=5)
        assert again.added == 0 and again.deleted == 0 and _same(_stored(store), before)
        assert store.chunk_encoder.encoded_passages == encoded  # nothing re-encoded
    finally:
        store.delete_collection()
