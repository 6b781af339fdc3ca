"""The qa suite on a tiny engine and a real embedded Chroma store, through the public LangChain chat model."""

from __future__ import annotations

import json

import pytest
from integration_fakes import BagOfWordsEmbedder

from refrag_rasd_core import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.qa_file import load_qa_file
from refrag_rasd_integrations.cli.bench.metrics import answer_f1, first_sentence
from refrag_rasd_integrations.cli.bench.qa import (
    Setting,
    collection_name,
    format_qa_table,
    index_corpus,
    operating_point,
    parse_settings,
    run_qa_suite,
    summarize_qa,
)
from refrag_rasd_integrations.store import RefragChromaStore
from tiny import tiny_chunk_encoder, tiny_loaded, tiny_refrag

LINES = [
    {"id": "a", "question": "What is the capital of France?", "answers": ["Paris"], "title": "France",
     "passage": "Paris is the capital of France. The Louvre is in Paris."},
    {"id": "b", "question": "What is the capital of Spain?", "answers": ["Madrid"], "title": "Spain",
     "passage": "Madrid is the capital of Spain. The Prado is in Madrid."},
    {"id": "c", "question": "Which river flows through Rome?", "answers": ["Tiber"],
     "passage": "Rome lies on the Tiber. The Colosseum is in Rome."},
    {"id": "d", "question": "Where is the Prado?", "answers": ["Madrid"], "title": "Spain",
     "passage": "Madrid is the capital of Spain. The Prado is in Madrid."},  # a repeated passage: indexed once
]


def _write(path, lines):
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_settings_parse_and_reject():
    s = parse_settings("none,compressed:0.25:rl,compressed:0,default")
    assert [x.name for x in s] == ["text", "none", "compressed:0.25:rl", "compressed:0", "default"]
    assert s[2].model_kwargs()["engine_kwargs"] == {"expand": 0.25, "policy": "rl"}
    assert s[3].policy == "auto" and s[4].model_kwargs() == {}
    assert s[0].model_kwargs() == {"context": "text", "method": "vanilla", "recognize_passages": False}
    for bad in ("compressed", "compressed:2", "compressed:0.1:magic", "fast", "text:0", "text:x", "text:1:2",
                "none:1"):
        with pytest.raises(InvalidInputError, match="setting"):
            Setting.parse(bad)
    with pytest.raises(InvalidInputError, match="twice"):
        parse_settings("text,none,none")
    with pytest.raises(InvalidInputError, match="twice"):  # named by the count: text:02 is text:2
        parse_settings("text:2,text:02", k=5)
    assert [x.name for x in parse_settings("text:1,text:3", k=5)] == ["text", "text:1", "text:3"]
    two = Setting.parse("text:2")
    assert (two.passages, two.model_kwargs()) == (2, s[0].model_kwargs())  # plain RAG's request, fewer passages
    with pytest.raises(InvalidInputError, match="below the run's top-k"):
        parse_settings("text:5", k=5)


