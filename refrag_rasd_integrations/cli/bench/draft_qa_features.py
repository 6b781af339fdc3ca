"""Self-distilled RAG features for the next draft head (issue 15, item 2): the target's own greedy plain-RAG
answers to the REFRAG QA run's training questions, laid out exactly as the engine lays out a RAG request, run
through the target once to store its last hidden states (the draft head's training features).

The REFRAG QA run already holds both halves (no generation needed): its teacher cache ``sft_answers.jsonl``
(the target's greedy answers to the training questions, plain RAG over their retrieved passages) and its
example cache ``qa-*.json`` (those passages' decoder tokens, in retrieval order; held-out questions are not in
it). Resumable: a second run continues after the sequences already stored.

    .venv/bin/python -m refrag_rasd_integrations.cli.bench.draft_qa_features --run runs/refrag-qa-r2 \\
        --out runs/draft-qa/feat_qa_rag --minutes 30
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def sequences(run: Path, tokenizer):  # noqa: ANN001, ANN201 - a tokenizer; yields (ids, gen_start)
    from refrag_rasd_core.refrag.context import layout_prompt

    answers = {}
    with open(run / "sft_answers.jsonl", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            answers[rec["id"]] = rec["answer"]
    for cache in sorted(run.glob("qa-*.json")):
        for ex in json.loads(cache.read_text())["examples"]:
            answer = answers.get(ex["qid"])
            if not answer:
                continue  # a held-out question (the evaluation cache) or one without a teacher answer
            prompt = layout_prompt(tokenizer, ex["question"], ex["passages"]).full_ids()
            yield prompt + list(answer), len(prompt)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/refrag-qa-r2", help="the REFRAG QA run folder (teacher + example caches)")
    ap.add_argument("--out", default="runs/draft-qa/feat_qa_rag")
    ap.add_argument("--minutes", type=float, default=30.0, help="time budget (resumable)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    import torch

    from refrag_rasd_core.models import load_target
    from refrag_rasd_core.training.eagle.features import extract_features

    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    if not (run / "sft_answers.jsonl").exists():
        print(f"no teacher answers in {run}: run the REFRAG QA training's sft phase first", file=sys.stderr)
        return 2
    lm = load_target(None, device="cpu", dtype="float32")
    seqs = list(sequences(run, lm.tokenizer))
    print(f"{len(seqs)} sequences, {sum(len(s) for s, _ in seqs)} tokens "
          f"({sum(len(s) - g for s, g in seqs)} generated)", flush=True)
    n = extract_features(lm.model, seqs, args.out, max_len=1024, deadline=time.time() + args.minutes * 60,
                         desc="qa-rag features")
    done = json.loads((Path(args.out) / "manifest.json").read_text())["done"]
    print(f"stored {n} tokens; {done}/{len(seqs)} sequences done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
