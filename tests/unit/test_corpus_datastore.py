"""The store-owned corpus datastore on a real embedded Chroma with tiny models: built from the collection's stored
token ids, persisted beside it and memory-mapped, kept in step on add / delete (a segment per addition, a rebuild
on deletion), seen by a second reader of the same files, equal to one REST index over every passage, and reaching
the engine through ``engine.generate(datastore=)``, ``ChatRefragRasd(datastore=)`` and the LlamaIndex LLM."""

from __future__ import annotations

import numpy as np
import pytest
from integration_fakes import CORPUS, fake_store

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.rasd.datastore import RestDatastore
from refrag_rasd_integrations.store import CorpusDatastore, make_client
from refrag_rasd_integrations.store.corpus_datastore import resolve_datastore
from tiny import tiny_loaded

MORE = [("Lisbon is the capital of Portugal. Trams climb its hills.", {"source": "pt"}),
        ("Vienna is the capital of Austria. The Danube flows through it.", {"source": "at"})]


def _all_token_ids(store) -> dict[str, list[int]]:
    res = store.collection().get(include=[])
    return {p.id: p.token_ids for p in store.get_passages(list(res["ids"]))}


def _same_answers(ds, ref: RestDatastore, queries) -> None:
    for q in queries:
        a = ds.candidates(q, max_len=4, max_occurrences=10_000)
        b = ref.candidates(q, max_len=4, max_occurrences=10_000)
        assert (a.suffix_len, a.occurrences, a.continuations) == (b.suffix_len, b.occurrences, b.continuations)


def test_store_datastore_follows_adds_and_deletes(tmp_path):
    store = fake_store("ds-docs", path=tmp_path / "chroma", datastore=True)
    store.add_texts([t for t, _ in CORPUS], [m for _, m in CORPUS])
    ds = store.datastore(sync=False)
    assert isinstance(ds, CorpusDatastore)
    assert ds.path == tmp_path / "chroma" / "refrag-datastores" / "ds-docs"  # beside the collection
    tokens = _all_token_ids(store)
    assert ds.ids() == set(tokens) and ds.describe()["n_tokens"] == sum(len(t) for t in tokens.values())
    rng = np.random.default_rng(0)
    flat = [t for ids in tokens.values() for t in ids]
    queries = [flat[i:i + int(rng.integers(1, 6))] for i in rng.integers(0, len(flat) - 6, 30)]
    _same_answers(ds, RestDatastore.build([tokens[k] for k in sorted(tokens)]), queries)
    assert ds.current().segments[0]._sa.__class__ is np.memmap  # mapped, not read

    reader = CorpusDatastore(ds.path, refresh_s=0.0)  # another process mapping the same files
    before = reader.current().n_tokens
    store.add_texts([t for t, _ in MORE], [m for _, m in MORE])  # a new segment with the new passages only
    d = ds.describe()
    assert d["segments"] == 2 and ds.last_build["n_tokens"] == sum(
        len(t) for k, t in _all_token_ids(store).items() if k not in tokens)
    assert reader.current().n_tokens > before
    tokens = _all_token_ids(store)
    _same_answers(reader, RestDatastore.build([tokens[k] for k in sorted(tokens)]), queries)

    store.delete_source("fr")  # a deletion rebuilds one segment without it
    tokens = _all_token_ids(store)
    assert ds.describe()["segments"] == 1 and ds.ids() == set(tokens)
    _same_answers(reader, RestDatastore.build([tokens[k] for k in sorted(tokens)]), queries)
    assert not reader.candidates(store.tokenizer("Eiffel Tower", add_special_tokens=False)["input_ids"]).suffix_len > 2

    store.delete_collection()
    assert not ds.path.exists()


def test_compaction_past_max_segments(tmp_path):
    ds = CorpusDatastore(tmp_path / "ds", max_segments=2)
    store = fake_store("ds-compact", client=make_client(tmp_path / "db"))
    for i, (text, meta) in enumerate(CORPUS):
        added = store.add_texts([text], [meta]).added
        report = ds.sync(store.collection(), "<u2")
        assert report["added"] == added >= 1
        assert report["segments"] == (i % 2) + 1 and report["rebuilt"] == (i > 0 and i % 2 == 0)
    assert ds.describe()["segments"] <= 2 and ds.ids() == set(store.ids())
    assert ds.sync(store.collection(), "<u2") == {"added": 0, "deleted": 0, "rebuilt": False,
                                                  "segments": ds.describe()["segments"]}


def test_datastore_on_demand_for_a_store_opened_without_it(tmp_path):
    store = fake_store("ds-lazy", path=tmp_path / "chroma")
    store.add_texts([t for t, _ in CORPUS], [m for _, m in CORPUS])
    assert not (tmp_path / "chroma" / "refrag-datastores").exists()  # not kept unless asked for
    ds = store.datastore(sync=False)  # never built: built now
    assert ds.ids() == set(store.ids())


@pytest.fixture(scope="module")
def tiny_engine():
    return Engine(tiny_loaded(0), drafter=None, refrag=None)


