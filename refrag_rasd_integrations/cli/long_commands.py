"""Long documents on the command line: ``summarize`` (files, or documents indexed in a collection) and what
``ask --whole-document`` runs (a question over whole documents instead of the top-k passages). Both read the
document in one call (``--strategy whole``, the default: every passage, a collection's with their stored chunk
embeddings) or by a baseline (``map-reduce``, ``tree-summarize``); see
:mod:`~refrag_rasd_integrations.long_documents`. Every value is checked before the model loads.

Example:
    $ refrag-rasd summarize report.md --context compressed --max-tokens 128
    $ refrag-rasd summarize docs/guide.md --collection mydocs --strategy map-reduce
    $ refrag-rasd ask "What does it conclude?" --whole-document --collection mydocs --source docs/guide.md
    $ refrag-rasd ask "What does it conclude?" --whole-document --file report.md
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from refrag_rasd_core.errors import InvalidInputError

from ..errors import CollectionNotFoundError
from ..long_documents import DEFAULT_PIECE_TOKENS, STRATEGIES, LongDocumentResult
from ..settings import CONTEXTS
from .checks import at_least, check_model_args, check_store_args, json_option
from .registry import command, generation_args, generation_settings, model_args, open_store, store_args

__all__ = ["cmd_summarize", "long_args", "print_long_stats", "run_long"]


def long_args(p: argparse.ArgumentParser) -> None:
    """``--strategy`` and ``--piece-tokens``: how a long document is read."""
    p.add_argument("--strategy", default=None, choices=STRATEGIES,
                   help="whole (default): one call reads every passage (REFRAG with --context compressed); "
                        "map-reduce or tree-summarize: the baselines, many calls over text pieces")
    p.add_argument("--piece-tokens", type=int, default=None,
                   help=f"a baseline's piece size in tokens (default {DEFAULT_PIECE_TOKENS})")


def _setup_summarize(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="FILE",
                   help="text files or folders (.txt .md .rst .jsonl), summarized together; with --collection, "
                        "sources indexed in it (a file's path or a source id), read with their stored chunk "
                        "embeddings")
    store_args(p)
    p.set_defaults(collection=None)  # no collection: the files are read and split on the fly
    p.add_argument("--context", default=None, help=f"how the passages enter the decoder: {', '.join(CONTEXTS)} "
                   "(default auto)")
    long_args(p)
    p.add_argument("--json", action="store_true", help="print the result and its costs as JSON")
    model_args(p)
    generation_args(p)


def check_long_args(args: argparse.Namespace, whole_document: bool = True) -> None:
    """The long-document options: a piece size of at least 16 tokens; with ``ask``, only with
    ``--whole-document``."""
    at_least(args.piece_tokens, "--piece-tokens", 16)
    if not whole_document:
        given = [o for o, v in (("--strategy", args.strategy), ("--piece-tokens", args.piece_tokens),
                                ("--source", getattr(args, "source", None)), ("--file", getattr(args, "file", None)))
                 if v is not None]
        if given:
            verb = "goes" if len(given) == 1 else "go"
            raise InvalidInputError(f"{', '.join(given)} {verb} with --whole-document")


def _documents(args: argparse.Namespace, paths: list[str], where: dict[str, Any] | None) -> tuple[Any, list[Any]]:
    """(store or None, documents) to read: the collection's passages of ``paths`` (every passage when none
    is named) or the files ``paths``. Checked before any model loads; the passages are read after."""
    from ..store import iter_file_documents
    from ..store.sources import file_source

    if args.collection is None:
        skipped: list[tuple[str, str]] = []
        docs: list[Any] = list(iter_file_documents(paths, on_skip=lambda f, why: skipped.append((f, why))))
        for f, why in skipped:
            print(f"refrag-rasd: skipped {f}: {why}", file=sys.stderr)
        if not any(text.strip() for text, _ in docs):
            raise InvalidInputError(f"nothing to read in {' '.join(paths)}: no text files (folders are walked "
                                    "for .txt .md .rst .jsonl)")
        return None, docs
    store = open_store(args)
    if not store.exists():
        raise CollectionNotFoundError(f"no collection {args.collection!r} in this Chroma database: index the "
                                      f"documents first (`refrag-rasd index PATH --collection {args.collection}`)")
    sources = store.sources()
    missing = [p for p in paths if p not in sources and file_source(p) not in sources]
    if missing:
        raise InvalidInputError(f"collection {args.collection!r} has no passages of {', '.join(missing)} (its "
                                f"sources: `refrag-rasd collections --show {args.collection}`)")
    return store, [*paths] or [None]


def run_long(args: argparse.Namespace, question: str | None, paths: list[str],
             where: dict[str, Any] | None = None) -> LongDocumentResult:
    """Read the documents of ``args`` (files, or a collection's sources) by ``--strategy`` and print the
    answer (stdout) and its costs (stderr)."""
    from ..engines import get_engine
    from ..long_documents import read_with

    settings = generation_settings(args)
    check_long_args(args)
    check_store_args(args)
    check_model_args(args)
    store, docs = _documents(args, paths, where)
    engine = get_engine(args.model, device=args.device, dtype=args.dtype)
    if store is not None:
        store = open_store(args, engine)
        docs = [p for src in docs for p in store.document_passages(src, where=where)]
    result = read_with(args.strategy or "whole", engine, docs, question=question,
                       piece_tokens=args.piece_tokens or DEFAULT_PIECE_TOKENS, store=store, **settings)
    print(result.text.strip())
    print_long_stats(result)
    if getattr(args, "json", False):
        print(json.dumps(result.to_dict(), indent=1))
    return result


def print_long_stats(r: LongDocumentResult, file: Any = None) -> None:
    """One line of what reading the document cost."""
    what = "passages" if r.strategy == "whole" else "pieces"
    reason = f" ({r.context_reason})" if r.context_reason else ""
    print(f"[{r.strategy}] {r.model_calls} model call(s) over {r.pieces} {what}, {r.prefill_positions} prefill "
          f"positions, context {r.context}{reason}; time to the answer's first token {r.ttft_s:.2f} s, total "
          f"{r.total_s:.2f} s, {r.new_tokens} tokens generated", file=file or sys.stderr)


@command("summarize", "summarize long documents (files, or documents indexed in a collection) in one call that reads "
         "every passage, or by map-reduce / tree-summarize; prints the summary and what it cost", _setup_summarize)
def cmd_summarize(args: argparse.Namespace) -> int:
    run_long(args, None, list(args.paths))
    return 0


def whole_document_answer(args: argparse.Namespace) -> int:
    """``ask --whole-document``: the question over whole documents (``--file`` s, or the collection's
    ``--source`` s, or every passage of the collection, narrowed by ``--filter``)."""
    if not args.question.strip():
        raise InvalidInputError("the question is empty")
    if args.compare:
        raise InvalidInputError("--compare goes with top-k retrieval; with --whole-document compare "
                                "--strategy whole with --strategy map-reduce or tree-summarize")
    where = json_option(args.filter, "--filter")
    if args.file:
        if args.source:
            raise InvalidInputError("give --file (read files) or --source (indexed documents), not both")
        args.collection = None
        run_long(args, args.question, list(args.file))
        return 0
    run_long(args, args.question, list(args.source or []), where=where)
    return 0
