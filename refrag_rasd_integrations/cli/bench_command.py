"""``refrag-rasd bench``: the benchmark suites (decode, prefill, rag, qa, chat, structured, code, long) from one
command.

Example:
    $ refrag-rasd bench --suite decode --data questions.jsonl --category rag --limit 5 \\
        --methods vanilla,hf,hf-pld --out results.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError, RefragRasdError
from refrag_rasd_core.generation_config import METHODS

from .checks import at_least, check_model_args, check_store_args, json_option, jsonl_file, number_list
from .registry import command, model_args, weights_arg

POLICIES = ("random", "similarity", "perplexity", "rl")
DECODE_METHODS = "vanilla,hf,hf-pld,hf-assisted,pld,rest,draft,rasd"
PEERS = ("llamacpp", "llamacpp-pld")


def _setup_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", default="decode",
                   choices=["decode", "prefill", "rag", "qa", "chat", "structured", "code", "long"])
    p.add_argument("--data", default=None,
                   help="Spec-Bench style .jsonl file (qa suite: NQ-open / SQuAD style lines, or Spec-Bench; code "
                        "suite: HumanEval-format lines); required except for --suite code --source DIR")
    p.add_argument("--category", default=None,
                   help="category, comma-separated for several (default: decode all, prefill/rag: rag)")
    p.add_argument("--limit", type=int, default=None,
                   help="questions per category (default: decode 2, prefill 2, rag 3: the three suites take "
                        "~13 min together on a 2-core CPU)")
    p.add_argument("--methods", default=DECODE_METHODS,
                   help="decode suite: comma-separated; vanilla is always run; hf-assisted needs --draft-model; "
                        "llamacpp and llamacpp-pld (llama.cpp on the default model's GGUF) need llama-cpp-python")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 64 (qa suite: 32)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--include-train", action="store_true",
                   help="also run the questions (long suite: the documents) the shipped checkpoints were trained on "
                        "(skipped by default)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per question and method (median)")
    p.add_argument("--no-calibrate", action="store_true", help="use the default verify-cost table")
    p.add_argument("--spec", default=None, help="JSON object of speculation options for the engine methods")
    p.add_argument("--out", default=None,
                   help="write the results JSON here; 'auto': "
                        "benchmarks/results/<suite>/<date>-<machine>-<variant>.json")
    p.add_argument("--variant", default=None,
                   help="with --out auto: the file name's last part (default: the categories, the data file's name)")
    p.add_argument("--draft-model", default=None,
                   help="a separate draft model sharing the target's tokenizer, for the hf-assisted peer")
    p.add_argument("--datastore-corpus", default=None,
                   help="decode and rag suites: comma-separated files or folders (Spec-Bench, NQ-open / SQuAD, "
                        "{\"text\"} .jsonl lines; text files) whose texts, minus the measured questions' own "
                        "lines, prompts and references, make a REST corpus datastore; adds rest-corpus / "
                        "rasd-corpus (decode) or default-corpus / refrag-rasd-corpus (rag). rag suite: 'store' "
                        "uses the suite's store's own datastore (every indexed passage)")
    weights_arg(p)
    g = p.add_argument_group("prefill suite")
    g.add_argument("--k", type=int, default=16, help="chunk size the REFRAG checkpoint must have")
    g.add_argument("--expand", default="0,0.1,0.25", help="expansion fractions p")
    g.add_argument("--policy", default="random,similarity,perplexity,rl", help="expansion policies (p > 0)")
    g.add_argument("--contexts", default="512,2048,7000", help="context lengths in passage tokens")
    g.add_argument("--refrag", default=None, help="REFRAG checkpoint (default: the shipped one)")
    g = p.add_argument_group("rag suite")
    g.add_argument("--store-dir", default=None, help="Chroma folder for the suite's index (default: the cache)")
    g.add_argument("--top-k", type=int, default=5, help="passages retrieved per question")
    g.add_argument("--peers", default="", help="llama.cpp peers run as plain RAG end to end: llamacpp,llamacpp-pld "
                   "(need llama-cpp-python)")
    g = p.add_argument_group("qa suite")
    g.add_argument("--corpus", default=None,
                   help="file whose distinct passages are indexed (default: the --data file, all lines)")
    g.add_argument("--settings", default=None,
                   help="comma-separated: none, text, text:K (plain RAG over the best K < top-k passages), "
                        "compressed:P[:POLICY], default (text is always run); chat suite: recompute, cached, "
                        "cached+compressed, default; long suite: truncate, map-reduce, tree, retrieve:K, "
                        "compressed:P[:POLICY], default")
    g = p.add_argument_group("chat suite (RAG conversations from a qa file, or MT-Bench two-turn lines)")
    g.add_argument("--turns", type=int, default=5, help="questions per RAG conversation")
    g = p.add_argument_group("code suite (function completion; methods default to the suite's own list)")
    g.add_argument("--source", default=None, help="a source tree: its held-out files' functions are the tasks, the "
                   "rest is indexed (--code splitting) with its corpus datastore")
    g.add_argument("--holdout-fraction", type=float, default=0.1, help="share of --source files held out")
    g.add_argument("--corpus-source", default=None, help="with --data: the tree indexed for retrieval and the "
                   "corpus datastore")
    g.add_argument("--execute", action="store_true", help="pass@1: run each task's tests (HumanEval 'test') in a "
                   "subprocess with a time limit and sockets disabled")
    g = p.add_argument_group("long suite (whole documents: summaries, or SQuAD-style articles joined)")
    g.add_argument("--min-document-tokens", type=int, default=0, help="only documents of at least this many tokens")
    g.add_argument("--max-document-tokens", type=int, default=None, help="only documents of at most this many tokens")
    g.add_argument("--questions-per-document", type=int, default=4, help="QA: questions asked of each document")
    g.add_argument("--method", default=None, help="decoding method of every setting (default: the engine's)")
    g.add_argument("--lengths", default=None, help="instead: one document grown to these token counts "
                   "(e.g. 2048,8192,65536), read in one compressed pass, by map-reduce and as text while it fits")
    g.add_argument("--map-reduce-up-to", type=int, default=None, help="with --lengths: skip map-reduce past this")
    model_args(p)


def _bench_long(args: argparse.Namespace) -> dict:
    from .bench.long import DEFAULT_SETTINGS, format_long_table, parse_long_settings, run_long_suite
    from .bench.long_tasks import load_long_tasks

    settings = parse_long_settings(args.settings or DEFAULT_SETTINGS)
    engine, _store = _engine_and_store(args, None)
    if args.lengths:
        from .bench.long_scaling import format_scaling_table, grown_documents, run_scaling

        lengths = number_list(args.lengths, "--lengths", int, 16)
        docs, _ = load_long_tasks(args.data, engine, limit=args.limit or 10)  # the longest documents
        by_document = {t.document_id: t.passages for t in docs}
        passages = [p for ps in by_document.values() for p in ps]
        res = run_scaling(engine, grown_documents(passages, lengths), max_tokens=args.max_new_tokens or 128,
                          method=args.method, map_reduce_up_to=args.map_reduce_up_to, fresh_process=True)
        res["settings"]["data"] = Path(args.data).name
        print(format_scaling_table(res))
        return res
    from .bench.data import trained_ids

    exclude = set() if args.include_train else trained_ids()
    tasks, index_s = load_long_tasks(args.data, engine, limit=args.limit, min_tokens=args.min_document_tokens,
                                     max_tokens=args.max_document_tokens,
                                     questions_per_document=args.questions_per_document, exclude_ids=exclude)
    res = run_long_suite(engine, tasks, settings, max_tokens=args.max_new_tokens or 128, method=args.method,
                         index_s=index_s)
    res["settings"]["data"] = Path(args.data).name
    print(format_long_table(res))
    return res


def _bench_prefill(args: argparse.Namespace, questions: list, exclude: set) -> dict:
    from .bench.data import load_questions
    from .bench.prefill import format_table, run_prefill_suite

    engine = Engine.load(args.model, device=args.device, dtype=args.dtype, weights=args.weights,
                         refrag=_refrag(args))
    refrag = engine.describe()["refrag"]
    if refrag is None:
        raise RefragRasdError("no REFRAG checkpoint for this model: pass --refrag PATH (see train-refrag)")
    if refrag["k"] != args.k:
        raise RefragRasdError(f"the REFRAG checkpoint has k={refrag['k']}, --k {args.k} was asked")
    pool = [p for q in load_questions(args.data, "rag") if q.question_id not in exclude for p in q.passages]
    res = run_prefill_suite(engine, questions, pool,
                            contexts=[int(c) for c in args.contexts.split(",") if c.strip()],
                            expands=[float(x) for x in args.expand.split(",") if x.strip()],
                            policies=[x.strip() for x in args.policy.split(",") if x.strip()],
                            repeats=args.repeats)
    print(format_table(res))
    return res


def _bench_rag(args: argparse.Namespace) -> dict:
    from ..store import RefragChromaStore, chroma_dir
    from .bench.datastore_corpus import Measured, build_corpus_datastore, corpus_texts, datastore_info
    from .bench.rag import format_table, index_rows, load_rag_rows, measured_rows, run_rag_suite

    rows = load_rag_rows(args.data)
    limit = args.limit or 3
    from_store = (args.datastore_corpus or "").strip() == "store"
    texts, corpus = (corpus_texts(_corpus_paths(args), Measured.of_rows(measured_rows(rows, limit), args.data))
                     if args.datastore_corpus and not from_store else (None, {}))  # before the model loads
    engine = Engine.load(args.model, device=args.device, dtype=args.dtype, weights=args.weights,
                         refrag=_refrag(args))
    if not args.no_calibrate:
        engine.calibrate_verify_costs()
    store = RefragChromaStore("bench-rag", path=args.store_dir or chroma_dir() / "bench", engine=engine,
                              datastore=from_store)
    index_rows(store, rows)
    peers = _without_missing_llamacpp([m.strip() for m in args.peers.split(",") if m.strip()])
    with tempfile.TemporaryDirectory(prefix="refrag-bench-datastore-") as tmp:
        ds, info = None, None
        prompts = ["\n".join([*r["passages"], r["question"]]) for r in measured_rows(rows, limit)]
        if from_store:
            ds = store.datastore()
            info = datastore_info(ds, prompts, engine.tokenizer, corpus={
                "sources": ["the rag suite's store"], "texts": ds.describe()["passages"],
                "policy": "the store's own corpus datastore: every indexed passage of the file's rag lines (the "
                          "measured questions' own passages too, which their retrieved passages already give rasd)"})
        elif texts is not None:
            ds, build = build_corpus_datastore(texts, engine.tokenizer, tmp)
            info = datastore_info(ds, prompts, engine.tokenizer, corpus=corpus, build=build)
        res = run_rag_suite(engine, rows, store, limit=limit, k=args.top_k, max_new_tokens=args.max_new_tokens or 64,
                            repeats=args.repeats, peers=peers, datastore=ds, datastore_info=info)
    res["settings"]["datastore_corpus"] = args.datastore_corpus and (
        "store" if from_store else [Path(p).name for p in _corpus_paths(args)])
    print(format_table(res))
    return res


def _corpus_paths(args: argparse.Namespace) -> list[str]:
    """``--datastore-corpus``'s files and folders."""
    return [p.strip() for p in (args.datastore_corpus or "").split(",") if p.strip()]


