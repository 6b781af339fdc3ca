"""The ``prefill`` suite: REFRAG's compressed prefill against the full-token context, same process.

For each held-out ``rag`` question and each context length (512, 2048, 7000 tokens of passages by
default: the question's own passages, filled up with passages of other questions, cut to the length),
every setting prefills the same context and scores the reference answer after it:

* ``no_context``  the question alone;          * ``full``  every passage token (plain RAG);
* ``compressed``  REFRAG with p = 0 (one vector per k tokens);
* ``compressed-<policy>-p<p>``  REFRAG with a fraction p of the chunks expanded by ``policy``.

Reported per setting and length (``methods["<setting>@<length>"]``): ``ttft_s`` (median),
``ttft_speedup_vs_full`` (median of per-question ratios), ``log_ppl`` (mean negative log-likelihood per
token of the reference answer), ``gap_recovered`` ((no_context - setting) / (no_context - full) of the mean
log_ppl; ``None`` where the full context helps by less than 0.1 nats, e.g. long filled-up contexts), ``kv_bytes``
and ``positions`` (means), and at the question's own passages (``@own``) also ``answer_recall`` (share of
questions whose greedy answer contains a reference answer).

Example (needs a question file and minutes of model time, so the test suite does not run it):
    >>> from refrag_rasd_integrations.cli.bench.prefill import run_prefill_suite       # doctest: +SKIP
    >>> res = run_prefill_suite(engine, questions, pool, contexts=[512])         # doctest: +SKIP
    >>> res["methods"]["compressed@512"]["ttft_speedup_vs_full"]                # doctest: +SKIP
    4.1
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.refrag import Passage

from .data import BenchQuestion
from .metrics import answer_recall
from .results import Column, format_table_of, machine_line, results_header

DEFAULT_CONTEXTS = (512, 2048, 7000)
DEFAULT_EXPAND = (0.0, 0.1, 0.25)
DEFAULT_POLICIES = ("random", "similarity", "perplexity", "rl")
OWN = "own"
MIN_GAP = 0.1  # nats: below this the full context barely helps and "gap recovered" is noise (reported as None)


def settings_for(expands: Sequence[float], policies: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """(name, engine overrides) of every setting, the baselines first."""
    out: list[tuple[str, dict[str, Any]]] = [("no_context", {"context": "text", "_no_passages": True}),
                                             ("full", {"context": "text"})]
    for p in expands:
        if p == 0:
            out.append(("compressed", {"context": "compressed", "expand": 0.0}))
        else:
            out.extend((f"compressed-{pol}-p{p:g}", {"context": "compressed", "expand": p, "policy": pol})
                       for pol in policies)
    return out


def fill_context(engine: Engine, own: Sequence[str], pool: Sequence[str], length: int | str) -> list[Passage]:
    """The question's passages, then pool passages, cut to exactly ``length`` passage tokens (``"own"``:
    the question's passages as they are)."""
    out: list[Passage] = []
    total = 0
    for text in [*own, *pool]:
        if length != OWN and total >= int(length):
            break
        if length == OWN and len(out) == len(own):
            break
        ids = engine.passage_token_ids([text])[0]
        if length != OWN:
            ids = ids[: int(length) - total]
        if ids:
            out.append(Passage(engine.tokenizer.decode(ids), token_ids=ids))
            total += len(ids)
    if length != OWN and total < int(length):
        raise InvalidInputError(f"not enough passages to fill a {length}-token context (have {total})")
    return out


def _attach_vectors(engine: Engine, passages: list[Passage]) -> None:
    """Precompute the chunk vectors, as a store would have at indexing time (not timed)."""
    enc = engine.refrag_encoder()
    for p, v in zip(passages, enc.encode_passages([p.token_ids for p in passages]), strict=True):
        p.chunk_embeddings = v


