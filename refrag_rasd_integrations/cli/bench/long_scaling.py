"""Memory and speed past the window: one document grown from 2k to 64k tokens, read in one compressed pass
(``context="auto"``) against map-reduce and, while it fits, the whole text.

The document is the data file's documents joined in file order and cut at each length (the suite's passages,
their chunk embeddings computed beforehand as a store's indexing would). Per length and way of reading: total
time, time to the first token, prefill positions, the peak KV cache bytes of one call and the process's peak
resident memory so far (``ru_maxrss``: lengths run shortest first, so the figure at a length bounds the memory
that length needed).

Example:
    $ refrag-rasd bench --suite long --data ../shared/data/peps_dev.jsonl --lengths 2048,8192,65536 --out auto
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.refrag import Passage

from ...long_documents import SUMMARIZE_INSTRUCTION
from .long import LongSetting, kv_bytes_per_position, run_setting
from .long_tasks import LongTask
from .results import Column, format_table_of, machine_line, results_header

__all__ = ["format_scaling_table", "grown_documents", "run_scaling", "summarize_in_fresh_process"]

WAYS = ("text", "default", "map-reduce")


def grown_documents(passages: Sequence[Passage], lengths: Sequence[int]) -> list[LongTask]:
    """A summarization task per length: the first passages holding at most that many tokens."""
    tasks = []
    for n in sorted(lengths):
        kept, total = [], 0
        for p in passages:
            if total + len(p.token_ids) > n:
                break
            kept.append(p)
            total += len(p.token_ids)
        tasks.append(LongTask(f"grown-{n}", "summary", SUMMARIZE_INSTRUCTION, f"grown-{n}", [""], kept))
    return tasks


def _peak_rss_bytes(who: int = resource.RUSAGE_SELF) -> int:
    rss = resource.getrusage(who).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def summarize_in_fresh_process(task: LongTask, *, max_tokens: int, method: str | None = None) -> dict[str, Any]:
    """What a user's ``refrag-rasd summarize FILE`` costs on ``task``'s document: the command in a new process
    (the model loaded, the text split and its chunks encoded on the fly, one call), with its peak resident memory
    (``RUSAGE_CHILDREN``: the only child this process has run to completion, when called first) and wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "document.txt"
        path.write_text("\n\n".join(p.text for p in task.passages))
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "refrag_rasd_integrations.cli", "summarize", str(path),
                               "--max-tokens", str(max_tokens), "--method", method or "rasd", "--json"],
                              capture_output=True, text=True, check=False, timeout=3600)
        wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"refrag-rasd summarize failed: {done.stderr[-2000:]}")
    out = json.loads(done.stdout[done.stdout.rindex("\n{\n") + 1:])  # the summary, then the JSON
    return {"tokens": task.tokens, "wall_s": wall, "ttft_s": out["ttft_s"], "total_s": out["total_s"],
            "context": out["context"], "prefill_positions": out["prefill_positions"],
            "peak_rss_bytes": _peak_rss_bytes(resource.RUSAGE_CHILDREN)}


def run_scaling(engine: Engine, tasks: Sequence[LongTask], *, max_tokens: int = 128, method: str | None = None,
                map_reduce_up_to: int | None = None, fresh_process: bool = False,
                progress: bool = True) -> dict[str, Any]:
    """Each grown document read each way (``text`` only while it fits the window; ``map-reduce`` up to
    ``map_reduce_up_to`` tokens); with ``fresh_process``, first the longest through ``refrag-rasd summarize`` in a
    new process (:func:`summarize_in_fresh_process`: a user's peak memory)."""
    limit = engine.max_positions
    per_pos = kv_bytes_per_position(engine)
    rows: list[dict[str, Any]] = []
    fresh = summarize_in_fresh_process(max(tasks, key=lambda t: t.tokens), max_tokens=max_tokens, method=method) \
        if fresh_process and tasks else None
    if progress and fresh:
        print(f"{fresh['tokens']:,} tokens in a fresh `refrag-rasd summarize`: {fresh['wall_s']:.1f} s, first token "
              f"{fresh['ttft_s']:.1f} s, peak RSS {fresh['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
    for task in tasks:
        for way in WAYS:
            if way == "text" and limit is not None and task.tokens + max_tokens > limit:
                continue
            if way == "map-reduce" and map_reduce_up_to is not None and task.tokens > map_reduce_up_to:
                continue
            setting = LongSetting("truncate", "truncate") if way == "text" else LongSetting.parse(way)
            r = run_setting(engine, task, setting, max_tokens=max_tokens, method=method)
            row = {"tokens": task.tokens, "way": way, "total_s": r["total_s"], "ttft_s": r["ttft_s"],
                   "calls": r["calls"], "prefill_positions": r["prefill_positions"],
                   "peak_kv_bytes": r["peak_positions"] * per_pos, "peak_rss_bytes": _peak_rss_bytes(),
                   "context": r["context"]}
            rows.append(row)
            if progress:
                print(f"{task.tokens:>6,} tokens {way:>10}: {row['total_s']:.1f} s, first token {row['ttft_s']:.2f} s, "
                      f"KV {row['peak_kv_bytes'] / 2**20:.0f} MiB, peak RSS {row['peak_rss_bytes'] / 2**30:.2f} GiB",
                      flush=True)
    res = results_header(engine, "long", lengths=[t.tokens for t in tasks], max_tokens=max_tokens,
                         method=method or "default", kv_bytes_per_position=per_pos, window=limit,
                         map_reduce_up_to=map_reduce_up_to)
    res["scaling"] = rows
    res["fresh_process"] = fresh
    return res


COLUMNS = (
    Column("total s", "total_s", ".1f"), Column("first token s", "ttft_s", ".2f"), Column("calls", "calls", "d"),
    Column("positions", "prefill_positions", "d"), Column("peak KV MiB", lambda r: r["peak_kv_bytes"] / 2**20, ".0f"),
    Column("peak RSS GiB", lambda r: r["peak_rss_bytes"] / 2**30, ".2f"),
)


def format_scaling_table(res: dict[str, Any], markdown: bool = False) -> str:
    """The scaling table: a row per document length and way of reading."""
    rows = {f"{r['tokens']:,} tokens, {r['way']}": r for r in res["scaling"]}
    table = format_table_of(rows, COLUMNS, first="document, reading", markdown=markdown)
    fresh = res.get("fresh_process")
    if fresh:
        table += (f"\n\n`refrag-rasd summarize` on the {fresh['tokens']:,}-token document in a fresh process (model "
                  f"load, on-the-fly chunk encoding, one {fresh['context']} call of {fresh['prefill_positions']:,} "
                  f"positions): {fresh['wall_s']:.1f} s, first token {fresh['ttft_s']:.1f} s after the text was read, "
                  f"peak RSS {fresh['peak_rss_bytes'] / 2**30:.2f} GiB.")
    return table if markdown else f"{table}\nmachine: {machine_line(res['machine'])}"
