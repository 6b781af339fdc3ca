"""docs/benchmarks.md shows the newest results file per (suite, machine); the history page lists every file;
results files are named ``benchmarks/results/<suite>/<date>-<machine>-<variant>.json``."""

from __future__ import annotations

import json
from pathlib import Path

from refrag_rasd_integrations.cli.bench.report import (
    collect,
    latest_per_suite_machine,
    render_history,
    render_page,
)
from refrag_rasd_integrations.cli.bench.results import (
    parse_results_path,
    resolve_out,
    results_path,
    write_results,
)

ROOT = Path(__file__).resolve().parents[2]
MACHINE = {"cpu": "AMD EPYC", "cores": 2, "device": "cpu", "torch": "2", "transformers": "5"}


def _decode(tps: float) -> dict:
    cell = {"tokens_per_s": tps, "speedup_vs_vanilla": 1.0, "mean_accepted": 1.0, "ttft_s": 0.1,
            "equal_to_vanilla": 1.0, "n": 1}
    return {"suite": "decode", "machine": MACHINE,
            "settings": {"model": "m", "dtype": "float32", "categories": ["rag"], "n_questions": 1,
                         "max_new_tokens": 8},
            "methods": {"vanilla": cell, "pld": dict(cell, speedup_vs_vanilla=tps / 10)},
            "per_question": []}


def test_report_shows_the_newest_file_per_suite_and_machine(tmp_path: Path) -> None:
    root = tmp_path / "results"
    write_results(_decode(11.0), root / "decode" / "2026-12-01-cpu2-rag.json")
    write_results(_decode(12.0), root / "decode" / "2026-12-06-cpu2-rag.json")           # newer, same machine
    write_results(_decode(13.0), root / "decode" / "2026-12-02-cpu2genoa-rag.json")      # another machine
    write_results({"machine": MACHINE, "scale": {"passages": 20, "query_top5_ms_p50": 3.5}},
                  root / "store" / "2026-11-28-cpu2-default.json")
    (root / "README.md").write_text("the scheme")                                       # not a results file
    files = collect(root)
    assert len(files) == 4
    newest = {p.relative_to(root).as_posix() for p in latest_per_suite_machine(files)}
    assert newest == {"decode/2026-12-06-cpu2-rag.json", "decode/2026-12-02-cpu2genoa-rag.json",
                      "store/2026-11-28-cpu2-default.json"}
    page = render_page(files, tmp_path / "img")
    assert "2026-12-06-cpu2-rag.json" in page and "2026-12-01-cpu2-rag.json" not in page
    assert "| pld | 12.00 | 1.20x |" in page and "| pld | 11.00 |" not in page
    assert "top-5 query p50 3.50 ms at 20 passages" in page
    history = render_history(files)
    assert all(p.name in history for p in files) and history.index("2026-12-06") < history.index("2026-12-01")
    assert "best speedup vs vanilla: pld 1.10x" in history


def test_docs_benchmarks_page_is_short_and_history_lists_every_file() -> None:
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    history = (ROOT / "docs" / "benchmarks-history.md").read_text()
    assert page.count("\n") < 400
    files = collect(ROOT / "benchmarks" / "results")
    assert files, "no results files found"
    for p in files:
        assert f"`benchmarks/results/{p.parent.name}/{p.name}`" in history
    stray = [p for p in (ROOT / "benchmarks" / "results").rglob("*") if p.is_file()
             and p.name != "README.md" and p not in files]
    assert not stray, f"results files outside the <suite>/<date>-<machine>-<variant>.json scheme: {stray}"
    assert all(json.loads(p.read_text()) for p in latest_per_suite_machine(files))


def test_results_path_scheme_and_out_auto(tmp_path: Path) -> None:
    p = results_path("qa", "nq top14", "cpu2genoa", date="2026-12-06", root=tmp_path)
    assert p == tmp_path / "qa" / "2026-12-06-cpu2genoa-nq-top14.json"
    assert parse_results_path(p) == ("qa", "2026-12-06", "cpu2genoa", "nq-top14")
    auto = resolve_out("auto", "decode", "rag", {"cores": 2, "cpu_ids": "family 25 model 1"}, root=tmp_path)
    assert auto.parent == tmp_path / "decode" and auto.name.endswith("-cpu2milan-rag.json")
    assert resolve_out("x/y.json", "decode", "rag", "cpu2") == Path("x/y.json")
    assert resolve_out(None, "decode", "rag", "cpu2") is None


def test_bench_names_the_recipe_of_a_removed_checkpoint(capsys, tmp_path: Path) -> None:
    """The earlier checkpoints left the repository: asking for one that is not recreated says how to recreate it."""
    from refrag_rasd_integrations.cli import main

    missing = tmp_path / "runs" / "refrag-k8-cpt" / "refrag.safetensors"
    data = tmp_path / "q.jsonl"
    data.write_text('{"question_id": 1, "category": "rag", "turns": ["q"]}\n')
    assert main(["bench", "--suite", "rag", "--data", str(data), "--refrag", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "no REFRAG checkpoint at" in err and "docs/training-refrag.md" in err


def test_results_files_keep_no_answer_text(tmp_path):
    """A model's answer can quote the benchmark's passages (data from other repositories): the writer keeps a
    digest and a length, never the text; the committed results hold none either."""
    import json

    res = {"methods": {"a": {"answer": "The mill was built in 1820.", "answer_recall": 1.0}},
           "per_question": [{"methods": {"a": {"answer": "The mill was built in 1820."}}}]}
    text = write_results(res, tmp_path / "r.json").read_text()
    assert "1820" not in text and '"answer"' not in text
    rows = json.loads(text)["per_question"][0]["methods"]["a"]
    assert rows["answer_chars"] == 27 and rows["answer_sha1"] == json.loads(text)["methods"]["a"]["answer_sha1"]
    committed = sorted((Path(__file__).resolve().parents[2] / "benchmarks" / "results").rglob("*.json"))
    assert committed and not [p.name for p in committed if '"answer": "' in p.read_text()]