def _bench_chat(args: argparse.Namespace) -> dict:
    import json

    from refrag_rasd_core.qa_file import load_qa_file

    from .bench.chat import (
        DEFAULT_SETTINGS,
        format_chat_table,
        mt_bench_conversations,
        rag_conversations,
        run_chat_suite,
    )

    settings = [s.strip() for s in (args.settings or ",".join(DEFAULT_SETTINGS)).split(",") if s.strip()]
    first = next((ln for ln in Path(args.data).read_text().splitlines() if ln.strip()), "{}")
    mt_bench = "turns" in json.loads(first) and "category" in json.loads(first) and "rag" not in first
    if mt_bench:
        engine, store = _engine_and_store(args, None)
        conversations: list = mt_bench_conversations(args.data)
        settings = [s for s in settings if s not in ("cached+compressed", "cached+refrag")]  # no passages
    else:
        items, passages = load_qa_file(args.data)
        engine, store = _engine_and_store(args, passages)
        conversations = rag_conversations(items, args.turns)
    res = run_chat_suite(engine, conversations[:args.limit] if args.limit else conversations, store=store,
                         k=0 if mt_bench else args.top_k, settings=settings, max_tokens=args.max_new_tokens or 32)
    res["settings"]["corpus"] = None if mt_bench else str(args.corpus or args.data)
    print(format_chat_table(res))
    return res


