"""A document past the real default model's window (SmolLM2-135M-Instruct, 8,192 positions), indexed in a real
store, summarized through LangChain in ONE call that reads the store's chunk embeddings (REFRAG), short."""

from __future__ import annotations

from pathlib import Path

import pytest
from doctest_support import share_real_engine

from refrag_rasd_integrations import engines
from refrag_rasd_integrations.langchain import ChatRefragRasd, summarize_documents
from refrag_rasd_integrations.store import RefragChromaStore

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def long_file(real_engine, tmp_path_factory):
    """The project's own documentation pages, one after the other, until past the window (as text)."""
    window = real_engine.max_positions or 8192
    parts, tokens = [], 0
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        parts.append(text)
        tokens += len(real_engine.tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokens > window + 1024:
            break
    assert tokens > window
    path = tmp_path_factory.mktemp("long") / "manual.md"
    path.write_text("\n\n".join(parts))
    return path


def test_langchain_summarizes_an_indexed_document_past_the_window(real_engine, long_file, tmp_path):
    share_real_engine()
    try:
        store = RefragChromaStore("long-doc", path=tmp_path / "chroma", engine=real_engine)
        store.add_files([long_file])
        passages = store.document_passages(long_file)
        assert len(passages) > 8 and all(p.chunk_embeddings is not None for p in passages)
        llm = ChatRefragRasd(engine=real_engine, max_tokens=16, context="compressed")
        msg = summarize_documents(llm, passages)
    finally:
        engines.clear_engines()
    stats = msg.response_metadata["stats"]
    cost = msg.response_metadata["long_document"]
    assert msg.response_metadata["context"] == "compressed" and msg.response_metadata["passages"] == len(passages)
    assert cost["model_calls"] == 1 and stats["prefill_positions"] < (real_engine.max_positions or 8192)
    assert stats["chunks"] > 0 and 0 < msg.usage_metadata["output_tokens"] <= 16 and msg.content.strip()
