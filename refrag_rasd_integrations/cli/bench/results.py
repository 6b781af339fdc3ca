"""What every results file shares: the header (machine + settings), the path scheme, and the table formatter.

A results file lives at ``benchmarks/results/<suite>/<date>-<machine>-<variant>.json`` (:func:`results_path`):
``suite`` is what was measured (decode, prefill, rag, qa, forward-cost, ...), ``machine`` the short slug of the
machine it ran on (:func:`~refrag_rasd_integrations.cli.bench.machine.machine_slug`) and ``variant`` the rest
(the categories, the data file, a setting). Its header comes from :func:`results_header`, built on the
engine's public :meth:`~refrag_rasd_core.engine.Engine.describe`; its tables, printed at the end of a run and
rendered into ``docs/benchmarks.md``, from :func:`format_table_of` with the suite's columns.

Example:
    >>> rows = {"vanilla": {"tokens_per_s": 20.0, "speedup": 1.0}, "rasd": {"tokens_per_s": 25.5, "speedup": None}}
    >>> cols = [Column("tok/s", "tokens_per_s", ".1f"), Column("speedup", "speedup", ".2f", "x")]
    >>> print(format_table_of(rows, cols, first="method"))
    method   tok/s  speedup
    -------  -----  -------
    vanilla   20.0    1.00x
    rasd      25.5        -
    >>> print(format_table_of(rows, cols, first="method", markdown=True))
    | method | tok/s | speedup |
    |---|---:|---:|
    | vanilla | 20.0 | 1.00x |
    | rasd | 25.5 | – |
    >>> results_path("decode", "rag", "cpu2genoa", date="2026-12-06", root=Path("benchmarks/results")).as_posix()
    'benchmarks/results/decode/2026-12-06-cpu2genoa-rag.json'
    >>> parse_results_path(Path("benchmarks/results/qa/2026-12-06-cpu2genoa-nq-k8-cpt.json"))
    ('qa', '2026-12-06', 'cpu2genoa', 'nq-k8-cpt')
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refrag_rasd_core.engine import Engine

from .machine import machine_info, machine_slug

_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})-([a-z0-9]+)-(.+)\.json")


def repo_root() -> Path:
    """The checkout this package runs from (it has ``benchmarks/``), else the current folder."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "benchmarks").is_dir() else Path.cwd()


RESULTS_DIR = repo_root() / "benchmarks" / "results"


def results_path(suite: str, variant: str, machine: str, *, date: str | None = None,
                 root: Path | None = None) -> Path:
    """``<root>/<suite>/<date>-<machine>-<variant>.json`` (date: today, UTC; root: ``benchmarks/results``)."""
    date = date or datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    variant = re.sub(r"[^A-Za-z0-9.+-]+", "-", variant).strip("-") or "default"
    return (root or RESULTS_DIR) / suite / f"{date}-{machine}-{variant}.json"


def parse_results_path(path: Path) -> tuple[str, str, str, str] | None:
    """``(suite, date, machine, variant)`` of a file named by the scheme, or ``None``."""
    m = _NAME.fullmatch(path.name)
    return (path.parent.name, *m.groups()) if m else None


def resolve_out(out: str | None, suite: str, variant: str, machine: Mapping[str, Any] | str,
                root: Path | None = None) -> Path | None:
    """Where to write a results file: ``out`` as given, or the scheme's path when ``out`` is ``"auto"``
    (``machine``: the results' machine block or a slug)."""
    if not out:
        return None
    if out != "auto":
        return Path(out)
    slug = machine if isinstance(machine, str) else machine_slug(dict(machine))
    return results_path(suite, variant, slug, root=root)