def _bench_structured(args: argparse.Namespace) -> dict:
    from refrag_rasd_core.qa_file import load_qa_file

    from .bench.structured import METHODS, format_structured_table, run_structured_suite

    items, _ = load_qa_file(args.data)
    engine, _store = _engine_and_store(args, None)
    methods = [m.strip() for m in args.methods.split(",") if m.strip() in METHODS]
    res = run_structured_suite(engine, items[:args.limit or 8], methods=methods,
                               max_tokens=args.max_new_tokens or 64)
    print(format_structured_table(res))
    return res


def _bench_qa(args: argparse.Namespace) -> dict:
    from refrag_rasd_core.qa_file import load_qa_file

    from .bench.qa import DEFAULT_SETTINGS, format_qa_table, parse_settings, run_qa_suite

    settings = parse_settings(args.settings or DEFAULT_SETTINGS, k=args.top_k)
    items, passages = load_qa_file(args.data)
    engine, store = _engine_and_store(args, passages)
    res = run_qa_suite(engine, items[:args.limit] if args.limit else items, store, settings, k=args.top_k,
                       max_new_tokens=args.max_new_tokens or 32)
    res["settings"]["corpus"] = str(args.corpus or args.data)
    print(format_qa_table(res))
    return res


def _bench_code(args: argparse.Namespace) -> dict:
    import hashlib

    from ..engines import signature_of
    from ..store import RefragChromaStore, chroma_dir
    from ..store.code_documents import iter_code_documents
    from .bench.code import DEFAULT_METHODS, format_code_table, measure_build, run_code_suite
    from .bench.code_tasks import function_tasks, humaneval_tasks, split_files, with_passages

    root = Path(args.source or args.corpus_source or ".").resolve()
    held: set[Path] = set()
    if args.source:
        _, held_files = split_files(root, args.holdout_fraction)
        held = set(held_files)
        tasks = function_tasks(held_files, root, limit=args.limit or 6)
        if not tasks:
            raise InvalidInputError(f"--source: none of the {len(held_files)} held-out files has a function with a "
                                    "docstring and >= 8 lines of body; raise --holdout-fraction or pick a bigger tree")
    else:
        tasks = humaneval_tasks(args.data)[:args.limit or 6]
    engine = Engine.load(args.model, device=args.device, dtype=args.dtype, weights=args.weights)
    store = None
    if args.source or args.corpus_source:
        key = hashlib.sha256(f"{root}\0{args.holdout_fraction if args.source else ''}\0"
                             f"{signature_of(engine)}".encode()).hexdigest()[:10]
        store = RefragChromaStore(f"bench-code-{key}", path=args.store_dir or chroma_dir() / "bench", engine=engine,
                                  datastore=True)
        count = lambda t: len(engine.tokenizer(t, add_special_tokens=False)["input_ids"])  # noqa: E731
        store.add_documents(list(iter_code_documents([root], count, store.passage_tokens,
                                                     exclude=lambda f: f in held)), cleanup="full")
        tasks = with_passages(tasks, store, args.top_k)
    ds = store.datastore() if store is not None else None
    methods = [m.strip() for m in (args.methods if args.methods != DECODE_METHODS else DEFAULT_METHODS).split(",")]
    res = run_code_suite(engine, tasks, _without_missing_llamacpp([m for m in methods if m]), datastore=ds,
                         max_new_tokens=args.max_new_tokens or 96, repeats=args.repeats,
                         calibrate=not args.no_calibrate, execute=args.execute,
                         spec=json_option(args.spec, "--spec"),
                         datastore_info={**ds.describe(), **measure_build(ds)} if ds is not None else None)
    res["settings"].update(source=args.source and str(root), holdout_fraction=args.holdout_fraction if args.source
                           else None, corpus_source=args.corpus_source, top_k=len(tasks[0].context) if tasks else 0)
    print(format_code_table(res))
    return res


