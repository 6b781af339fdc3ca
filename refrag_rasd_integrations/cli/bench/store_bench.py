"""Store benchmark: indexing throughput (real encoders on a sample), disk per passage and retrieval latency
p50 / p95 at 20k passages (synthetic passages with random normalized retrieval vectors and random float16
chunk embeddings of the real shapes), and the layout comparison behind docs/store.md.

    .venv/bin/python -m refrag_rasd_integrations.cli.bench.store_bench
    # -> benchmarks/results/store/<date>-<machine>-default.json
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from refrag_rasd_core.shared_data import SPEC_BENCH_DEV, default_data_path, resolve_data_path  # noqa: E402
from refrag_rasd_integrations.cli.bench.machine import local_slug  # noqa: E402
from refrag_rasd_integrations.cli.bench.results import results_path, write_results  # noqa: E402
from refrag_rasd_integrations.store import (  # noqa: E402
    CHUNKS_KEY,
    N_TOKENS_KEY,
    TOKENS_KEY,
    RefragChromaStore,
    encode_array,
    make_client,
)


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def synthetic_records(n: int, dim_ret: int, k: int, dim_chunk: int, tokens: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for start in range(0, n, 500):
        m = min(500, n - start)
        vecs = rng.standard_normal((m, dim_ret)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        ids, docs, metas = [], [], []
        for i in range(m):
            n_tok = int(rng.integers(tokens // 2, tokens + 1))
            ch = rng.standard_normal((-(-n_tok // k), dim_chunk)).astype(np.float16)
            toks = rng.integers(0, 49152, n_tok)
            ids.append(f"p{start + i:06d}")
            docs.append("synthetic passage " * (n_tok // 3))
            metas.append({"source": f"doc{(start + i) // 5}", N_TOKENS_KEY: n_tok,
                          TOKENS_KEY: encode_array(toks, "<u2"), CHUNKS_KEY: encode_array(ch, "<f2")})
        yield ids, docs, vecs, metas


def bench_scale(n: int, queries: int, layout: str, tmp: Path) -> dict:
    """Insert n synthetic records in one layout and time top-5 queries (with the blobs returned)."""
    client = make_client(tmp / layout)
    col = client.create_collection(f"bench-{layout}", embedding_function=None,
                                   configuration={"hnsw": {"space": "cosine"}})
    t0 = time.perf_counter()
    for ids, docs, vecs, metas in synthetic_records(n, 384, 16, 384, 200):
        if layout == "float-lists":  # the alternative: chunk embeddings as a flat list of floats
            for m in metas:
                ch = np.frombuffer(base64.b64decode(m.pop(CHUNKS_KEY)), dtype="<f2")
                m[CHUNKS_KEY] = ch.astype(float).tolist()
        elif layout == "no-blobs":
            for m in metas:
                m.pop(CHUNKS_KEY)
                m.pop(TOKENS_KEY)
        col.add(ids=ids, documents=docs, embeddings=vecs, metadatas=metas)
    insert_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    lat = []
    for _ in range(queries):
        q = rng.standard_normal(384).astype(np.float32)
        q /= np.linalg.norm(q)
        t = time.perf_counter()
        col.query(query_embeddings=[q.tolist()], n_results=5, include=["documents", "metadatas", "distances"])
        lat.append((time.perf_counter() - t) * 1000)
    disk = du(tmp / layout)
    return {"layout": layout, "passages": n, "insert_s": round(insert_s, 2),
            "insert_passages_per_s": round(n / insert_s, 1), "disk_bytes_per_passage": round(disk / n),
            "query_top5_ms_p50": round(statistics.median(lat), 2), "query_top5_ms_p95": round(pct(lat, 0.95), 2)}


def bench_real_indexing(data: Path, limit: int, tmp: Path) -> dict:
    """Index real passages (Spec-Bench RAG prompts) with the real encoders; time encoding and retrieval."""
    docs = []
    for line in data.read_text().splitlines():
        rec = json.loads(line)
        if rec["category"] == "rag":
            docs.append((rec["turns"][0], {"source": f"q{rec['question_id']}"}))
    docs = docs[:limit]
    store = RefragChromaStore("bench-real", path=tmp / "real")
    store.tokenizer, store.chunk_encoder, store.embedder  # load first: time the indexing alone  # noqa: B018
    store.embedder.encode(["warm up"], normalize_embeddings=True)
    report = store.add_texts([t for t, _ in docs], [m for _, m in docs], batch_size=32)
    raw = [len(store.tokenizer(r.text, add_special_tokens=False)["input_ids"]) for r in store.passage_records(docs)]
    lat = []
    for text, _ in docs:
        q = text.splitlines()[-1]
        t = time.perf_counter()
        store.search(q, k=5)
        lat.append((time.perf_counter() - t) * 1000)
    return {"passages": report.added, "documents": len(docs), "seconds": round(report.seconds, 2),
            "passages_per_s": round(report.passages_per_s, 2), "mean_passage_tokens": round(float(np.mean(raw)), 1),
            "k": store.k, "chunk_dim": store.dim, "disk_bytes_per_passage": round(du(tmp / "real") / report.added),
            "search_ms_p50_incl_query_embedding": round(statistics.median(lat), 2),
            "search_ms_p95_incl_query_embedding": round(pct(lat, 0.95), 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--passages", type=int, default=20000)
    p.add_argument("--layout-passages", type=int, default=2000, help="size of the layout comparison")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--data", default=None, help="Spec-Bench .jsonl for the real-indexing part (default: "
                   "../shared/data/spec_bench_dev.jsonl when it exists; skipped without one)")
    p.add_argument("--real-docs", type=int, default=20)
    p.add_argument("--out", default=None, help="results file (default: benchmarks/results/store/<date>-<machine>-"
                   "<variant>.json)")
    p.add_argument("--variant", default="default", help="the default --out's last part")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="store-bench-"))
    try:
        res = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
               "layouts": [bench_scale(args.layout_passages, args.queries, lay, tmp)
                           for lay in ("b64-metadata", "float-lists", "no-blobs")],
               "scale": bench_scale(args.passages, args.queries, "b64-metadata-20k", tmp)}
        data = resolve_data_path(args.data, SPEC_BENCH_DEV, what="Spec-Bench questions") if args.data else \
            default_data_path(SPEC_BENCH_DEV)
        if data is not None:
            res["real_indexing"] = bench_real_indexing(data, args.real_docs, tmp)
        else:
            print(f"real indexing skipped: no {SPEC_BENCH_DEV} (pass --data PATH; the project ships no "
                  "third-party data)", file=sys.stderr)
        print(json.dumps(res, indent=1))
        write_results(res, args.out or results_path("store", args.variant, local_slug()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
