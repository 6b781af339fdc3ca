"""Record what ``context="auto"`` means for a REFRAG checkpoint: the qa suite's operating point.

Reads qa-suite results files (``refrag-rasd bench --suite qa --out ...``) measured with the checkpoint, takes
the fastest compressed setting that keeps at least 95% of plain RAG's right answers in EVERY file (its
slowest file's speedup counts), else plain RAG, and writes it with its evidence into the checkpoint's
sidecar (``"auto"``), which :meth:`refrag_rasd_core.Engine.auto_context` reads. ``--long FILES`` measured with
more retrieved passages choose, the same way, a ``"long"`` point that applies to requests whose passages hold at
least as many tokens as the shortest of those files' mean plain-RAG prompts (``min_passage_tokens``).

    .venv/bin/python -m refrag_rasd_integrations.cli.bench.choose_auto \\
        --checkpoint core/.../smollm2-135m-instruct-refrag-k16.safetensors \\
        benchmarks/results/qa/2026-12-01-cpu2-nq-trained.json \\
        benchmarks/results/qa/2026-12-01-cpu2-squad-trained.json \\
        --long benchmarks/results/qa/2026-12-01-cpu2-nq-r2-top14.json benchmarks/results/qa/...-squad-r2-top14.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from refrag_rasd_integrations.cli.bench.qa import operating_point


def combined_point(results: list[dict], keep: float = 0.95) -> tuple[dict, dict]:
    """The operating point over several results files (each setting's worst file counts) and the combined
    per-setting figures it was chosen from."""
    names = set.intersection(*(set(r["methods"]) for r in results))
    worst = {n: {"keeps_text_hits": min(r["methods"][n].get("keeps_text_hits") or 0.0 for r in results),
                 "ttft_speedup_vs_text": min(r["methods"][n]["ttft_speedup_vs_text"] for r in results)}
             for n in names}
    return operating_point(worst, keep), worst


def describe_point(point: dict, worst: dict, files: list[str], results: list[dict], keep: float) -> dict:
    """The point with how it was chosen and the evidence (the files, and why when it is plain RAG)."""
    best = max((n for n in worst if n.startswith("compressed:")), key=lambda n: worst[n]["keeps_text_hits"],
               default=None)
    n_q = sum(r["settings"]["n_questions"] for r in results)
    hits = sum(round(r["methods"]["text"]["answer_recall"] * r["methods"]["text"]["n"]) for r in results)
    why = (f"fastest setting keeping >= {keep:.0%} of plain RAG's right answers on every file "
           f"({n_q} held-out dev questions, {hits} answered right by plain RAG)")
    if point["context"] == "text" and best:
        why = (f"no compressed setting kept >= {keep:.0%} of plain RAG's right answers on every file ({n_q} "
               f"held-out dev questions; best: {best} kept {worst[best]['keeps_text_hits']:.2f} at "
               f"{worst[best]['ttft_speedup_vs_text']:.2f}x TTFT in its worst file), so context='auto' is plain RAG "
               "at these lengths")
    return {**point,
            "chosen_by": f"refrag_rasd_integrations.cli.bench.choose_auto (keeps_text_hits >= {keep} in every file, "
                         "fastest TTFT)",
            "evidence": [str(f) for f in files], "why": why}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="the checkpoint's .safetensors (its .json sidecar is edited)")
    p.add_argument("results", nargs="+", help="qa-suite results files measured with this checkpoint")
    p.add_argument("--long", nargs="*", default=[], help="qa-suite results files measured with long contexts")
    p.add_argument("--keep", type=float, default=0.95)
    args = p.parse_args(argv)
    sidecar = Path(args.checkpoint).with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    loaded = {}
    for f in [*args.results, *args.long]:
        r = json.loads(Path(f).read_text())
        sha = (r["settings"].get("refrag") or {}).get("sha256")
        if sha != meta.get("sha256"):
            raise SystemExit(f"{f} was measured with checkpoint {sha}, not {meta.get('sha256')}")
        loaded[f] = r
    results = [loaded[f] for f in args.results]
    point, worst = combined_point(results, args.keep)
    meta["auto"] = describe_point(point, worst, args.results, results, args.keep)
    if args.long:
        long_results = [loaded[f] for f in args.long]
        lpoint, lworst = combined_point(long_results, args.keep)
        shortest = min(r["methods"]["text"]["prefill_positions"] for r in long_results)
        meta["auto"]["long"] = {**describe_point(lpoint, lworst, args.long, long_results, args.keep),
                                "min_passage_tokens": int(shortest)}  # a plain-RAG "long" point changes nothing
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta["auto"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
