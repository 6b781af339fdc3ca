"""Long documents on tiny in-memory models: documents into passages (stored arrays kept, the rest split on the
fly), the one-call read of a whole document, the map-reduce and tree-summarize baselines (their calls and
costs), and the LangChain and LlamaIndex faces (what the engine received: one call, every passage, the stored
chunk embeddings themselves, no encoder forward)."""

from __future__ import annotations

import pytest
from integration_fakes import fake_store

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import ContextTooLongError, InvalidInputError
from refrag_rasd_integrations import long_documents as ld
from refrag_rasd_integrations.langchain import (
    ChatRefragRasd,
    map_reduce_documents,
    summarize_chain,
    summarize_documents,
)
from refrag_rasd_integrations.llama_index import RefragRasdLLM, summary_index, summary_query_engine
from refrag_rasd_integrations.llama_index.summary import WHOLE
from refrag_rasd_integrations.store import make_client
from tiny import tiny_chunk_encoder, tiny_loaded, tiny_refrag

WINDOW = 1024
DOC = "\n\n".join(f"Paragraph {i}: the river number {i} flows to the sea past the town of Town{i}."
                  for i in range(36))  # ~2,800 byte tokens: past the tiny model's window as text


@pytest.fixture(scope="module")
def parts():
    loaded = tiny_loaded(0, max_positions=WINDOW)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    engine = Engine(loaded, drafter=None, refrag=tiny_refrag(loaded, enc), refrag_encoder=enc)
    return engine, enc


@pytest.fixture(scope="module")
def store(parts, tmp_path_factory):
    engine, enc = parts
    s = fake_store("long-docs", client=make_client(tmp_path_factory.mktemp("db")), tokenizer=engine.tokenizer,
                   chunk_encoder=enc, passage_tokens=96)
    s.add_texts([DOC, "A short note about something else entirely."], [{"source": "rivers"}, {"source": "note"}])
    return s


@pytest.fixture
def calls(parts, monkeypatch):
    """What the engine received: ``(prompt, passages, config)`` of every call."""
    engine = parts[0]
    seen = []
    real = Engine.stream

    def spy(self, prompt, *, passages=None, config=None, **kw):
        seen.append((prompt, list(passages or []), config))
        return real(self, prompt, passages=passages, config=config, **kw)

    monkeypatch.setattr(engine, "stream", spy.__get__(engine))
    return seen


@pytest.fixture
def encoder_forwards(parts):
    forwards = []
    handle = parts[1].model.register_forward_hook(lambda *a: forwards.append(1))
    yield forwards
    handle.remove()


def _tokens(engine, text):
    return len(engine.tokenizer(text, add_special_tokens=False)["input_ids"])


# ---- documents into passages ----------------------------------------------------------------------------------
def test_text_is_split_and_stored_passages_are_kept(parts, store):
    engine, _ = parts
    split = ld.document_passages([DOC], engine.tokenizer, passage_tokens=64)
    assert len(split) > 1 and all(_tokens(engine, p.text) <= 64 for p in split)
    assert all(p.chunk_embeddings is None and p.id for p in split)
    assert "".join(p.text for p in split).replace("\n", "").replace(" ", "") == DOC.replace("\n", "").replace(" ", "")
    stored = store.document_passages("rivers")
    assert [p.metadata["refrag_index"] for p in stored] == list(range(len(stored))) and len(stored) > 1
    again = ld.document_passages(stored, engine.tokenizer)
    assert all(a is b for a, b in zip(again, stored, strict=True))  # arrays kept, nothing re-split
    docs = store.as_retriever(k=2).invoke("river sea town")  # LangChain documents: matched to their passages
    assert all(p.chunk_embeddings is not None for p in ld.document_passages(docs, engine.tokenizer))
    with pytest.raises(InvalidInputError, match="a list"):
        ld.document_passages(DOC, engine.tokenizer)
    with pytest.raises(InvalidInputError, match="no text"):
        ld.document_passages(["  "], engine.tokenizer)


def test_document_passages_of_the_store_in_order(store):
    passages = store.document_passages("rivers")
    assert "\n\n".join(p.text for p in passages).split() == DOC.split()
    assert len(store.document_passages()) == len(passages) + 1  # the whole collection: both documents
    assert store.document_passages("nothing-indexed-under-this") == []


