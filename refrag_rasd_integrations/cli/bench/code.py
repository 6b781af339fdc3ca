"""The ``code`` suite: complete functions with every decoding method, the retriever supplying similar code.

``--source DIR``: the tree minus its held-out files is indexed with ``--code`` splitting (and its corpus
datastore built); the tasks are the held-out files' functions (:mod:`.code_tasks`). ``--data FILE.jsonl``
(HumanEval format): those tasks, the index and datastore from ``--corpus-source DIR``. Each task's prompt is the
retrieved code (commented, before) + the file's preceding lines + signature + docstring, as raw text.

Methods: the decode suite's (vanilla, hf, hf-pld, pld, rest over the request's passages, draft, rasd, llama.cpp
peers), plus ``rest-corpus`` and ``rasd-corpus`` (the same with the collection's corpus datastore), timed
interleaved in one process (:func:`~.decode.run_decode_suite`). Reported besides the decode suite's columns:
``speedup_vs_hf`` (transformers' ``generate``), ``best_single`` (the fastest of pld / rest / rest-corpus / draft),
completion similarity of vanilla's output to the real body (exact lines, edit similarity: for the record, the
model is small), the datastore's size, build speed, bytes per token and lookup time, and with ``--execute``
pass@1 (each task's tests run in a subprocess, with a time limit and sockets disabled).

Example (minutes of model time; not run by the tests):
    >>> res = run_code_suite(engine, tasks, ["vanilla", "pld", "rasd"], datastore=ds)   # doctest: +SKIP
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from refrag_rasd_core.engine import Engine

from .code_tasks import CodeTask, similarity
from .datastore_corpus import lookup_cost, measure_build
from .decode import CORPUS_METHODS, run_decode_suite
from .results import Column, format_table_of, machine_line

__all__ = ["CORPUS_METHODS", "DEFAULT_METHODS", "format_code_table", "lookup_cost", "measure_build",
           "run_code_suite", "run_tests"]
DEFAULT_METHODS = "vanilla,hf,hf-pld,pld,rest,rest-corpus,draft,rasd,rasd-corpus"
SINGLE = ("pld", "rest", "rest-corpus", "draft")
_NO_NET = ("import socket\n"
           "def _blocked(*a, **k):\n    raise OSError('network disabled in the code suite')\n"
           "socket.socket = _blocked\nsocket.create_connection = _blocked\n")


def run_tests(task: CodeTask, completion: str, timeout_s: float = 10.0) -> bool:
    """Whether ``task``'s tests pass on its prompt + ``completion`` (HumanEval: ``check(entry_point)``), run in a
    fresh ``python -I`` subprocess with sockets disabled and a time limit."""
    if not task.test:
        return False
    program = (_NO_NET + task.prompt + completion + "\n\n" + task.test + "\n"
               + (f"check({task.entry_point})\n" if task.entry_point else ""))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "task.py")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(program)
        try:
            r = subprocess.run([sys.executable, "-I", path], cwd=tmp, capture_output=True, timeout=timeout_s,
                               env={"PATH": os.environ.get("PATH", ""), "no_proxy": "*"})
        except subprocess.TimeoutExpired:
            return False
    return r.returncode == 0


def run_code_suite(engine: Engine, tasks: Sequence[CodeTask], methods: Sequence[str], *, datastore: Any = None,
                   max_new_tokens: int = 96, repeats: int = 1, calibrate: bool = False, execute: bool = False,
                   spec: dict[str, Any] | None = None, datastore_info: dict[str, Any] | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Run the suite; the decode suite's results dict with the code columns, the datastore and similarity."""
    methods = [m for m in methods if m not in CORPUS_METHODS or datastore is not None]
    res = run_decode_suite(engine, tasks, methods, max_new_tokens=max_new_tokens, repeats=repeats, spec=spec,
                           progress=progress, calibrate=calibrate, keep_ids=True, datastore=datastore)
    res["suite"] = "code"
    by_id = {t.question_id: t for t in tasks}
    tok = engine.tokenizer
    passed: dict[str, list[bool]] = {m: [] for m in res["settings"]["methods"]}
    for row in res["per_question"]:
        task = by_id[row["question_id"]]
        row["sources"] = list(task.sources)
        cells = row["methods"]
        hf = cells.get("hf", {}).get("tokens_per_s")
        for cell in cells.values():
            cell["speedup_vs_hf"] = round(cell["tokens_per_s"] / hf, 3) if hf else None
        out = {m: tok.decode(c["token_ids"], skip_special_tokens=True) for m, c in cells.items() if "token_ids" in c}
        row["similarity"] = similarity(out.get("vanilla", ""), task.reference) if task.reference else {}
        if execute:
            for m, text in out.items():
                passed[m].append(run_tests(task, text))
            row["passed"] = {m: p[-1] for m, p in passed.items() if p}
    for row in res["per_question"]:
        for cell in row["methods"].values():
            cell.pop("token_ids", None)
    summary = res["methods"]
    for m, s in summary.items():
        ratios = [r["methods"][m]["speedup_vs_hf"] for r in res["per_question"]
                  if r["methods"][m].get("speedup_vs_hf") is not None]
        s["speedup_vs_hf"] = round(statistics.median(ratios), 3) if ratios else None
        if execute and passed.get(m):
            s["pass_at_1"] = round(sum(passed[m]) / len(passed[m]), 3)
    singles = {m: summary[m]["speedup_vs_vanilla"] for m in SINGLE if m in summary}
    best = max(singles, key=lambda m: singles[m] or 0) if singles else None
    sims = [r["similarity"] for r in res["per_question"] if r.get("similarity", {}).get("exact_lines") is not None]
    res["code"] = {
        "best_single": best,
        "rasd_vs_best_single": _ratio(summary, "rasd", best),
        "rasd_corpus_vs_best_single": _ratio(summary, "rasd-corpus", best),
        "rasd_vs_pld": _ratio(summary, "rasd", "pld"),
        "rasd_corpus_vs_pld": _ratio(summary, "rasd-corpus", "pld"),
        "similarity": {k: round(statistics.fmean(s[k] for s in sims), 4) for k in ("exact_lines", "edit_similarity")}
        if sims else {},
        "datastore": {**(datastore_info or {}), **lookup_cost(datastore, tasks, tok)},
    }
    res["settings"]["execute"] = execute
    return res


