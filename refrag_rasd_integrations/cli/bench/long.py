"""The ``long`` suite: whole long documents summarized and questioned, one-pass compressed reading against what a
user does instead (truncating, map-reduce, a summary tree, retrieving pieces), in one process.

Tasks come from :mod:`.long_tasks` (a summarization file such as long PEPs with their abstracts, or SQuAD-style
articles joined into documents past the window); each document is split into 256-token passages whose chunk
embeddings are computed once beforehand (a store's indexing, reported apart as ``index_s``). Settings:

* ``truncate``                 as much of the document as text as fits the window (all of it when it fits);
* ``map-reduce``               pieces of 3,000 tokens each summarized (QA: the question answered from each), then
                               one call over the partial answers (LangChain's map-reduce);
* ``tree``                     partial summaries combined recursively (LlamaIndex's ``tree_summarize``);
* ``retrieve:K``               the K passages closest to the question as text (QA; the store's embedder, the
                               passages' vectors computed beforehand as indexing would);
* ``compressed:P[:POLICY]``    every chunk compressed, ``P`` expanded as raw tokens by ``POLICY`` (``rank``: the
                               document's beginning; ``rl``, ``question``, ``similarity``...): ``P`` <= 1 is a
                               share of the chunks, ``P`` > 1 a budget of raw tokens;
* ``default``                  what ``context="auto"`` does (text when it fits, compressed past the window).

Per setting, over documents past the window and those that fit apart: ROUGE-L and ROUGE-1 F against the
reference summary (``rouge-score``, stemmed) or answer recall and F1; total time, time to the first token of the
answer (map-reduce: all maps and the final prefill), model calls, prefill positions and the peak KV cache bytes
of one call; a row per request.

Example:
    $ refrag-rasd bench --suite long --data ../shared/data/peps_dev.jsonl --limit 6 --out auto
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError

from ...long_documents import DEFAULT_PIECE_TOKENS, read_with
from .long_tasks import LongTask
from .metrics import answer_f1, answer_recall
from .qa import compressed_amount_and_policy
from .results import Column, format_table_of, machine_line, results_header

__all__ = ["DEFAULT_SETTINGS", "LongSetting", "kv_bytes_per_position", "parse_long_settings", "run_long_suite"]

DEFAULT_SETTINGS = "truncate,map-reduce,compressed:2048:rank,default"
POLICIES = ("auto", "rl", "rank", "similarity", "question", "random")


@dataclass(frozen=True)
class LongSetting:
    """A parsed setting name (see the module docstring)."""

    name: str
    kind: str  # truncate | map-reduce | tree | retrieve | compressed | default
    amount: float | None = None  # retrieve: K; compressed: a share (<= 1) or a token budget
    policy: str | None = None

    @classmethod
    def parse(cls, name: str) -> LongSetting:
        """A setting from its name.

        Example:
            >>> LongSetting.parse("compressed:2048:rank")
            LongSetting(name='compressed:2048:rank', kind='compressed', amount=2048.0, policy='rank')
            >>> LongSetting.parse("retrieve:5").amount
            5.0
        """
        parts = name.strip().split(":")
        if parts[0] in ("truncate", "map-reduce", "tree", "default") and len(parts) == 1:
            return cls(parts[0], parts[0])
        if parts[0] == "retrieve" and len(parts) == 2 and parts[1].isdigit() and int(parts[1]) >= 1:
            return cls(name.strip(), "retrieve", float(parts[1]))
        if parts[0] == "compressed" and len(parts) in (2, 3):
            p, policy = compressed_amount_and_policy(parts)
            if p >= 0 and (p <= 1 or p.is_integer()) and policy in POLICIES:
                return cls(name.strip(), "compressed", p, policy)
        raise InvalidInputError(
            f"bad setting {name!r}: use truncate, map-reduce, tree, retrieve:K, compressed:P[:POLICY] (P a share "
            f"<= 1 or a whole number of raw tokens; POLICY one of {', '.join(POLICIES)}) or default")


def parse_long_settings(spec: str) -> list[LongSetting]:
    """``"truncate,map-reduce,compressed:0.05:rank"`` -> settings (each named once)."""
    settings = [LongSetting.parse(s) for s in spec.split(",") if s.strip()]
    names = [s.name for s in settings]
    if not settings or len(set(names)) != len(names):
        raise InvalidInputError(f"name each setting once in {spec!r}")
    return settings


def kv_bytes_per_position(engine: Engine) -> int:
    """Bytes of keys and values one position takes in the target's KV cache (every layer)."""
    cfg = engine.model.config
    heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    return 2 * int(cfg.num_hidden_layers) * heads * head_dim * engine.model.dtype.itemsize