def test_pack_shrinks_every_level():
    assert ld.pack(["a" * 5] * 5, len, 3, separator="") == ["a" * 10, "a" * 10, "a" * 5]
    assert ld.pack(["ab", "cd"], len, 100) == ["ab\n\ncd"]
    assert ld.pack(["only"], len, 1) == ["only"]


# ---- the engine-level functions --------------------------------------------------------------------------------
def test_summarize_reads_every_passage_in_one_call(parts, store, calls, encoder_forwards):
    engine, _ = parts
    stored = store.document_passages("rivers")
    r = ld.summarize(engine, stored, context="compressed", max_tokens=4, method="vanilla")
    assert r.model_calls == 1 == len(calls) and r.strategy == "whole" and r.context == "compressed"
    prompt, passages, _ = calls[0]
    assert prompt == ld.SUMMARIZE_INSTRUCTION and all(a is b for a, b in zip(passages, stored, strict=True))
    assert encoder_forwards == []  # the stored chunk embeddings, no encoder forward
    assert r.prefill_positions == r.stats.prefill_positions < WINDOW and 0 < r.ttft_s <= r.total_s
    assert r.pieces == len(stored) and r.text == engine.tokenizer.decode(engine.tokenizer(r.text)["input_ids"])
    q = ld.ask_whole_document(engine, "Where does river 3 flow?", [DOC], context="compressed", max_tokens=3,
                              method="vanilla")
    assert calls[-1][0] == "Where does river 3 flow?" and len(calls[-1][1]) > 1 and q.model_calls == 1
    assert encoder_forwards  # text without stored arrays: encoded on the fly
    with pytest.raises(ContextTooLongError):  # as text it does not fit: the engine says so
        ld.summarize(engine, [DOC], context="text", max_tokens=4)
    with pytest.raises(InvalidInputError, match="empty"):
        ld.ask_whole_document(engine, " ", [DOC])


def test_map_reduce_calls_and_costs(parts, calls):
    engine, _ = parts
    r = ld.map_reduce(engine, [DOC], piece_tokens=400, max_tokens=6, method="vanilla", context="compressed")
    pieces = ld.PassageSplitter(engine.tokenizer, 400)(ld.document_text([DOC]))
    assert r.pieces == len(pieces) > 2 and r.model_calls == len(pieces) + 1 == len(calls)
    assert [c[1][0] for c in calls[:-1]] == pieces  # each piece as the passage of its own call
    assert all(c[0] == ld.PIECE_INSTRUCTION for c in calls[:-1]) and calls[-1][0] == ld.COMBINE_INSTRUCTION
    assert calls[-1][1] == [p for p in r.partials if p] and len(r.partials) == len(pieces)
    assert all(s.context == "text" for s in r.call_stats)  # the baseline reads text whatever context was asked
    assert r.prefill_positions == sum(s.prefill_positions for s in r.call_stats)
    maps = sum(s.total_s for s in r.call_stats[:-1])
    assert maps < r.ttft_s < r.total_s and r.ttft_s >= maps + r.call_stats[-1].ttft_s
    assert r.to_dict()["model_calls"] == r.model_calls == r.calls  # the benchmark harness reads .calls
    assert r.peak_positions == max(s.prefill_positions + s.new_tokens for s in r.call_stats)
    q = ld.map_reduce(engine, [DOC], question="Where does river 3 flow?", piece_tokens=400, max_tokens=3,
                      method="vanilla")
    assert "river 3" in calls[-1][0] and "river 3" in calls[-2][0] and q.model_calls == r.model_calls
    one = ld.map_reduce(engine, ["A short document."], max_tokens=3, method="vanilla")
    assert one.model_calls == 1 and one.pieces == 1
    with pytest.raises(InvalidInputError, match="piece_tokens"):
        ld.map_reduce(engine, [DOC], piece_tokens=0)