def _engine_and_store(args: argparse.Namespace, passages: list[str] | None) -> tuple[Engine, Any]:
    """The suite's engine (calibrated unless ``--no-calibrate``) and, with ``passages`` (or ``--corpus``), the
    Chroma collection holding them (indexed once, keyed on the corpus and the engine's store signature)."""
    from refrag_rasd_core.qa_file import corpus_passages

    from ..engines import signature_of
    from ..store import RefragChromaStore, chroma_dir
    from .bench.qa import collection_name, index_corpus

    engine = Engine.load(args.model, device=args.device, dtype=args.dtype, weights=args.weights,
                         refrag=_refrag(args))
    if not args.no_calibrate:
        engine.calibrate_verify_costs()
    if passages is None:
        return engine, None
    if args.corpus:
        passages = corpus_passages(args.corpus)
    store = RefragChromaStore(collection_name(passages, signature_of(engine)),
                              path=args.store_dir or chroma_dir() / "bench", engine=engine)
    index_corpus(store, passages)
    return engine, store


def _refrag(args: argparse.Namespace) -> str:
    """``--refrag PATH`` (which must exist: the earlier, unshipped checkpoints are recreated first), or ``auto``."""
    if args.refrag and not Path(args.refrag).exists():
        raise RefragRasdError(f"no REFRAG checkpoint at {args.refrag}: the earlier (not shipped) checkpoints are "
                              "not in the repository; recreate one with its train-refrag command from "
                              "docs/training-refrag.md ('Earlier checkpoints (not shipped): how to recreate them'), "
                              "then pass its refrag.safetensors")
    return args.refrag or "auto"


