"""Benchmark the RASD retrieval stores: REST datastore build / lookup speed and memory, PLD per-step cost.

Corpus: documents of 512 tokens drawn from a Zipf-like distribution over a 49,152-token vocabulary
(SmolLM2's size), with ~30% of the tokens overwritten by phrases from a bank of 2,000 recurring
"real-ish" phrases (4 to 24 tokens), so suffixes match at realistic lengths.

Queries (16-token suffixes): ``corpus`` ends at a random corpus position (the context is text the
store has seen), ``phrase`` is fresh Zipf text ending with the start of a known phrase (the usual
generation case), ``random`` is fresh Zipf text. Each is timed for ``candidates`` (the counted
continuations) and ``lookup`` (the same as a 32-node TokenTree), max_len 8, 64 occurrences read.

PLD: a 2,000-token context that grows by 3 tokens a step: ``extend`` + ``lookup`` per step.

Build: every ``--backends`` suffix-array builder is timed (tokens/s); the first one's store is saved (bytes per
token on disk), loaded, memory-mapped and queried.

Usage (from the repository root, ~2-3 minutes on a 2-core CPU):
    PYTHONPATH=core:. python -m refrag_rasd_integrations.cli.bench.datastore_lookup [--sizes 1e4,1e6,1e7]
        [--backends divsufsort,numpy] [--machine NAME]
Writes benchmarks/results/datastore/<date>-<machine>-lookup.json and prints a summary.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import resource
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from refrag_rasd_core.rasd.datastore import PromptLookup, RestDatastore
from refrag_rasd_integrations.cli.bench.machine import local_slug
from refrag_rasd_integrations.cli.bench.results import results_path

VOCAB = 49_152
DOC_LEN = 512
SUFFIX = 16


def zipf_tokens(rng: np.random.Generator, n: int) -> np.ndarray:
    """Zipf-like ids: rank r has probability ~ 1 / r^1.1, ranks shuffled over the vocabulary."""
    perm = np.random.default_rng(1234).permutation(VOCAB)
    return perm[(rng.zipf(1.1, n) - 1) % VOCAB]


def phrase_bank(rng: np.random.Generator, count: int = 2000) -> list[np.ndarray]:
    return [zipf_tokens(rng, int(rng.integers(4, 25))) for _ in range(count)]


def corpus(rng: np.random.Generator, n: int, phrases: list[np.ndarray], share: float = 0.3) -> np.ndarray:
    """n tokens of Zipf text with ~``share`` of them overwritten by phrases from the bank (vectorized)."""
    toks = zipf_tokens(rng, n)
    lens = np.array([len(p) for p in phrases])
    flat = np.concatenate(phrases)
    offs = np.concatenate(([0], np.cumsum(lens)[:-1]))
    m = max(1, int(share * n / lens.mean()))
    which = rng.integers(0, len(phrases), m)
    starts = rng.integers(0, max(n - 25, 1), m)
    pl = lens[which]
    rep = np.repeat(np.arange(m), pl)
    within = np.arange(pl.sum()) - np.repeat(np.cumsum(pl) - pl, pl)
    dst = starts[rep] + within
    ok = dst < n
    toks[dst[ok]] = flat[offs[which][rep] + within][ok]
    return toks


def queries(rng, toks: np.ndarray, phrases, count: int) -> dict[str, list[list[int]]]:
    n = len(toks)
    ends = rng.integers(SUFFIX, n, count)
    out = {"corpus": [toks[e - SUFFIX : e].tolist() for e in ends]}
    ph = []
    for _ in range(count):
        p = phrases[int(rng.integers(len(phrases)))]
        k = int(rng.integers(1, min(6, len(p)) + 1))
        ph.append(zipf_tokens(rng, SUFFIX - k).tolist() + p[:k].tolist())
    out["phrase"] = ph
    out["random"] = [zipf_tokens(rng, SUFFIX).tolist() for _ in range(count)]
    return out


def time_calls(fn, items) -> tuple[float, float, float]:
    """(calls per second, p50 us, p99 us)."""
    lat = []
    for it in items:
        t0 = time.perf_counter()
        fn(it)
        lat.append(time.perf_counter() - t0)
    lat.sort()
    return len(lat) / sum(lat), lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6


def bench_rest(n: int, rng, phrases, n_queries: int, backends: tuple[str, ...] = ("divsufsort", "numpy")) -> dict:
    toks = corpus(rng, n, phrases)
    docs = [toks[i : i + DOC_LEN] for i in range(0, n, DOC_LEN)]
    builds = {}
    for b in backends[1:]:  # the others first: only the first backend's store is kept and queried
        t0 = time.perf_counter()
        RestDatastore.build(docs, max_suffix=16, backend=b)
        builds[b] = time.perf_counter() - t0
    tracemalloc.start()
    t0 = time.perf_counter()
    store = RestDatastore.build(docs, max_suffix=16, backend=backends[0])
    build_s = time.perf_counter() - t0
    builds[backends[0]] = build_s
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    tmp = tempfile.TemporaryDirectory()
    d = tmp.name
    t0 = time.perf_counter()
    store.save(d)
    save_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    RestDatastore.load(d)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mapped = RestDatastore.load(d, mmap=True)
    mmap_s = time.perf_counter() - t0
    disk = sum(f.stat().st_size for f in Path(d).iterdir())
    qs = queries(rng, toks, phrases, n_queries)
    res: dict = {
        "n_tokens": store.n_tokens,
        "n_sequences": store.n_sequences,
        "backend": backends[0],
        "build_s": round(build_s, 3),
        "build_tokens_per_s": {b: round(store.n_tokens / s) for b, s in builds.items()},
        "build_peak_mb": round(peak / 2**20, 1),
        "index_mb": round(store.nbytes / 2**20, 1),
        "disk_bytes_per_token": round(disk / max(1, store.n_tokens), 2),
        "save_s": round(save_s, 3),
        "load_s": round(load_s, 3),
        "load_mmap_s": round(mmap_s, 4),
        "queries": {},
    }
    cps, c50, c99 = time_calls(mapped.candidates, qs["corpus"])
    res["mapped_corpus_candidates_p50_us"] = round(c50, 1)
    del mapped
    tmp.cleanup()
    for name, qq in qs.items():
        rs = [store.candidates(q) for q in qq]
        cps, c50, c99 = time_calls(store.candidates, qq)
        tps, t50, t99 = time_calls(functools.partial(store.lookup, max_nodes=32), qq)
        res["queries"][name] = {
            "candidates_per_s": round(cps),
            "candidates_p50_us": round(c50, 1),
            "candidates_p99_us": round(c99, 1),
            "tree_lookups_per_s": round(tps),
            "tree_p50_us": round(t50, 1),
            "tree_p99_us": round(t99, 1),
            "mean_suffix_len": round(statistics.fmean(r.suffix_len for r in rs), 2),
            "hit_rate": round(sum(1 for r in rs if r.continuations) / len(rs), 3),
            "mean_occurrences": round(statistics.fmean(r.occurrences for r in rs), 1),
        }
    return res


def bench_pld(rng, phrases, context: int = 2000, steps: int = 1000, per_step: int = 3) -> dict:
    toks = corpus(rng, context + steps * per_step, phrases)
    t0 = time.perf_counter()
    pld = PromptLookup(toks[:context], max_suffix=8)
    init_ms = (time.perf_counter() - t0) * 1e3
    ext, look = [], []
    for s in range(steps):
        new = toks[context + s * per_step : context + (s + 1) * per_step].tolist()
        t0 = time.perf_counter()
        pld.extend(new)
        t1 = time.perf_counter()
        pld.lookup(max_nodes=32)
        t2 = time.perf_counter()
        ext.append(t1 - t0)
        look.append(t2 - t1)
    ext.sort()
    look.sort()
    return {
        "context_tokens": context,
        "final_tokens": len(pld),
        "init_ms": round(init_ms, 2),
        "extend_3_tokens_p50_us": round(ext[len(ext) // 2] * 1e6, 1),
        "extend_p99_us": round(ext[int(len(ext) * 0.99)] * 1e6, 1),
        "lookup_tree_p50_us": round(look[len(look) // 2] * 1e6, 1),
        "lookup_tree_p99_us": round(look[int(len(look) * 0.99)] * 1e6, 1),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e4,1e6,1e7", help="corpus sizes in tokens, comma-separated")
    ap.add_argument("--queries", type=int, default=1000, help="queries per kind and size")
    ap.add_argument("--backends", default="divsufsort,numpy",
                    help="suffix-array builders timed (the first one's store is queried)")
    ap.add_argument("--machine", default=local_slug(), help="machine slug for the file name (default: this one's)")
    ap.add_argument("--variant", default="lookup", help="the default --out's last part")
    ap.add_argument("--out", default=None, help="results file (default: benchmarks/results/datastore/...)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    phrases = phrase_bank(rng)
    results = {
        "benchmark": "datastore_lookup",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "name": args.machine,
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "settings": {
            "vocab": VOCAB,
            "doc_len": DOC_LEN,
            "suffix": SUFFIX,
            "max_len": 8,
            "max_occurrences": 64,
        },
        "rest": {},
    }
    t_all = time.perf_counter()
    for size in args.sizes.split(","):
        n = int(float(size))
        r = bench_rest(n, rng, phrases, args.queries, tuple(b.strip() for b in args.backends.split(",") if b.strip()))
        results["rest"][str(n)] = r
        q = r["queries"]
        print(
            f"REST n={n:>10,}: build {r['build_s']:.2f}s, tokens/s {r['build_tokens_per_s']} (peak "
            f"{r['build_peak_mb']} MB, index {r['index_mb']} MB, {r['disk_bytes_per_token']} B/token on disk), "
            f"load {r['load_s']:.2f}s | lookups/s corpus {q['corpus']['candidates_per_s']}, "
            f"phrase {q['phrase']['candidates_per_s']}, random {q['random']['candidates_per_s']} "
            f"(tree: {q['corpus']['tree_lookups_per_s']}/{q['phrase']['tree_lookups_per_s']}/"
            f"{q['random']['tree_lookups_per_s']}); mean match {q['corpus']['mean_suffix_len']}/"
            f"{q['phrase']['mean_suffix_len']}/{q['random']['mean_suffix_len']}",
            flush=True,
        )
    results["pld"] = bench_pld(rng, phrases)
    print("PLD:", results["pld"])
    results["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    results["total_s"] = round(time.perf_counter() - t_all, 1)
    out = (
        Path(args.out)
        if args.out
        else results_path("datastore", args.variant, args.machine)
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out} ({results['total_s']} s, max RSS {results['max_rss_mb']} MB)")


if __name__ == "__main__":
    main()
