"""Summarize held-out long documents (PEPs) and score against their abstracts (ROUGE-L / ROUGE-1 F, stemmed).

Settings per document (greedy, ``method="vanilla"``, ``--max-tokens`` new tokens):

* ``text-lead``: the first passages (up to ``--lead-tokens`` tokens) as plain text;
* ``LABEL:rankB``: the whole document compressed with a REFRAG checkpoint, its first ``B`` tokens expanded
  (``policy="rank"``), for each ``--refrag LABEL=PATH`` (``auto`` = the shipped checkpoint) and ``--budgets B``.

Documents: the held-out PEPs (line index % 3 == 0, the split of ``train-refrag --long-data``), the ones past
the decoder's window first (up to ``--max-docs``), then the first ones that fit. Passages are cut by the
store's splitter (256 tokens); the chunk vectors are encoded once per document and passed with the passages.

    PYTHONPATH=core:. python benchmarks/long_summary_eval.py --data ../shared/data/peps_dev.jsonl \
        --refrag shipped=auto --out benchmarks/results/long-summary/base.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--refrag", nargs="*", default=[], help="LABEL=PATH (PATH 'auto': the shipped checkpoint)")
    p.add_argument("--budgets", nargs="*", type=int, default=[1024, 2048])
    p.add_argument("--text-lead", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--lead-tokens", type=int, default=2048)
    p.add_argument("--max-docs", type=int, default=8)
    p.add_argument("--long-docs", type=int, default=5, help="at most this many past-the-window documents")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--weights", default="exact", choices=("auto", "exact", "int4"),
                   help="how the target's linears run (Engine(weights=...)); recorded in the results")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from rouge_score import rouge_scorer

    from refrag_rasd_core.engine import Engine
    from refrag_rasd_core.refrag import Passage
    from refrag_rasd_core.training.refrag.long_rows import INSTRUCTION, held_out_split, load_long_records
    from refrag_rasd_integrations.store.splitting import PassageSplitter

    recs = load_long_records(a.data)
    _, held = held_out_split(recs)
    scorer = rouge_scorer.RougeScorer(["rougeL", "rouge1"], use_stemmer=True)
    engines = {}
    base = Engine.load(refrag=None, weights=a.weights)
    tok = base.tokenizer
    n_tok = {r["id"]: len(tok(r["document"], add_special_tokens=False)["input_ids"]) for r in held}
    long_ = [r for r in held if n_tok[r["id"]] > 8000][: a.long_docs]
    fit = [r for r in held if n_tok[r["id"]] <= 8000][: max(0, a.max_docs - len(long_))]
    docs = long_ + fit
    print("documents:", [(r["id"], n_tok[r["id"]]) for r in docs], flush=True)
    for spec in a.refrag:
        label, path = spec.split("=", 1)
        engines[label] = Engine.load(refrag=path, weights=a.weights)
    split = PassageSplitter(tok, 256)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    res: dict = {"data": Path(a.data).name, "documents": [], "settings": {}, "max_tokens": a.max_tokens,
                 "threads": torch.get_num_threads(), "instruction": INSTRUCTION, "weights": base.weights,
                 "forward": base.runner.describe(),
                 "checkpoints": {s.split("=", 1)[0]: s.split("=", 1)[1] for s in a.refrag}}
    msgs = [{"role": "user", "content": INSTRUCTION}]
    enc = next(iter(engines.values())).refrag_encoder() if engines else None
    for r in docs:
        texts = split(r["document"])
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        doc = {"id": r["id"], "tokens": n_tok[r["id"]], "passages": len(texts), "scores": {}}
        runs = []
        if a.text_lead:
            lead, used = [], 0
            for t, i in zip(texts, ids, strict=True):
                if used + len(i) > a.lead_tokens:
                    break
                lead.append(t)
                used += len(i)
            runs.append(("text-lead", base, lead, {"context": "text"}))
        if engines:
            vecs = enc.encode_passages(ids)
            ps = [Passage(text=t, token_ids=i, chunk_embeddings=v) for t, i, v in zip(texts, ids, vecs, strict=True)]
            for label, eng in engines.items():
                for b in a.budgets:
                    runs.append((f"{label}:rank{b}", eng, ps, {"context": "compressed", "expand_tokens": b,
                                                              "policy": "rank"}))
        for name, eng, ps, kw in runs:
            t0 = time.time()
            g = eng.generate(msgs, passages=ps, max_tokens=a.max_tokens, method="vanilla", **kw)
            sc = scorer.score(r["summary"], g.text)
            doc["scores"][name] = {"rougeL": round(sc["rougeL"].fmeasure, 4), "rouge1": round(sc["rouge1"].fmeasure, 4),
                                   "prompt_positions": getattr(g.stats, "prefill_positions", None),
                                   "ttft_s": round(getattr(g.stats, "ttft_s", 0.0) or 0.0, 2),
                                   "wall_s": round(time.time() - t0, 1)}
            print(r["id"], name, doc["scores"][name]["rougeL"], doc["scores"][name]["rouge1"],
                  f"{time.time() - t0:.0f}s", repr(g.text[:100]), flush=True)
        res["documents"].append(doc)
        names = list(doc["scores"])
        for name in names:
            vals = [d["scores"][name] for d in res["documents"] if name in d["scores"]]
            res["settings"][name] = {m: round(sum(v[m] for v in vals) / len(vals), 4) for m in ("rougeL", "rouge1")}
            res["settings"][name]["documents"] = len(vals)
        out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res["settings"], indent=1))


if __name__ == "__main__":
    main()
