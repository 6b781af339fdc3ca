"""What every ``refrag-rasd`` subcommand shares: the registry :data:`COMMANDS`, the argument groups (model,
weights, generation, store) and the statistics line.

Example:
    >>> from refrag_rasd_integrations.cli.registry import COMMANDS, command
    >>> @command("hello", "say hello", lambda p: None)
    ... def hello(args): return 0
    >>> COMMANDS.pop("hello")[2]
    'say hello'
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from refrag_rasd_core.engine import DEFAULT_WEIGHTS, METHODS, WEIGHTS, Engine
from refrag_rasd_core.generation_config import GenerationConfig

Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]
COMMANDS: dict[str, Command] = {}


def command(name: str, help_text: str, setup: Callable[[argparse.ArgumentParser], None]) -> Callable:
    """Register a subcommand: decorate its ``run(args)``; ``setup(parser)`` adds its arguments."""

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = (setup, run, help_text)
        return run

    return register


def model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="HF id, local folder or .gguf file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default=None, help="float32 / float16 / bfloat16 (default: fp32 on CPU, bf16 on GPU)")


def weights_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=DEFAULT_WEIGHTS, choices=WEIGHTS,
                   help="auto (default): as the model is stored (the default model's 4-bit linears run 4-bit on CPU, "
                        "Q4_1 x int8 as llama.cpp); exact: fp32; int4: 4-bit or an error. Recorded in results files")


def generation_args(p: argparse.ArgumentParser) -> None:
    """The generation settings (:class:`~refrag_rasd_core.generation_config.GenerationConfig` fields); left
    out, a setting is the config's default. Values are checked by the config alone (:func:`generation_config`)."""
    p.add_argument("--max-tokens", "--max-new-tokens", dest="max_tokens", type=int, default=None,
                   help="the most tokens to generate (default 256)")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (the default)")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--method", default=None, help=f"decoding: {', '.join(METHODS)} (default rasd)")


GENERATION_ARGS = ("max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "method", "context")


def generation_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The generation settings given on the command line (checked: a bad one raises before any model
    loads)."""
    given = {k: getattr(args, k) for k in GENERATION_ARGS if getattr(args, k, None) is not None}
    GenerationConfig.of(given)
    return given


def print_stats(stats, file=sys.stdout) -> None:  # noqa: ANN001 - GenerationStats
    print(f"[{stats.method}] prompt {stats.prompt_tokens} tokens, {stats.new_tokens} new "
          f"({stats.finish_reason}); time to first token {stats.ttft_s:.2f} s; "
          f"decode {stats.decode_tokens_per_s:.1f} tokens/s; {stats.target_forwards} target forwards, "
          f"{stats.accepted_per_forward:.2f} tokens per forward", file=file)



def store_args(p: argparse.ArgumentParser, collection: bool = True) -> None:
    """Where the Chroma database is (and, with ``collection``, ``--collection``)."""
    if collection:
        p.add_argument("--collection", default="refrag-rasd", help="Chroma collection name")
    p.add_argument("--chroma-dir", default=None,
                   help="embedded database folder (default: $REFRAG_RASD_CHROMA_DIR or <cache>/chroma)")
    p.add_argument("--chroma-url", default=None,
                   help="a `chroma run` server, e.g. http://127.0.0.1:8000 (default: $REFRAG_RASD_CHROMA_URL; "
                        "unset: the embedded database)")
    p.add_argument("--host", default=None, help="a `chroma run` server's host (with --port)")
    p.add_argument("--port", type=int, default=8000)


def open_store(args: argparse.Namespace, engine: Engine | None = None) -> Any:
    from ..store import RefragChromaStore

    kwargs = {"passage_tokens": args.passage_tokens} if getattr(args, "passage_tokens", None) else {}
    return RefragChromaStore(getattr(args, "collection", None) or "refrag-rasd", path=args.chroma_dir,
                             host=args.host, port=args.port, url=args.chroma_url, engine=engine,
                             model=getattr(args, "model", None), device=getattr(args, "device", "auto"),
                             **kwargs)



__all__ = ["COMMANDS", "Command", "command", "generation_settings", "open_store", "print_stats", "store_args"]
