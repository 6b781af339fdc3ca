"""Which chunks each expansion policy keeps as raw tokens, shown on the demo corpus's own questions.

For every demo question (:mod:`refrag_rasd_integrations.cli.demo_corpus`: text the project wrote or CPython ships,
so it may be printed), its passages go to the engine in REVERSED order (the passage holding the answer last,
so that no position rule can find it by accident) and each policy chooses a quarter of the chunks. The
markdown lists, per question, the chunks some policy chose, which policies chose them, and whether the chunk
holds the reference answer; and per policy how many questions it expanded an answer chunk for.

    .venv/bin/python -m refrag_rasd_integrations.cli.bench.policy_choices --refrag PATH --out docs/policy-choices.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

POLICIES = ("rl", "question", "similarity", "rank", "random")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--refrag", default=None, help="REFRAG checkpoint (default: the shipped one)")
    p.add_argument("--expand", type=float, default=0.25)
    p.add_argument("--out", default=None, help="markdown file (default: print)")
    args = p.parse_args(argv)

    from refrag_rasd_core import Engine
    from refrag_rasd_core.refrag.chunking import chunk_texts
    from refrag_rasd_integrations.cli.demo_corpus import demo_rows

    engine = Engine.load(refrag=args.refrag or "auto")
    refrag = engine.describe()["refrag"]
    tok, k = engine.tokenizer, refrag["k"]
    policies = [pol for pol in POLICIES if pol != "rl" or refrag["policy"]]
    lines = [f"# Which chunks the expansion policies expand (p = {args.expand})", "",
             f"Checkpoint: `{Path(args.refrag).name if args.refrag else 'shipped'}`. Made by "
             "`refrag_rasd_integrations.cli.bench.policy_choices` on the demo corpus's own questions (Python reference "
             "topics and this project's docs); the passages are given in reversed order, the one holding the answer "
             "last. `*` marks a chunk holding the reference answer.", ""]
    wins = {pol: 0 for pol in policies}
    rows = [r for r in demo_rows(n_passages=4) if r["reference"]]
    for r in rows:
        passages = list(reversed(r["passages"]))
        texts = [t for ps in passages for t in chunk_texts(tok, tok(ps, add_special_tokens=False)["input_ids"], k)]
        answer = {i for i, t in enumerate(texts) if any(ref.lower() in t.lower() for ref in r["reference"])}
        chosen = {}
        for pol in policies:
            res = engine.generate(r["question"], passages=passages, context="compressed", expand=args.expand,
                                  policy=pol, max_new_tokens=1)
            chosen[pol] = set(res.stats.expanded)
            wins[pol] += bool(chosen[pol] & answer)
        lines += [f"**{r['question']}** (answer: {r['reference'][0]!r}; {len(texts)} chunks, "
                  f"{len(chosen[policies[0]])} expanded)", "", "| chunk | text | chosen by |", "|---:|---|---|"]
        for i in sorted(set().union(*chosen.values()) | answer):
            by = ", ".join(pol for pol in policies if i in chosen[pol]) or "-"
            text = " ".join(texts[i].split()).replace("|", "\\|")
            lines.append(f"| {i}{'*' if i in answer else ''} | {text} | {by} |")
        lines.append("")
    lines += ["| policy | questions where an answer chunk was expanded |", "|---|---:|"]
    lines += [f"| {pol} | {wins[pol]} / {len(rows)} |" for pol in policies]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
