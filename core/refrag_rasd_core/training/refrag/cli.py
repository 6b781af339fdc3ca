"""``refrag-rasd train-refrag`` (also ``python -m refrag_rasd_core.training.refrag``): the whole pipeline.

Loads the decoder (default SmolLM2-135M-Instruct, fp32) and the chunk encoder (default all-MiniLM-L6-v2),
optionally measures which pooling reconstructs better (``--pooling auto``), encodes the corpora once (cached
in ``--out``), runs ``--phases`` (resumable with ``--resume``: exact phase and step), evaluates on the
held-out passages (``--heldout spec_bench_dev.jsonl``: its odd-index questions) and exports the
:class:`~refrag_rasd_core.refrag.RefragModel` (``--export``, default ``OUT/refrag.safetensors``).

Example:
    >>> args = build_parser().parse_args(["--out", "runs/refrag", "--phases", "recon,cpt"])
    >>> args.phases, args.k
    ('recon,cpt', 16)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from ...errors import InvalidInputError
from ...run_log import run_logger
from .config import PHASES, STATE_FILE, RefragTrainConfig
from .trainer import RefragTrainer

__all__ = ["QA_CORPUS", "build_parser", "main"]

QA_CORPUS = "qa_train"


def build_parser() -> argparse.ArgumentParser:
    d = RefragTrainConfig()
    p = argparse.ArgumentParser(prog="refrag-rasd train-refrag",
                                description="Train REFRAG's projector, decoder LoRA and expansion policy.")
    p.add_argument("--out", required=True, help="run folder (state, logs, cached vectors, refrag.safetensors)")
    p.add_argument("--phases", default=",".join(d.phases), help=f"comma-separated, in order, from {','.join(PHASES)}")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue a run in --out at its exact phase and step (its saved configuration wins, "
                        "except --steps-* flags given explicitly)")
    p.add_argument("--target", default="default", help="decoder: 'default' (SmolLM2-135M-Instruct), HF id or folder")
    p.add_argument("--encoder", default="default", help="chunk encoder: 'default' (all-MiniLM-L6-v2) or a folder")
    p.add_argument("--pooling", default=d.pooling, choices=["mean", "cls", "max", "auto"],
                   help=f"encoder pooling (default {d.pooling}, measured best for all-MiniLM-L6-v2); 'auto' "
                        "measures mean vs cls first (--pooling-steps each)")
    p.add_argument("--pooling-steps", type=int, default=40)
    p.add_argument("--train-encoder", action="store_true", help="fine-tune the encoder too (slower; no cached vectors)")
    p.add_argument("--corpus", nargs="*", default=["spec_bench_train", "pydoc", "docstrings", "packages"],
                   help=f"built-in corpora (spec_bench_train, pydoc, docstrings, packages, {QA_CORPUS}: the --qa-data "
                        "files' training passages) or .jsonl/.txt paths")
    p.add_argument("--spec-bench", default=None,
                   help="the spec_bench_dev.jsonl behind spec_bench_train and the sft prompts (its even-index half; "
                        "default ../shared/data/spec_bench_dev.jsonl when it exists)")
    p.add_argument("--max-corpus-chunks", type=int, default=20000, help="chunks encoded for training (in all)")
    p.add_argument("--heldout", default=None, help="spec_bench_dev.jsonl: its odd-index questions' passages are "
                                                   "the evaluation text (never trained on)")
    p.add_argument("--qa-data", nargs="*", default=[],
                   help="NQ-open / SQuAD style QA files (read at run time): the sft, select and policy phases train "
                        "on their questions with retrieved passages in the engine's layout")
    p.add_argument("--qa-holdout", type=int, default=300,
                   help="the first N questions of each QA file are held out (never trained on; their gold passages "
                        "are the held-out evaluation text when --heldout is not given)")
    p.add_argument("--qa-limit", type=int, default=None, help="training questions per QA file (default all)")
    p.add_argument("--qa-top-k", type=int, default=5, help="passages retrieved per training question")
    p.add_argument("--long-data", default=None,
                   help="long documents with reference summaries (jsonl: id, document, summary; e.g. "
                        "../shared/data/peps_dev.jsonl, read at run time): the long phase trains on the lines whose "
                        "index % 3 != 0 (the others are held out)")
    p.add_argument("--long-budgets", default=",".join(str(b) for b in d.long_budgets),
                   help="expanded lead tokens a long row draws from (the engine's rank policy)")
    p.add_argument("--long-max-positions", type=int, default=d.long_max_positions,
                   help="decoder positions of a long row's prompt at most (the document's tail is dropped)")
    p.add_argument("--long-summary-tokens", type=int, default=d.long_summary_tokens)
    p.add_argument("--long-max-doc-tokens", type=int, default=d.long_max_doc_tokens)
    p.add_argument("--long-batch", type=int, default=d.long_batch, help="long rows per step")
    p.add_argument("--long-limit", type=int, default=None,
                   help="train on the first N training documents only (default all; their chunks are encoded once)")
    p.add_argument("--init", default=None,
                   help="start from a REFRAG checkpoint's projector and decoder LoRA (same encoder and "
                        "pooling; another k is allowed: both parts are k-agnostic)")
    p.add_argument("--k", type=int, default=d.k)
    for ph in PHASES:
        p.add_argument(f"--steps-{ph}", type=int, default=d.steps_for(ph))
    p.add_argument("--batch-tokens", type=int, default=d.batch_tokens, help="decoder positions per step")
    p.add_argument("--recon-max-chunks", type=int, default=d.recon_max_chunks)
    p.add_argument("--cpt-max-chunks", type=int, default=d.cpt_max_chunks)
    p.add_argument("--continuation", type=int, default=d.continuation)
    p.add_argument("--mixed-fraction", type=float, default=d.mixed_fraction)
    p.add_argument("--lora-rank", type=int, default=d.lora_rank, help="0 = no decoder LoRA")
    p.add_argument("--lora-scope", choices=["all", "chunks"], default=d.lora_scope,
                   help="where the decoder adapters act: every position of a compressed request (all), or only "
                        "the compressed chunks' positions (chunks: raw tokens and decoding run the stock decoder)")
    p.add_argument("--lora-alpha", type=float, default=d.lora_alpha)
    p.add_argument("--lr-recon", type=float, default=d.lr_recon)
    p.add_argument("--lr-projector", type=float, default=d.lr_projector)
    p.add_argument("--lr-lora", type=float, default=d.lr_lora)
    p.add_argument("--lr-policy", type=float, default=d.lr_policy)
    p.add_argument("--policy-group", type=int, default=d.policy_group)
    p.add_argument("--policy-contexts", type=int, default=d.policy_contexts)
    p.add_argument("--policy-chunks", type=int, default=d.policy_chunks)
    p.add_argument("--policy-query", default=None, choices=["decoder", "question"],
                   help="what the policy reads of the question: its mean decoder token embedding, or its encoder "
                        "vector (default: question with --qa-data)")
    p.add_argument("--entropy-coef", type=float, default=d.entropy_coef, help="PPO entropy bonus")
    p.add_argument("--select-batch", type=int, default=d.select_batch)
    p.add_argument("--lr-select", type=float, default=d.lr_select)
    p.add_argument("--select-shuffle", type=float, default=d.select_shuffle,
                   help="share of select rows whose chunks are shown in a random order, so the policy learns "
                        "from what the chunks say and not only where they stand")
    p.add_argument("--sft-answer-tokens", type=int, default=d.sft_answer_tokens,
                   help="longest teacher answer (tokens)")
    p.add_argument("--sft-batch", type=int, default=d.sft_batch)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="autocast dtype of the decoder forward (bfloat16 on a GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--eval-samples", type=int, default=40, help="held-out windows for the quality evaluation")
    p.add_argument("--eval-chunks", type=int, default=16)
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--quality-out", default=None, help="also write the quality results to this json")
    p.add_argument("--export", default=None, help="final checkpoint path (default OUT/refrag.safetensors)")
    p.add_argument("--stop-after", type=int, default=None, help="stop (with a checkpoint) after this many steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> RefragTrainConfig:
    phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    bad = [x for x in phases if x not in PHASES]
    if bad:
        raise InvalidInputError(f"unknown phase(s) {bad}; choose from {', '.join(PHASES)}")
    phases = [x for x in PHASES if x in phases]
    kw = {f"steps_{ph}": getattr(args, f"steps_{ph}") for ph in PHASES}
    return RefragTrainConfig(phases=phases, k=args.k, batch_tokens=args.batch_tokens,
                       recon_max_chunks=args.recon_max_chunks,
                       cpt_max_chunks=args.cpt_max_chunks, continuation=args.continuation,
                       mixed_fraction=args.mixed_fraction, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                       lora_scope=args.lora_scope,
                       lr_recon=args.lr_recon, lr_projector=args.lr_projector, lr_lora=args.lr_lora,
                       lr_policy=args.lr_policy, policy_group=args.policy_group, lr_select=args.lr_select,
                       policy_query=args.policy_query or ("question" if args.qa_data else "decoder"),
                       entropy_coef=args.entropy_coef, select_batch=args.select_batch,
                       select_shuffle=args.select_shuffle,
                       sft_answer_tokens=args.sft_answer_tokens, sft_batch=args.sft_batch,
                       long_batch=args.long_batch, long_max_positions=args.long_max_positions,
                       long_budgets=[int(b) for b in str(args.long_budgets).split(",") if b.strip()],
                       long_summary_tokens=args.long_summary_tokens, long_max_doc_tokens=args.long_max_doc_tokens,
                       policy_contexts=args.policy_contexts, policy_chunks=args.policy_chunks,
                       ckpt_every=args.ckpt_every, seed=args.seed, device=args.device, dtype=args.dtype,
                       train_encoder=args.train_encoder, pooling=args.pooling, **kw)


def qa_training_record(files: list[str], splits: list, holdout: int, limit: int | None) -> list[dict]:
    """What a checkpoint trained on from QA files: names, sha256, the split rule and the question ids
    (no text)."""
    from ...shared_data import file_sha256

    out = []
    for f, (train, held, _) in zip(files, splits, strict=True):
        out.append({"file": Path(f).name, "sha256": file_sha256(f),
                    "held_out": f"the first {holdout} questions ({held[0].qid}..{held[-1].qid}) and their gold "
                                "passages", "trained_ids": [it.qid for it in train[:limit]]})
    return out


def long_training_record(path: str, train: list[dict], held: list[dict]) -> dict:
    """What a checkpoint trained on from a long-document file: name, sha256, the split rule and the ids (no
    text)."""
    from ...shared_data import file_sha256
    from .long_rows import HELD_OUT_EVERY

    return {"file": Path(path).name, "sha256": file_sha256(path),
            "split": f"line index % {HELD_OUT_EVERY} == 0 held out (never trained on), the rest trained on",
            "trained_ids": [str(r["id"]) for r in train], "held_out": [str(r["id"]) for r in held]}


def main(argv: list[str] | None = None) -> int:
    """Run the pipeline; returns 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    log = run_logger(out)

    t_start = time.time()
    state_json = (out / STATE_FILE).with_suffix(".json")
    resumed = args.resume and state_json.exists()
    if resumed:
        saved = json.loads(state_json.read_text())
        cfg = RefragTrainConfig.from_dict(saved["config"])
        cfg.device, cfg.dtype = args.device, args.dtype
        log(f"resuming {out} (its saved configuration is used; phase {saved.get('phase')!r} step {saved.get('step')})")
        for ph in PHASES:  # explicit --steps-* flags re-plan a resumed run (e.g. to fit a time budget)
            if any(a == f"--steps-{ph}" or a.startswith(f"--steps-{ph}=") for a in argv):
                log(f"steps of {ph}: {cfg.steps_for(ph)} -> {getattr(args, f'steps_{ph}')} (from the command line)")
                setattr(cfg, f"steps_{ph}", getattr(args, f"steps_{ph}"))
    else:
        cfg = config_from_args(args)
    from ...models import load_target
    from ...refrag.encoder import ChunkEncoder
    from .corpus import ChunkCorpus, heldout_documents, load_documents

    lm = load_target(None if args.target == "default" else args.target, device=cfg.device, dtype="float32")
    decoder, tok = lm.model, lm.tokenizer
    log(f"decoder {lm.name}: {sum(p.numel() for p in decoder.parameters()) / 1e6:.1f} M params on {cfg.device}")
    enc_name = None if args.encoder == "default" else args.encoder
    qa_splits = []
    if args.qa_data:
        from ...shared_data import resolve_data_path
        from .qa_rows import load_qa_split

        qa_splits = load_qa_split([resolve_data_path(f, Path(f).name, what="QA data", flag="--qa-data")
                                   for f in args.qa_data], args.qa_holdout)
    names = [c for c in args.corpus if c != QA_CORPUS]
    docs = load_documents(names, spec_bench=args.spec_bench)
    if QA_CORPUS in args.corpus:  # the QA files' training passages (never the held-out questions' gold ones)
        from .corpus import Document

        if not qa_splits:
            raise InvalidInputError(f"--corpus {QA_CORPUS} needs --qa-data")
        docs += [Document(p, QA_CORPUS) for _, _, corpus in qa_splits for p in corpus]
    # in-domain passages first, the rest shuffled (seeded), so --max-corpus-chunks keeps a mix of sources
    first = ("spec_bench", QA_CORPUS)
    rest = [d for d in docs if not d.source.startswith(first)]
    random.Random(cfg.seed).shuffle(rest)
    docs = [d for d in docs if d.source.startswith(first)] + rest
    held_docs = heldout_documents(args.heldout) if args.heldout else []
    if not held_docs and qa_splits:
        from .corpus import Document

        held_docs = [Document(g, "qa-heldout") for _, held, _ in qa_splits for it in held for g in it.gold]
    log(f"documents: {len(docs)} training, {len(held_docs)} held-out")
    recipe = {"command": "refrag-rasd train-refrag " + " ".join(argv), "target": lm.name, "corpus": args.corpus,
              "heldout": args.heldout, "torch_threads": torch.get_num_threads(), "init": args.init}
    if qa_splits:
        recipe["qa_trained_on"] = qa_training_record(args.qa_data, qa_splits, args.qa_holdout, args.qa_limit)
    long_data = None
    if args.long_data:
        from ...shared_data import resolve_data_path
        from .long_rows import held_out_split, load_long_records

        long_path = resolve_data_path(args.long_data, Path(args.long_data).name, what="long documents",
                                      flag="--long-data")
        long_train, long_held = held_out_split(load_long_records(long_path))
        long_data = (long_train[:args.long_limit], long_held)
        recipe["long_trained_on"] = long_training_record(str(long_path), *long_data)
        recipe["held_out"] = recipe["long_trained_on"]["held_out"]
    if "spec_bench_train" in args.corpus or ("sft" in cfg.phases and not args.qa_data):
        from ..spec_bench import spec_bench_training_record

        recipe["trained_on"] = spec_bench_training_record(args.spec_bench)
    if cfg.pooling == "auto":
        from .pooling import compare_pooling

        if not held_docs:
            raise InvalidInputError("--pooling auto needs --heldout (the comparison is scored on held-out chunks)")
        res = compare_pooling(decoder, tok, docs, held_docs, out / "pooling", encoder=enc_name, k=cfg.k,
                              steps=args.pooling_steps, batch_tokens=cfg.batch_tokens, seed=cfg.seed,
                              device=cfg.device, log=log)
        cfg.pooling = res["best"]
        recipe["pooling_comparison"] = res
        log(f"pooling: {res['best']} reconstructs better ({res['scores']})")
    elif (out / "pooling" / "pooling.json").exists():
        recipe["pooling_comparison"] = json.loads((out / "pooling" / "pooling.json").read_text())
    encoder = ChunkEncoder.load(enc_name, tokenizer=tok, k=cfg.k, pooling=cfg.pooling, device=cfg.device)
    corpus = ChunkCorpus.cached(out / f"corpus-{cfg.pooling}.safetensors", docs, tok, cfg.k, encoder=encoder,
                                max_chunks=args.max_corpus_chunks, progress=not args.no_progress, log=log)
    log(f"corpus: {corpus.meta.get('documents')} documents, {corpus.n_chunks} chunks of {cfg.k} tokens")
    held = None
    if held_docs:
        held = ChunkCorpus.cached(out / f"heldout-{cfg.pooling}.safetensors", held_docs, tok, cfg.k, encoder=encoder,
                                  log=log)
    sft_records = []
    if "sft" in cfg.phases and not args.qa_data:
        from ..spec_bench import TRAIN_PARITY, spec_bench_prompts

        sft_records = spec_bench_prompts(args.spec_bench, parity=TRAIN_PARITY)
    qa_examples = []
    if qa_splits and any(p in cfg.phases for p in ("sft", "select", "policy")):
        from .qa_rows import build_qa_examples

        qa_examples = build_qa_examples(qa_splits, tok, encoder, out, top_k=args.qa_top_k, limit=args.qa_limit,
                                        log=log)
        with_answer = sum(1 for e in qa_examples if e.answer_chunks)
        log(f"qa: {len(qa_examples)} training questions, {with_answer} with an answer in their passages")
        sft_records = []
    long_examples = []
    if long_data is not None and "long" in cfg.phases:
        from .long_rows import build_long_examples

        long_examples = build_long_examples(long_data[0], tok, encoder, out, summary_tokens=cfg.long_summary_tokens,
                                            max_doc_tokens=cfg.long_max_doc_tokens, log=log)
        log(f"long: {len(long_examples)} training documents, {sum(len(e.vectors) for e in long_examples)} chunks; "
            f"{len(long_data[1])} held out")
    trainer = RefragTrainer(decoder, tok, encoder, corpus, cfg, out, log=log, progress=not args.no_progress,
                            sft_records=sft_records, recipe=recipe, qa_examples=qa_examples,
                            long_examples=long_examples)
    if args.init and not (out / STATE_FILE).exists():
        trainer.init_from(args.init)
        log(f"initialized the projector and decoder LoRA from {args.init}")
    trainer.run(resume=args.resume, stop_after=args.stop_after)
    if trainer.phase_index < len(cfg.phases):
        log(f"stopped at phase {trainer._phase_name()!r} step {trainer.step} (resume with --resume)")
        return 0
    metrics: dict = {}
    if held is not None and not args.skip_eval:
        from .evaluate import evaluate_quality, evaluate_reconstruction

        metrics["reconstruction"] = evaluate_reconstruction(trainer, held, chunks=(1, min(4, cfg.recon_max_chunks)))
        log(f"reconstruction: {metrics['reconstruction']}")
        metrics["quality"] = evaluate_quality(trainer, held, samples=args.eval_samples, n_chunks=args.eval_chunks,
                                              continuation=cfg.continuation, log=log)
        if qa_splits:
            from .evaluate import evaluate_selection
            from .qa_rows import build_qa_examples

            held_splits = [(held, [], corpus_ + sorted({g for it in held for g in it.gold}))
                           for _, held, corpus_ in qa_splits]
            held_examples = build_qa_examples(held_splits, tok, encoder, out, top_k=args.qa_top_k, log=log)
            metrics["selection"] = evaluate_selection(trainer, held_examples)
            log(f"selection (held-out questions): {metrics['selection']}")
        metrics["wall_s"] = round(time.time() - t_start, 1)
        (out / "quality.json").write_text(json.dumps(metrics, indent=1))
        if args.quality_out:
            Path(args.quality_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.quality_out).write_text(json.dumps({"device": cfg.device, "threads": torch.get_num_threads(),
                                                          **metrics}, indent=1))
    path = trainer.export(args.export or out / "refrag.safetensors", metrics=metrics)
    log(f"exported {path} ({path.stat().st_size / 1e6:.2f} MB) in {time.time() - t_start:.0f}s")
    return 0