def test_qa_file_formats(tmp_path):
    items, passages = load_qa_file(_write(tmp_path / "nq.jsonl", LINES))
    assert [i.qid for i in items] == ["a", "b", "c", "d"]
    assert len(passages) == 3 and passages[0].startswith("France\nParis is")
    assert items[2].gold == ["Rome lies on the Tiber. The Colosseum is in Rome."]  # no title: the passage alone
    spec = [{"question_id": 7, "category": "rag", "reference": ["x"], "turns": ["P one.\nP two.\nWho?"]},
            {"question_id": 8, "category": "qa", "turns": ["Not rag?"]}]
    items, passages = load_qa_file(_write(tmp_path / "spec.jsonl", spec))
    assert [(i.qid, i.question, i.answers, i.gold) for i in items] == [("7", "Who?", ["x"], [])]
    assert passages == ["P one.", "P two."]
    with pytest.raises(InvalidInputError, match="not found.*--data"):
        load_qa_file(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(InvalidInputError, match="bad.jsonl:1"):
        load_qa_file(tmp_path / "bad.jsonl")
    assert collection_name(["a"]) != collection_name(["b"])
    assert collection_name(["a"], {"k": 8}) not in (collection_name(["a"]), collection_name(["a"], {"k": 16}))


def test_answer_f1_on_the_first_sentence():
    assert first_sentence("Paris. It is big.") == "Paris."
    assert answer_f1("Paris. Not Madrid.", ["Madrid", "Paris"]) == 1.0
    assert answer_f1("The city is Paris, France", ["Paris"]) == pytest.approx(2 * (1 / 5) / (1 + 1 / 5), abs=1e-4)
    assert answer_f1("No.", ["Paris"]) == 0.0 and answer_f1("x", []) is None


def test_keeps_text_hits_counts_only_text_hits():
    def cell(rec, ttft):
        return {"answer_recall": rec, "answer_f1": rec, "ttft_s": ttft, "prefill_positions": 10}

    rows = [{"methods": {"text": cell(1.0, 1.0), "fast": cell(1.0, 0.25)}},
            {"methods": {"text": cell(1.0, 1.0), "fast": cell(0.0, 0.5)}},
            {"methods": {"text": cell(0.0, 1.0), "fast": cell(1.0, 0.5)}}]
    s = summarize_qa(rows, ["text", "fast"])
    assert s["text"]["keeps_text_hits"] == 1.0 and s["fast"]["keeps_text_hits"] == 0.5
    assert s["fast"]["answer_recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["fast"]["ttft_speedup_vs_text"] == 2.0 and s["text"]["ttft_speedup_vs_text"] == 1.0


def test_qa_suite_end_to_end(tmp_path):
    loaded = tiny_loaded(0, max_positions=1024)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    engine = Engine(loaded, drafter=None, refrag=tiny_refrag(loaded, enc), refrag_encoder=enc)
    items, passages = load_qa_file(_write(tmp_path / "nq.jsonl", LINES))
    store = RefragChromaStore(collection_name(passages), path=tmp_path / "chroma", engine=engine,
                              embedder=BagOfWordsEmbedder())
    assert index_corpus(store, passages, progress=False).added == 3
    assert index_corpus(store, passages, progress=False).added == 0  # reused
    calls = {"n": 0}
    hook = enc.model.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    settings = parse_settings("none,text,text:1,compressed:0,compressed:0.5:similarity,default", k=2)
    res = run_qa_suite(engine, items[:3], store, settings, k=2, max_new_tokens=4, progress=False)
    hook.remove()
    assert calls["n"] == 0  # stored chunk embeddings reach the engine: no encoder at query time
    assert res["retrieval_recall_at_k"] == 1.0  # each question's own passage is in its top 2
    assert set(res["methods"]) == {"none", "text", "text:1", "compressed:0", "compressed:0.5:similarity", "default"}
    for row in res["per_question"]:
        m = row["methods"]
        assert m["none"]["prefill_positions"] < m["compressed:0"]["prefill_positions"] < m["text"]["prefill_positions"]
        assert m["none"]["prefill_positions"] < m["text:1"]["prefill_positions"] < m["text"]["prefill_positions"]
        assert "expanded" not in m["text:1"]
        assert m["compressed:0"]["prefill_positions"] < m["compressed:0.5:similarity"]["prefill_positions"]
        assert all(c["answer_recall"] in (0.0, 1.0) for c in m.values())
        assert m["compressed:0"]["expanded"] == [] and len(m["compressed:0.5:similarity"]["expanded"]) >= 1
        assert "expanded" not in m["text"] and "expanded" not in m["none"]
        assert isinstance(row["answer_chunks"], list)
    assert res["per_question"][0]["answer_chunks"]  # "Paris" stands in the first question's retrieved passages
    assert res["methods"]["compressed:0"]["answer_chunk_expanded"] == 0.0
    assert 0.0 <= res["methods"]["compressed:0.5:similarity"]["answer_chunk_expanded"] <= 1.0
    assert "answer_chunk_expanded" not in res["methods"]["text"]
    assert res["methods"]["text"]["ttft_speedup_vs_text"] == 1.0 and res["methods"]["text"]["n"] == 3
    table = format_qa_table(res)
    assert "compressed:0.5:similarity" in table and "recall@k 1.00" in table
    res["settings"]["data"] = "nq.jsonl"
    from refrag_rasd_integrations.cli.bench.report import TABLES

    doc = TABLES["qa"](res)  # docs/benchmarks.md's table of this run, with the diagnostics
    assert "answer chunk expanded" in doc and "| compressed:0 | " in doc


def test_operating_point_is_the_fastest_setting_that_keeps_answers():
    m = {"text": {"keeps_text_hits": 1.0, "ttft_speedup_vs_text": 1.0},
         "compressed:0": {"keeps_text_hits": 0.2, "ttft_speedup_vs_text": 4.0},
         "compressed:0.2:rank": {"keeps_text_hits": 0.95, "ttft_speedup_vs_text": 2.9},
         "compressed:0.4:rank": {"keeps_text_hits": 1.0, "ttft_speedup_vs_text": 1.8}}
    assert operating_point(m) == {"context": "compressed", "expand": 0.2, "policy": "rank",
                                  "setting": "compressed:0.2:rank"}
    m["compressed:0.2:rank"]["keeps_text_hits"] = 0.9
    assert operating_point(m)["setting"] == "compressed:0.4:rank"
    m["compressed:0.4:rank"]["keeps_text_hits"] = 0.5
    assert operating_point(m) == {"context": "text", "setting": "text"}  # nothing keeps plain RAG's answers
