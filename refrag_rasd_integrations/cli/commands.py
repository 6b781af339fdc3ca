"""The ``refrag-rasd`` subcommands that use the model: ``models``, ``generate``, ``ask``, ``demo`` and
``serve`` (``bench`` is in :mod:`.bench_command`; ``index``, ``delete``, ``collections`` in
:mod:`.store_commands`; ``summarize`` and ``ask --whole-document`` in :mod:`.long_commands`).

Example:
    $ refrag-rasd models
    $ refrag-rasd generate "Why is the sky blue?" --max-new-tokens 64 --method pld
    $ refrag-rasd index docs/ --collection mydocs
    $ refrag-rasd ask "How do I install it?" --collection mydocs --compare
    $ refrag-rasd ask "What does the guide conclude?" --collection mydocs --whole-document --source docs/guide.md
    $ refrag-rasd serve --replicas 2 --collection mydocs --chroma-url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import json
import sys

from refrag_rasd_core.engine import METHODS, Engine
from refrag_rasd_core.errors import InvalidInputError

from ..errors import CollectionNotFoundError
from ..settings import CONTEXTS
from .checks import at_least, check_model_args, check_store_args, json_option
from .long_commands import long_args
from .registry import (
    command,
    generation_args,
    generation_settings,
    model_args,
    open_store,
    print_stats,
    store_args,
    weights_arg,
)


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
        elif role == "target":
            print(f"weights  stored as {', '.join(f'{k} x {v}' for k, v in d['stored'].items())}; "
                  f"{_weights_default()}")
    return 0


def _weights_default() -> str:
    """What the engines run the default model's weights as, by default."""
    from refrag_rasd_core.engine import DEFAULT_WEIGHTS

    if DEFAULT_WEIGHTS == "auto":
        return ("run as stored by default (weights='auto': 4-bit linears through the int4 kernels on CPU; "
                "--weights exact for fp32)")
    return f"run as {DEFAULT_WEIGHTS} by default (--weights auto: as stored, 4-bit on CPU)"


def _setup_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="the user message (sent through the chat template)")
    p.add_argument("--raw", action="store_true", help="send the prompt as plain text, without the chat template")
    p.add_argument("--system", default=None, help="an optional system message")
    model_args(p)
    weights_arg(p)
    generation_args(p)


@command("generate", "stream an answer from the model and print the statistics", _setup_generate)
def cmd_generate(args: argparse.Namespace) -> int:
    settings = generation_settings(args)
    check_model_args(args)
    engine = Engine.load(args.model, device=args.device, dtype=args.dtype, weights=args.weights)
    if args.raw:
        prompt: str | list[dict[str, str]] = args.prompt
    else:
        prompt = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}]
    stream = engine.stream(prompt, **settings)
    for piece in stream:
        print(piece, end="", flush=True)
    print()
    print_stats(stream.stats, file=sys.stderr)
    return 0



def _setup_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--questions", type=int, default=3, help="how many of the demo corpus's questions to ask")
    p.add_argument("--max-tokens", "--max-new-tokens", dest="max_tokens", type=int, default=96)
    p.add_argument("--llamaindex", action="store_true", help="run through LlamaIndex instead of LangChain")
    p.add_argument("--collection", default="refrag-rasd-demo", help="Chroma collection for the demo corpus")
    p.add_argument("--chroma-dir", default=None,
                   help="embedded database folder (default: $REFRAG_RASD_CHROMA_DIR or <cache>/chroma)")
    model_args(p)


@command("demo", "index a corpus, answer RAG questions with the defaults (streamed), compare with plain RAG and REFRAG",
         _setup_demo)
def cmd_demo(args: argparse.Namespace) -> int:
    from ..store import RefragChromaStore
    from .demo import run_demo

    check_store_args(args)
    check_model_args(args)
    at_least(args.questions, "--questions", 1)
    at_least(args.max_tokens, "--max-tokens", 1)
    print("refrag-rasd demo: loading the model (the first run converts it once, ~30 s)...", file=sys.stderr)
    engine = Engine.load(args.model, device=args.device, dtype=args.dtype)
    store = RefragChromaStore(args.collection, path=args.chroma_dir, engine=engine)
    run_demo(engine, store, args.questions, args.max_tokens,
             framework="llamaindex" if args.llamaindex else "langchain")
    return 0



