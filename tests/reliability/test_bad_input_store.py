"""Bad-input matrix, store rows (issue 9, part 1): a collection opened with another encoder, k or tokenizer,
a missing collection, an older layout, damaged records, bad queries (the read-only path and the full disk
are in test_faults.py, run by `make stress`).

Every row raises a typed :class:`~refrag_rasd_integrations.errors.StoreError` subclass whose message names the
fix, and leaves the collection exactly as it was (same ids, same records, same metadata).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from integration_fakes import CountingChunkEncoder, fake_store

from refrag_rasd_core.errors import InvalidInputError, RefragRasdError
from refrag_rasd_integrations.errors import CollectionNotFoundError, StoreError, StoreMismatchError
from tiny import tiny_tokenizer

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
REINDEX = r"open it with the configuration it was built with, or re-index into a new collection"


def snapshot(client, name="fake-docs"):
    col = client.get_collection(name, embedding_function=None)
    got = col.get(include=["documents", "metadatas"])
    rows = sorted(zip(got["ids"], got["documents"], [json.dumps(m, sort_keys=True) for m in got["metadatas"]],
                      strict=True))
    return dict(col.metadata or {}), rows


class OtherEncoder(CountingChunkEncoder):
    @property
    def signature(self):
        return {**super().signature, "encoder": "another-encoder"}


def _other_tokenizer():
    tok = tiny_tokenizer()
    tok.add_tokens(["capital"])
    return tok


MISMATCHES = {
    "encoder": (lambda c: fake_store(client=c, chunk_encoder=OtherEncoder(tiny_tokenizer(), k=4)), r"encoder: stored"),
    "k": (lambda c: fake_store(client=c, k=8), r"k: stored 4, this model 8"),
    "dim": (lambda c: fake_store(client=c, chunk_encoder=CountingChunkEncoder(tiny_tokenizer(), k=4, dim=16)),
            r"encoder_dim: stored 8"),
    "tokenizer": (lambda c: fake_store(client=c, tokenizer=_other_tokenizer()), r"tokenizer: stored"),
}


@pytest.mark.parametrize("what", list(MISMATCHES))
@pytest.mark.parametrize("op", ["search", "add", "count", "get"])
def test_store_opened_with_another_configuration(store, client, what, op):
    before = snapshot(client)
    other = MISMATCHES[what][0](client)
    call = {"search": lambda: other.search("capital of France"),
            "add": lambda: other.add_texts(["Oslo is the capital of Norway."], [{"source": "no"}]),
            "count": other.count, "get": lambda: other.get_passages(["x"])}[op]
    with pytest.raises(StoreMismatchError, match=MISMATCHES[what][1]) as info:
        call()
    assert REINDEX in str(info.value)
    assert isinstance(info.value, InvalidInputError)  # a configuration error of the caller's
    assert snapshot(client) == before  # refused before anything was written


def test_missing_collection(client):
    s = fake_store("never-indexed", client=client)
    with pytest.raises(CollectionNotFoundError, match=r"index documents first.*refrag-rasd index"):
        s.search("anything")
    with pytest.raises(CollectionNotFoundError):
        s.as_retriever(k=2).invoke("anything")
    with pytest.raises(CollectionNotFoundError):
        s.as_llama_index_retriever(similarity_top_k=2).retrieve("anything")
    assert "never-indexed" not in [c.name for c in client.list_collections()]  # a read does not create it


@pytest.mark.parametrize(("key", "old"), [("refrag_layout", "b64-metadata-v0"), ("layout", 0)])
def test_collection_written_by_an_older_layout(store, client, key, old):
    meta = dict(store.collection().metadata)
    if key == "layout":
        sig = json.loads(meta["refrag_signature"])
        meta["refrag_signature"] = json.dumps({**sig, "layout": old})
    else:
        meta[key] = old
    col = client.create_collection("old-layout", metadata=meta, embedding_function=None)
    got = store.collection().get(include=["documents", "metadatas", "embeddings"])
    col.add(ids=got["ids"], documents=got["documents"], metadatas=got["metadatas"], embeddings=got["embeddings"])
    before = snapshot(client, "old-layout")
    with pytest.raises(StoreMismatchError, match=rf"layout: stored {old!r}.*re-index"):
        fake_store("old-layout", client=client).search("capital")
    with pytest.raises(StoreMismatchError):
        fake_store("old-layout", client=client).add_texts(["new text"])
    assert snapshot(client, "old-layout") == before


def test_a_foreign_collection(client):
    client.create_collection("plain", embedding_function=None).add(ids=["a"], documents=["x"], embeddings=[[0.1] * 64])
    with pytest.raises(StoreMismatchError, match="not made by refrag-rasd.*another collection name"):
        fake_store("plain", client=client).search("x")
    assert client.get_collection("plain").count() == 1


@pytest.mark.parametrize("blob", ["AAAA", "!!!not base64!!!", ""])
def test_damaged_record(store, client, blob):
    col = store.collection()
    got = col.get(include=["metadatas"], limit=1)
    meta = {**got["metadatas"][0], "refrag_chunks": blob}
    col.update(ids=got["ids"], metadatas=[meta])
    with pytest.raises(StoreError, match="damaged; re-index its document"):
        store.get_passages(got["ids"])


@pytest.mark.parametrize(("kwargs", "exc", "fix"), [
    (dict(query=""), InvalidInputError, "the query is empty"),
    (dict(query="   "), InvalidInputError, "the query is empty"),
    (dict(query="x", k=0), InvalidInputError, "k must be a positive integer"),
    (dict(query="x", k=2.5), InvalidInputError, "k must be a positive integer"),
    (dict(query="x", filter={"$bogus": 1}), StoreError, r"check the metadata filter"),
])
def test_bad_queries(store, client, kwargs, exc, fix):
    before = snapshot(client)
    with pytest.raises(exc, match=fix) as info:
        store.search(**kwargs)
    assert isinstance(info.value, RefragRasdError)
    assert snapshot(client) == before


def test_more_results_than_passages_is_fine(store):
    assert len(store.search("capital", k=10_000)) == store.count()
