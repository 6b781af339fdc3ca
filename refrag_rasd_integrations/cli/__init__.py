"""The ``refrag-rasd`` command.

Each subcommand is one function registered in :data:`~.registry.COMMANDS` with its argument setup
(:mod:`.commands`, :mod:`.store_commands`, :mod:`.long_commands`, :mod:`.bench_command`; their values are
checked before any model loads, :mod:`.checks`); ``train-refrag`` and ``train-draft`` own their whole argument list.
The benchmark suites (:mod:`.bench`) and the demo (:mod:`.demo`) live beside the commands that run them.

Example:
    $ refrag-rasd models
    $ refrag-rasd ask "How do I install it?" --collection mydocs --compare
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from refrag_rasd_core.errors import RefragRasdError

from . import bench_command, chat_command, commands, long_commands, store_commands  # noqa: F401  (register them)
from .registry import COMMANDS


def _train_draft(argv: list[str]) -> int:
    from refrag_rasd_core.training.eagle import main as train_main

    return train_main(argv)


def _train_refrag(argv: list[str]) -> int:
    from refrag_rasd_core.training.refrag import main as train_main

    return train_main(argv)


# commands that own their whole argument list (``refrag-rasd train-draft --help`` shows theirs)
PASSTHROUGH: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "train-draft": (_train_draft, "train an EAGLE draft head for a target model (see docs/training-draft-head.md)"),
    "train-refrag": (_train_refrag,
                     "train REFRAG's projector, decoder LoRA and expansion policy (see docs/training-refrag.md)"),
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


__all__ = ["COMMANDS", "PASSTHROUGH", "build_parser", "main"]