def _setup_ask(p: argparse.ArgumentParser) -> None:
    p.add_argument("question")
    store_args(p)
    p.add_argument("-k", "--top-k-passages", dest="k", type=int, default=4, help="passages to retrieve")
    p.add_argument("--filter", default=None, help='Chroma where filter as JSON, e.g. \'{"source": "a.txt"}\'')
    p.add_argument("--context", default=None, help=f"how passages enter the decoder: {', '.join(CONTEXTS)} "
                   "(default auto: plain RAG unless the REFRAG checkpoint records a setting that keeps its answers)")
    p.add_argument("--compare", action="store_true",
                   help="also answer with plain RAG (full text context, vanilla decoding) and compare")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.add_argument("--whole-document", action="store_true",
                   help="read whole documents instead of the top-k passages: the collection's (--source, or all of "
                        "it, narrowed by --filter) with their stored chunk embeddings, or files (--file)")
    p.add_argument("--source", action="append", default=None, metavar="PATH",
                   help="with --whole-document: an indexed document to read (a file's path or a source id; "
                        "repeatable)")
    p.add_argument("--file", action="append", default=None, metavar="PATH",
                   help="with --whole-document: a text file to read instead of the collection (repeatable)")
    long_args(p)
    model_args(p)
    generation_args(p)


@command("ask", "answer a question from a collection: streams the answer, prints sources and statistics", _setup_ask)
def cmd_ask(args: argparse.Namespace) -> int:
    from ..engines import get_engine
    from ..generation import GenerationRequest
    from ..settings import ModelSettings
    from .long_commands import check_long_args, whole_document_answer

    settings = generation_settings(args)
    if args.whole_document:
        return whole_document_answer(args)
    check_long_args(args, whole_document=False)
    where = json_option(args.filter, "--filter")
    at_least(args.k, "--top-k-passages", 1)
    check_store_args(args)
    check_model_args(args)
    if not args.question.strip():
        raise InvalidInputError("the question is empty")
    if not open_store(args).exists():
        raise CollectionNotFoundError(f"no collection {args.collection!r} in this Chroma database: index "
                                      "documents first (`refrag-rasd index PATH --collection "
                                      f"{args.collection}`)")
    engine = get_engine(args.model, device=args.device, dtype=args.dtype)
    store = open_store(args, engine)
    hits = store.search(args.question, k=args.k, filter=where)
    passages = [p for p, _ in hits]
    model = ModelSettings(engine=engine, recognize_passages=False, **settings)
    runs = [("refrag-rasd", {})]
    if args.compare:
        runs.append(("plain-rag", {"method": "vanilla", "context": "text"}))
    results = {}
    for label, overrides in runs:
        req = GenerationRequest.build(model, args.question, passages=passages, **overrides)
        stream = req.stream()
        if args.compare:
            print(f"--- {label} (method {req.config.method}, context {req.config.context})", file=sys.stderr)
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
    p.add_argument("--datastore", action="store_true", help="rasd / rest also read the collection's corpus "
                   "datastore (`refrag-rasd index --datastore` keeps it; every replica maps the same files)")
    p.add_argument("--chroma-url", default=None,
                   help="the `chroma run` server every replica reads (default: $REFRAG_RASD_CHROMA_URL; unset: "
                        "the embedded database, one machine)")
    p.add_argument("--chroma-dir", default=None, help="embedded database folder (without a Chroma server)")
    p.add_argument("--chroma-header", action="append", default=[], metavar="NAME=VALUE",
                   help="HTTP header for the Chroma server, e.g. its auth (repeatable; also "
                        "$REFRAG_RASD_CHROMA_HEADERS, comma-separated NAME=VALUE or a JSON object)")
    p.add_argument("--host", default="127.0.0.1",
                   help="HTTP address (default loopback; another address listens beyond this machine: set "
                        "--api-key and put a TLS proxy in front, see docs/security.md)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--address", default=None, help="join this Ray cluster (e.g. auto) instead of starting one "
                   "(a local one binds to loopback)")
    p.add_argument("--no-ray", action="store_true", help="one process under uvicorn, without Ray (development)")
    p.add_argument("--api-key", action="append", default=[], metavar="KEY[:COLL,...]",
                   help="accept this API key (Authorization: Bearer KEY), optionally only for these collections "
                        "(repeatable; also $REFRAG_RASD_API_KEYS, comma-separated)")
    p.add_argument("--api-keys-file", default=None,
                   help='JSON or TOML file of keys: {"keys": {"KEY": ["coll"], "ADMIN-KEY": "*"}}')
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let browsers call from this origin (repeatable; default: no cross-origin access)")
    p.add_argument("--docs", action="store_true", help="serve /docs, /redoc and /openapi.json")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (413 past it)")
    p.add_argument("--prefix-cache-mb", type=float, default=512,
                   help="each replica's prefix cache (a conversation's next turn reuses what it read); 0: off")
    p.add_argument("--request-timeout", type=float, default=300.0,
                   help="seconds one request may take, waiting included (504 past it; 0: none)")
    p.add_argument("--max-passages", type=int, default=64, help="passages one request may send")
    p.add_argument("--max-passage-chars", type=int, default=262_144, help="characters of those passages")
    p.add_argument("--method", default="rasd", help=f"default decoding: {', '.join(METHODS)}")
    p.add_argument("--context", default="auto", help=f"default context: {', '.join(CONTEXTS)}")
    p.add_argument("--max-tokens", type=int, default=256, help="default answer length")
    p.add_argument("--max-ongoing", type=int, default=1, help="requests one replica works on at once")
    p.add_argument("--max-queued", type=int, default=64, help="requests queued before 503 (-1: no limit)")
    p.add_argument("--no-calibrate", action="store_true", help="skip measuring the verify-cost curve at load")
    p.add_argument("--refrag", default="auto", help="REFRAG checkpoint (default: the shipped one; none: without)")
    model_args(p)