def _ratio(summary: dict[str, Any], a: str, b: str | None) -> float | None:
    if b is None or a not in summary or b not in summary:
        return None
    x, y = summary[a]["speedup_vs_vanilla"], summary[b]["speedup_vs_vanilla"]
    return round(x / y, 3) if x and y else None


COLUMNS = (Column("tokens/s", "tokens_per_s"), Column("vs vanilla", "speedup_vs_vanilla", ".2f", "x"),
           Column("vs generate", "speedup_vs_hf", ".2f", "x"), Column("accepted / forward", "mean_accepted"),
           Column("equal to vanilla", "equal_to_vanilla"))


def format_code_table(results: dict[str, Any], markdown: bool = False) -> str:
    """The table of a code run (and its datastore and similarity lines)."""
    table = format_table_of(results["methods"], COLUMNS, first="method", markdown=markdown)
    code = results.get("code", {})
    ds = code.get("datastore") or {}
    lines = [table]
    if ds:
        lines.append(f"corpus datastore: {ds.get('n_tokens', 0):,} tokens, {ds.get('bytes_per_token')} bytes/token, "
                     f"built at {ds.get('build_tokens_per_s_divsufsort') or 0:,} tokens/s (numpy "
                     f"{ds.get('build_tokens_per_s_numpy') or 0:,}), lookup {ds.get('lookup_ms')} ms")
    if code.get("similarity"):
        lines.append(f"vanilla vs the real body: exact lines {code['similarity']['exact_lines']:.2f}, edit "
                     f"similarity {code['similarity']['edit_similarity']:.2f}")
    if code.get("best_single"):
        lines.append(f"best single method: {code['best_single']}; rasd vs it {code.get('rasd_vs_best_single')}x, "
                     f"rasd vs pld {code.get('rasd_vs_pld')}x (rasd-corpus: {code.get('rasd_corpus_vs_best_single')}"
                     f"x, {code.get('rasd_corpus_vs_pld')}x)")
    if not markdown:
        lines.append(f"machine: {machine_line(results['machine'])}")
    return "\n".join(lines)
