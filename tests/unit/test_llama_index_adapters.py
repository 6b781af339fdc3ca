"""LlamaIndex adapters on tiny in-memory models: the CustomLLM (complete / stream / chat / async, usage in
raw), the retriever (top-k, filters) and the query engine that hands nodes with chunk embeddings over."""

from __future__ import annotations

import asyncio

import pytest
from integration_fakes import CORPUS, fake_store
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent
from llama_index.core.vector_stores import FilterOperator, MetadataFilter, MetadataFilters

from refrag_rasd_core.engine import Engine
from refrag_rasd_integrations.llama_index import (
    RefragLlamaRetriever,
    RefragQueryEngine,
    RefragRasdLLM,
    chroma_where,
)
from refrag_rasd_integrations.store import make_client
from tiny import tiny_chunk_encoder, tiny_loaded, tiny_refrag


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    loaded = tiny_loaded(0)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    # a checkpoint whose measured operating point is compressed: context='auto' reads the stored chunk vectors
    engine = Engine(loaded, drafter=None, refrag=tiny_refrag(loaded, enc, auto={"context": "compressed"}),
                    refrag_encoder=enc)
    store = fake_store("li-docs", client=make_client(tmp_path_factory.mktemp("db")), tokenizer=engine.tokenizer,
                       chunk_encoder=enc)
    store.add_texts([t for t, _ in CORPUS], [m for _, m in CORPUS])
    return engine, enc, store


@pytest.fixture
def llm(parts):
    return RefragRasdLLM(engine=parts[0], max_tokens=6, method="pld")


