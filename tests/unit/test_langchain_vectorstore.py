"""RefragVectorStore: LangChain's standard vector-store suite on a real embedded Chroma (tiny token / chunk
stand-ins), the stored arrays kept per record, and the base class's retriever handing them to the model."""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
import pytest
from integration_fakes import CountingChunkEncoder, fake_store
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding, FakeEmbeddings
from langchain_core.vectorstores import VectorStore, VectorStoreRetriever
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from conftest import mark_async_tests
from refrag_rasd_integrations.errors import StoreMismatchError
from refrag_rasd_integrations.langchain import PassagePrompt, RefragRetriever, RefragVectorStore
from refrag_rasd_integrations.passages import MESSAGE_KEY, PASSAGES, resolve
from refrag_rasd_integrations.store import make_client


def _vectorstore(tmp_path, embedding=None, name: str = "lc-store") -> RefragVectorStore:
    store = fake_store(name, client=make_client(tmp_path / "chroma"), embedder=None)
    kwargs = {"client": store.client, "tokenizer": store.tokenizer, "chunk_encoder": store.chunk_encoder}
    return RefragVectorStore(embedding=embedding, collection_name=name, **kwargs)


@mark_async_tests
class TestRefragVectorStoreStandard(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path) -> Generator[VectorStore, None, None]:  # type: ignore[override]
        vs = _vectorstore(tmp_path, self.get_embeddings())
        try:
            yield vs
        finally:
            vs.store.delete_collection()


@pytest.fixture
def vs(tmp_path):
    return _vectorstore(tmp_path, DeterministicFakeEmbedding(size=16))


def test_records_keep_token_ids_and_chunk_embeddings(vs):
    text = "Paris is the capital of France and home of the Louvre."
    vs.add_texts([text], metadatas=[{"source": "fr"}], ids=["paris"])
    (p,) = vs.store.get_passages(["paris"])
    tok = vs.store.tokenizer
    assert p.token_ids == tok(text, add_special_tokens=False)["input_ids"]
    want = CountingChunkEncoder(tok, k=4).encode_passages([p.token_ids])[0]
    assert np.array_equal(p.chunk_embeddings, want)
    (doc,) = vs.get_by_ids(["paris"])
    assert doc == Document(page_content=text, metadata={"source": "fr"}, id="paris")  # no store keys leak


def test_retriever_documents_carry_handles_and_plain_documents_find_their_arrays(vs):
    """The vector store's retriever hands out Documents with passage handles; a search's plain Documents (no
    handle, LangChain's contract) reach the model with their stored arrays too, found by their text."""
    texts = ["Madrid is the capital of Spain.", "Rome is the capital of Italy, with the Colosseum."]
    vs.add_texts(texts, ids=["es", "it"])
    retriever = vs.as_retriever(search_kwargs={"k": 2})
    assert isinstance(retriever, VectorStoreRetriever) and isinstance(retriever, RefragRetriever)
    docs = retriever.invoke("capital of Spain")
    assert {d.id for d in docs} == {"es", "it"}
    assert all(d.metadata["refrag_passage"] == f"lc-store/{d.id}" and "score" in d.metadata for d in docs)
    plain = vs.similarity_search("capital of Spain", k=2)
    assert [d.id for d in plain] == [d.id for d in docs] and all("refrag_passage" not in d.metadata for d in plain)
    for found in (docs, plain):
        refs = PassagePrompt().invoke({"question": "Which capital?", "context": found}).to_messages()[-1]
        passages = resolve(refs.additional_kwargs[MESSAGE_KEY])
        assert [p.id for p in passages] == [d.id for d in found]
        assert all(p.chunk_embeddings is not None and p.token_ids for p in passages)
    assert PASSAGES.match(texts[0]).id == "es"


