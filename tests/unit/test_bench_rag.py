"""The rag suite on a tiny engine and a real embedded Chroma store, through the LangChain chain."""

from __future__ import annotations

from integration_fakes import BagOfWordsEmbedder

from refrag_rasd_core import Engine
from refrag_rasd_integrations.bench.rag import format_table, index_rows, load_rag_rows, run_rag_suite
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
    assert set(res["methods"]) == {"plain-rag", "refrag-rasd"} and res["settings"]["n_questions"] == 2
    for row in res["per_question"]:
        plain, fast = row["methods"]["plain-rag"], row["methods"]["refrag-rasd"]
        assert fast["prefill_positions"] < plain["prefill_positions"]  # compressed context
        assert plain["new_tokens"] == fast["new_tokens"] == 6
    assert res["methods"]["plain-rag"]["speedup_total_vs_plain"] == 1.0
    assert "refrag-rasd" in format_table(res)


def test_bundled_rows():
    rows = load_rag_rows()
    assert len(rows) == 40 and sum(r["held_out"] for r in rows) == 20
    assert all(len(r["passages"]) >= 1 and r["reference"] for r in rows)
