"""The structured suite on a tiny random model: constrained answers are all valid and every method writes
what constrained plain decoding writes; the results carry the per-task rows and no question text."""

from __future__ import annotations

import json

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.qa_file import QAItem
from refrag_rasd_integrations.cli.bench.structured import format_structured_table, run_structured_suite


def test_structured_suite_on_a_tiny_model():
    from tiny import tiny_loaded

    target = tiny_loaded(0, max_positions=4096)
    engine = Engine(target, drafter=None)
    items = [QAItem("q1", "who wrote the play", ["Ada"], ["Plays\nAda wrote the play in 1900."])]
    res = run_structured_suite(engine, items, methods=("vanilla", "pld", "rasd"), max_tokens=96)
    rows = res["methods"]
    assert set(rows) == {f"{m} {mode}" for m in ("vanilla", "pld", "rasd") for mode in ("constrained", "unconstrained")}
    for m in ("vanilla", "pld", "rasd"):
        c = rows[f"{m} constrained"]
        assert c["equal_to_vanilla"] == 1.0 and rows[f"{m} unconstrained"]["equal_to_vanilla"] == 1.0
        assert c["grammar_ms_per_token"] > 0 and rows[f"{m} unconstrained"]["grammar_ms_per_token"] == 0
    finished = [r for r in res["per_task"] if r["mode"] == "constrained" and r["finish_reason"] != "length"]
    assert finished and all(r["valid"] == 1.0 for r in finished)  # what the grammar let finish is valid
    assert rows["vanilla unconstrained"]["valid"] == 0.0  # the random model writes no JSON by itself
    assert len(res["per_task"]) == 3 * 2 * 3 and "who wrote" not in json.dumps(res["per_task"])
    assert "vs vanilla" in format_structured_table(res) and format_structured_table(res, markdown=True).startswith("|")
