"""RefragChromaStore on tiny stand-ins: layout round trip, signature check, resumable indexing, filters,
splitting, the passage registry."""

from __future__ import annotations

import numpy as np
import pytest
from integration_fakes import CORPUS, BagOfWordsEmbedder, CountingChunkEncoder, fake_store

from refrag_rasd_integrations.errors import CollectionNotFoundError, StoreMismatchError
from refrag_rasd_integrations.passages import PASSAGES, Passage, PassageRegistry, resolve
from refrag_rasd_integrations.store import decode_array, encode_array, split_text


def test_codec_round_trips_bit_exact():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 384)).astype(np.float16)
    assert np.array_equal(decode_array(encode_array(a, "<f2"), "<f2", a.shape).view(np.uint16), a.view(np.uint16))
    ids = np.array([0, 5, 49151, 65535])
    assert decode_array(encode_array(ids, "<u2"), "<u2", (4,)).tolist() == ids.tolist()


def test_search_returns_passages_with_arrays(store):
    hits = store.search("Madrid Spain", k=2)
    assert len(hits) == 2
    p, score = hits[0]
    assert "Madrid" in p.text and 0 < score <= 1
    tok = store.tokenizer
    assert p.token_ids == tok(p.text, add_special_tokens=False)["input_ids"]
    enc = CountingChunkEncoder(tok, k=4)
    assert np.array_equal(p.chunk_embeddings, enc.encode_passages([p.token_ids])[0])
    assert p.chunk_embeddings.dtype == np.float16 and p.chunk_embeddings.shape == (-(-len(p.token_ids) // 4), 8)
    assert "refrag_chunks" not in p.metadata and "refrag_tokens" not in p.metadata
    assert PASSAGES.get(p.metadata["refrag_passage"]) is p


def test_metadata_filter_and_k(store):
    hits = store.search("capital", k=10, filter={"source": "bio"})
    assert hits and all(p.metadata["source"] == "bio" for p, _ in hits)
    assert len(store.search("capital", k=1)) == 1
    with pytest.raises(ValueError):
        store.search("capital", k=0)
    with pytest.raises(ValueError):
        store.search("  ")


def test_resume_skips_existing_and_fills_gaps(store):
    n = store.count()
    enc = store.chunk_encoder
    before = enc.encoded_passages
    report = store.add_texts([t for t, _ in CORPUS], [m for _, m in CORPUS], batch_size=2)
    assert report.added == 0 and report.skipped == n and store.count() == n
    assert enc.encoded_passages == before  # nothing re-encoded
    store.delete(ids=report.ids[3:5])      # a gap, as an interrupted run leaves
    report = store.add_texts([t for t, _ in CORPUS], [m for _, m in CORPUS], batch_size=2)
    assert report.added == 2 and store.count() == n
    assert sorted(store.collection().get(include=[])["ids"]) == sorted(report.ids)


def test_collection_metadata_records_configuration(store):
    info = store.info()
    assert info["refrag_k"] == 4 and info["refrag_encoder"] == "fake-hash" and info["refrag_dtype"] == "float16"
    assert info["refrag_embedder"] == "fake-bow" and info["refrag_layout"] == "b64-metadata-v1"
    assert info["refrag_tokenizer"].startswith("tiny-")


def test_mismatched_configuration_is_refused(store, client):
    other = fake_store(client=client, k=8)
    with pytest.raises(StoreMismatchError, match="k: stored 4, this model 8"):
        other.search("capital")
    emb = BagOfWordsEmbedder()
    emb.name = "other-embedder"
    with pytest.raises(StoreMismatchError, match="embedder"):
        fake_store(client=client, embedder=emb, embedder_name="other-embedder").count()


def test_foreign_collection_is_refused(client):
    client.create_collection("plain-chroma", embedding_function=None)
    with pytest.raises(StoreMismatchError, match="not made by refrag-rasd"):
        fake_store("plain-chroma", client=client).count()


def test_missing_collection(client):
    with pytest.raises(CollectionNotFoundError):
        fake_store("never-indexed", client=client).search("x")


def test_get_passages_by_handle_and_id(store):
    (p, _), = store.search("Eiffel Tower", k=1)
    h = p.metadata["refrag_passage"]
    got = store.get_passages([h, p.id, "other-collection/xyz"])
    assert [g.id for g in got] == [p.id, p.id]
    assert np.array_equal(got[0].chunk_embeddings, p.chunk_embeddings)


def test_documents_of_both_frameworks_and_files(client, tmp_path):
    from langchain_core.documents import Document
    from llama_index.core.schema import TextNode

    s = fake_store("mixed-docs", client=client)
    (tmp_path / "a.txt").write_text("A file about rivers and lakes.")
    (tmp_path / "b.jsonl").write_text('{"turns": ["A line about mountains."], "category": "geo"}\n')
    r1 = s.add_documents([Document("LangChain document about trees.", metadata={"source": "lc", "tags": ["x"]}),
                          TextNode(text="LlamaIndex node about flowers.", metadata={"source": "li"})])
    r2 = s.add_files([tmp_path])
    assert r1.added == 2 and r2.added == 2 and s.count() == 4
    (p, _), = s.search("mountains", k=1)
    # a .jsonl file is one source (its resolved path); each line records its number
    assert p.metadata["category"] == "geo" and p.metadata["source"] == str((tmp_path / "b.jsonl").resolve())
    assert p.metadata["line"] == 1


def test_split_text_packs_and_bounds():
    count = len
    text = "First paragraph here.\n\nSecond one is longer. It has two sentences.\nAnd a line."
    parts = split_text(text, count, 30)
    assert all(len(p) <= 30 for p in parts) and "".join(parts).replace(" ", "") == \
        text.replace("\n", "").replace(" ", "")
    assert split_text("short", count, 30) == ["short"]
    assert split_text("", count, 30) == []


def test_registry_lru_and_resolve():
    reg = PassageRegistry(maxsize=2)
    hs = [reg.put(Passage(text=f"passage number {i} " * 5, id=str(i)), "c") for i in range(3)]
    assert reg.get(hs[0]) is None and reg.get(hs[2]).id == "2"
    found = reg.find_in("intro " + "passage number 2 " * 5 + " outro")
    assert [p.id for _, p in found] == ["2"]
    got = resolve([hs[2], "plain text passage", Passage(text="x")], registry=reg)
    assert [p.text.strip()[:16] for p in got] == ["passage number 2", "plain text passa", "x"]
