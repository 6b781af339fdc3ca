"""The long suite on a tiny model: tasks from summarization and SQuAD-style files written here (documents past a
small window), the settings' parsing, the truncation that fits, and a results file whose rows and summaries
carry what the issue asks for (quality, time, first token, calls, positions, peak KV bytes)."""

from __future__ import annotations

import json

import pytest

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_integrations.cli.bench.long import (
    LongSetting,
    format_long_table,
    kv_bytes_per_position,
    parse_long_settings,
    run_long_suite,
    run_setting,
)
from refrag_rasd_integrations.cli.bench.long_scaling import format_scaling_table, grown_documents, run_scaling
from refrag_rasd_integrations.cli.bench.long_tasks import load_long_tasks
from tiny import tiny_chunk_encoder, tiny_loaded, tiny_refrag

WINDOW = 400


@pytest.fixture(scope="module")
def engine():
    loaded = tiny_loaded(0, max_positions=WINDOW)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    return Engine(loaded, drafter=None, refrag=tiny_refrag(loaded, enc), refrag_encoder=enc)


def _words(n: int, seed: str) -> str:
    return " ".join(f"{seed}{i % 7}" for i in range(n))


@pytest.fixture
def summaries(tmp_path):
    path = tmp_path / "docs.jsonl"
    rows = [{"id": "long", "document": "Intro.\n\n" + _words(120, "a") + "\n\n" + _words(120, "b"),
             "summary": "a0 a1 a2"},
            {"id": "short", "document": _words(20, "c"), "summary": "c0 c1"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def squad(tmp_path):
    path = tmp_path / "squad.jsonl"
    rows = []
    for title in ("Alpha", "Beta", "Gamma"):
        for p in range(3):
            rows.append({"id": f"{title}-{p}", "title": title, "paragraph": p, "question": f"What is {title} {p}?",
                         "answers": [f"{title.lower()}{p}"], "passage": _words(30, title.lower()[:2])})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_settings_parse_and_refuse():
    names = [s.name for s in parse_long_settings("truncate,map-reduce,tree,retrieve:5,compressed:0.05:rank,"
                                                   "compressed:2048,default")]
    assert names[-2:] == ["compressed:2048", "default"]
    assert LongSetting.parse("compressed:2048:rank").amount == 2048.0
    for bad in ("compressed:1.5", "compressed:0.2:nope", "retrieve:0", "retrieve", "split", "compressed:-1"):
        with pytest.raises(InvalidInputError):
            LongSetting.parse(bad)
    with pytest.raises(InvalidInputError, match="once"):
        parse_long_settings("truncate,truncate")


def test_tasks_from_both_kinds_of_file(engine, summaries, squad):
    tasks, index_s = load_long_tasks(summaries, engine, passage_tokens=64)
    assert [t.id for t in tasks] == ["long", "short"]  # the longest first
    long = tasks[0]
    assert long.kind == "summary" and long.references == ["a0 a1 a2"] and long.tokens > WINDOW
    assert all(len(p.token_ids) <= 64 and p.chunk_embeddings is not None for p in long.passages)
    assert "".join(p.text for p in long.passages).replace(" ", "") == \
        json.loads(summaries.read_text().splitlines()[0])["document"].replace(" ", "").replace("\n", "")
    assert set(index_s) == {"long", "short"}
    assert [t.id for t in load_long_tasks(summaries, engine, min_tokens=WINDOW)[0]] == ["long"]
    assert [t.id for t in load_long_tasks(summaries, engine, max_tokens=WINDOW)[0]] == ["short"]
    qa, _ = load_long_tasks(squad, engine, questions_per_document=2, min_words=150, passage_tokens=64)
    docs = {t.document_id for t in qa}
    assert docs == {"Alpha+Beta", "Gamma"} and all(t.kind == "qa" for t in qa)
    assert sum(t.document_id == "Alpha+Beta" for t in qa) == 2
    left = load_long_tasks(squad, engine, min_words=150, passage_tokens=64, exclude_ids={"Gamma-0", "Gamma-1",
                                                                                        "Gamma-2", "Alpha-0"})[0]
    assert {t.document_id for t in left} == {"Alpha+Beta"} and "Alpha-0" not in {t.id for t in left}
    assert left[0].tokens == next(t for t in qa if t.document_id == "Alpha+Beta").tokens  # its text is whole
    assert [t.id for t in load_long_tasks(summaries, engine, exclude_ids={"long"})[0]] == ["short"]
    with pytest.raises(InvalidInputError, match="summarization"):
        (summaries.parent / "bad.jsonl").write_text('{"x": 1}\n')
        load_long_tasks(summaries.parent / "bad.jsonl", engine)


def test_suite_rows_and_summaries(engine, summaries):
    tasks, _ = load_long_tasks(summaries, engine, passage_tokens=64)
    settings = parse_long_settings("truncate,map-reduce,tree,compressed:0.05:rank,default")
    res = run_long_suite(engine, tasks, settings, max_tokens=6, method="vanilla", progress=False)
    rows = {(r["id"], r["setting"]): r for r in res["rows"]}
    trunc = rows[("long", "truncate")]
    assert trunc["prefill_positions"] + 6 <= WINDOW and trunc["context"] == "text"  # what fits, as text
    default = rows[("long", "default")]
    assert default["context"] == "compressed" and default["past_window"]  # auto past the window
    assert rows[("short", "default")]["context"] == "text" and not rows[("short", "default")]["past_window"]
    mr, tree = rows[("long", "map-reduce")], rows[("long", "tree")]
    assert mr["calls"] >= 3 and tree["calls"] >= mr["calls"] and mr["context"] == "text"  # pieces, then combined
    assert mr["ttft_s"] > mr["total_s"] / 2  # the answer's first token waits for every piece
    for r in res["rows"]:
        assert 0 <= r["rougeL"] <= 1 and r["total_s"] >= r["ttft_s"] > 0
        assert r["calls"] == 1 or r["setting"] in ("map-reduce", "tree")
        assert 1 <= r["new_tokens"] <= 6 * r["calls"]  # summed over a baseline's calls
        if r["calls"] == 1:
            assert r["peak_kv_bytes"] == (r["prefill_positions"] + r["new_tokens"]) * kv_bytes_per_position(engine)
    past = res["summary"]["past_window"]
    assert set(past) == {"truncate", "map-reduce", "tree", "compressed:0.05:rank", "default"}
    assert past["default"]["n"] == 1 and past["map-reduce"]["time_vs_map_reduce"] == 1.0
    assert past["default"]["ttft_speedup_vs_map_reduce"] > 1
    assert "past the window" in format_long_table(res) and "| setting |" in format_long_table(res, markdown=True)
    per_pos = kv_bytes_per_position(engine)
    cfg = engine.model.config
    assert per_pos == 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (
        cfg.hidden_size // cfg.num_attention_heads) * 4


def test_a_setting_on_its_own(engine, summaries):
    task = load_long_tasks(summaries, engine, passage_tokens=64)[0][0]
    r = run_setting(engine, task, LongSetting.parse("compressed:16:rank"), max_tokens=4, method="vanilla")
    assert r["expanded_chunks"] == 4 and r["chunks"] > 4  # a budget of 16 raw tokens = 4 chunks at k = 4


def test_retrieve_reads_the_closest_passages_embedded_once(engine, squad, monkeypatch):
    from refrag_rasd_integrations.cli.bench import long as suite

    tasks, _ = load_long_tasks(squad, engine, questions_per_document=2, min_words=150, passage_tokens=64)
    embedded = []
    real = suite.passage_vectors
    monkeypatch.setattr(suite, "passage_vectors", lambda task: embedded.append(task.document_id) or real(task))
    res = run_long_suite(engine, tasks, parse_long_settings("retrieve:1"), max_tokens=2, method="vanilla",
                         progress=False)
    assert sorted(embedded) == sorted({t.document_id for t in tasks})  # once per document, not per question
    for task, row in zip(tasks, res["rows"], strict=True):
        assert row["prefill_positions"] < task.tokens  # one passage of the document, as text
        assert row["context"] == "text"


def test_scaling_grows_one_document(engine, summaries):
    task = load_long_tasks(summaries, engine, passage_tokens=64)[0][0]
    grown = grown_documents(task.passages, [600, 100])
    assert [t.id for t in grown] == ["grown-100", "grown-600"] and grown[0].tokens <= 100 < WINDOW < grown[1].tokens
    res = run_scaling(engine, grown, max_tokens=4, method="vanilla", map_reduce_up_to=0, progress=False)
    ways = [(r["tokens"], r["way"]) for r in res["scaling"]]
    assert ways == [(grown[0].tokens, "text"), (grown[0].tokens, "default"), (grown[1].tokens, "default")]
    assert all(r["peak_rss_bytes"] > 0 for r in res["scaling"])
    assert "tokens, default" in format_scaling_table(res)
