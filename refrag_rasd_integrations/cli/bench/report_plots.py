"""The plots of docs/benchmarks.md (docs/img/*.png), from results files; each returns whether it wrote one
(``False`` without matplotlib or data).

Example:
    >>> plot_rag({"methods": {}}, Path("unused.png"))
    False
"""

from __future__ import annotations

import json
from pathlib import Path

from .results import parse_results_path, repo_root

SHIPPED_REFRAG = repo_root() / "core" / "refrag_rasd_core" / "checkpoints" / "smollm2-135m-instruct-refrag-k16.json"



def shipped_or_not(settings: dict) -> str:
    """`` (the shipped one)`` or `` (not the shipped one)`` from a results file's checkpoint hash."""
    sha = (settings.get("refrag") or {}).get("sha256")
    if not sha or not SHIPPED_REFRAG.exists():
        return ""
    return " (the shipped one)" if json.loads(SHIPPED_REFRAG.read_text()).get("sha256") == sha else \
        " (not the shipped one)"


def plot_frontier(files: list[Path], out: Path) -> bool:
    """TTFT speedup over plain RAG against the share of plain RAG's right answers kept: the runs measured with
    the shipped REFRAG checkpoint (all runs when none was), colour by question set, marker by passages."""
    plt = _plt()
    if plt is None or not files:
        return False
    runs = [(p, json.loads(p.read_text())) for p in files]
    sha = json.loads(SHIPPED_REFRAG.read_text()).get("sha256") if SHIPPED_REFRAG.exists() else None
    shipped = [(p, r) for p, r in runs if (r["settings"].get("refrag") or {}).get("sha256") == sha]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colours, markers = {}, {5: "o", 9: "s", 14: "^"}
    for p, res in shipped or runs:
        data = Path(str(res["settings"].get("data", p.stem))).stem
        k = res["settings"].get("k")
        colour = colours.setdefault(data, f"C{len(colours)}")
        pts = [(v["keeps_text_hits"], v["ttft_speedup_vs_text"], n) for n, v in res["methods"].items()
               if v.get("keeps_text_hits") is not None and n not in ("text", "default")]
        fewer = [(x, y) for x, y, n in pts if n.startswith("text:")]  # plain RAG over fewer passages: hollow
        pts_c = [(x, y) for x, y, n in pts if not n.startswith("text:")]
        ax.scatter([x for x, _ in pts_c], [y for _, y in pts_c], color=colour, marker=markers.get(k, "D"),
                   label=f"{data}, top {k}")
        if fewer:
            ax.scatter([x for x, _ in fewer], [y for _, y in fewer], edgecolors=colour, facecolors="none",
                       marker=markers.get(k, "D"))
        for x, y, n in pts:
            ax.annotate(n.removeprefix("compressed:"), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points",
                        color=colour)
    ax.axvline(0.95, color="black", lw=0.8, ls="--")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xlabel("share of plain RAG's right answers kept")
    ax.set_ylabel("time-to-first-token speedup vs plain RAG")
    ax.set_title("compressed settings (P:policy) of the shipped REFRAG checkpoint;\n"
                 "hollow: plain RAG over the best K passages only (text:K)", fontsize=9)
    ax.set_xlim(-0.02, 1.1)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=7)
    return _save(plt, fig, out)


def _save(plt, fig, out: Path) -> bool:  # noqa: ANN001 - matplotlib objects
    """Write a finished figure to ``out`` (folders made) and close it."""
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _bars(groups: list[str], series: dict[str, list[float]], ylabel: str, out: Path, hline: float | None = 1.0) -> bool:
    plt = _plt()
    if plt is None or not groups or not series:
        return False
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(groups) * len(series)), 4))
    width = 0.8 / len(series)
    for j, (label, ys) in enumerate(series.items()):
        ax.bar([i + j * width for i in range(len(groups))], ys, width, label=label)
    if hline is not None:
        ax.axhline(hline, color="black", lw=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=4)
    return _save(plt, fig, out)