def without_answers(value: Any) -> Any:
    """``value`` with every generated ``"answer"`` text replaced by ``answer_sha1`` (12 hex digits: equal answers
    stay comparable across files) and ``answer_chars``: a model's answer can quote the benchmark's passages or
    prompts, which come from other repositories and must not be copied into this one.

    Example:
        >>> without_answers({"rows": [{"answer": "Paris", "answer_recall": 1.0}]})
        {'rows': [{'answer_sha1': '22390ad11c32', 'answer_chars': 5, 'answer_recall': 1.0}]}
    """
    if isinstance(value, list):
        return [without_answers(v) for v in value]
    if not isinstance(value, Mapping):
        return value
    out: dict[str, Any] = {}
    for key, v in value.items():
        if key == "answer" and isinstance(v, str):
            out["answer_sha1"] = hashlib.sha1(v.encode()).hexdigest()[:12]
            out["answer_chars"] = len(v)
        else:
            out[key] = without_answers(v)
    return out


def write_results(res: Mapping[str, Any], path: Path | str) -> Path:
    """Write ``res`` as indented JSON (folders made), its answers' texts left out (:func:`without_answers`);
    returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(without_answers(res), indent=1) + "\n")
    return path


def results_header(engine: Engine, suite: str, **settings: Any) -> dict[str, Any]:
    """``{"suite", "machine", "settings"}`` for a results file, from the engine's public ``describe()``:
    the machine (with what the engine's forward chose here under ``forward``), then the model, dtype,
    weights, forward, drafter and REFRAG checkpoint (``None`` without one), then ``settings``."""
    info = engine.describe()
    machine = machine_info(engine.device)
    machine["forward"] = info.get("forward_choices")
    head = {k: info.get(k) for k in ("model", "dtype", "weights", "forward", "drafter", "refrag")}
    return {"suite": suite, "machine": machine, "settings": {**head, **settings}}


def machine_line(m: Mapping[str, Any]) -> str:
    """One line naming the machine of a results file (old files' machine blocks too)."""
    if not isinstance(m, Mapping):
        return str(m)
    line = f"{m.get('cpu', '?')} ({m.get('cores', '?')} cores), device {m.get('device', '?')}"
    if m.get("gpu"):
        line += f", GPU {m['gpu']}"
    if m.get("torch"):
        line += f"; torch {m['torch']}, transformers {m.get('transformers', '?')}"
    return line


@dataclass(frozen=True)
class Column:
    """One column of a results table: its header, the summary key (or a function of the row) and the format."""

    header: str
    key: str | Callable[[Mapping[str, Any]], Any]
    fmt: str = ".2f"
    suffix: str = ""

    def cell(self, row: Mapping[str, Any], dash: str) -> str:
        v = self.key(row) if callable(self.key) else row.get(self.key)
        if v is None or v == "":
            return dash
        return (format(v, self.fmt) if isinstance(v, int | float) else str(v)) + self.suffix


def format_table_of(rows: Mapping[str, Mapping[str, Any]], columns: Sequence[Column], *, first: str = "method",
                 markdown: bool = False) -> str:
    """``rows`` (name -> summary) as a text table (aligned, for the terminal) or a markdown one."""
    dash = "–" if markdown else "-"
    body = [[name, *(c.cell(r, dash) for c in columns)] for name, r in rows.items()]
    head = [first, *(c.header for c in columns)]
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(columns),
                          *("| " + " | ".join(r) + " |" for r in body)])
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    fmt = [lambda s, w: s.ljust(w)] + [lambda s, w: s.rjust(w)] * len(columns)
    lines = [head, ["-" * w for w in widths], *body]
    return "\n".join("  ".join(f(s, w) for f, s, w in zip(fmt, x, widths, strict=True)).rstrip() for x in lines)


def format_run_table(res: dict[str, Any], columns: Sequence[Column], *, first: str, accepted: str,
                     markdown: bool = False) -> str:
    """A suite's table of ``res["methods"]``, then what its corpus datastore did (``accepted``: the key of
    accepted tokens per forward), then the machine (printed runs only)."""
    lines = [format_table_of(res["methods"], columns, first=first, markdown=markdown)]
    if res.get("datastore"):
        from .datastore_corpus import datastore_lines

        found = datastore_lines(res["datastore"], accepted)
        lines += ["; ".join(found)] if markdown else found  # one paragraph in the docs
    if not markdown:
        lines.append(f"machine: {machine_line(res['machine'])}")
    return ("\n\n" if markdown else "\n").join(lines)