def test_tree_summarize_recurses_until_one(parts, calls):
    engine, _ = parts
    r = ld.tree_summarize(engine, [DOC], piece_tokens=300, max_tokens=90, method="vanilla")
    assert r.pieces > 4 and r.model_calls == len(calls) == len(r.partials) + 1
    assert r.model_calls > r.pieces + 1  # more than one level of combining
    levels = [c[0] for c in calls]
    assert levels[:r.pieces] == [ld.PIECE_INSTRUCTION] * r.pieces
    assert set(levels[r.pieces:]) == {ld.COMBINE_INSTRUCTION}
    assert sum(s.total_s for s in r.call_stats[:-1]) < r.ttft_s < r.total_s
    single = ld.tree_summarize(engine, ["A short document."], max_tokens=3, method="vanilla")
    assert single.model_calls == 1 and single.partials == []


# ---- LangChain ----------------------------------------------------------------------------------------------------
def test_langchain_summarize_is_one_call_with_the_stored_embeddings(parts, store, calls, encoder_forwards):
    engine, _ = parts
    llm = ChatRefragRasd(engine=engine, max_tokens=4, method="vanilla", context="compressed")
    stored = store.document_passages("rivers")
    msg = summarize_documents(llm, stored)
    assert len(calls) == 1 and encoder_forwards == []
    _, passages, config = calls[0]
    assert len(passages) == len(stored) and all(a is b for a, b in zip(passages, stored, strict=True))
    assert config.context == "compressed" and msg.response_metadata["passages"] == len(stored)
    cost = msg.response_metadata["long_document"]
    assert cost["model_calls"] == 1 and cost["strategy"] == "whole" and cost["prefill_positions"] > 0
    docs = store.as_retriever(k=3).invoke("river sea town")  # a retriever's documents: their stored arrays too
    summarize_documents(llm, docs, question="Which rivers?")
    assert calls[-1][0][-1]["content"] == "Which rivers?" and all(p.chunk_embeddings is not None for p in calls[-1][1])
    assert encoder_forwards == []
    out = summarize_chain(llm).invoke([DOC])  # text: split on the fly, encoded by the engine
    assert len(calls[-1][1]) > 1 and out.response_metadata["long_document"]["pieces"] == len(calls[-1][1])
    with pytest.raises(InvalidInputError, match="strategy"):
        summarize_chain(llm, strategy="tree")


def test_langchain_map_reduce_batches_pieces_then_reduces(parts, store, calls):
    engine, _ = parts
    llm = ChatRefragRasd(engine=engine, max_tokens=5, method="vanilla")
    store.document_passages("rivers")  # the passages are registered: the baseline must still read them as text
    msg = map_reduce_documents(llm, [DOC], piece_tokens=400)
    cost = msg.response_metadata["long_document"]
    assert cost["strategy"] == "map-reduce" and cost["model_calls"] == cost["pieces"] + 1 == len(calls)
    assert all(not c[1] for c in calls)  # no passages handed over: recognition is off for the baseline
    assert all(c[2].context in ("auto", "none") for c in calls) and len(cost["partials"]) == cost["pieces"]
    assert ld.COMBINE_INSTRUCTION in calls[-1][0][-1]["content"] and 0 < cost["ttft_s"] < cost["total_s"]
    assert llm.recognize_passages  # the caller's model is left as it was
    chained = summarize_chain(llm, strategy="map-reduce", piece_tokens=400).invoke([DOC])
    assert chained.response_metadata["long_document"]["model_calls"] == cost["model_calls"]


# ---- LlamaIndex -----------------------------------------------------------------------------------------------------
def test_llama_index_whole_mode_hands_every_node_to_one_call(parts, store, calls, encoder_forwards):
    engine, _ = parts
    stored = store.document_passages("rivers")
    index = summary_index(stored, engine.tokenizer)
    assert len(index.docstore.docs) == len(stored)
    llm = RefragRasdLLM(engine=engine, max_tokens=4, method="vanilla", context="compressed")
    response = summary_query_engine(index, llm, response_mode=WHOLE).query(ld.SUMMARIZE_INSTRUCTION)
    assert len(calls) == 1 and encoder_forwards == []
    _, passages, config = calls[0]
    assert [p.id for p in passages] == [p.id for p in stored]
    assert all(a is b for a, b in zip(passages, stored, strict=True)) and config.context == "compressed"
    assert response.metadata["refrag_rasd"]["passages"] == len(stored)


