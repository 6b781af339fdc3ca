"""The ``decode`` suite: every decoding method on the same questions, timed interleaved in one process.

Every method sits behind one function ``(question) -> MethodRun``. After a warm-up (one untimed run of
each method), the methods run one after another on each question (A B C, A B C, ...), ``repeats`` times;
per question the median time is kept. Reported per method: ``tokens_per_s`` (all new tokens over all
wall time, prefill included), ``speedup_vs_vanilla`` (median over questions of the per-question ratio
against vanilla's tokens/s), ``mean_accepted`` (tokens emitted per target decoding forward),
``ttft_s`` (median), ``equal_to_vanilla`` (share of questions whose token ids equal vanilla's) and ``n``.

With a corpus ``datastore`` (REST's setting: a generic corpus beside the request's passages, see
:mod:`.datastore_corpus`), ``rest-corpus`` and ``rasd-corpus`` are ``rest`` and ``rasd`` reading it too; the
results then carry a ``datastore`` block (the corpus, its size, build time, matches, and ``effect``: each method
without and with it).

Example (needs a question file and minutes of model time, so the test suite does not run it):
    >>> from refrag_rasd_integrations.cli.bench.decode import run_decode_suite      # doctest: +SKIP
    >>> res = run_decode_suite(engine, questions, methods=["vanilla", "hf"])   # doctest: +SKIP
    >>> res["methods"]["hf"]["equal_to_vanilla"]                               # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from refrag_rasd_core.engine import METHODS as ENGINE_METHODS
from refrag_rasd_core.engine import Engine, GenerationConfig
from refrag_rasd_core.errors import InvalidInputError

from .data import BenchQuestion
from .llamacpp import LLAMACPP_METHODS, LlamaCppPeer
from .results import Column, format_run_table, results_header

HF_METHODS = ("hf", "hf-pld", "hf-assisted")
ALL_METHODS = (*ENGINE_METHODS, *HF_METHODS, *LLAMACPP_METHODS)
CORPUS_METHODS = ("rest-corpus", "rasd-corpus")
"""``rest`` / ``rasd`` with a corpus datastore (the decode suite's ``--datastore-corpus``, the code suite's)."""


def with_corpus_methods(methods: Sequence[str]) -> list[str]:
    """``methods`` with ``rest-corpus`` / ``rasd-corpus`` right after ``rest`` / ``rasd`` (where not named already).

    Example:
        >>> with_corpus_methods(["vanilla", "rest", "draft", "rasd"])
        ['vanilla', 'rest', 'rest-corpus', 'draft', 'rasd', 'rasd-corpus']
    """
    out: list[str] = []
    for m in methods:
        out.append(m)
        if f"{m}-corpus" in CORPUS_METHODS and f"{m}-corpus" not in methods:
            out.append(f"{m}-corpus")
    return list(dict.fromkeys(out))


@dataclass
class MethodRun:
    token_ids: list[int]
    time_s: float
    ttft_s: float | None = None
    accepted: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def make_method(name: str, engine: Engine, max_new_tokens: int, temperature: float = 0.0,
                spec: dict[str, Any] | None = None, assistant: Any = None, datastore: Any = None
                ) -> Callable[[BenchQuestion], MethodRun]:
    """The function that runs method ``name`` on one question (an engine method reads ``datastore``, a corpus
    datastore, besides the question's passages; ``hf-assisted`` needs ``assistant``, a
    :class:`~refrag_rasd_core.models.LoadedModel` sharing the target's tokenizer; ``llamacpp`` /
    ``llamacpp-pld`` need llama-cpp-python, see :mod:`~refrag_rasd_integrations.cli.bench.llamacpp`)."""
    if name in ENGINE_METHODS:
        # the prompts carry their passages already: the passages feed the speculative datastore only
        cfg = GenerationConfig.of(max_tokens=max_new_tokens, temperature=temperature, method=name, seed=0,
                                  spec=spec, context="none")

        def run_engine(q: BenchQuestion) -> MethodRun:
            t = time.perf_counter()
            res = engine.generate(q.messages, passages=q.passages or None, config=cfg, datastore=datastore)
            dt = time.perf_counter() - t
            s = res.stats
            return MethodRun(res.token_ids, dt, s.ttft_s, s.accepted_per_forward,
                             {"forwards": s.target_forwards, "draft_s": s.draft_s, "verify_s": s.verify_s,
                              "retrieval_s": round(s.retrieval_s, 4),
                              "tree_nodes": s.tree_nodes,
                              "accepted_hist": {str(k): v for k, v in sorted(s.accepted_hist.items())}})

        return run_engine
    if name in HF_METHODS:
        # the peer runs transformers' own generate on the engine's very model (same weights, same device):
        # the one place the bench reads the torch module, because that module is what is measured
        model, device = engine.model, engine.device
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
        if temperature > 0:
            kwargs["temperature"] = temperature
        if name == "hf-pld":
            kwargs["prompt_lookup_num_tokens"] = 10
        if name == "hf-assisted":
            if assistant is None:
                raise InvalidInputError("hf-assisted needs a draft model: pass --draft-model (sharing the tokenizer)")
            from refrag_rasd_core.models import check_same_tokenizer

            check_same_tokenizer(assistant.tokenizer, engine.tokenizer)
            kwargs["assistant_model"] = assistant.model
        eos = sorted(engine.eos_ids)

        def run_hf(q: BenchQuestion) -> MethodRun:
            ids = torch.tensor([engine.encode_prompt(q.messages)], device=device)
            t = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), eos_token_id=eos,
                                     pad_token_id=eos[0] if eos else None, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t
            return MethodRun(out[0, ids.shape[1]:].tolist(), dt)

        return run_hf
    if name in LLAMACPP_METHODS:
        if temperature > 0:
            raise InvalidInputError("the llama.cpp peers run greedy decoding only (temperature 0)")
        peer = LlamaCppPeer(pld=name == "llamacpp-pld")

        def run_llamacpp(q: BenchQuestion) -> MethodRun:
            ids, dt, ttft = peer.generate(engine.encode_prompt(q.messages), max_new_tokens)
            return MethodRun(ids, dt, ttft)

        return run_llamacpp
    raise InvalidInputError(f"unknown method {name!r}; choose from {', '.join(ALL_METHODS)}")


def run_decode_suite(engine: Engine, questions: Sequence[BenchQuestion], methods: Sequence[str],
                     max_new_tokens: int = 128, temperature: float = 0.0, repeats: int = 1,
                     spec: dict[str, Any] | None = None, progress: bool = True,
                     extra_methods: dict[str, Callable[[BenchQuestion], MethodRun]] | None = None,
                     calibrate: bool = False, assistant: Any = None, keep_ids: bool = False,
                     datastore: Any = None, datastore_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the suite and return the results dict (the contract's JSON shape). ``calibrate`` measures the
    verify-cost curve on this machine first (:meth:`Engine.calibrate_verify_costs`); ``keep_ids``: each
    method's output token ids stay in the per-question rows (``token_ids``). ``datastore``: the corpus datastore
    that ``rest-corpus`` / ``rasd-corpus`` read; with ``datastore_info`` (what
    :func:`~.datastore_corpus.datastore_info` says of it) the results carry it as ``datastore``."""
    costs = engine.calibrate_verify_costs() if calibrate else engine.verify_costs
    methods = list(dict.fromkeys(["vanilla", *methods]))  # vanilla is always the baseline
    missing = [m for m in methods if m in CORPUS_METHODS and datastore is None and m not in (extra_methods or {})]
    if missing:
        raise InvalidInputError(f"{', '.join(missing)} need a corpus datastore (datastore=...; the CLI's "
                                "--datastore-corpus)")
    runners = {m: make_method(m.removesuffix("-corpus"), engine, max_new_tokens, temperature, spec, assistant,
                              datastore=datastore if m in CORPUS_METHODS else None)
               for m in methods if m not in (extra_methods or {})}
    runners.update(extra_methods or {})
    if not questions:
        raise InvalidInputError("no questions to run")
    for m in methods:  # warm-up: one untimed run of each method
        runners[m](questions[0])
    rows: list[dict[str, Any]] = []
    iterator: Any = questions
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(questions, desc="decode suite", unit="q")
    for q in iterator:
        runs: dict[str, list[MethodRun]] = {m: [] for m in methods}
        for _ in range(max(1, repeats)):
            for m in methods:
                runs[m].append(runners[m](q))
        row: dict[str, Any] = {"question_id": q.question_id, "category": q.category,
                               "prompt_tokens": len(engine.encode_prompt(q.messages)), "methods": {}}
        base = runs["vanilla"][0].token_ids
        for m in methods:
            rs = runs[m]
            t = statistics.median(r.time_s for r in rs)
            first = rs[0]
            row["methods"][m] = {
                "new_tokens": len(first.token_ids), "time_s": round(t, 4),
                "tokens_per_s": round(len(first.token_ids) / t, 3) if t > 0 else 0.0,
                "ttft_s": None if first.ttft_s is None else round(statistics.median(r.ttft_s for r in rs), 4),
                "mean_accepted": None if first.accepted is None else round(first.accepted, 3),
                "equal_to_vanilla": first.token_ids == base,
                "reproducible": all(r.token_ids == first.token_ids for r in rs),
                **first.extra,
            }
            if first.token_ids != base:
                row["methods"][m]["first_difference"] = _first_difference(first.token_ids, base)
            if keep_ids:
                row["methods"][m]["token_ids"] = first.token_ids
        rows.append(row)
    res = {
        **results_header(engine, "decode", max_new_tokens=max_new_tokens, temperature=temperature, repeats=repeats,
                         methods=methods, n_questions=len(questions),
                         categories=sorted({q.category for q in questions}), spec=dict(spec or {}),
                         verify_costs={str(k): round(v, 3) for k, v in (costs or {}).items()} or "defaults",
                         assistant=getattr(assistant, "name", None)),
        "methods": summarize(rows, methods),
        "by_category": {c: summarize([r for r in rows if r["category"] == c], methods)
                        for c in sorted({r["category"] for r in rows})},
        "per_question": rows,
    }
    if datastore_info is not None:
        from .datastore_corpus import corpus_effect

        pairs = [(m.removesuffix("-corpus"), m) for m in CORPUS_METHODS]
        keys = ("mean_accepted", "speedup_vs_vanilla", "tokens_per_s")
        res["datastore"] = {**datastore_info, "effect": corpus_effect(res["methods"], pairs, keys),
                            "effect_by_category": {c: corpus_effect(s, pairs, keys)
                                                   for c, s in res["by_category"].items()}}
    return res


