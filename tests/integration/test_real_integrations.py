"""The integrations on the real default models (SmolLM2-135M-Instruct + all-MiniLM-L6-v2, offline) over a
small real corpus (passages of the demo corpus: Python's reference docs and the project's docs): the
langchain-tests integration suites (chat model, retriever), LCEL and LlamaIndex end to end, and the ``index`` /
``ask`` commands."""

from __future__ import annotations

import functools
import tempfile

import pytest
from doctest_support import share_real_engine
from langchain_core.runnables import RunnablePassthrough
from langchain_tests.integration_tests import ChatModelIntegrationTests, RetrieversIntegrationTests

from conftest import ChatRefragRasdCapabilities, mark_async_tests
from refrag_rasd_integrations import engines
from refrag_rasd_integrations.langchain import ChatRefragRasd, PassagePrompt, RefragRetriever
from refrag_rasd_integrations.store import RefragChromaStore

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def _shared_engine(real_engine):
    """Every model instance of this module uses the session's real engine (one copy of the weights)."""
    share_real_engine()
    yield
    engines.clear_engines()


def _corpus(limit: int = 3) -> list[tuple[str, dict]]:
    """One document per demo question: the passages around its answer, with the question's source."""
    from refrag_rasd_integrations.cli.demo_corpus import demo_rows

    rows = [r for r in demo_rows() if r["held_out"]][:limit]
    return [("\n".join(r["passages"]), {"source": r["source"], "question": r["question"]}) for r in rows]


@functools.cache
def _real_store() -> RefragChromaStore:
    store = RefragChromaStore("real-rag", path=tempfile.mkdtemp(prefix="refrag-rasd-chroma-"),
                              engine=engines.get_engine(None, device="cpu"))  # the session's, registered above
    docs = _corpus()
    store.add_texts([t for t, _ in docs], [m for _, m in docs], batch_size=32)
    return store


@pytest.fixture(scope="module")
def real_store(real_engine):
    return _real_store()


@mark_async_tests
class TestChatRefragRasdIntegration(ChatRefragRasdCapabilities, ChatModelIntegrationTests):
    """The langchain-tests integration suite on the real default model, tool calling, structured output and
    JSON mode included (image / audio / PDF inputs are not capabilities of this text model: skipped). A tool
    call takes about 25 tokens, hence ``max_tokens``. The structured-output tests ask a 135M model for a joke:
    greedy, it repeats one clause until the token limit, so those calls sample (seeded) and get room to close
    the JSON; the grammar makes whatever it writes valid."""

    @property
    def chat_model_params(self):
        return {"max_tokens": 48, "method": "rasd"}

    @property
    def structured_output_kwargs(self):
        return {"temperature": 0.7, "seed": 0, "max_tokens": 160, "spec": {"adaptive": False}}  # a fixed tree: seeded

    @pytest.mark.xfail(strict=True, reason="model capability: with tool_choice='auto' SmolLM2-135M answers the "
                       "weather question in text instead of calling the tool (forced calls pass: test_tool_calling)")
    def test_agent_loop(self, model):
        super().test_agent_loop(model)

    @pytest.mark.xfail(strict=True, reason="model capability: SmolLM2-135M does not copy the Chinese company name "
                       "into the call's arguments (the call itself is made and valid)")
    def test_unicode_tool_call_integration(self, model, **kwargs):
        super().test_unicode_tool_call_integration(model, **kwargs)

    @property
    def returns_usage_metadata(self):
        return True


@mark_async_tests
class TestRefragRetrieverIntegration(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self):
        return RefragRetriever

    @property
    def retriever_constructor_params(self):
        return {"store": _real_store()}

    @property
    def retriever_query_example(self):
        return "Where does the embedded Chroma database live?"


def test_lcel_chain_with_real_models(real_store, real_engine):
    docs = _corpus()
    question = docs[0][1]["question"]
    retriever = real_store.as_retriever(k=3)
    hits = retriever.invoke(question)
    assert hits[0].metadata["source"] == docs[0][1]["source"]
    enc = engines.chunk_encoder_of(real_engine)
    calls = []
    hook = enc.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        chain = {"context": retriever, "question": RunnablePassthrough()} | PassagePrompt() | ChatRefragRasd(
            max_tokens=24)
        msg = chain.invoke(question)
    finally:
        hook.remove()
    assert calls == []  # stored chunk embeddings / token ids only: no encoder forward at query time
    meta = msg.response_metadata
    assert msg.content.strip() and meta["passages"] == 3
    assert meta["context"] == real_engine.auto_context()["context"]  # the checkpoint's measured operating point
    assert meta["stats"]["prompt_tokens"] > 100 and meta["accepted_per_forward"] >= 1


def test_llama_index_end_to_end(real_store):
    from llama_index.core.query_engine import RetrieverQueryEngine

    from refrag_rasd_integrations.llama_index import RefragRasdLLM

    question = _corpus()[1][1]["question"]
    qe = real_store.as_query_engine(similarity_top_k=3, max_tokens=24)
    resp = qe.query(question)
    assert resp.response.strip() and len(resp.source_nodes) == 3
    assert resp.metadata["refrag_rasd"]["passages"] == 3
    assert resp.source_nodes[0].node.metadata["source"] == _corpus()[1][1]["source"]
    std = RetrieverQueryEngine.from_args(real_store.as_llama_index_retriever(similarity_top_k=2),
                                         llm=RefragRasdLLM(max_tokens=24))  # the standard synthesizer: text path
    out = std.query(question)
    assert out.response.strip() and out.response != "Empty Response" and len(out.source_nodes) == 2


def test_cli_index_and_ask(tmp_path, capsys):
    from refrag_rasd_integrations.cli import main

    doc = tmp_path / "notes.md"
    doc.write_text("The Loire is the longest river in France.\n\nIt flows into the Atlantic Ocean at Saint-Nazaire.")
    db = str(tmp_path / "db")
    assert main(["index", str(doc), "--collection", "notes", "--chroma-dir", db, "--no-progress"]) == 0
    assert "1 passages (1 added, 0 already there" in capsys.readouterr().err
    assert main(["ask", "Which is the longest river in France?", "--collection", "notes", "--chroma-dir", db,
                 "-k", "1", "--max-new-tokens", "12", "--compare", "--json"]) == 0
    out = capsys.readouterr()
    assert "sources:" in out.err and "notes.md" in out.err and "plain-rag" in out.out
    assert "refrag-rasd vs plain RAG" in out.err
