"""The corpus datastore of the decode and rag suites (``--datastore-corpus``), on tiny in-memory models: what the
corpus holds and leaves out of the measured questions, ``rest-corpus`` / ``rasd-corpus`` and the ``-corpus``
pipelines beside the plain ones (every greedy output equal to vanilla's), the results' ``datastore`` block (size,
bytes, build time, effect), the CLI end to end, and the report rendering the new names."""

from __future__ import annotations

import json

import pytest
from integration_fakes import BagOfWordsEmbedder

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_integrations.cli import main
from refrag_rasd_integrations.cli.bench.data import load_questions
from refrag_rasd_integrations.cli.bench.datastore_corpus import (
    Measured,
    build_corpus_datastore,
    corpus_texts,
    datastore_info,
)
from refrag_rasd_integrations.cli.bench.decode import format_table, run_decode_suite, with_corpus_methods
from tiny import tiny_chunk_encoder, tiny_loaded, tiny_refrag

SHARED = "the old lighthouse keeper climbed the spiral stairs every evening to light the great lamp"
QUESTIONS = [  # a Spec-Bench-style file: rag lines (passages, then the question) and a summarization line
    {"question_id": 1, "category": "rag", "reference": [["a keeper of the lamp", "Tom"]],
     "turns": [f"{SHARED} above the harbour.\nShips came home safely at night.\nWho lit the lamp?"]},
    {"question_id": 2, "category": "rag", "reference": [["Paris"]],
     "turns": ["Paris is the capital of France and its largest city.\nThe Seine runs through Paris.\n"
               "What is the capital of France?"]},
    {"question_id": 3, "category": "rag", "reference": [["x"]],  # shares a 12-word run with question 1's passage
     "turns": [f"In a story, {SHARED} before the storm.\nWhat did he climb?"]},
    {"question_id": 4, "category": "summarization", "reference": ["Ships were guided home by the lamp."],
     "turns": ["Summarize: the town council voted to keep the harbour lamp burning through winter."]},
]
NQ = [  # NQ-open style: question 1's own question (left out), a text holding its reference (left out), a good one
    {"id": "nq-1", "question": "who lit the lamp", "answers": "['Tom']", "title": "Lamp", "passage": "Tom lit it."},
    {"id": "nq-2", "question": "who kept it", "answers": "['x']", "title": "Keepers",
     "passage": "He was known as a keeper of the lamp in the village."},
    {"id": "nq-3", "question": "where is rome", "answers": "['Italy']", "title": "Rome",
     "passage": "Rome is the capital of Italy, on the Tiber."},
]


@pytest.fixture
def files(tmp_path):
    data = tmp_path / "spec.jsonl"
    data.write_text("\n".join(json.dumps(q) for q in QUESTIONS) + "\n")
    nq = tmp_path / "nq.jsonl"
    nq.write_text("\n".join(json.dumps(q) for q in NQ) + "\n")
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.md").write_text("The capital of France is Paris; the capital of Italy is Rome.\n")
    (folder / "skip.bin").write_bytes(b"\x00\x01")  # not a text suffix: not read
    return {"data": data, "nq": nq, "folder": folder}


def test_the_corpus_leaves_out_the_measured_questions(files):
    measured = Measured.of_questions(load_questions(files["data"], "rag", limit=1), files["data"])  # question 1
    texts, report = corpus_texts([files["data"], files["nq"], files["folder"]], measured)
    joined = "\n".join(texts)
    assert "Ships came home" not in joined  # the measured line itself
    assert "Who lit the lamp" not in joined and "Tom lit it" not in joined  # NQ's line for the same question
    assert "In a story" not in joined  # shares a 12-word run with the measured passage
    assert "known as a keeper of the lamp" not in joined  # holds a measured reference of 3+ words
    assert "Paris is the capital of France and its largest city." in texts  # other questions' passages
    assert "What is the capital of France?" not in texts  # a rag line gives its passages, not its question
    assert any(t.startswith("Summarize: the town council") for t in texts)  # other categories: their prompts
    assert "Ships were guided home" not in joined  # never a reference
    assert "Rome\nRome is the capital of Italy, on the Tiber." in texts and any("capital of Italy is Rome" in t
                                                                               for t in texts)
    assert report["left_out"] == {"measured_lines": 1, "same_question": 1, "shares_measured_text": 1,
                                  "holds_reference": 1}
    assert report["sources"] == ["spec.jsonl", "nq.jsonl", "a.md"] and report["texts"] == len(texts)
    # the same question file under another name is not "the data file": its lines are caught by their text
    other = corpus_texts([files["data"]], Measured.of_questions(load_questions(files["data"], "rag", limit=1)))[0]
    assert not any("Ships came home" in t for t in other)


