"""The demo end to end on a tiny engine (LangChain and LlamaIndex paths): indexing the demo corpus (Python's
reference topics + the project's docs), streaming, the table, and a second run that finds the corpus already
indexed."""

from __future__ import annotations

import io

import pytest
from integration_fakes import BagOfWordsEmbedder

from refrag_rasd_core import Engine
from refrag_rasd_integrations.cli.demo import run_demo
from refrag_rasd_integrations.cli.demo_corpus import demo_passages, demo_questions
from refrag_rasd_integrations.store import RefragChromaStore
from tiny import tiny_chunk_encoder, tiny_loaded, tiny_refrag


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    loaded = tiny_loaded(0, max_positions=2048)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    engine = Engine(loaded, drafter=None, refrag=tiny_refrag(loaded, enc), refrag_encoder=enc)
    store = RefragChromaStore("demo", path=tmp_path_factory.mktemp("chroma"), engine=engine,
                              embedder=BagOfWordsEmbedder())
    return engine, store


@pytest.mark.parametrize("framework", ["langchain", "llamaindex"])
def test_demo_runs(setup, framework):
    engine, store = setup
    fresh = store.count() == 0
    out = io.StringIO()
    rows = run_demo(engine, store, n_questions=1, max_new_tokens=5, framework=framework, k=2, out=out)
    text = out.getvalue()
    n = store.count()
    assert n >= len(demo_passages()) >= 100  # every passage of the corpus (split where long)
    assert (f"{n} indexed now, 0 already there" if fresh else f"0 indexed now, {n} already there") in text
    assert f"=== Question 1: {demo_questions()[0].question}" in text and "faster" in text
    assert [r["pipeline"] for r in rows] == ["default", "plain-rag", "refrag-rasd"]
    assert "context='auto' = plain RAG" in text  # this checkpoint records no compressed operating point
    assert all(r["new_tokens"] == 5 and r["ttft_s"] > 0 for r in rows)


def test_reindexing_prunes_what_left_the_corpus(setup):
    from refrag_rasd_integrations.cli.demo_corpus import index_demo_corpus

    _, store = setup
    index_demo_corpus(store, progress=False)  # already there after the demo runs above
    store.add_texts(["A passage of an older demo corpus."], [{"source": "old"}])
    n = store.count()
    report, pruned = index_demo_corpus(store, progress=False)
    assert pruned == 1 and report.added == 0 and store.count() == n - 1
