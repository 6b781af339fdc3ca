"""The decode benchmark harness on a tiny model: the contract's JSON, and that a method whose output
differs from vanilla's is reported as unequal."""

from __future__ import annotations

import json

import pytest

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_integrations.cli import main
from refrag_rasd_integrations.cli.bench.data import load_questions
from refrag_rasd_integrations.cli.bench.decode import MethodRun, format_table, run_decode_suite

QUESTIONS = [
    {"question_id": 1, "category": "rag", "turns": ["first passage here\nsecond passage\nWhat is it?"],
     "reference": ["it"]},
    {"question_id": 2, "category": "rag", "turns": ["another passage\nWho?"]},
    {"question_id": 3, "category": "qa", "turns": ["Why is the sky blue?"]},
]


@pytest.fixture()
def data_file(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text("\n".join(json.dumps(q) for q in QUESTIONS) + "\n")
    return p


def test_shipped_checkpoints_record_their_training_questions():
    from refrag_rasd_core.shared_data import SPEC_BENCH_DEV, default_data_path
    from refrag_rasd_integrations.cli.bench.data import training_question_ids

    ids = training_question_ids()  # from the checkpoints' json sidecars (ids and the file's sha256, no text)
    assert len(ids) == 100 and all(isinstance(i, int) for i in ids)
    dev = default_data_path(SPEC_BENCH_DEV)
    if dev is not None:  # the even index within each category of the Spec-Bench dev file
        from refrag_rasd_core.training.spec_bench import spec_bench_training_record

        assert set(spec_bench_training_record(dev)["question_ids"]) == ids


def test_shipped_checkpoints_record_their_trained_documents_and_questions():
    import json as _json

    from refrag_rasd_core.refrag.checkpoint import DEFAULT_LONG_REFRAG_CHECKPOINT, DEFAULT_REFRAG_CHECKPOINT
    from refrag_rasd_integrations.cli.bench.data import trained_ids

    ids = trained_ids()  # the long and qa suites leave these out unless --include-train
    for path in (DEFAULT_REFRAG_CHECKPOINT, DEFAULT_LONG_REFRAG_CHECKPOINT):
        recipe = _json.loads(path.with_suffix(".json").read_text())["recipe"]
        for key in ("qa_trained_on", "long_trained_on"):
            sources = recipe.get(key) or []
            for source in sources if isinstance(sources, list) else [sources]:
                assert source["trained_ids"] and set(source["trained_ids"]) <= ids
                held = source.get("held_out")
                if isinstance(held, list):  # the long checkpoint names its held-out documents
                    assert held and not set(held) & ids


def test_load_questions_filters(data_file):
    qs = load_questions(data_file, "rag", limit=1)
    assert [q.question_id for q in qs] == [1]
    assert qs[0].passages == ["first passage here", "second passage"]
    assert len(load_questions(data_file)) == 3
    with pytest.raises(InvalidInputError):
        load_questions(data_file, "nope")
    with pytest.raises(InvalidInputError):
        load_questions(data_file.parent / "missing.jsonl")


def test_suite_json_shape_and_unequal_method(tiny, data_file):
    engine = Engine(tiny)
    qs = load_questions(data_file, "rag")

    def corrupt(q):  # a "method" that changes the first token: must be reported unequal
        res = engine.generate(q.messages, max_new_tokens=8)
        return MethodRun([res.token_ids[0] + 1, *res.token_ids[1:]], res.stats.total_s)

    res = run_decode_suite(engine, qs, ["vanilla", "hf", "corrupt"], max_new_tokens=8, progress=False,
                           extra_methods={"corrupt": corrupt})
    assert set(res) >= {"machine", "settings", "methods", "per_question"}
    assert {"cpu", "cores", "torch", "transformers", "device"} <= set(res["machine"])
    assert res["settings"]["max_new_tokens"] == 8
    for name in ("vanilla", "hf", "corrupt"):
        m = res["methods"][name]
        assert set(m) >= {"tokens_per_s", "speedup_vs_vanilla", "mean_accepted", "ttft_s", "equal_to_vanilla", "n"}
        assert m["n"] == 2
    assert res["methods"]["vanilla"]["equal_to_vanilla"] == 1.0
    assert res["methods"]["vanilla"]["speedup_vs_vanilla"] == 1.0
    assert res["methods"]["hf"]["equal_to_vanilla"] == 1.0
    assert res["methods"]["corrupt"]["equal_to_vanilla"] == 0.0
    assert res["per_question"][0]["methods"]["corrupt"]["first_difference"] == 0
    assert res["methods"]["vanilla"]["mean_accepted"] == 1.0
    assert res["methods"]["hf"]["mean_accepted"] is None  # not measurable through generate
    assert "corrupt" in format_table(res)
    json.dumps(res)  # serializable


def test_cli_models_json(capsys):
    assert main(["models", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"cache_dir", "target", "encoder"} <= set(out)


def test_cli_reports_clear_error(capsys, tmp_path):
    assert main(["bench", "--data", str(tmp_path / "none.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err


def test_hf_assisted_peer_and_categories(tiny, data_file):
    from tiny import tiny_loaded

    engine = Engine(tiny)
    qs = load_questions(data_file)
    draft = tiny_loaded(7, layers=1)  # same tokenizer, another (random) model
    res = run_decode_suite(engine, qs, ["vanilla", "hf-assisted"], max_new_tokens=8, progress=False,
                           assistant=draft)
    assert res["methods"]["hf-assisted"]["equal_to_vanilla"] == 1.0  # greedy assisted generation is exact
    assert set(res["by_category"]) == {"rag", "qa"}
    assert res["by_category"]["qa"]["vanilla"]["n"] == 1
    with pytest.raises(InvalidInputError, match="draft model"):
        run_decode_suite(engine, qs, ["hf-assisted"], max_new_tokens=4, progress=False)
