"""``refrag-rasd train-draft`` (also ``python -m refrag_rasd_core.training.eagle``): features, then training.

Makes the target's features (optionally with self-distillation: the target's own greedy answers to the
training prompts, and plain-RAG requests over QA files' retrieved passages: :mod:`.rag_prompts`) within
``--extract-minutes``, then trains the head (:func:`~.train.train_draft`) into ``--out``.

Example:
    >>> # refrag-rasd train-draft --target default --corpus spec_bench_train pydoc --out runs/eagle \\
    >>> #     --spec-bench ../shared/data/spec_bench_dev.jsonl --steps 3000 --extract-minutes 20
    >>> build_parser().parse_args(["--out", "x"]).steps
    3000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ...run_log import run_logger
from .train import DraftTrainConfig, train_draft

__all__ = ["build_parser", "main", "prepare_features"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refrag-rasd train-draft", description="Train an EAGLE draft head.")
    p.add_argument("--target", default="default", help="'default' (SmolLM2-135M-Instruct), a HF id or a folder")
    p.add_argument("--corpus", nargs="*", default=["spec_bench_train", "pydoc", "docstrings"],
                   help="built-in corpus names (spec_bench_train, pydoc, docstrings) or .jsonl / .txt paths")
    p.add_argument("--self-distill", nargs="*", default=["spec_bench_train"],
                   help="prompt corpora whose prompts get the target's own greedy answers (slow: ~20 tok/s CPU)")
    p.add_argument("--spec-bench", default=None,
                   help="the spec_bench_dev.jsonl behind the spec_bench_train corpus (its even-index half; default "
                        "../shared/data/spec_bench_dev.jsonl when it exists)")
    p.add_argument("--eval-data", default=None,
                   help="spec_bench_dev.jsonl: its odd-index questions (held apart) give the eval features")
    p.add_argument("--eval-prompts", type=int, default=10)
    p.add_argument("--rag-qa", nargs="*", default=[], metavar="FILE",
                   help="NQ-open / SQuAD style files: self-distil the target's answers to their training questions "
                        "asked as plain-RAG requests over retrieved passages (read at run time)")
    p.add_argument("--rag-holdout", type=int, default=300, help="first questions of each --rag-qa file held out")
    p.add_argument("--rag-limit", type=int, default=None, help="training questions per --rag-qa file")
    p.add_argument("--rag-top-k", type=int, default=4, help="passages retrieved per --rag-qa question")
    p.add_argument("--init", default=None,
                   help="fine-tune from a draft-head checkpoint ('default': the shipped one) instead of random weights")
    p.add_argument("--out", required=True, help="output folder (features, state, draft_head.safetensors)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--extract-minutes", type=float, default=20.0,
                   help="time budget of self-distillation + feature extraction")
    p.add_argument("--generate-minutes", type=float, default=None,
                   help="time budget of the self-distilled answers alone (default: all of --extract-minutes); "
                        "the answers made so far are kept and a later run with the same command goes on")
    p.add_argument("--train-minutes", type=float, default=None, help="time budget of training")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--draft-vocab", type=int, default=8192)
    p.add_argument("--unroll", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ce-weight", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    return p


def _load_target(name: str, device: str):
    """``(model, tokenizer)`` through the package's loader ('default' = SmolLM2-135M-Instruct, fp32)."""
    from ...models import load_target

    lm = load_target(None if name == "default" else name, device=device, dtype="float32")
    return lm.model, lm.tokenizer