def _rouge() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:  # pragma: no cover - the bench extra installs it
        raise InvalidInputError("the long suite scores summaries with rouge-score: pip install rouge-score") from e
    return rouge_scorer.RougeScorer(["rougeL", "rouge1"], use_stemmer=True)


def _score(task: LongTask, text: str, scorer: Any) -> dict[str, Any]:
    if task.kind == "summary":
        s = scorer.score(task.references[0], text)
        return {"rougeL": s["rougeL"].fmeasure, "rouge1": s["rouge1"].fmeasure}
    return {"answer_recall": answer_recall(text, task.references), "answer_f1": answer_f1(text, task.references)}


def _truncated(engine: Engine, task: LongTask, max_tokens: int) -> list[list[int]]:
    """The document's first passages that fit the window as text, with room for the prompt and the answer."""
    limit = engine.max_positions or 1 << 30
    room = limit - max_tokens - len(engine.encode_prompt([{"role": "user", "content": task.prompt}])) - 64
    kept, n = [], 0
    for p in task.passages:
        if n + len(p.token_ids) > room:
            break
        kept.append(p.token_ids)
        n += len(p.token_ids)
    return kept


def passage_vectors(task: LongTask) -> Any:
    """The document's passages embedded by the store's retrieval embedder (normalized): what a store holds after
    indexing, computed once per document outside any timing."""
    from ...store.embedder import default_embedder

    return default_embedder().encode([p.text for p in task.passages], normalize_embeddings=True)


def _retrieved(task: LongTask, k: int, vectors: Any) -> list[list[int]]:
    """The ``k`` passages whose ``vectors`` are closest to the question's (embedded now, as a retriever does), in
    document order."""
    from ...store.embedder import default_embedder

    sims = vectors @ default_embedder().encode([task.prompt], normalize_embeddings=True)[0]
    best = sorted(sorted(range(len(task.passages)), key=lambda i: -float(sims[i]))[:k])
    return [task.passages[i].token_ids for i in best]