def summarize(rows: Sequence[dict[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Aggregate per-question rows into the per-method summary."""
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        cells = [r["methods"][m] for r in rows]
        tokens = sum(c["new_tokens"] for c in cells)
        secs = sum(c["time_s"] for c in cells)
        ratios = [c["tokens_per_s"] / r["methods"]["vanilla"]["tokens_per_s"]
                  for c, r in zip(cells, rows, strict=True) if r["methods"]["vanilla"]["tokens_per_s"] > 0]
        acc = [c["mean_accepted"] for c in cells if c["mean_accepted"] is not None]
        ttft = [c["ttft_s"] for c in cells if c["ttft_s"] is not None]
        out[m] = {
            "tokens_per_s": round(tokens / secs, 3) if secs > 0 else 0.0,
            "speedup_vs_vanilla": round(statistics.median(ratios), 3) if ratios else None,
            "mean_accepted": round(statistics.fmean(acc), 3) if acc else None,
            "ttft_s": round(statistics.median(ttft), 4) if ttft else None,
            "equal_to_vanilla": round(sum(c["equal_to_vanilla"] for c in cells) / len(cells), 3),
            "n": len(cells),
        }
    return out


COLUMNS = (Column("tokens/s", "tokens_per_s"), Column("speedup vs vanilla", "speedup_vs_vanilla", ".2f", "x"),
           Column("accepted / forward", "mean_accepted"), Column("TTFT s", "ttft_s", ".3f"),
           Column("equal to vanilla", "equal_to_vanilla"))


def format_table(results: dict[str, Any], markdown: bool = False) -> str:
    """The table of a run: printed at its end, and rendered into docs/benchmarks.md (``markdown``)."""
    return format_run_table(results, COLUMNS, first="method", accepted="mean_accepted", markdown=markdown)


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))