def prepare_features(model, tok, args, work: Path, log: Callable[[str], None] = print) -> tuple[list[Path], list[Path]]:
    """Self-distillation answers + feature extraction (resumable), within ``--extract-minutes``; the answers
    alone within ``--generate-minutes`` when given, so extraction keeps the rest of the budget."""
    from ..spec_bench import spec_bench_prompts
    from .corpus import format_prompt, iter_corpus
    from .features import extract_features, generate_self_distill, read_generations, texts_to_sequences

    deadline = time.time() + args.extract_minutes * 60
    gen_deadline = (deadline if args.generate_minutes is None
                    else min(deadline, time.time() + args.generate_minutes * 60))
    train_dirs: list[Path] = []
    eval_dirs: list[Path] = []
    if args.eval_data:
        ev = [r for r in spec_bench_prompts(args.eval_data, parity=1)]
        per_cat = max(1, args.eval_prompts // max(1, len({r["category"] for r in ev})))
        ev = [r for r in ev if r["index_in_category"] // 2 < per_cat]
        prompts = sorted((format_prompt(r["turns"][0], tok) for r in ev), key=len)
        generate_self_distill(model, tok, prompts, work / "gen_eval.jsonl",
                              max_new_tokens=min(128, args.max_new_tokens), batch_size=5)
        extract_features(model, read_generations(work / "gen_eval.jsonl"), work / "feat_eval", desc="eval")
        eval_dirs.append(work / "feat_eval")
    for name in args.self_distill or []:
        prompts = sorted(iter_corpus(name, tok, spec_bench=args.spec_bench), key=len)
        gpath = work / f"gen_{Path(name).stem}.jsonl"
        n = generate_self_distill(model, tok, prompts, gpath, max_new_tokens=args.max_new_tokens, batch_size=10,
                                  deadline=gen_deadline)
        log(f"self-distillation {name}: {n}/{len(prompts)} prompts answered")
        d = work / f"feat_gen_{Path(name).stem}"
        extract_features(model, read_generations(gpath), d, desc=f"gen {name}")
        train_dirs.append(d)
    if args.rag_qa:
        from ...refrag.encoder import ChunkEncoder
        from .rag_prompts import rag_training_prompts

        encoder = ChunkEncoder.load(None, tokenizer=tok, device=args.device)
        prompts = sorted(rag_training_prompts(tok, args.rag_qa, encoder, holdout=args.rag_holdout,
                                              top_k=args.rag_top_k, limit=args.rag_limit), key=len)
        del encoder
        gpath = work / "gen_rag_qa.jsonl"
        n = generate_self_distill(model, tok, prompts, gpath, max_new_tokens=args.max_new_tokens, batch_size=8,
                                  deadline=gen_deadline)
        log(f"self-distillation rag-qa: {n}/{len(prompts)} requests answered")
        d = work / "feat_gen_rag_qa"
        extract_features(model, read_generations(gpath), d, deadline=deadline, desc="gen rag-qa")
        train_dirs.append(d)
    for name in args.corpus:
        if name in (args.self_distill or []):
            continue
        d = work / f"feat_{Path(name).stem}"
        extract_features(model, texts_to_sequences(iter_corpus(name, tok, spec_bench=args.spec_bench), tok), d,
                         deadline=deadline, desc=name)
        train_dirs.append(d)
    return train_dirs, eval_dirs


def main(argv: list[str] | None = None) -> int:
    """``refrag-rasd train-draft``: make features, then train; the head lands in ``--out``."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    trained_on = None
    if "spec_bench_train" in [*args.corpus, *(args.self_distill or [])]:  # fails early without the data file
        from ..spec_bench import spec_bench_training_record

        trained_on = spec_bench_training_record(args.spec_bench)
    out = Path(args.out)
    log = run_logger(out)

    model, tok = _load_target(args.target, args.device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    t0 = time.time()
    train_dirs, eval_dirs = prepare_features(model, tok, args, out / "features", log)
    log(f"features ready in {time.time() - t0:.0f}s")
    cfg = DraftTrainConfig(steps=args.steps, device=args.device, draft_vocab_size=args.draft_vocab, unroll=args.unroll,
                      batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, ce_weight=args.ce_weight,
                      seed=args.seed, time_budget_s=args.train_minutes * 60 if args.train_minutes else None)
    recipe = {"target": args.target, "corpus": args.corpus, "self_distill": args.self_distill,
              "eval_data": args.eval_data, "command": "refrag-rasd train-draft " + " ".join(argv or sys.argv[1:])}
    if trained_on is not None:
        recipe["trained_on"] = trained_on
    if args.rag_qa:
        from .rag_prompts import rag_training_record

        recipe["rag_qa_trained_on"] = rag_training_record(args.rag_qa, holdout=args.rag_holdout,
                                                          top_k=args.rag_top_k, limit=args.rag_limit)
    if args.init:
        recipe["init"] = args.init
    train_draft(model.to(args.device), [str(d) for d in train_dirs], out, [str(d) for d in eval_dirs], cfg,
                recipe=recipe, resume=args.resume, log=log, init=args.init)
    return 0