def run_setting(engine: Engine, task: LongTask, setting: LongSetting, *, max_tokens: int, method: str | None,
                vectors: Any = None) -> dict[str, Any]:
    """One request under one setting: the answer and what it cost (see the module docstring); ``vectors``: the
    passages' retrieval vectors for ``retrieve:K`` (:func:`passage_vectors`, computed here when not given)."""
    if setting.kind == "retrieve" and vectors is None:
        vectors = passage_vectors(task)
    gen: dict[str, Any] = {"max_tokens": max_tokens}
    if method is not None:
        gen["method"] = method
    messages = [{"role": "user", "content": task.prompt}]
    texts = [p.text for p in task.passages]
    t0 = time.perf_counter()
    if setting.kind in ("map-reduce", "tree"):
        piece = min(DEFAULT_PIECE_TOKENS, (engine.max_positions or 1 << 30) // 2)  # a piece and its answer fit
        out = read_with("map-reduce" if setting.kind == "map-reduce" else "tree-summarize", engine, texts,
                        question=None if task.kind == "summary" else task.prompt, piece_tokens=piece, **gen)
        total = time.perf_counter() - t0
        return {"text": out.text, "total_s": total, "ttft_s": out.ttft_s, "calls": out.calls,
                "prefill_positions": out.prefill_positions, "peak_positions": out.peak_positions, "context": "text",
                "new_tokens": out.new_tokens}
    if setting.kind == "truncate":
        res = engine.generate(messages, passages=_truncated(engine, task, max_tokens), context="text", **gen)
    elif setting.kind == "retrieve":
        res = engine.generate(messages, passages=_retrieved(task, int(setting.amount or 5), vectors),
                              context="text", **gen)
    elif setting.kind == "compressed":
        amount = float(setting.amount or 0.0)
        budget = {"expand": amount} if amount <= 1 else {"expand_tokens": int(amount)}
        res = engine.generate(messages, passages=task.passages, context="compressed", policy=setting.policy,
                              **budget, **gen)
    else:
        res = engine.generate(messages, passages=task.passages, **gen)
    total = time.perf_counter() - t0
    s = res.stats
    return {"text": res.text, "total_s": total, "ttft_s": total - s.total_s + s.ttft_s, "calls": 1,
            "prefill_positions": s.prefill_positions, "peak_positions": s.prefill_positions + s.new_tokens,
            "context": s.context, "expanded_chunks": s.expanded_chunks, "chunks": s.chunks, "new_tokens": s.new_tokens}


def run_long_suite(engine: Engine, tasks: Sequence[LongTask], settings: Sequence[LongSetting], *,
                   max_tokens: int = 128, method: str | None = None, index_s: dict[str, float] | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Every task under every setting, interleaved task by task; per-setting summaries over the documents past
    the window and those that fit (see the module docstring)."""
    scorer = _rouge()
    limit = engine.max_positions
    per_pos = kv_bytes_per_position(engine)
    rows: list[dict[str, Any]] = []
    vectors: dict[str, Any] = {}  # document -> its passages' retrieval vectors (indexing, not timed)
    for i, task in enumerate(tasks):
        past = limit is not None and task.tokens + max_tokens > limit
        for setting in settings:
            if setting.kind == "retrieve" and task.document_id not in vectors:
                vectors[task.document_id] = passage_vectors(task)
            r = run_setting(engine, task, setting, max_tokens=max_tokens, method=method,
                            vectors=vectors.get(task.document_id))
            text = r.pop("text")  # scored, not kept: an answer may quote the document, which is not ours to copy
            r.update(_score(task, text, scorer), answer_chars=len(text), id=task.id, document=task.document_id,
                     kind=task.kind, setting=setting.name, document_tokens=task.tokens, past_window=past,
                     peak_kv_bytes=r.pop("peak_positions") * per_pos)
            rows.append(r)
            if progress:
                metric = r.get("rougeL", r.get("answer_recall"))
                print(f"[{i + 1}/{len(tasks)}] {task.id} ({task.tokens:,} tokens) {setting.name}: "
                      f"{metric if metric is None else round(metric, 3)} in {r['total_s']:.1f} s "
                      f"(first token {r['ttft_s']:.1f} s)", flush=True)
    res = results_header(engine, "long", n_tasks=len(tasks), n_documents=len({t.document_id for t in tasks}),
                         settings_run=[s.name for s in settings], max_tokens=max_tokens, method=method or "default",
                         kv_bytes_per_position=per_pos, window=limit)
    res["summary"] = {group: summarize_long(rows, [s.name for s in settings], past=group == "past_window")
                      for group in ("past_window", "fits")}
    res["index_s"] = {k: round(v, 3) for k, v in (index_s or {}).items()}
    res["rows"] = rows
    return res


def summarize_long(rows: Sequence[dict[str, Any]], names: Sequence[str], *, past: bool) -> dict[str, Any]:
    """Per setting, the means over the rows of documents past the window (``past``) or that fit, with total time
    and first-token ratios against ``map-reduce`` (when run)."""
    mine = [r for r in rows if r["past_window"] == past]
    out: dict[str, Any] = {}
    for name in names:
        rs = [r for r in mine if r["setting"] == name]
        if not rs:
            continue
        keys = ("rougeL", "rouge1", "answer_recall", "answer_f1", "total_s", "ttft_s", "calls", "prefill_positions",
                "peak_kv_bytes")
        out[name] = {"n": len(rs), **{k: _mean(r.get(k) for r in rs) for k in keys},
                     "max_peak_kv_bytes": max(r["peak_kv_bytes"] for r in rs)}
    base = out.get("map-reduce")
    for s in out.values():
        s["time_vs_map_reduce"] = s["total_s"] / base["total_s"] if base and base["total_s"] else None
        s["ttft_speedup_vs_map_reduce"] = base["ttft_s"] / s["ttft_s"] if base and s["ttft_s"] else None
    return out


def _mean(values: Any) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


COLUMNS = (
    Column("n", "n", "d"), Column("ROUGE-L", "rougeL", ".3f"), Column("ROUGE-1", "rouge1", ".3f"),
    Column("recall", "answer_recall", ".2f"), Column("F1", "answer_f1", ".2f"), Column("total s", "total_s", ".1f"),
    Column("first token s", "ttft_s", ".2f"), Column("time vs map-reduce", "time_vs_map_reduce", ".2f", "x"),
    Column("first token vs map-reduce", "ttft_speedup_vs_map_reduce", ".1f", "x sooner"),
    Column("calls", "calls", ".1f"), Column("positions", "prefill_positions", ".0f"),
    Column("peak KV MiB", lambda s: s["max_peak_kv_bytes"] / 2**20, ".0f"),
)


def format_long_table(res: dict[str, Any], markdown: bool = False) -> str:
    """The tables of a run (documents past the window, then those that fit)."""
    parts = []
    for group, title in (("past_window", "past the window"), ("fits", "fitting the window")):
        if res["summary"].get(group):
            parts.append(f"Documents {title}:\n\n" + format_table_of(res["summary"][group], COLUMNS,
                                                                     first="setting", markdown=markdown))
    text = "\n\n".join(parts)
    if markdown:
        return text
    return f"{text}\n{res['settings']['n_tasks']} requests; machine: {machine_line(res['machine'])}"