def test_complete_stream_chat_and_usage(llm):
    r = llm.complete("Hello")
    assert r.raw["usage"]["output_tokens"] == 6 and r.raw["model_name"] == "tiny-llama-0"
    assert "time_to_first_token_s" in r.raw and llm.metadata.context_window == 512
    deltas = list(llm.stream_complete("Hello"))
    assert "".join(d.delta for d in deltas) == r.text == deltas[-1].text
    c = llm.chat([ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hello")])
    assert c.message.role == "assistant" and c.raw["usage"]["output_tokens"] == 6
    assert "".join(x.delta for x in llm.stream_chat([ChatMessage(role="user", content="Hi")])) == \
        llm.chat([ChatMessage(role="user", content="Hi")]).message.content


def test_async(llm):
    async def run():
        a = await llm.acomplete("Hello")
        chunks = [x async for x in await llm.astream_complete("Hello")]
        c = await llm.achat([ChatMessage(role="user", content="Hello")])
        return a, chunks, c

    a, chunks, c = asyncio.run(run())
    assert a.text == chunks[-1].text == llm.complete("Hello").text
    assert c.raw["usage"]["output_tokens"] == 6


def test_retriever_top_k_and_filters(parts):
    store = parts[2]
    nodes = RefragLlamaRetriever(store, similarity_top_k=2).retrieve("Madrid Spain")
    assert len(nodes) == 2 and nodes[0].score > 0
    assert "refrag_passage" not in nodes[0].node.get_content(metadata_mode="llm")
    filt = MetadataFilters(filters=[MetadataFilter(key="source", value="bio", operator=FilterOperator.EQ)])
    got = RefragLlamaRetriever(store, similarity_top_k=5, filters=filt).retrieve("capital")
    assert got and all(n.node.metadata["source"] == "bio" for n in got)
    ps = RefragLlamaRetriever(store).passages(nodes)
    assert ps[0].chunk_embeddings is not None and ps[0].id == nodes[0].node.node_id
    assert chroma_where({"a": 1}) == {"a": 1}


def test_one_retriever_from_the_store_and_from_the_vector_store(parts):
    """store.as_llama_index_retriever() and RefragLlamaVectorStore(store).as_retriever() are the same
    retriever as index.as_retriever() on that vector store: same nodes, same metadata (handle, score, the
    store's keys, all hidden from the LLM), same scores."""
    from llama_index.core import VectorStoreIndex
    from llama_index.core.indices.vector_store.retrievers import VectorIndexRetriever

    from refrag_rasd_integrations.llama_index import RefragLlamaVectorStore, RefragRetriever
    from refrag_rasd_integrations.store import user_metadata

    store = parts[2]
    vs = RefragLlamaVectorStore(store)
    retrievers = [store.as_llama_index_retriever(similarity_top_k=2), vs.as_retriever(similarity_top_k=2),
                  RefragRetriever(store, similarity_top_k=2),
                  VectorStoreIndex.from_vector_store(vs, embed_model=vs.embed_model).as_retriever(similarity_top_k=2)]
    assert all(isinstance(r, VectorIndexRetriever) for r in retrievers)
    assert type(retrievers[0]) is type(retrievers[1]) is RefragLlamaRetriever
    got = [[(n.node.node_id, n.node.metadata, n.score) for n in r.retrieve("Madrid Spain")] for r in retrievers]
    assert got[0] == got[1] == got[2] == got[3] and len(got[0]) == 2
    node = retrievers[0].retrieve("Madrid Spain")[0].node
    assert node.metadata["refrag_passage"] == f"li-docs/{node.node_id}" and "score" in node.metadata
    assert user_metadata(node.metadata) == {"source": "es", "score": node.metadata["score"]}
    assert "refrag_passage" not in node.get_content(metadata_mode="llm")
    assert "refrag" not in node.get_content(metadata_mode="embed") and "score" not in node.get_content("llm")
    anodes = asyncio.run(retrievers[0].aretrieve("Madrid Spain"))
    assert [n.node.node_id for n in anodes] == [g[0] for g in got[0]]
    with pytest.raises(ValueError):
        store.as_llama_index_retriever(similarity_top_k=0)


def test_query_engine_hands_nodes_with_embeddings(parts, llm):
    engine, enc, store = parts
    calls = []
    hook = enc.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        qe = store.as_query_engine(llm=llm, similarity_top_k=2)
        resp = qe.query("Madrid Spain")
        assert isinstance(qe, RefragQueryEngine)
        stats = resp.metadata["refrag_rasd"]
        assert stats["context"] == "compressed" and stats["passages"] == 2 and stats["stats"]["chunks"] > 0
        assert len(resp.source_nodes) == 2
        streaming = RefragQueryEngine.from_store(store, llm=llm, similarity_top_k=2, streaming=True)
        sresp = streaming.query("Madrid Spain")
        assert "".join(sresp.response_gen) == resp.response
        assert sresp.metadata["refrag_rasd"]["usage"]["output_tokens"] >= 1
        aresp = asyncio.run(qe.aquery("Madrid Spain"))
        assert aresp.response == resp.response
    finally:
        hook.remove()
    assert calls == []  # no chunk encoder forward at query time


class _LLMResponses(BaseEventHandler):
    """The ``raw`` of every LLM chat response LlamaIndex's instrumentation reports."""

    raw: list = []

    def handle(self, event, **kwargs) -> None:
        if isinstance(event, LLMChatEndEvent) and event.response is not None:
            self.raw.append(event.response.raw)


def _vector_store(parts, tmp_path):
    from refrag_rasd_integrations.llama_index import RefragLlamaVectorStore

    engine, enc, _ = parts
    store = fake_store("li-vector-store", client=make_client(tmp_path / "db"), tokenizer=engine.tokenizer,
                       chunk_encoder=enc)
    return RefragLlamaVectorStore(store)


def test_vector_store_index_round_trip_and_query_engine(parts, llm, tmp_path):
    """VectorStoreIndex over the store: nodes stored whole with their arrays, the stock query engine's prompt
    reaches the LLM with the stored chunk vectors (no encoder forward at query time)."""
    from llama_index.core import Document, StorageContext, VectorStoreIndex
    from llama_index.core.instrumentation import get_dispatcher

    engine, enc, _ = parts
    vs = _vector_store(parts, tmp_path)
    docs = [Document(text=t, metadata=m, id_=f"doc-{i}") for i, (t, m) in enumerate(CORPUS)]
    index = VectorStoreIndex.from_documents(docs, storage_context=StorageContext.from_defaults(vector_store=vs),
                                            embed_model=vs.embed_model)
    nodes = vs.get_nodes()
    assert len(nodes) == vs.store.count() >= len(CORPUS)
    node = next(n for n in nodes if "Madrid" in n.get_content())
    assert node.ref_doc_id == "doc-2" and node.metadata == {"source": "es"}
    (p,) = vs.store.get_passages([node.node_id])
    assert p.token_ids == engine.tokenizer(p.text, add_special_tokens=False)["input_ids"]
    assert p.chunk_embeddings is not None and p.chunk_embeddings.shape[0] == -(-len(p.token_ids) // enc.k)

    reopened = VectorStoreIndex.from_vector_store(vs, embed_model=vs.embed_model)
    hits = reopened.as_retriever(similarity_top_k=2).retrieve("Madrid Spain")
    assert hits[0].node.node_id == node.node_id and hits[0].node.ref_doc_id == "doc-2"
    assert hits[0].node.metadata["source"] == "es" and hits[0].node.metadata["refrag_passage"].endswith(node.node_id)
    filt = MetadataFilters(filters=[MetadataFilter(key="source", value="bio", operator=FilterOperator.EQ)])
    got = reopened.as_retriever(similarity_top_k=5, filters=filt).retrieve("capital")
    assert got and all(n.node.metadata["source"] == "bio" for n in got)

    calls = []
    hook = enc.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        # the stock synthesizer's template is long in the tiny byte-level tokenizer: a wider tiny model
        loaded = tiny_loaded(0, max_positions=2048)
        wide_engine = Engine(loaded, drafter=None, refrag=tiny_refrag(loaded, enc, auto={"context": "compressed"}),
                             refrag_encoder=enc)
        wide = RefragRasdLLM(engine=wide_engine, max_tokens=6, method="pld")
        seen = _LLMResponses()
        dispatcher = get_dispatcher()
        dispatcher.add_event_handler(seen)
        try:
            resp = index.as_query_engine(llm=wide, similarity_top_k=2).query("Madrid Spain")
        finally:
            dispatcher.event_handlers.remove(seen)
    finally:
        hook.remove()
    assert calls == []
    (raw,) = seen.raw  # the passages found in the synthesizer's prompt and read compressed
    assert raw["passages_recognized"] == 2 and raw["context"] == "compressed" and raw["stats"]["chunks"] > 0
    assert len(resp.source_nodes) == 2 and resp.response.strip()

    vs.delete("doc-2")
    assert all(n.ref_doc_id != "doc-2" for n in vs.get_nodes())
    vs.delete_nodes(filters=filt)
    assert all(n.metadata.get("source") != "bio" for n in vs.get_nodes())
    vs.clear()
    assert vs.get_nodes() == [] and vs.store.count() == 0


def test_vector_store_refuses_half_embedded_nodes(parts, tmp_path):
    from llama_index.core.schema import TextNode

    vs = _vector_store(parts, tmp_path)
    with pytest.raises(ValueError, match="embeddings"):
        vs.add([TextNode(text="one text here", embedding=[0.1] * 64), TextNode(text="another text")])
    assert vs.get_nodes() == []