def _without_missing_llamacpp(methods: list[str]) -> list[str]:
    """``methods`` without the llama.cpp peers when llama-cpp-python is not installed (saying so)."""
    from .bench.llamacpp import INSTALL_HINT, LLAMACPP_METHODS, llama_cpp_available

    missing = [m for m in methods if m in LLAMACPP_METHODS] if not llama_cpp_available() else []
    if missing:
        print(f"{', '.join(missing)} skipped: {INSTALL_HINT}", file=sys.stderr)
    return [m for m in methods if m not in missing]


def _check_code_args(args: argparse.Namespace) -> None:
    """``--data`` (every suite but ``code --source``) and the code suite's options."""
    if args.data is None and not (args.suite == "code" and args.source):
        raise InvalidInputError("--data is required" + (" (or --source DIR)" if args.suite == "code" else ""))
    for option in ("source", "corpus_source"):
        value = getattr(args, option)
        if value is not None and not Path(value).expanduser().is_dir():
            raise InvalidInputError(f"--{option.replace('_', '-')}: {value} is not a folder")
    if not 0 < args.holdout_fraction < 1:
        raise InvalidInputError(f"--holdout-fraction must be between 0 and 1 (exclusive), got {args.holdout_fraction}")
    if args.suite == "code" and args.source and args.data:
        raise InvalidInputError("--source and --data are two ways to get code tasks: give one")


