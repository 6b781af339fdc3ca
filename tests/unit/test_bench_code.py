"""The code suite on a tiny model: held-out split and function tasks from a small tree, HumanEval lines, retrieved
code before the prompt (a real embedded Chroma), completion similarity, pass@1 in a subprocess, and the results
JSON with the corpus-datastore methods, equality against vanilla and the datastore's numbers."""

from __future__ import annotations

import json

import pytest
from integration_fakes import fake_store

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_integrations.cli.bench.code import format_code_table, measure_build, run_code_suite, run_tests
from refrag_rasd_integrations.cli.bench.code_tasks import (
    CodeTask,
    function_tasks,
    humaneval_tasks,
    similarity,
    split_files,
    with_passages,
)
from tiny import tiny_loaded

FUNC = '''

def area{i}(width, height):
    """The area of a {i} rectangle."""
    if width < 0:
        raise ValueError("negative width")
    if height < 0:
        raise ValueError("negative height")
    total = width * height
    total = total + 0
    result = total
    assert result >= 0
    return result
'''


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "src"
    (root / "pkg").mkdir(parents=True)
    for n in range(12):
        (root / "pkg" / f"mod{n}.py").write_text("import os\n" + "".join(FUNC.format(i=i) for i in range(2)))
    (root / "tests").mkdir()
    (root / "tests" / "test_x.py").write_text(FUNC.format(i=9))
    return root


def test_split_and_tasks(tree):
    indexed, held = split_files(tree, 0.3)
    assert held and indexed and not set(held) & set(indexed)
    assert all("tests" not in p.parts for p in indexed + held)
    assert split_files(tree, 0.3) == (indexed, held)  # the same split every time
    tasks = function_tasks(held, tree, limit=3)
    assert len(tasks) == 3 and len({t.meta["path"] for t in tasks}) == min(3, len(held))
    t = tasks[0]
    assert t.prompt.rstrip().endswith('rectangle."""') and t.reference.startswith("    if width < 0:")
    assert t.question_id.startswith("pkg/mod") and "::area" in t.question_id
    with pytest.raises(InvalidInputError, match="between 0 and 1"):
        split_files(tree, 1.0)
    with pytest.raises(InvalidInputError, match="not a folder"):
        split_files(tree / "pkg" / "mod0.py", 0.5)


def test_similarity_and_humaneval(tmp_path):
    ref = "    a = 1\n    b = 2\n    return a + b\n"
    assert similarity(ref, ref) == {"exact_lines": 1.0, "edit_similarity": 1.0}
    got = similarity("    a = 1\n    b = 3\nprint('after the function')\n", ref)
    assert got["exact_lines"] == 0.5 and 0.5 < got["edit_similarity"] < 1
    assert similarity("", ref) == {"exact_lines": None, "edit_similarity": None}
    f = tmp_path / "he.jsonl"
    f.write_text(json.dumps({"task_id": "T/0", "prompt": "def add(a, b):\n", "canonical_solution": "    return a + b\n",
                             "test": "def check(fn):\n    assert fn(1, 2) == 3\n", "entry_point": "add"}) + "\n")
    task = humaneval_tasks(f)[0]
    assert task.question_id == "T/0" and task.entry_point == "add"
    assert run_tests(task, "    return a + b\n") and not run_tests(task, "    return a - b\n")
    assert not run_tests(task, "    while True: pass\n", timeout_s=2)
    net = CodeTask("n", "import socket\ndef f():\n", test="def check(fn):\n    fn()\n", entry_point="f")
    assert not run_tests(net, "    socket.create_connection(('127.0.0.1', 9))\n")  # no network
    f.write_text('{"prompt": "x"}\n')
    with pytest.raises(InvalidInputError, match="task_id"):
        humaneval_tasks(f)


def test_run_code_suite_on_a_tiny_model(tree, tmp_path):
    engine = Engine(tiny_loaded(0), drafter=None, refrag=None)
    _, held = split_files(tree, 0.3)
    store = fake_store("code-suite", path=tmp_path / "db", tokenizer=engine.tokenizer, passage_tokens=64,
                       datastore=True)
    store.add_code([tree])
    tasks = with_passages(function_tasks(held, tree, limit=2), store, 2)
    assert all(len(t.context) == 2 and t.prompt.startswith("# pkg/") for t in tasks)
    ds = store.datastore()
    res = run_code_suite(engine, tasks, ["vanilla", "hf", "pld", "rest", "rest-corpus", "rasd", "rasd-corpus"],
                         datastore=ds, max_new_tokens=8, progress=False,
                         datastore_info={**ds.describe(), **measure_build(ds)})
    assert res["suite"] == "code" and set(res["methods"]) >= {"rest-corpus", "rasd-corpus", "hf"}
    for m, s in res["methods"].items():
        assert s["equal_to_vanilla"] == 1.0, m  # greedy: every method writes vanilla's tokens
        assert s["speedup_vs_hf"] is not None
    code = res["code"]
    assert code["best_single"] in ("pld", "rest", "rest-corpus") and code["rasd_vs_pld"] is not None
    assert code["datastore"]["n_tokens"] > 0 and code["datastore"]["build_tokens_per_s_divsufsort"] > 0
    assert code["datastore"]["lookups"] > 0 and code["datastore"]["lookup_ms"] >= 0
    assert set(code["similarity"]) == {"exact_lines", "edit_similarity"}
    row = res["per_question"][0]
    assert row["sources"] and "token_ids" not in row["methods"]["vanilla"]
    assert "corpus datastore" in format_code_table(res)
    json.dumps(res)
    no_ds = run_code_suite(engine, tasks[:1], ["vanilla", "rest-corpus"], max_new_tokens=4, progress=False)
    assert set(no_ds["methods"]) == {"vanilla"}  # the corpus methods need a datastore