def run_prefill_suite(engine: Engine, questions: Sequence[BenchQuestion], pool: Sequence[str], *,
                      contexts: Sequence[int] = DEFAULT_CONTEXTS, expands: Sequence[float] = DEFAULT_EXPAND,
                      policies: Sequence[str] = DEFAULT_POLICIES, answer_tokens: int = 48,
                      repeats: int = 1, progress: bool = True) -> dict[str, Any]:
    """Run the suite; returns the results dict (``machine``, ``settings``, ``methods``, ``per_question``)."""
    rm = engine.describe()["refrag"]
    if rm is None:
        raise InvalidInputError("the prefill suite needs an engine with a REFRAG checkpoint")
    questions = [q for q in questions if q.reference and q.passages]
    if not questions:
        raise InvalidInputError("the prefill suite needs rag questions with reference answers")
    if not rm["policy"]:
        policies = [p for p in policies if p != "rl"]
    settings = settings_for(expands, policies)
    lengths: list[int | str] = [OWN, *contexts]
    rows: list[dict[str, Any]] = []
    work = [(q, c) for q in questions for c in lengths]
    if progress:
        from tqdm.auto import tqdm

        work = tqdm(work, desc="prefill suite", unit="ctx")
    warmed = False
    for q, c in work:
        question = q.prompt.split("\n")[-1]
        own = q.passages
        passages = fill_context(engine, own, [p for o in questions if o is not q for p in o.passages] + list(pool), c)
        _attach_vectors(engine, passages)
        answer = engine.passage_token_ids([" " + q.reference[0].strip()])[0]
        if not warmed:
            for _, kw in settings[:3]:
                _measure(engine, question, passages, kw, answer)
            warmed = True
        row: dict[str, Any] = {"question_id": q.question_id, "context": c,
                               "context_tokens": sum(len(p.token_ids) for p in passages), "settings": {}}
        for name, kw in settings:
            cells = [_measure(engine, question, passages, kw, answer) for _ in range(max(1, repeats))]
            cell = dict(cells[0], ttft_s=round(statistics.median(x["ttft_s"] for x in cells), 4))
            if c == OWN:
                out = engine.generate(question, passages=None if kw.get("_no_passages") else passages,
                                      max_new_tokens=answer_tokens, seed=0,
                                      **{k: v for k, v in kw.items() if not k.startswith("_")})
                cell["answer"] = out.text
                cell["answer_recall"] = answer_recall(out.text, q.reference)
            row["settings"][name] = cell
        rows.append(row)
    return {
        **results_header(engine, "prefill", k=rm["k"], encoder=rm["encoder"], checkpoint=(rm["sha256"] or "")[:16],
                         contexts=list(contexts), expand=list(expands), policies=list(policies),
                         n_questions=len(questions), answer_tokens=answer_tokens, repeats=repeats,
                         vectors="precomputed (as stored at indexing time; encoding not timed)"),
        "methods": summarize(rows, [n for n, _ in settings], lengths),
        "per_question": rows,
    }


def _measure(engine: Engine, question: str, passages: list[Passage], kw: dict[str, Any],
             answer: list[int]) -> dict[str, Any]:
    over = {k: v for k, v in kw.items() if not k.startswith("_")}
    pre = engine.prefill(question, passages=None if kw.get("_no_passages") else passages, seed=0, **over)
    cell = {"ttft_s": pre.stats.ttft_s, "positions": pre.positions, "kv_bytes": pre.kv_bytes(),
            "expanded_chunks": pre.stats.expanded_chunks, "chunks": pre.stats.chunks}
    cell["log_ppl"] = round(engine.continuation_nll(pre, answer), 4)
    return cell


def summarize(rows: Sequence[dict[str, Any]], names: Sequence[str], lengths: Sequence[int | str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in lengths:
        at = [r for r in rows if r["context"] == c]
        if not at:
            continue
        lp = {n: statistics.fmean(r["settings"][n]["log_ppl"] for r in at) for n in names}
        gap = lp["no_context"] - lp["full"]
        for n in names:
            cells = [r["settings"][n] for r in at]
            ratios = [r["settings"]["full"]["ttft_s"] / r["settings"][n]["ttft_s"] for r in at
                      if r["settings"][n]["ttft_s"] > 0]
            recall = [x["answer_recall"] for x in cells if x.get("answer_recall") is not None]
            out[f"{n}@{c}"] = {
                "ttft_s": round(statistics.median(x["ttft_s"] for x in cells), 4),
                "ttft_speedup_vs_full": round(statistics.median(ratios), 3) if ratios else None,
                "log_ppl": round(lp[n], 4),
                "gap_recovered": round((lp["no_context"] - lp[n]) / gap, 3) if gap >= MIN_GAP else None,
                "answer_recall": round(statistics.fmean(recall), 3) if recall else None,
                "kv_bytes": int(statistics.fmean(x["kv_bytes"] for x in cells)),
                "positions": round(statistics.fmean(x["positions"] for x in cells), 1),
                "n": len(cells),
            }
    return out


COLUMNS = (Column("TTFT s", "ttft_s", ".3f"), Column("TTFT speedup vs full", "ttft_speedup_vs_full", ".2f", "x"),
           Column("log-ppl", "log_ppl", ".3f"), Column("gap recovered", "gap_recovered"),
           Column("answer recall", "answer_recall"), Column("KV MiB", lambda s: s["kv_bytes"] / 2**20, ".1f"))


def format_table(results: dict[str, Any], markdown: bool = False) -> str:
    """The table of a run: printed at its end, and rendered into docs/benchmarks.md (``markdown``)."""
    table = format_table_of(results["methods"], COLUMNS, first="setting @ context", markdown=markdown)
    return table if markdown else f"{table}\nmachine: {machine_line(results['machine'])}"
