"""The rag suite on a tiny engine and a real embedded Chroma store, through the LangChain chain."""

from __future__ import annotations

import json

import pytest
from integration_fakes import BagOfWordsEmbedder

from refrag_rasd_core import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_integrations.cli.bench.rag import format_table, index_rows, load_rag_rows, run_rag_suite
from refrag_rasd_integrations.store import RefragChromaStore
from tiny import tiny_chunk_encoder, tiny_loaded, tiny_refrag

ROWS = [
    {"question_id": 1, "question": "What is the capital of France?", "held_out": False, "reference": ["Paris"],
     "passages": ["Paris is the capital of France.", "The Louvre is in Paris."]},
    {"question_id": 2, "question": "What is the capital of Spain?", "held_out": True, "reference": ["Madrid"],
     "passages": ["Madrid is the capital of Spain.", "The Prado is in Madrid."]},
    {"question_id": 3, "question": "What is the capital of Italy?", "held_out": True, "reference": ["Rome"],
     "passages": ["Rome is the capital of Italy.", "The Colosseum is in Rome."]},
]


def test_rag_suite_shape(tmp_path):
    loaded = tiny_loaded(0, max_positions=1024)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    engine = Engine(loaded, drafter=None, refrag=tiny_refrag(loaded, enc), refrag_encoder=enc)
    store = RefragChromaStore("bench-rag-test", path=tmp_path / "chroma", engine=engine,
                              embedder=BagOfWordsEmbedder())
    assert index_rows(store, ROWS, progress=False).added == 6
    assert index_rows(store, ROWS, progress=False).added == 0  # a second run reuses the index
    calls = {"n": 0}
    hook = enc.model.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    res = run_rag_suite(engine, ROWS, store, limit=2, k=2, max_new_tokens=6, progress=False)
    hook.remove()
    assert calls["n"] == 0  # the chain handed the stored chunk embeddings over
    assert set(res["methods"]) == {"default", "plain-rag", "refrag-rasd"} and res["settings"]["n_questions"] == 2
    for row in res["per_question"]:
        plain, fast = row["methods"]["plain-rag"], row["methods"]["refrag-rasd"]
        assert fast["prefill_positions"] < plain["prefill_positions"]  # compressed context
        assert plain["new_tokens"] == fast["new_tokens"] == 6
    assert res["methods"]["plain-rag"]["speedup_total_vs_plain"] == 1.0
    assert "refrag-rasd" in format_table(res)


def test_rag_rows_from_a_spec_bench_file(tmp_path):
    lines = [{"question_id": 10 + i, "category": "rag", "reference": [f"a{i}"],
              "turns": [f"Passage one of {i}.\nPassage two of {i}.\nQuestion {i}?"]} for i in range(4)]
    lines.insert(1, {"question_id": 99, "category": "qa", "turns": ["Not a rag line?"]})
    path = tmp_path / "spec.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    rows = load_rag_rows(path)
    assert [r["question_id"] for r in rows] == [10, 11, 12, 13]
    assert [r["held_out"] for r in rows] == [False, True, False, True]  # odd index = held out
    assert rows[2]["question"] == "Question 2?" and rows[2]["passages"] == ["Passage one of 2.", "Passage two of 2."]
    assert rows[2]["reference"] == ["a2"]


def test_rag_rows_without_a_file_say_what_to_pass(monkeypatch):
    import refrag_rasd_core.shared_data as shared

    monkeypatch.setattr(shared, "default_data_path", lambda name: None)  # a fresh machine: no ../shared/data
    with pytest.raises(InvalidInputError, match="Spec-Bench .jsonl.*demo_rows"):
        load_rag_rows()