def test_llama_index_tree_summarize_baseline_reads_text(parts, store, calls):
    engine, _ = parts
    index = summary_index([DOC], engine.tokenizer, passage_tokens=96)
    llm = RefragRasdLLM(engine=engine, max_tokens=16, method="vanilla", context_window=700)
    response = summary_query_engine(index, llm, response_mode="tree_summarize").query(ld.SUMMARIZE_INSTRUCTION)
    assert len(calls) > 2 and all(not c[1] for c in calls)  # several calls, nodes read as text
    assert str(response) and llm.recognize_passages
    with pytest.raises(InvalidInputError, match="response_mode"):
        summary_query_engine(index, llm, response_mode="bogus")


# ---- the command line -----------------------------------------------------------------------------------------------
@pytest.fixture
def cli(parts, store, tmp_path, monkeypatch):
    """``main`` on the tiny engine, with ``--collection long-docs`` opening the module's store."""
    from refrag_rasd_integrations.cli import main

    monkeypatch.setattr("refrag_rasd_integrations.engines.get_engine", lambda *a, **k: parts[0])
    monkeypatch.setattr("refrag_rasd_integrations.cli.long_commands.open_store", lambda args, engine=None: store)
    (tmp_path / "rivers.md").write_text(DOC)
    monkeypatch.chdir(tmp_path)
    return main


def test_cli_summarize_files_and_indexed_documents(cli, calls, store, capsys):
    import json

    assert cli(["summarize", "rivers.md", "--context", "compressed", "--max-tokens", "3", "--method", "vanilla"]) == 0
    out, err = capsys.readouterr()
    assert "[whole] 1 model call(s)" in err and "context compressed" in err
    assert len(calls) == 1 and len(calls[0][1]) > 1 and calls[0][0] == ld.SUMMARIZE_INSTRUCTION
    assert cli(["summarize", "rivers", "--collection", "long-docs", "--strategy", "map-reduce", "--piece-tokens",
                "400", "--max-tokens", "3", "--method", "vanilla", "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out[out.index("{"):])
    assert result["strategy"] == "map-reduce" and result["model_calls"] == len(calls) - 1 > 2
    assert "[map-reduce]" in err


def test_cli_ask_whole_document_reads_the_stored_passages(cli, calls, store, capsys, encoder_forwards):
    assert cli(["ask", "Where does river 3 flow?", "--whole-document", "--collection", "long-docs", "--source",
                "rivers", "--context", "compressed", "--max-tokens", "3", "--method", "vanilla"]) == 0
    stored = store.document_passages("rivers")
    prompt, passages, config = calls[-1]
    assert prompt == "Where does river 3 flow?" and [p.id for p in passages] == [p.id for p in stored]
    assert config.context == "compressed" and encoder_forwards == []
    assert cli(["ask", "Where does river 3 flow?", "--whole-document", "--file", "rivers.md", "--strategy",
                "tree-summarize", "--piece-tokens", "600", "--max-tokens", "3", "--method", "vanilla"]) == 0
    assert "[tree-summarize]" in capsys.readouterr().err and len(calls) > 3
    assert cli(["ask", "Where?", "--whole-document", "--collection", "long-docs", "--filter", '{"source": "note"}',
                "--max-tokens", "2", "--method", "vanilla"]) == 0
    assert [p.text for p in calls[-1][1]] == ["A short note about something else entirely."]


def test_auto_context_compresses_a_document_past_the_window(parts, calls):
    """The default ``context="auto"``: the engine compresses what does not fit as text, and says so."""
    engine, _ = parts
    llm = ChatRefragRasd(engine=engine, max_tokens=3, method="vanilla")
    msg = summarize_documents(llm, [DOC])
    stats = msg.response_metadata["stats"]
    assert msg.response_metadata["context"] == "compressed" and stats["context_reason"]
    r = ld.summarize(engine, [DOC], max_tokens=3, method="vanilla")
    assert r.context == "compressed" and r.context_reason and r.prefill_positions < WINDOW