class CountingDatastore:
    """A datastore that counts its lookups (the real one underneath)."""

    def __init__(self, inner):
        self.inner, self.source, self.calls = inner, inner.source, 0

    def candidates(self, suffix, **kw):
        self.calls += 1
        return self.inner.candidates(suffix, **kw)


def test_engine_langchain_and_llamaindex_reach_the_datastore(tiny_engine, tmp_path):
    from refrag_rasd_integrations.langchain import ChatRefragRasd
    from refrag_rasd_integrations.llama_index import RefragRasdLLM

    tok = tiny_engine.tokenizer
    text = "the cat sat on the mat and the dog sat on the log " * 4
    ds = CountingDatastore(RestDatastore.build([tok(text, add_special_tokens=False)["input_ids"]]))
    plain = tiny_engine.generate("the cat sat on", method="vanilla", max_tokens=12, context="none")
    out = tiny_engine.generate("the cat sat on", method="rest", max_tokens=12, context="none", datastore=ds)
    assert out.token_ids == plain.token_ids and ds.calls > 0  # greedy output unchanged, the store consulted
    ds.calls = 0
    ChatRefragRasd(engine=tiny_engine, max_tokens=6, method="rasd", datastore=ds).invoke("the cat sat on")
    assert ds.calls > 0
    ds.calls = 0
    RefragRasdLLM(engine=tiny_engine, max_tokens=6, method="rasd", datastore=ds).complete("the cat sat on")
    assert ds.calls > 0

    store = fake_store("ds-chat", path=tmp_path / "chroma", tokenizer=tok, datastore=True)
    store.add_texts([t for t, _ in CORPUS], [m for _, m in CORPUS])
    chat = ChatRefragRasd(engine=tiny_engine, max_tokens=6, method="rest", store=store, datastore=True)
    assert chat.invoke("Paris is the").response_metadata["method"] == "rest"
    assert isinstance(resolve_datastore(store), CorpusDatastore) and resolve_datastore(True, store).ids()


def test_bad_datastore_values_are_clear_errors(tmp_path):
    from refrag_rasd_integrations.langchain import ChatRefragRasd

    with pytest.raises(InvalidInputError, match="needs a store"):
        resolve_datastore(True)
    with pytest.raises(InvalidInputError, match="datastore must be"):
        resolve_datastore("corpus")
    assert resolve_datastore(None) is None and resolve_datastore(False) is None
    with pytest.raises(InvalidInputError, match="max_segments"):
        CorpusDatastore(tmp_path, max_segments=0)
    with pytest.raises(InvalidInputError, match="datastore must be"):
        ChatRefragRasd(engine=Engine(tiny_loaded(0), drafter=None, refrag=None), datastore=3).invoke("hi")


def test_serve_replica_reads_the_collections_datastore(tiny_engine, tmp_path):
    pytest.importorskip("fastapi")
    from refrag_rasd_integrations.serve.chat_service import ChatService, ServeConfig

    client = make_client(tmp_path / "chroma")
    store = fake_store("served", client=client, tokenizer=tiny_engine.tokenizer, datastore=True)
    store.add_texts([t for t, _ in CORPUS], [m for _, m in CORPUS])
    on_disk = tmp_path / "chroma" / "refrag-datastores" / "served"
    assert (on_disk / "manifest.json").exists()  # a store on a given client keeps it beside that database too
    svc = ChatService(ServeConfig(collection="served", k=2, max_tokens=6, method="rest", calibrate=False,
                                  datastore=True), engine=tiny_engine, stores={"served": store})
    gen, _ = svc.prepare(svc.parse({"messages": [{"role": "user", "content": "Paris is the"}]}))
    assert isinstance(gen.datastore, CorpusDatastore) and gen.datastore.path == on_disk
    assert gen.stream().result().stats.method == "rest"
    off = ChatService(ServeConfig(collection="served", k=2, max_tokens=6, method="rest", calibrate=False),
                      engine=tiny_engine, stores={"served": store})
    assert off.prepare(off.parse({"messages": [{"role": "user", "content": "Paris"}]}))[0].datastore is None


def test_corpus_datastore_joins_the_trie_only_where_it_matches_longer():
    from refrag_rasd_core.rasd import make_proposer

    corpus = RestDatastore.build([[2, 3, 9, 9], [8, 2, 3, 7, 7]])
    p = make_proposer("rest", passages=[[1, 2, 3, 4, 5]], datastore=corpus)
    tree, bucket = p.candidates([1, 2, 3])  # the passages match 3 tokens, the corpus 2: its 9s stay out
    assert 9 not in tree.tokens and 4 in tree.tokens and bucket == 3
    tree, _ = p.candidates([8, 2, 3])  # the corpus matches 3, the passages 2: both join
    assert {4, 7} <= set(tree.tokens)
    alone = make_proposer("rest", datastore=corpus)  # no request stores: the corpus is the store
    assert 9 in alone.candidates([5, 2, 3])[0].tokens
