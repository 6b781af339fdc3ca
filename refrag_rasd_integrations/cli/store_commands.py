"""The ``refrag-rasd`` subcommands that keep a collection: ``index`` (add, replace changed files, drop removed
ones), ``delete`` (a source's passages) and ``collections`` (list, show, drop). Every path and option is
checked before the model loads; ``delete`` and ``collections`` load no model at all.

Example:
    $ refrag-rasd index docs/ --collection mydocs                  # changed files replaced (incremental)
    $ refrag-rasd index docs/ --collection mydocs --cleanup full   # also drops the files no longer in docs/
    $ refrag-rasd index docs/ --collection mydocs --passage-tokens 128 --rebuild
    $ refrag-rasd index src/ --collection code --code --datastore  # code chunks + the corpus datastore
    $ refrag-rasd delete --collection mydocs --source docs/old.md
    $ refrag-rasd collections --show mydocs
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from refrag_rasd_core.errors import InvalidInputError

from ..errors import CollectionNotFoundError
from .checks import at_least, check_model_args, check_store_args
from .registry import command, model_args, open_store, store_args

__all__ = ["cmd_collections", "cmd_delete", "cmd_index"]

_SHOWN = (("passage_tokens", "passage tokens"), ("k", "k"), ("encoder", "encoder"),
          ("tokenizer", "tokenizer"), ("embedder", "embedder"))


def _setup_index(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", help="text files or folders (folders: .txt .md .rst .jsonl)")
    store_args(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--passage-tokens", type=int, default=None,
                   help="longest passage, in decoder tokens, 16-1024 (default: the collection's; 256 for a "
                        "new one)")
    p.add_argument("--cleanup", default="incremental", choices=("none", "incremental", "full"),
                   help="after indexing, delete: none; the old passages of the files given that changed "
                        "(incremental, the default); or every passage not from these files (full)")
    p.add_argument("--rebuild", action="store_true",
                   help="drop the collection and index into a new one (another passage size, model or "
                        "encoder)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--code", action="store_true",
                   help="source code: folders walked for code files (.py .js .ts .go .rs .java .c .cpp ...), split "
                        "at function and class boundaries, path and symbol in each passage's metadata")
    p.add_argument("--datastore", action="store_true",
                   help="also keep the collection's corpus datastore (RASD / REST suffix index over every passage, "
                        "beside the collection) up to date, and print its size and build speed")
    model_args(p)


@command("index", "index files into a Chroma collection (passages, token ids, REFRAG chunk embeddings); "
         "re-indexing replaces changed files", _setup_index)
def cmd_index(args: argparse.Namespace) -> int:
    from ..engines import get_engine
    from ..store import check_passage_tokens, iter_file_documents
    from ..store.configuration import check_passage_size

    check_store_args(args)
    check_model_args(args)
    at_least(args.batch_size, "--batch-size", 1)
    if args.passage_tokens is not None:
        try:
            check_passage_tokens(args.passage_tokens)
        except InvalidInputError as exc:
            raise InvalidInputError(f"--{str(exc).replace('_', '-', 1)}") from exc
    skipped: list[tuple[str, str]] = []
    if args.code:  # the files are checked before the model loads; they are split in its tokens after
        from ..store.code_documents import code_files, iter_code_documents

        docs: list = code_files(args.paths)
    else:
        docs = list(iter_file_documents(args.paths, on_skip=lambda f, why: skipped.append((f, why))))
    if not docs:
        raise InvalidInputError(f"nothing to index in {' '.join(args.paths)}: " + (
            "no code files" if args.code else "no text files (folders are walked for .txt .md .rst .jsonl)"))
    if not args.rebuild:  # a passage size the collection does not have: refused before the model loads
        check_passage_size(args.collection, open_store(args).recorded(), args.passage_tokens)
    engine = get_engine(args.model, device=args.device, dtype=args.dtype)
    store = open_store(args, engine)
    if args.code:
        count = lambda t: len(store.tokenizer(t, add_special_tokens=False)["input_ids"])  # noqa: E731
        docs = list(iter_code_documents(args.paths, count, store.passage_tokens,
                                        on_skip=lambda f, why: skipped.append((f, why))))
    for f, why in skipped:
        print(f"refrag-rasd: skipped {f}: {why}", file=sys.stderr)
    if args.rebuild:
        store.delete_collection()
    report = store.add_documents(docs, batch_size=args.batch_size, progress=not args.no_progress,
                                 cleanup=None if args.cleanup == "none" else args.cleanup)
    print(f"{args.collection}: {report.passages} passages ({report.added} added, {report.skipped} already "
          f"there, {report.deleted} stale removed; {len(skipped)} binary files skipped) in "
          f"{report.seconds:.1f} s ({report.passages_per_s:.1f} passages/s); {store.count()} in the "
          "collection", file=sys.stderr)
    if args.datastore:
        d = store.datastore().describe()
        build = d["last_build"]
        speed = f", last build {build['n_tokens']:,} tokens at {build['tokens_per_s']:,} tokens/s" if build.get(
            "tokens_per_s") else ""
        print(f"{args.collection}: corpus datastore {d['n_tokens']:,} tokens, {d['passages']} passages, "
              f"{d['segments']} segment(s), {d['bytes'] / 1e6:.1f} MB ({d['bytes_per_token']} bytes/token){speed}; "
              f"{d['path']}", file=sys.stderr)
    return 0


def _setup_delete(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", nargs="+", required=True, metavar="PATH",
                   help="files (or folders: every file indexed under them) or source ids whose passages to "
                        "delete")
    store_args(p)


def _existing_store(args: argparse.Namespace) -> Any:
    store = open_store(args)
    if not store.exists():
        raise CollectionNotFoundError(f"no collection {args.collection!r} in this Chroma database (list "
                                      "them: `refrag-rasd collections`)")
    return store


@command("delete", "delete the passages of files (or source ids) from a collection; loads no model",
         _setup_delete)
def cmd_delete(args: argparse.Namespace) -> int:
    check_store_args(args)
    store = _existing_store(args)
    missing = []
    for source in args.source:
        n = store.delete_source(source)
        folder = Path(source).expanduser()
        if n == 0 and folder.is_dir():  # a folder: every source indexed under it
            prefix = str(folder.resolve()) + os.sep
            n = sum(store.delete_source(s) for s in store.sources() if s.startswith(prefix))
        print(f"{args.collection}: {n} passages of {source} deleted", file=sys.stderr)
        if n == 0:
            missing.append(source)
    if missing:
        raise InvalidInputError(f"collection {args.collection!r} has no passages of {', '.join(missing)} "
                                f"(its sources: `refrag-rasd collections --show {args.collection}`)")
    return 0


def _setup_collections(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--show", metavar="NAME", default=None,
                   help="one collection's recorded settings and sources")
    g.add_argument("--drop", metavar="NAME", default=None, help="delete a whole collection")
    store_args(p, collection=False)


def _settings(meta: dict[str, Any]) -> str:
    if not meta.get("refrag_signature"):
        return "(not made by refrag-rasd)"
    return ", ".join(f"{label} {meta[f'refrag_{key}']}" for key, label in _SHOWN if f"refrag_{key}" in meta)


@command("collections", "list the collections with their sizes and recorded settings; show or drop one; "
         "loads no model", _setup_collections)
def cmd_collections(args: argparse.Namespace) -> int:
    name = args.show or args.drop
    args.collection = name
    check_store_args(args, "--show" if args.show else "--drop")
    if name is not None:
        store = _existing_store(args)
        if args.drop:
            n = len(store.ids())
            store.delete_collection()
            print(f"{name}: dropped ({n} passages)", file=sys.stderr)
            return 0
        meta = store.recorded()
        sources = store.sources()
        print(f"{name}: {sum(sources.values())} passages from {len(sources)} sources")
        for key in sorted(meta):
            print(f"  {key.removeprefix('refrag_')}: {meta[key]}")
        print("sources:")
        for src, n in sources.items():
            print(f"  {n:6d}  {src or '(none)'}")
        return 0
    store = open_store(args)
    cols = sorted(store.client.list_collections(), key=lambda c: c.name)
    if not cols:
        print("no collections in this Chroma database (index some: `refrag-rasd index PATH`)",
              file=sys.stderr)
    for col in cols:
        print(f"{col.name}: {col.count()} passages; {_settings(dict(col.metadata or {}))}")
    return 0