def _check_datastore_corpus(args: argparse.Namespace, corpus_methods: tuple[str, ...]) -> None:
    """``--datastore-corpus``: the decode and rag suites only; files and folders that exist, or ``store`` (rag);
    the decode suite's corpus methods need it."""
    value = args.datastore_corpus
    if value is None:
        named = [m for m in (x.strip() for x in args.methods.split(",")) if m in corpus_methods]
        if args.suite == "decode" and named:
            raise InvalidInputError(f"--methods {','.join(named)}: give --datastore-corpus FILE[,FILE...] (the "
                                    "corpus those methods read)")
        return
    if args.suite not in ("decode", "rag"):
        raise InvalidInputError("--datastore-corpus is for the decode and rag suites (the code suite builds its own "
                                "from --source / --corpus-source)")
    if value.strip() == "store":
        if args.suite != "rag":
            raise InvalidInputError("--datastore-corpus store: only the rag suite has a store; give files or folders")
        return
    paths = _corpus_paths(args)
    if not paths:
        raise InvalidInputError("--datastore-corpus is empty: give files or folders (or 'store' with --suite rag)")
    for p in paths:
        if not Path(p).expanduser().exists():
            raise InvalidInputError(f"--datastore-corpus: no such file or folder: {p}")


def check_bench_args(args: argparse.Namespace) -> None:
    """Every ``bench`` value that can be checked without the model: files, numbers, lists, ``--spec``."""
    from ..store import jsonl_objects
    from .bench.code import CORPUS_METHODS
    from .bench.decode import ALL_METHODS
    from .bench.qa import parse_settings

    check_model_args(args)
    check_model_args(argparse.Namespace(model=args.draft_model), "--draft-model")
    _check_code_args(args)
    jsonl_file(args.data, "--data")
    if args.category and args.suite == "decode":
        have = {str(rec.get("category")) for _, rec in jsonl_objects(args.data)}
        unknown = [c for c in args.category.split(",") if c not in have]
        if unknown:
            raise InvalidInputError(f"--category: {', '.join(unknown)} not in {args.data} (it has: "
                                    f"{', '.join(sorted(have))})")
    jsonl_file(args.corpus, "--corpus")
    json_option(args.spec, "--spec")
    for option, value in (("--limit", args.limit), ("--repeats", args.repeats), ("--k", args.k),
                          ("--max-new-tokens", args.max_new_tokens), ("--top-k", args.top_k), ("--turns", args.turns)):
        at_least(value, option, 1)
    at_least(args.temperature, "--temperature", 0)
    known = (*ALL_METHODS, *CORPUS_METHODS) if args.suite in ("code", "decode") else ALL_METHODS
    unknown = [m for m in (x.strip() for x in args.methods.split(",")) if m and m not in known]
    if unknown:
        raise InvalidInputError(f"--methods: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    _check_datastore_corpus(args, CORPUS_METHODS)
    number_list(args.contexts, "--contexts", int, 1)
    number_list(args.expand, "--expand", float, 0, 1)
    for option, value, known in (("--policy", args.policy, POLICIES), ("--peers", args.peers, PEERS)):
        bad = [x for x in (x.strip() for x in value.split(",")) if x and x not in known]
        if bad:
            raise InvalidInputError(f"{option}: unknown {', '.join(bad)} (known: {', '.join(known)})")
    if args.suite == "qa":
        parse_settings(args.settings or "text", k=args.top_k)
    if args.suite == "long":
        from .bench.long import parse_long_settings

        parse_long_settings(args.settings or "default")
    at_least(args.min_document_tokens, "--min-document-tokens", 0)
    at_least(args.max_document_tokens, "--max-document-tokens", 1)
    at_least(args.questions_per_document, "--questions-per-document", 1)
    at_least(args.map_reduce_up_to, "--map-reduce-up-to", 1)
    if args.lengths is not None:
        number_list(args.lengths, "--lengths", int, 16)
    if args.method is not None and args.method not in METHODS:
        raise InvalidInputError(f"--method: unknown {args.method} (known: {', '.join(METHODS)})")
    if args.suite == "chat":
        from .bench.chat import SETTINGS

        bad = [x for x in (x.strip() for x in (args.settings or "").split(",")) if x and x not in SETTINGS]
        if bad:
            raise InvalidInputError(f"--settings: unknown chat setting(s) {', '.join(bad)} "
                                    f"(known: {', '.join(SETTINGS)})")
    if args.store_dir is not None:
        check_store_args(argparse.Namespace(chroma_dir=args.store_dir))
    _refrag(args)
    if args.out not in (None, "auto") and Path(args.out).expanduser().is_dir():
        raise InvalidInputError(f"--out: {args.out} is a folder; name the results file (or --out auto)")
    if args.variant is not None and not args.variant.strip():
        raise InvalidInputError("--variant is empty")


@command("bench", "benchmark decoding methods side by side (Spec-Bench style)", _setup_bench)
def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.data import load_questions, training_question_ids
    from .bench.decode import format_table, run_decode_suite

    check_bench_args(args)
    exclude = set() if args.include_train else training_question_ids()
    if args.suite in ("prefill", "rag", "qa", "chat", "structured", "code", "long"):
        if args.suite == "code":
            res = _bench_code(args)
        elif args.suite == "long":
            res = _bench_long(args)
        elif args.suite == "prefill":
            questions = load_questions(args.data, args.category or "rag", args.limit or 2, exclude_ids=exclude)
            res = _bench_prefill(args, questions, exclude)
        elif args.suite == "qa":
            res = _bench_qa(args)
        elif args.suite == "chat":
            res = _bench_chat(args)
        elif args.suite == "structured":
            res = _bench_structured(args)
        else:
            res = _bench_rag(args)
        _write(args, res)
        return 0
    questions = load_questions(args.data, args.category, args.limit or 2, exclude_ids=exclude)
    texts: list[str] | None = None
    corpus: dict[str, Any] = {}
    if args.datastore_corpus:  # read (and checked) before the model loads
        from .bench.datastore_corpus import Measured, corpus_texts

        texts, corpus = corpus_texts(_corpus_paths(args), Measured.of_questions(questions, args.data))
    engine = Engine.load(args.model, device=args.device, dtype=args.dtype, weights=args.weights)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    spec = json_option(args.spec, "--spec")
    assistant = None
    if args.draft_model:
        from refrag_rasd_core.models import load_target

        assistant = load_target(args.draft_model, device=args.device, dtype=args.dtype)
    elif "hf-assisted" in methods:
        print("hf-assisted skipped: no --draft-model given (no separate model shares the default target's "
              "tokenizer offline)", file=sys.stderr)
        methods.remove("hf-assisted")
    methods = _without_missing_llamacpp(methods)
    with tempfile.TemporaryDirectory(prefix="refrag-bench-datastore-") as tmp:
        ds, info = None, None
        if texts is not None:
            from .bench.datastore_corpus import build_corpus_datastore, datastore_info
            from .bench.decode import with_corpus_methods

            ds, build = build_corpus_datastore(texts, engine.tokenizer, tmp)
            info = datastore_info(ds, [q.prompt for q in questions], engine.tokenizer, corpus=corpus, build=build)
            methods = with_corpus_methods(methods)
        res = run_decode_suite(engine, questions, methods, max_new_tokens=args.max_new_tokens or 64,
                               temperature=args.temperature, repeats=args.repeats, spec=spec,
                               calibrate=not args.no_calibrate, assistant=assistant, datastore=ds,
                               datastore_info=info)
    res["settings"]["datastore_corpus"] = [Path(p).name for p in _corpus_paths(args)] or None
    _write(args, res)
    print(format_table(res))
    return 0


def _write(args: argparse.Namespace, res: dict) -> None:
    """The run's data and scope into its settings, then the file: ``--out PATH``, or the scheme's path with
    ``--out auto`` (variant: ``--variant``, else the decode categories or the data file's name)."""
    from .bench.results import resolve_out, write_results

    res["settings"].update(data=args.data and str(args.data), held_out_only=not args.include_train,
                           weights=res["settings"].get("weights") or args.weights, weights_asked=args.weights)
    variant = args.variant or ("-".join(res["settings"]["categories"]) if args.suite == "decode"
                               else Path(args.data or args.source).stem.removesuffix("_dev").replace("_open", ""))
    path = resolve_out(args.out, args.suite, variant, res["machine"])
    if path is not None:
        print(f"results: {write_results(res, path)}", file=sys.stderr)