def _chroma_headers(given: list[str]) -> dict[str, str] | None:
    """``--chroma-header NAME=VALUE`` and ``$REFRAG_RASD_CHROMA_HEADERS`` (NAME=VALUE,... or a JSON object)."""
    import os

    from refrag_rasd_core.errors import InvalidInputError

    env = os.environ.get("REFRAG_RASD_CHROMA_HEADERS", "").strip()
    items = list(given)
    headers: dict[str, str] = {}
    if env.startswith("{"):
        try:
            headers.update({str(k): str(v) for k, v in json.loads(env).items()})
        except (ValueError, AttributeError) as exc:
            raise InvalidInputError(f"REFRAG_RASD_CHROMA_HEADERS is not a JSON object: {exc}") from exc
    elif env:
        items = env.split(",") + items
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise InvalidInputError(f"a Chroma header is NAME=VALUE, got {item.split('=')[0]!r}...")
        headers[name.strip()] = value.strip()
    return headers or None


@command("serve", "serve the model over HTTP (OpenAI-compatible) on Ray Serve replicas", _setup_serve)
def cmd_serve(args: argparse.Namespace) -> int:
    import os
    import signal
    import threading

    from ..serve import KeyRing, ServeConfig, shutdown, start

    keys = KeyRing.parse(args.api_key, file=args.api_keys_file, env=os.environ)
    refrag = None if str(args.refrag).strip().lower() in ("", "none", "null") else args.refrag
    cfg = ServeConfig(model=args.model, device=args.device, dtype=args.dtype, refrag=refrag,
                      method=args.method, context=args.context, max_tokens=args.max_tokens,
                      collection=args.collection, k=args.k, datastore=args.datastore,
                      chroma_url=args.chroma_url, chroma_dir=args.chroma_dir,
                      chroma_headers=_chroma_headers(args.chroma_header),
                      calibrate=not args.no_calibrate, replicas=args.replicas, max_ongoing_requests=args.max_ongoing,
                      max_queued_requests=args.max_queued, host=args.host, port=args.port,
                      max_body_bytes=args.max_body_bytes, request_timeout=args.request_timeout,
                      prefix_cache_mb=args.prefix_cache_mb,
                      max_passages=args.max_passages, max_passage_chars=args.max_passage_chars,
                      api_keys=keys.digests() or None, cors_origins=args.cors_origin or None, docs=args.docs)
    if not cfg.loopback_only() and not keys:
        print(f"refrag-rasd serve: WARNING: listening on {cfg.host} without API keys: anyone who can reach this "
              "address can run generations and read every collection (set --api-key; see docs/security.md)",
              file=sys.stderr)
    url = f"http://{cfg.host}:{cfg.port}"
    if args.no_ray:
        from ..serve import run_local

        print(f"refrag-rasd serve: one process, no Ray; {url}/v1 once the model is loaded", file=sys.stderr)
        run_local(cfg)
        return 0
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
        auth = " -H 'authorization: Bearer KEY'" if keys else ""
        print(f"try: curl {url}/v1/chat/completions -H 'content-type: application/json'{auth} "
              "-d '{\"messages\": [{\"role\": \"user\", \"content\": \"How do I install it?\"}]}'",
              file=sys.stderr, flush=True)
        stop.wait()
    finally:
        print("refrag-rasd serve: shutting down", file=sys.stderr)
        shutdown()
    return 0
