"""The ``refrag-rasd`` command.

Each subcommand is one function registered in :data:`COMMANDS` with its argument setup, so later commands
(``index``, ``ask``, ``demo``, ``train-refrag``) slot in the same way.

Example:
    $ refrag-rasd models
    $ refrag-rasd generate "Why is the sky blue?" --max-new-tokens 64 --method pld
    $ refrag-rasd bench --suite decode --data questions.jsonl --category rag --limit 5 \\
        --methods vanilla,hf,hf-pld --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from refrag_rasd_core.engine import METHODS, Engine, GenerationConfig
from refrag_rasd_core.errors import RefragRasdError

Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]
COMMANDS: dict[str, Command] = {}


def command(name: str, help_text: str, setup: Callable[[argparse.ArgumentParser], None]) -> Callable:
    """Register a subcommand: decorate its ``run(args)``; ``setup(parser)`` adds its arguments."""

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = (setup, run, help_text)
        return run

    return register


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="HF id, local folder or .gguf file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default=None, help="float32 / float16 / bfloat16 (default: fp32 on CPU, bf16 on GPU)")


def _generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--method", default="vanilla", choices=METHODS)


def _setup_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


@command("models", "show which default models are installed and cached", _setup_models)
def cmd_models(args: argparse.Namespace) -> int:
    from refrag_rasd_core.models import cache_dir, installed_defaults

    info = installed_defaults()
    if args.json:
        print(json.dumps({"cache_dir": str(cache_dir()), **info}, indent=1))
        return 0
    print(f"cache folder: {cache_dir()}")
    for role, d in info.items():
        state = "installed" if d["installed"] else "MISSING"
        extra = ""
        if role == "target" and d["installed"]:
            extra = ", converted to safetensors" if d["cached"] else ", not converted yet (first load takes ~30 s)"
        print(f"{role:<8} {d['name']:<24} {state}{extra}")
        if not d["installed"]:
            print(f"         {d['error']}")
    return 0


def _setup_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="the user message (sent through the chat template)")
    p.add_argument("--raw", action="store_true", help="send the prompt as plain text, without the chat template")
    p.add_argument("--system", default=None, help="an optional system message")
    _model_args(p)
    _generation_args(p)


@command("generate", "stream an answer from the model and print the statistics", _setup_generate)
def cmd_generate(args: argparse.Namespace) -> int:
    engine = Engine.load(args.model, device=args.device, dtype=args.dtype)
    if args.raw:
        prompt: str | list[dict[str, str]] = args.prompt
    else:
        prompt = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}]
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                           top_k=args.top_k, stop=tuple(args.stop), seed=args.seed, method=args.method)
    stream = engine.stream(prompt, config=cfg)
    for piece in stream:
        print(piece, end="", flush=True)
    print()
    print_stats(stream.stats, file=sys.stderr)
    return 0


def print_stats(stats, file=sys.stdout) -> None:  # noqa: ANN001 - GenerationStats
    print(f"[{stats.method}] prompt {stats.prompt_tokens} tokens, {stats.new_tokens} new "
          f"({stats.finish_reason}); time to first token {stats.ttft_s:.2f} s; "
          f"decode {stats.decode_tokens_per_s:.1f} tokens/s; {stats.target_forwards} target forwards, "
          f"{stats.accepted_per_forward:.2f} tokens per forward", file=file)


def _setup_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", default="decode", choices=["decode"])
    p.add_argument("--data", required=True, help="Spec-Bench style .jsonl file")
    p.add_argument("--category", default=None, help="category (comma-separated for several)")
    p.add_argument("--limit", type=int, default=None, help="questions per category")
    p.add_argument("--methods", default="vanilla,hf,hf-pld", help="comma-separated; vanilla is always run")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--include-train", action="store_true",
                   help="also run the questions the shipped checkpoints were trained on (skipped by default)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per question and method (median)")
    p.add_argument("--no-calibrate", action="store_true", help="use the default verify-cost table")
    p.add_argument("--spec", default=None, help="JSON object of speculation options for the engine methods")
    p.add_argument("--out", default=None, help="write the results JSON here")
    _model_args(p)


@command("bench", "benchmark decoding methods side by side (Spec-Bench style)", _setup_bench)
def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.data import load_questions, training_question_ids
    from .bench.decode import format_table, run_decode_suite

    exclude = set() if args.include_train else training_question_ids()
    questions = load_questions(args.data, args.category, args.limit, exclude_ids=exclude)
    engine = Engine.load(args.model, device=args.device, dtype=args.dtype)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    spec = json.loads(args.spec) if args.spec else None
    res = run_decode_suite(engine, questions, methods, max_new_tokens=args.max_new_tokens,
                           temperature=args.temperature, repeats=args.repeats, spec=spec,
                           calibrate=not args.no_calibrate)
    res["settings"].update(data=str(args.data), held_out_only=not args.include_train)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    print(format_table(res))
    return 0


def _setup_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--questions", type=int, default=2, help="how many RAG questions")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--method", default="rasd", choices=[m for m in METHODS if m != "vanilla"])
    _model_args(p)


@command("demo", "answer RAG questions with REFRAG-RASD, streamed, side by side with plain decoding", _setup_demo)
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    print("refrag-rasd demo: loading the model (the first run converts it once, ~30 s)...", file=sys.stderr)
    engine = Engine.load(args.model, device=args.device, dtype=args.dtype)
    run_demo(engine, args.questions, args.max_new_tokens, args.method)
    return 0


def _train_draft(argv: list[str]) -> int:
    from refrag_rasd_core.eagle.train import main as train_main

    return train_main(argv)


# commands that own their whole argument list (``refrag-rasd train-draft --help`` shows theirs)
PASSTHROUGH: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "train-draft": (_train_draft, "train an EAGLE draft head for a target model (see docs/training-draft-head.md)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refrag-rasd", description="Fast RAG on local Hugging Face models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (setup, run, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        setup(p)
        p.set_defaults(func=run)
    for name, (_, help_text) in PASSTHROUGH.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in PASSTHROUGH:
            return int(PASSTHROUGH[argv[0]][0](argv[1:]) or 0)
    except RefragRasdError as exc:
        print(f"refrag-rasd: error: {exc}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RefragRasdError as exc:
        print(f"refrag-rasd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