def test_corpus_errors(files, tmp_path):
    measured = Measured.of_questions(load_questions(files["data"], "rag", limit=1), files["data"])
    with pytest.raises(InvalidInputError, match="no such file"):
        corpus_texts([tmp_path / "missing.jsonl"], measured)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answers": ["a"]}\n')
    with pytest.raises(InvalidInputError, match="line 1: no text"):
        corpus_texts([bad], measured)
    only = tmp_path / "only.jsonl"
    only.write_text(json.dumps(QUESTIONS[0]) + "\n")
    with pytest.raises(InvalidInputError, match="no text left"):
        corpus_texts([only], Measured.of_questions(load_questions(only), only))


def _datastore(texts, engine, tmp_path, prompts):
    ds, build = build_corpus_datastore(texts, engine.tokenizer, tmp_path / "ds")
    return ds, datastore_info(ds, prompts, engine.tokenizer, corpus={"sources": ["t"], "texts": len(texts)},
                              build=build)


def test_decode_suite_with_a_corpus_datastore(files, tmp_path):
    engine = Engine(tiny_loaded(0), drafter=None)
    qs = load_questions(files["data"], "rag,summarization", limit=1)
    texts, corpus = corpus_texts([files["data"], files["nq"]], Measured.of_questions(qs, files["data"]))
    ds, info = _datastore(texts, engine, tmp_path, [q.prompt for q in qs])
    assert info["n_tokens"] > 0 and info["bytes"] > 0 and info["build_s"] >= 0 and info["tokenize_s"] >= 0
    assert info["built"] == "in this run" and 0 <= info["matched_share"] <= 1
    methods = with_corpus_methods(["vanilla", "rest", "rasd"])
    assert methods == ["vanilla", "rest", "rest-corpus", "rasd", "rasd-corpus"]
    res = run_decode_suite(engine, qs, methods, max_new_tokens=8, progress=False, datastore=ds,
                           datastore_info={**corpus, **info})
    for m in methods:
        assert res["methods"][m]["equal_to_vanilla"] == 1.0, m  # greedy: the corpus changes the speed only
    block = res["datastore"]
    assert block["left_out"]["measured_lines"] == 2 and block["policy"]
    assert set(block["effect"]) == {"rest", "rasd"}
    assert block["effect"]["rasd"]["mean_accepted"] == [res["methods"]["rasd"]["mean_accepted"],
                                                        res["methods"]["rasd-corpus"]["mean_accepted"]]
    assert set(block["effect_by_category"]) == {"rag", "summarization"}
    table = format_table(res)
    assert "rasd-corpus" in table and "corpus datastore:" in table and "without -> with it: rest" in table
    assert "\n\ncorpus datastore:" in format_table(res, markdown=True)  # a paragraph after the markdown table
    json.dumps(res)
    with pytest.raises(InvalidInputError, match="need a corpus datastore"):
        run_decode_suite(engine, qs, ["rest-corpus"], max_new_tokens=4, progress=False)


def test_cli_decode_suite_with_datastore_corpus(files, tmp_path, monkeypatch, capsys):
    engine = Engine(tiny_loaded(0), drafter=None)
    monkeypatch.setattr(Engine, "load", staticmethod(lambda *a, **k: engine))
    out = tmp_path / "res.json"
    argv = ["bench", "--data", str(files["data"]), "--category", "rag", "--limit", "1", "--methods",
            "vanilla,rest,rasd", "--max-new-tokens", "6", "--no-calibrate", "--out", str(out),
            "--datastore-corpus", f"{files['data']},{files['nq']}"]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert list(res["methods"]) == ["vanilla", "rest", "rest-corpus", "rasd", "rasd-corpus"]
    assert res["settings"]["datastore_corpus"] == ["spec.jsonl", "nq.jsonl"]
    ds = res["datastore"]
    assert ds["n_tokens"] > 0 and ds["bytes"] > 0 and ds["build_s"] is not None and "path" not in ds
    assert ds["sources"] == ["spec.jsonl", "nq.jsonl"] and ds["left_out"]["same_question"] == 1
    assert "corpus datastore:" in capsys.readouterr().out
    assert main([*argv[:-2], "--methods", "vanilla,rasd-corpus"]) == 2  # a corpus method without the corpus
    assert "give --datastore-corpus" in capsys.readouterr().err


