"""The ``refrag-rasd`` command.

Each subcommand is one function registered in :data:`COMMANDS` with its argument setup, so later commands
(``index``, ``ask``, ``demo``, ``train-refrag``) slot in the same way.

Example:
    $ refrag-rasd models
    $ refrag-rasd generate "Why is the sky blue?" --max-new-tokens 64 --method pld
    $ refrag-rasd index docs/ --collection mydocs
    $ refrag-rasd ask "How do I install it?" --collection mydocs --compare
    $ refrag-rasd serve --replicas 2 --collection mydocs --chroma-url http://127.0.0.1:8000
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

from .settings import CONTEXTS

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


def _weights_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default="exact", choices=("exact", "int4"),
                   help="int4 (opt-in): run 4-bit weights (the default model's Q4_1 linears) with the int4 kernel "
                        "and bf16 activations on CPU: faster decoding, outputs may differ slightly from the exact "
                        "model's (transformers' peers in the benchmarks stay exact)")


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
    _weights_arg(p)
    _generation_args(p)


@command("generate", "stream an answer from the model and print the statistics", _setup_generate)
def cmd_generate(args: argparse.Namespace) -> int:
    engine = Engine.load(args.model, device=args.device, dtype=args.dtype, weights=args.weights)
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
    p.add_argument("--suite", default="decode", choices=["decode", "prefill", "rag", "qa"])
    p.add_argument("--data", required=True,
                   help="Spec-Bench style .jsonl file (qa suite: NQ-open / SQuAD style lines, or Spec-Bench)")
    p.add_argument("--category", default=None,
                   help="category, comma-separated for several (default: decode all, prefill/rag: rag)")
    p.add_argument("--limit", type=int, default=None,
                   help="questions per category (default: decode 2, prefill 2, rag 3: the three suites take "
                        "~13 min together on a 2-core CPU)")
    p.add_argument("--methods", default="vanilla,hf,hf-pld,hf-assisted,pld,rest,draft,rasd",
                   help="decode suite: comma-separated; vanilla is always run; hf-assisted needs --draft-model; "
                        "llamacpp and llamacpp-pld (llama.cpp on the default model's GGUF) need llama-cpp-python")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 64 (qa suite: 32)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--include-train", action="store_true",
                   help="also run the questions the shipped checkpoints were trained on (skipped by default)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per question and method (median)")
    p.add_argument("--no-calibrate", action="store_true", help="use the default verify-cost table")
    p.add_argument("--spec", default=None, help="JSON object of speculation options for the engine methods")
    p.add_argument("--out", default=None, help="write the results JSON here")
    p.add_argument("--draft-model", default=None,
                   help="a separate draft model sharing the target's tokenizer, for the hf-assisted peer")
    _weights_arg(p)
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
                        "compressed:P[:POLICY], default (text is always run)")
    _model_args(p)


def _bench_prefill(args: argparse.Namespace, questions: list, exclude: set) -> dict:
    from .bench.data import load_questions
    from .bench.prefill import format_table, run_prefill_suite

    engine = Engine.load(args.model, device=args.device, dtype=args.dtype, weights=args.weights,
                         refrag=args.refrag or "auto")
    if engine.refrag is None:
        raise RefragRasdError("no REFRAG checkpoint for this model: pass --refrag PATH (see train-refrag)")
    if engine.refrag.k != args.k:
        raise RefragRasdError(f"the REFRAG checkpoint has k={engine.refrag.k}, --k {args.k} was asked")
    pool = [p for q in load_questions(args.data, "rag") if q.question_id not in exclude for p in q.passages]
    res = run_prefill_suite(engine, questions, pool,
                            contexts=[int(c) for c in args.contexts.split(",") if c.strip()],
                            expands=[float(x) for x in args.expand.split(",") if x.strip()],
                            policies=[x.strip() for x in args.policy.split(",") if x.strip()],
                            repeats=args.repeats)
    print(format_table(res))
    return res


def _bench_rag(args: argparse.Namespace) -> dict:
    from .bench.rag import format_table, index_rows, load_rag_rows, run_rag_suite
    from .store import RefragChromaStore, chroma_dir

    engine = Engine.load(args.model, device=args.device, dtype=args.dtype, weights=args.weights,
                         refrag=args.refrag or "auto")
    if not args.no_calibrate:
        engine.calibrate_verify_costs()
    rows = load_rag_rows(args.data)
    store = RefragChromaStore("bench-rag", path=args.store_dir or chroma_dir() / "bench", engine=engine)
    index_rows(store, rows)
    peers = _without_missing_llamacpp([m.strip() for m in args.peers.split(",") if m.strip()])
    res = run_rag_suite(engine, rows, store, limit=args.limit or 3, k=args.top_k,
                        max_new_tokens=args.max_new_tokens or 64, repeats=args.repeats, peers=peers)
    print(format_table(res))
    return res


def _bench_qa(args: argparse.Namespace) -> dict:
    from refrag_rasd_core.qa_file import corpus_passages, load_qa_file

    from .bench.qa import (
        DEFAULT_SETTINGS,
        collection_name,
        format_qa_table,
        index_corpus,
        parse_settings,
        run_qa_suite,
    )
    from .store import RefragChromaStore, chroma_dir

    settings = parse_settings(args.settings or DEFAULT_SETTINGS, k=args.top_k)
    items, passages = load_qa_file(args.data)
    if args.corpus:
        passages = corpus_passages(args.corpus)
    engine = Engine.load(args.model, device=args.device, dtype=args.dtype, weights=args.weights,
                         refrag=args.refrag or "auto")
    if not args.no_calibrate:
        engine.calibrate_verify_costs()
    from .engines import signature_of

    store = RefragChromaStore(collection_name(passages, signature_of(engine)), path=args.store_dir or chroma_dir() / "bench",
                              engine=engine)
    index_corpus(store, passages)
    res = run_qa_suite(engine, items[:args.limit] if args.limit else items, store, settings, k=args.top_k,
                       max_new_tokens=args.max_new_tokens or 32)
    res["settings"]["corpus"] = str(args.corpus or args.data)
    print(format_qa_table(res))
    return res


def _without_missing_llamacpp(methods: list[str]) -> list[str]:
    """``methods`` without the llama.cpp peers when llama-cpp-python is not installed (saying so)."""
    from .bench.llamacpp import INSTALL_HINT, LLAMACPP_METHODS, llama_cpp_available

    missing = [m for m in methods if m in LLAMACPP_METHODS] if not llama_cpp_available() else []
    if missing:
        print(f"{', '.join(missing)} skipped: {INSTALL_HINT}", file=sys.stderr)
    return [m for m in methods if m not in missing]


@command("bench", "benchmark decoding methods side by side (Spec-Bench style)", _setup_bench)
def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.data import load_questions, training_question_ids
    from .bench.decode import format_table, run_decode_suite

    exclude = set() if args.include_train else training_question_ids()
    if args.suite in ("prefill", "rag", "qa"):
        if args.suite == "prefill":
            questions = load_questions(args.data, args.category or "rag", args.limit or 2, exclude_ids=exclude)
            res = _bench_prefill(args, questions, exclude)
        elif args.suite == "qa":
            res = _bench_qa(args)
        else:
            res = _bench_rag(args)
        res["settings"].update(data=str(args.data), held_out_only=not args.include_train, weights=args.weights)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(res, indent=1))
        return 0
    questions = load_questions(args.data, args.category, args.limit or 2, exclude_ids=exclude)
    engine = Engine.load(args.model, device=args.device, dtype=args.dtype, weights=args.weights)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    spec = json.loads(args.spec) if args.spec else None
    assistant = None
    if args.draft_model:
        from refrag_rasd_core.models import load_target

        assistant = load_target(args.draft_model, device=args.device, dtype=args.dtype)
    elif "hf-assisted" in methods:
        print("hf-assisted skipped: no --draft-model given (no separate model shares the default target's "
              "tokenizer offline)", file=sys.stderr)
        methods.remove("hf-assisted")
    methods = _without_missing_llamacpp(methods)
    res = run_decode_suite(engine, questions, methods, max_new_tokens=args.max_new_tokens or 64,
                           temperature=args.temperature, repeats=args.repeats, spec=spec,
                           calibrate=not args.no_calibrate, assistant=assistant)
    res["settings"].update(data=str(args.data), held_out_only=not args.include_train, weights=args.weights)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    print(format_table(res))
    return 0


def _setup_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--questions", type=int, default=3, help="how many of the demo corpus's questions to ask")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--llamaindex", action="store_true", help="run through LlamaIndex instead of LangChain")
    p.add_argument("--collection", default="refrag-rasd-demo", help="Chroma collection for the demo corpus")
    p.add_argument("--chroma-dir", default=None,
                   help="embedded database folder (default: $REFRAG_RASD_CHROMA_DIR or <cache>/chroma)")
    _model_args(p)


@command("demo", "index a corpus, answer RAG questions with the defaults (streamed), compare with plain RAG and REFRAG",
         _setup_demo)
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .store import RefragChromaStore

    print("refrag-rasd demo: loading the model (the first run converts it once, ~30 s)...", file=sys.stderr)
    engine = Engine.load(args.model, device=args.device, dtype=args.dtype)
    store = RefragChromaStore(args.collection, path=args.chroma_dir, engine=engine)
    run_demo(engine, store, args.questions, args.max_new_tokens,
             framework="llamaindex" if args.llamaindex else "langchain")
    return 0


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collection", default="refrag-rasd", help="Chroma collection name")
    p.add_argument("--chroma-dir", default=None,
                   help="embedded database folder (default: $REFRAG_RASD_CHROMA_DIR or <cache>/chroma)")
    p.add_argument("--chroma-url", default=None,
                   help="a `chroma run` server, e.g. http://127.0.0.1:8000 (default: $REFRAG_RASD_CHROMA_URL; "
                        "unset: the embedded database)")
    p.add_argument("--host", default=None, help="a `chroma run` server's host (with --port)")
    p.add_argument("--port", type=int, default=8000)


def _open_store(args: argparse.Namespace, engine: Engine | None = None):  # noqa: ANN202 - RefragChromaStore
    from .store import RefragChromaStore

    kwargs = {"passage_tokens": args.passage_tokens} if getattr(args, "passage_tokens", None) else {}
    return RefragChromaStore(args.collection, path=args.chroma_dir, host=args.host, port=args.port,
                             url=args.chroma_url, engine=engine, model=args.model, device=args.device, **kwargs)


def _setup_index(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", help="text files or folders (.txt .md .rst .jsonl)")
    _store_args(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--passage-tokens", type=int, default=256, help="longest passage, in decoder tokens")
    p.add_argument("--no-progress", action="store_true")
    _model_args(p)


@command("index", "index files into a Chroma collection (passages, token ids, REFRAG chunk embeddings)",
         _setup_index)
def cmd_index(args: argparse.Namespace) -> int:
    from .engines import get_engine

    engine = get_engine(args.model, device=args.device, dtype=args.dtype)
    store = _open_store(args, engine)
    report = store.add_files(args.paths, batch_size=args.batch_size, progress=not args.no_progress)
    print(f"{args.collection}: {report.passages} passages ({report.added} added, {report.skipped} already "
          f"there) in {report.seconds:.1f} s ({report.passages_per_s:.1f} passages/s); "
          f"{store.count()} in the collection", file=sys.stderr)
    return 0


def _setup_ask(p: argparse.ArgumentParser) -> None:
    p.add_argument("question")
    _store_args(p)
    p.add_argument("-k", "--top-k-passages", dest="k", type=int, default=4, help="passages to retrieve")
    p.add_argument("--filter", default=None, help='Chroma where filter as JSON, e.g. \'{"source": "a.txt"}\'')
    p.add_argument("--context", default="auto", choices=CONTEXTS)
    p.add_argument("--compare", action="store_true",
                   help="also answer with plain RAG (full text context, vanilla decoding) and compare")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    _model_args(p)
    _generation_args(p)
    p.set_defaults(method="rasd")


@command("ask", "answer a question from a collection: streams the answer, prints sources and statistics", _setup_ask)
def cmd_ask(args: argparse.Namespace) -> int:
    from .engines import get_engine
    from .generation import GenerationRequest

    engine = get_engine(args.model, device=args.device, dtype=args.dtype)
    store = _open_store(args, engine)
    hits = store.search(args.question, k=args.k, filter=json.loads(args.filter) if args.filter else None)
    passages = [p for p, _ in hits]
    settings = {"method": args.method, "context": args.context, "max_tokens": args.max_new_tokens,
                "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k, "seed": args.seed,
                "stop": args.stop, "recognize_passages": False}
    runs = [("refrag-rasd", settings)]
    if args.compare:
        runs.append(("plain-rag", {**settings, "method": "vanilla", "context": "text"}))
    results = {}
    for label, cfg in runs:
        req = GenerationRequest.build(cfg, args.question, passages=passages, engine=engine)
        if args.compare:
            print(f"--- {label} (method {req.settings.get('method')}, context {req.context})", file=sys.stderr)
        stream = req.stream()
        for piece in stream:
            print(piece, end="", flush=True)
        print()
        results[label] = req.metadata(stream.stats)
        print_stats(stream.stats, file=sys.stderr)
    print("sources:", file=sys.stderr)
    for p, score in hits:
        src = p.metadata.get("source", p.id)
        print(f"  {score:.3f}  {src}  {p.text[:70].replace(chr(10), ' ')}...", file=sys.stderr)
    if args.compare:
        a, b = results["refrag-rasd"], results["plain-rag"]
        ttft = (b["time_to_first_token_s"] or 0) / max(a["time_to_first_token_s"] or 1e-9, 1e-9)
        tps = (a["decode_tokens_per_s"] or 0) / max(b["decode_tokens_per_s"] or 1e-9, 1e-9)
        print(f"refrag-rasd vs plain RAG: time to first token {ttft:.2f}x faster, decoding {tps:.2f}x "
              "tokens/s", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


def _setup_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replicas", type=int, default=1, help="engine replicas (each loads the model once)")
    p.add_argument("--collection", default=None, help="Chroma collection every request retrieves from "
                   "(a request may name another, or send k=0)")
    p.add_argument("-k", "--top-k-passages", dest="k", type=int, default=4, help="passages per question")
    p.add_argument("--chroma-url", default=None,
                   help="the `chroma run` server every replica reads (default: $REFRAG_RASD_CHROMA_URL; unset: "
                        "the embedded database, one machine)")
    p.add_argument("--chroma-dir", default=None, help="embedded database folder (without a Chroma server)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP address (0.0.0.0 to listen on every interface)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--address", default=None, help="join this Ray cluster (e.g. auto) instead of starting one")
    p.add_argument("--method", default="rasd", choices=METHODS)
    p.add_argument("--context", default="auto", choices=CONTEXTS)
    p.add_argument("--max-tokens", type=int, default=256, help="default answer length")
    p.add_argument("--max-ongoing", type=int, default=1, help="requests one replica works on at once")
    p.add_argument("--max-queued", type=int, default=64, help="requests queued before 503 (-1: no limit)")
    p.add_argument("--no-calibrate", action="store_true", help="skip measuring the verify-cost curve at load")
    p.add_argument("--refrag", default="auto", help="REFRAG checkpoint (default: the shipped one)")
    _model_args(p)


@command("serve", "serve the model over HTTP (OpenAI-compatible) on Ray Serve replicas", _setup_serve)
def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from .serve import ServeConfig, shutdown, start

    cfg = ServeConfig(model=args.model, device=args.device, dtype=args.dtype, refrag=args.refrag,
                      method=args.method, context=args.context, max_tokens=args.max_tokens,
                      collection=args.collection, k=args.k, chroma_url=args.chroma_url, chroma_dir=args.chroma_dir,
                      calibrate=not args.no_calibrate, replicas=args.replicas, max_ongoing_requests=args.max_ongoing,
                      max_queued_requests=args.max_queued, host=args.host, port=args.port)
    if cfg.replicas > 1 and not cfg.resolved_chroma_url():
        print("refrag-rasd serve: the replicas read the embedded Chroma folder (fine on one machine, read-only); "
              "use a `chroma run` server (--chroma-url) to index while serving or to serve from several machines",
              file=sys.stderr)
    print(f"refrag-rasd serve: starting {cfg.replicas} replica(s) on Ray Serve...", file=sys.stderr)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        url = start(cfg, address=args.address)
        print(f"{url}/v1  (OpenAI base URL; model 'refrag-rasd')", flush=True)
        print(f"try: curl {url}/v1/chat/completions -H 'content-type: application/json' "
              "-d '{\"messages\": [{\"role\": \"user\", \"content\": \"How do I install it?\"}]}'",
              file=sys.stderr, flush=True)
        stop.wait()
    finally:
        print("refrag-rasd serve: shutting down", file=sys.stderr)
        shutdown()
    return 0


def _train_draft(argv: list[str]) -> int:
    from refrag_rasd_core.training.eagle import main as train_main

    return train_main(argv)


def _train_refrag(argv: list[str]) -> int:
    from refrag_rasd_core.training.refrag import main as train_main

    return train_main(argv)


# commands that own their whole argument list (``refrag-rasd train-draft --help`` shows theirs)
PASSTHROUGH: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "train-draft": (_train_draft, "train an EAGLE draft head for a target model (see docs/training-draft-head.md)"),
    "train-refrag": (_train_refrag, "train REFRAG's projector, decoder LoRA and expansion policy (see docs/training-refrag.md)"),
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