def plot_speedups(files: list[Path], out: Path) -> bool:
    """Speedup per method, per machine and category, over the given decode results files (the newest of each
    machine: its slug, from the file name, labels the group; weights other than exact too)."""
    per_cat: dict[str, dict[str, float]] = {}
    for p in files:
        res = json.loads(p.read_text())
        named = parse_results_path(p)
        weights = res["settings"].get("weights") or "exact"
        label = (named[2] if named else p.stem) + ("" if weights == "exact" else f" {weights}")
        cats = res.get("by_category") or {",".join(res["settings"]["categories"]): res["methods"]}
        for cat, summ in cats.items():
            per_cat[f"{label}\n{cat}"] = {m: v["speedup_vs_vanilla"] for m, v in summ.items()
                                          if v.get("speedup_vs_vanilla")}
    groups = sorted(per_cat)
    methods = list(dict.fromkeys(m for c in groups for m in per_cat[c] if m != "vanilla"))
    return _bars(groups, {m: [per_cat[c].get(m, 0.0) for c in groups] for m in methods},
                 "speedup vs vanilla (tokens/s)", out)


def plot_accepted(files: list[Path], out: Path) -> bool:
    """Histogram of tokens emitted per target forward, per speculative method (the given decode files)."""
    hist: dict[str, dict[int, int]] = {}
    for p in files:
        for row in json.loads(p.read_text())["per_question"]:
            for m, cell in row["methods"].items():
                for k, v in (cell.get("accepted_hist") or {}).items():
                    if m != "vanilla":
                        hist.setdefault(m, {})[int(k)] = hist.get(m, {}).get(int(k), 0) + int(v)
    if not hist:
        return False
    top = max(k for h in hist.values() for k in h)
    groups = [str(k) for k in range(1, top + 1)]
    series = {m: [h.get(k, 0) / max(1, sum(h.values())) for k in range(1, top + 1)] for m, h in hist.items()}
    return _bars(groups, series, "share of target forwards", out, hline=None)


def plot_ttft(res: dict, out: Path) -> bool:
    plt = _plt()
    if plt is None:
        return False
    curves: dict[str, list[tuple[int, float]]] = {}
    for name, v in res["methods"].items():
        setting, _, ctx = name.rpartition("@")
        if ctx.isdigit() and (setting in {"full", "compressed"} or setting.endswith("-p0.25")):
            curves.setdefault(setting, []).append((int(ctx), v["ttft_s"]))
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for setting, pts in curves.items():
        pts.sort()
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=setting)
    ax.set_xlabel("context (passage tokens)")
    ax.set_ylabel("time to first token (s)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    return _save(plt, fig, out)


def plot_rag(res: dict, out: Path) -> bool:
    names = list(res["methods"])
    ttft = [res["methods"][n].get("ttft_s") or 0.0 for n in names]
    total = [res["methods"][n].get("total_s") or 0.0 for n in names]
    return _bars(names, {"time to first token (s)": ttft, "total latency (s)": total}, "seconds (median)", out,
                 hline=None)


def plot_long_quality(files: list[Path], out: Path) -> bool:
    """Long documents: summary quality (ROUGE-L) against total time per setting, documents past the window (the
    summarization file of the long suite with the most settings)."""
    plt = _plt()
    runs = [json.loads(p.read_text()) for p in files]
    runs = [r for r in runs if any(s.get("rougeL") is not None
                                   for s in ((r.get("summary") or {}).get("past_window") or {}).values())]
    if plt is None or not runs:
        return False
    res = max(runs, key=lambda r: len(r["summary"]["past_window"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, s in res["summary"]["past_window"].items():
        if s.get("rougeL") is None or not s.get("total_s"):
            continue
        ax.scatter(s["total_s"], s["rougeL"])
        ax.annotate(name, (s["total_s"], s["rougeL"]), fontsize=7)
    ax.set_xlabel("total time per request (s)")
    ax.set_ylabel("ROUGE-L F against the reference summary")
    ax.set_xscale("log")
    return _save(plt, fig, out)


def plot_long_scaling(files: list[Path], out: Path) -> bool:
    """Long documents: first-token time and peak KV bytes against the document's length, per way of reading
    (the newest long-suite file with a ``scaling`` table)."""
    plt = _plt()
    runs = [json.loads(p.read_text()) for p in files]
    runs = [r for r in runs if r.get("scaling")]
    if plt is None or not runs:
        return False
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    ways: dict[str, list[dict]] = {}
    for row in runs[-1]["scaling"]:
        ways.setdefault(row["way"], []).append(row)
    for way, rows in ways.items():
        xs = [r["tokens"] for r in rows]
        a1.plot(xs, [r["ttft_s"] for r in rows], marker="o", label=way)
        a2.plot(xs, [r["peak_kv_bytes"] / 2**20 for r in rows], marker="o", label=way)
    for ax, label in ((a1, "time to first token (s)"), (a2, "peak KV cache of one call (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("document (tokens)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    return _save(plt, fig, out)