def _rag_rows():
    return [
        {"question_id": 1, "question": "What is the capital of France?", "held_out": False, "reference": ["Paris"],
         "passages": ["Paris is the capital of France.", "The Louvre is in Paris."]},
        {"question_id": 2, "question": "What is the capital of Spain?", "held_out": True, "reference": ["Madrid"],
         "passages": ["Madrid is the capital of Spain.", "The Prado is in Madrid."]},
    ]


def _rag_engine():
    loaded = tiny_loaded(0, max_positions=1024)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    return Engine(loaded, drafter=None, refrag=tiny_refrag(loaded, enc), refrag_encoder=enc)


@pytest.mark.parametrize("source", ["store", "files"])
def test_rag_suite_with_a_corpus_datastore(source, files, tmp_path):
    from refrag_rasd_integrations.cli.bench.rag import format_table as rag_table
    from refrag_rasd_integrations.cli.bench.rag import index_rows, measured_rows, run_rag_suite
    from refrag_rasd_integrations.store import RefragChromaStore

    engine, rows = _rag_engine(), _rag_rows()
    store = RefragChromaStore("bench-rag-corpus", path=tmp_path / "chroma", engine=engine,
                              embedder=BagOfWordsEmbedder(), datastore=source == "store")
    index_rows(store, rows, progress=False)
    prompts = ["\n".join([*r["passages"], r["question"]]) for r in measured_rows(rows, 1)]
    if source == "store":
        ds = store.datastore()
        info = datastore_info(ds, prompts, engine.tokenizer, corpus={"sources": ["the store"]})
        assert info["passages"] == 4 and info["built"].startswith("in this run")
    else:
        texts, corpus = corpus_texts([files["nq"]], Measured.of_rows(measured_rows(rows, 1)))
        ds, info = _datastore(texts, engine, tmp_path, prompts)
    res = run_rag_suite(engine, rows, store, limit=1, k=2, max_new_tokens=6, progress=False, datastore=ds,
                        datastore_info=info)
    assert list(res["methods"]) == ["default", "default-corpus", "plain-rag", "refrag-rasd", "refrag-rasd-corpus"]
    assert res["settings"]["pipelines"]["refrag-rasd-corpus"] == {"context": "compressed", "method": "rasd",
                                                                  "datastore": "corpus"}
    row = res["per_question"][0]["methods"]
    assert row["refrag-rasd-corpus"]["answer"] == row["refrag-rasd"]["answer"]  # greedy: same text, other speed
    effect = res["datastore"]["effect"]
    assert effect["refrag-rasd"]["accepted_per_forward"] == [res["methods"]["refrag-rasd"]["accepted_per_forward"],
                                                             res["methods"]["refrag-rasd-corpus"][
                                                                 "accepted_per_forward"]]
    assert res["datastore"]["n_tokens"] > 0 and res["datastore"]["bytes"] > 0
    assert "without -> with it: default" in rag_table(res)
    json.dumps(res)


def test_the_report_renders_the_corpus_methods(files, tmp_path):
    from refrag_rasd_integrations.cli.bench import report
    from refrag_rasd_integrations.cli.bench.results import write_results

    engine = Engine(tiny_loaded(0), drafter=None)
    qs = load_questions(files["data"], "rag", limit=1)
    texts, corpus = corpus_texts([files["nq"]], Measured.of_questions(qs, files["data"]))
    ds, info = _datastore(texts, engine, tmp_path, [q.prompt for q in qs])
    res = run_decode_suite(engine, qs, with_corpus_methods(["rest", "rasd"]), max_new_tokens=4, progress=False,
                           datastore=ds, datastore_info={**corpus, **info})
    path = write_results(res, tmp_path / "results" / "decode" / "2026-12-08-tiny-rag-corpus.json")
    section = report.suite_section(path)
    assert "| rasd-corpus |" in section and "corpus datastore:" in section
    assert report.headline("decode", res).startswith("best speedup vs vanilla: ")
