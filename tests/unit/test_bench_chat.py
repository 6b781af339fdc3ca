"""The chat suite on tiny models: RAG conversations and MT-Bench style ones, every setting, the shape of the
results and what they must show (later turns cached, answers equal to a recompute)."""

from __future__ import annotations

import json

import pytest
from integration_fakes import CORPUS, fake_store

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.qa_file import QAItem
from refrag_rasd_integrations.cli.bench.chat import (
    format_chat_table,
    mt_bench_conversations,
    rag_conversations,
    run_chat_suite,
)
from refrag_rasd_integrations.store import make_client
from tiny import tiny_chunk_encoder, tiny_loaded, tiny_refrag


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    loaded = tiny_loaded(0, max_positions=2048)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    engine = Engine(loaded, drafter=None, refrag=tiny_refrag(loaded, enc), refrag_encoder=enc)
    store = fake_store("chat-docs", client=make_client(tmp_path_factory.mktemp("db")), tokenizer=loaded.tokenizer,
                       chunk_encoder=enc)
    store.add_texts([t for t, _ in CORPUS], [m for _, m in CORPUS])
    return engine, store


def test_rag_conversations_every_setting(setup):
    engine, store = setup
    items = [QAItem(f"q{i}", q, [a]) for i, (q, a) in enumerate(
        [("Madrid Spain", "Madrid"), ("What about Paris?", "Paris"), ("The river Seine?", "Seine"),
         ("Madrid again", "Madrid"), ("The old mill?", "mill"), ("Extra question", "x")])]
    convs = rag_conversations(items, 3)
    assert [len(c) for c in convs] == [3, 3]
    res = run_chat_suite(engine, convs, store=store, k=1, max_tokens=4)
    m = res["methods"]
    assert set(m) == {"recompute", "cached", "cached+compressed", "default"}
    assert len(m["cached"]["per_turn"]) == 3 and res["settings"]["turns"] == 3
    assert m["recompute"]["per_turn"][2]["cached_share"] == 0
    assert m["cached"]["per_turn"][0]["cached_share"] < m["cached"]["per_turn"][2]["cached_share"]
    assert m["cached"]["per_turn"][2]["cached_share"] > 0.5
    assert all(t["equal_to_recompute"] == 1.0 for t in m["cached"]["per_turn"])  # greedy, lossless
    assert all("answer_recall" in t for t in m["cached"]["per_turn"])
    later = res["per_conversation"][0]["settings"]["cached+compressed"]["turns"][2]
    text = res["per_conversation"][0]["settings"]["cached"]["turns"][2]
    assert later["prefill_positions"] < text["prefill_positions"]  # the earlier turns' passages compressed
    assert engine.prefix_cache is None  # the engine is left as it was
    assert "cached, turn 3" in format_chat_table(res) and "|" in format_chat_table(res, markdown=True)


def test_mt_bench_conversations(setup, tmp_path):
    engine, _ = setup
    path = tmp_path / "mt.jsonl"
    path.write_text(json.dumps({"question_id": 1, "category": "writing", "turns": ["Write a line.", "Again."]})
                    + "\n")
    convs = mt_bench_conversations(path)
    assert convs == [["Write a line.", "Again."]]
    res = run_chat_suite(engine, convs, k=0, settings=["recompute", "cached"], max_tokens=4)
    assert res["methods"]["cached"]["per_turn"][1]["cached_share"] > 0
    with pytest.raises(InvalidInputError, match="unknown chat setting"):
        run_chat_suite(engine, convs, settings=["cold"])
    path.write_text('{"turns": "not a list"}\n')
    with pytest.raises(InvalidInputError, match="mt.jsonl:1"):
        mt_bench_conversations(path)