def test_one_retriever_from_the_store_and_from_the_vector_store(tmp_path):
    """store.as_retriever(k=...) and RefragVectorStore(store).as_retriever() are the same retriever: same
    class, same Documents, same metadata (handle, score, the store's document keys)."""
    from integration_fakes import CORPUS

    store = fake_store("lc-same", client=make_client(tmp_path / "chroma"))
    store.add_texts([t for t, _ in CORPUS], [m for _, m in CORPUS])
    a = store.as_retriever(k=2, filter={"source": "es"})
    b = RefragVectorStore(store).as_retriever(search_kwargs={"k": 2, "filter": {"source": "es"}})
    c = RefragRetriever(store=store, k=2, filter={"source": "es"})
    assert type(a) is type(b) is type(c) is RefragRetriever
    got = [r.invoke("Madrid Spain") for r in (a, b, c)]
    assert got[0] == got[1] == got[2] and len(got[0]) == 2  # the "es" document is two passages
    meta = got[0][0].metadata
    assert meta["source"] == "es" and meta["refrag_passage"] == f"lc-same/{got[0][0].id}"
    assert {"score", "refrag_doc", "refrag_index", "refrag_n_tokens"} <= set(meta)
    assert len(store.as_retriever().invoke("capital", k=3)) == 3 and a.store is store
    p = a.passages(got[0])[0]
    assert p.chunk_embeddings is not None and p.token_ids
    strict = RefragVectorStore(store).as_retriever(search_type="similarity_score_threshold",
                                                   search_kwargs={"k": 5, "score_threshold": 0.99})
    assert strict.invoke("capital") == []
    with pytest.raises(ValueError):
        store.as_retriever(k=0)
    with pytest.raises(ValueError, match="not allowed"):
        store.as_retriever(search_type="mmr")


def test_scores_filters_and_delete_by_filter(vs):
    vs.add_texts(["alpha beta", "gamma delta", "alpha gamma"], metadatas=[{"g": "a"}, {"g": "b"}, {"g": "a"}],
                 ids=["1", "2", "3"])
    hits = vs.similarity_search_with_score("alpha beta", k=3)
    assert hits[0][0].id == "1" and hits[0][1] == pytest.approx(1.0, abs=1e-4)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert {d.id for d in vs.similarity_search("alpha", k=3, filter={"g": "a"})} == {"1", "3"}
    rel = vs.similarity_search_with_relevance_scores("alpha beta", k=1)
    assert 0.99 <= rel[0][1] <= 1.0
    vs.delete(filter={"g": "a"})
    assert [d.id for d in vs.similarity_search("alpha", k=3)] == ["2"]
    vs.delete()
    assert vs.similarity_search("alpha", k=3) == []


def test_same_id_twice_in_one_call_keeps_the_last(vs):
    ids = vs.add_texts(["first text", "second text"], ids=["x", "x"])
    assert ids == ["x", "x"]
    assert [d.page_content for d in vs.get_by_ids(["x"])] == ["second text"]


def test_bad_input_is_refused_and_writes_nothing(vs):
    with pytest.raises(ValueError, match="empty"):
        vs.add_texts(["fine", "  "], ids=["a", "b"])
    with pytest.raises(ValueError, match="metadatas"):
        vs.add_texts(["a", "b"], metadatas=[{}])
    assert vs.get_by_ids(["a", "b"]) == []


def test_another_embedding_is_refused(tmp_path):
    vs = _vectorstore(tmp_path, DeterministicFakeEmbedding(size=16))
    vs.add_texts(["some text"], ids=["1"])
    other = _vectorstore(tmp_path, FakeEmbeddings(size=16))
    with pytest.raises(StoreMismatchError, match="embedder"):
        other.add_texts(["other text"], ids=["2"])


def test_chain_over_the_base_retriever_reads_stored_chunk_vectors(tmp_path):
    """retriever | PassagePrompt | ChatRefragRasd on a tiny engine: compressed context from the stored
    vectors, no chunk-encoder forward at query time."""
    from langchain_core.runnables import RunnablePassthrough

    from refrag_rasd_core.engine import Engine
    from refrag_rasd_integrations.langchain import ChatRefragRasd
    from tiny import tiny_chunk_encoder, tiny_loaded, tiny_refrag

    loaded = tiny_loaded(0)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    engine = Engine(loaded, drafter=None, refrag=tiny_refrag(loaded, enc), refrag_encoder=enc)
    vs = RefragVectorStore(collection_name="lc-chain", client=make_client(tmp_path / "chroma"),
                           tokenizer=loaded.tokenizer, chunk_encoder=enc,
                           embedding=DeterministicFakeEmbedding(size=16))
    vs.add_texts(["Madrid is the capital of Spain.", "Rome is the capital of Italy."], ids=["es", "it"])
    chain = ({"context": vs.as_retriever(search_kwargs={"k": 2}), "question": RunnablePassthrough()}
             | PassagePrompt() | ChatRefragRasd(engine=engine, context="compressed", max_tokens=4, method="vanilla"))
    calls = []
    hook = enc.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        out = chain.invoke("Which city is the capital of Spain?")
    finally:
        hook.remove()
    assert calls == []
    meta = out.response_metadata
    assert meta["context"] == "compressed" and meta["passages"] == 2 and meta["stats"]["chunks"] > 0
