"""The ``chat`` suite: multi-turn conversations through LangChain's chat-history path
(``RunnableWithMessageHistory`` over the public chat model), each turn timed with and without the engine's
prefix cache.

Conversations:

* RAG (an NQ-open / SQuAD style file): consecutive questions grouped ``turns`` at a time; each turn retrieves
  its own top-k passages from the Chroma store and the history keeps every earlier turn's passages, questions
  and answers (REFRAG's multi-turn setting: what makes later turns long);
* MT-Bench (lines with ``turns``): the two turns of each line, no retrieval (the second refers to the first).

Settings, interleaved conversation by conversation on one engine (the prefix cache is emptied before each
conversation of each setting, so a first turn is always cold):

* ``recompute``          no prefix cache, the history read as text (every turn re-reads everything);
* ``cached``             the engine's prefix cache on, the history as text;
* ``cached+compressed``  the prefix cache on, the question's passages as text and the earlier turns' compressed
                         (``history="compressed"``: REFRAG, ``expand`` of their chunks raw by the trained policy);
* ``cached+refrag``      (not run unless asked) the prefix cache on and every turn's passages compressed, the
                         question's too: a turn reads its passages the same way before and after it becomes
                         history, so the whole prefix is reused;
* ``default``            what ``ChatRefragRasd()`` does when the user sets nothing, on an engine with the prefix
                         cache the shared engines have.

Per setting and turn: time to first token, prefill positions, cached positions, answer recall (RAG); per
setting: the whole conversation's time and the greedy equality of every turn's answer with ``recompute``'s.

Example:
    $ refrag-rasd bench --suite chat --data ../shared/data/nq_open_dev.jsonl --limit 4 --out auto
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.prefix_cache import PrefixCache
from refrag_rasd_core.qa_file import QAItem

from .metrics import answer_recall
from .results import Column, format_table_of, machine_line, results_header

SETTINGS = ("recompute", "cached", "cached+compressed", "cached+refrag", "default")
DEFAULT_SETTINGS = ("recompute", "cached", "cached+compressed", "default")
CACHE_BYTES = 512 << 20


def rag_conversations(items: Sequence[QAItem], turns: int) -> list[list[QAItem]]:
    """Consecutive questions, ``turns`` per conversation (a last incomplete group is dropped)."""
    return [list(items[i:i + turns]) for i in range(0, len(items) - turns + 1, turns)]


def mt_bench_conversations(path: str | Path) -> list[list[str]]:
    """The turns of each MT-Bench line."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("turns"), list):
            raise InvalidInputError(f"{path}:{n}: an MT-Bench line needs a list of 'turns'")
        out.append([str(t) for t in row["turns"]])
    return out


def _chain(engine: Engine, setting: str, store: Any, k: int, max_tokens: int, expand: float) -> Any:
    """The conversation chain of one setting, with its own chat history."""
    from langchain_core.chat_history import InMemoryChatMessageHistory
    from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
    from langchain_core.runnables import RunnableLambda
    from langchain_core.runnables.history import RunnableWithMessageHistory

    from ...langchain import ChatRefragRasd, PassagePrompt

    kw: dict[str, Any] = {}
    if setting in ("recompute", "cached"):
        kw["context"] = "text"
    elif setting == "cached+compressed":  # the question's passages as text, the earlier turns' compressed
        kw.update(context="text", engine_kwargs={"history": "compressed", "expand": expand, "policy": "auto"})
    elif setting == "cached+refrag":  # every turn's passages compressed: a turn reads the same way as history
        kw.update(context="compressed", engine_kwargs={"expand": expand, "policy": "auto"})
    llm = ChatRefragRasd(engine=engine, max_tokens=max_tokens, seed=0, **kw)
    prompt = ChatPromptTemplate.from_messages([MessagesPlaceholder("history"), ("human", "{question}")])
    if store is None or k == 0:
        chain: Any = prompt | llm
    else:
        retriever = store.as_retriever(k=k)
        chain = (RunnableLambda(lambda x: {**x, "context": retriever.invoke(x["question"])})
                 | PassagePrompt(template=prompt) | llm)
    history = InMemoryChatMessageHistory()
    return RunnableWithMessageHistory(chain, lambda _sid: history, input_messages_key="question",
                                      history_messages_key="history")


def run_conversation(engine: Engine, setting: str, questions: Sequence[str], *, store: Any, k: int,
                     max_tokens: int, expand: float, cache: PrefixCache) -> dict[str, Any]:
    """One conversation under one setting: per-turn statistics and answers."""
    engine.prefix_cache = None if setting == "recompute" else cache
    cache.clear()
    chain = _chain(engine, setting, store, k, max_tokens, expand)
    turns = []
    t0 = time.perf_counter()
    for q in questions:
        msg = chain.invoke({"question": q}, config={"configurable": {"session_id": "bench"}})
        s = msg.response_metadata["stats"]
        # the question's text is not kept: it belongs to the data file, read at run time (ids name it)
        turns.append({"turn": len(turns) + 1, "answer": msg.content, "ttft_s": s["ttft_s"], "total_s": s["total_s"],
                      "prefill_positions": s["prefill_positions"], "cached_tokens": s["cached_tokens"],
                      "prompt_tokens": s["prompt_tokens"], "new_tokens": s["new_tokens"],
                      "context": msg.response_metadata["context"]})
    return {"turns": turns, "seconds": round(time.perf_counter() - t0, 3), "cache_bytes": cache.nbytes}


def run_chat_suite(engine: Engine, conversations: Sequence[Sequence[Any]], *, store: Any = None, k: int = 3,
                   settings: Sequence[str] = DEFAULT_SETTINGS, max_tokens: int = 32, expand: float = 0.25
                   ) -> dict[str, Any]:
    """Every conversation under every setting (see the module docstring). A conversation is a list of
    :class:`QAItem` (RAG, answers scored) or of question strings (MT-Bench)."""
    bad = [s for s in settings if s not in SETTINGS]
    if bad:
        raise InvalidInputError(f"unknown chat setting(s) {', '.join(bad)}; choose from {', '.join(SETTINGS)}")
    cache = PrefixCache(CACHE_BYTES)
    saved = engine.prefix_cache
    rows = []
    try:
        for n, conv in enumerate(conversations):
            questions = [c.question if isinstance(c, QAItem) else str(c) for c in conv]
            row: dict[str, Any] = {"conversation": n, "settings": {}}
            for setting in settings:
                out = run_conversation(engine, setting, questions, store=store, k=k, max_tokens=max_tokens,
                                       expand=expand, cache=cache)
                for t, c in zip(out["turns"], conv, strict=True):
                    if isinstance(c, QAItem):
                        t["question_id"] = c.qid
                        t["answer_recall"] = answer_recall(t["answer"], c.answers)
                row["settings"][setting] = out
            rows.append(row)
    finally:
        engine.prefix_cache = saved
    return {**results_header(engine, "chat", n_conversations=len(conversations),
                             turns=max((len(c) for c in conversations), default=0), k=k, max_tokens=max_tokens,
                             expand=expand, prefix_cache_bytes=CACHE_BYTES),
            "methods": summarize_chat(rows, settings), "per_conversation": rows}


def summarize_chat(rows: Sequence[dict[str, Any]], settings: Sequence[str]) -> dict[str, Any]:
    """Per setting: median time to first token per turn, the speedup over ``recompute`` at each turn, cached
    share, answer recall per turn, whole-conversation time and greedy equality with ``recompute``."""
    out: dict[str, Any] = {}
    n_turns = max((len(r["settings"][settings[0]]["turns"]) for r in rows), default=0)
    for s in settings:
        runs = [r["settings"][s] for r in rows]
        per_turn = []
        for i in range(n_turns):
            ts = [run["turns"][i] for run in runs if i < len(run["turns"])]
            base = [r["settings"]["recompute"]["turns"][i] for r in rows if "recompute" in r["settings"]]
            ttft = statistics.median(t["ttft_s"] for t in ts)
            cell = {"ttft_s": round(ttft, 4), "prefill_positions": round(statistics.mean(t["prefill_positions"]
                                                                                        for t in ts), 1),
                    "cached_share": round(statistics.mean(t["cached_tokens"] / max(t["prefill_positions"], 1)
                                                          for t in ts), 3)}
            if base:
                cell["ttft_speedup_vs_recompute"] = round(statistics.median(b["ttft_s"] for b in base) / ttft, 2)
                cell["equal_to_recompute"] = round(statistics.mean(
                    float(t["answer"] == b["answer"]) for t, b in zip(ts, base, strict=True)), 3)
            if all("answer_recall" in t for t in ts):
                cell["answer_recall"] = round(statistics.mean(t["answer_recall"] for t in ts), 3)
            per_turn.append(cell)
        out[s] = {"per_turn": per_turn, "conversation_s": round(statistics.median(r["seconds"] for r in runs), 2),
                  "peak_cache_bytes": max(r["cache_bytes"] for r in runs)}
    return out


def format_chat_table(res: dict[str, Any], markdown: bool = False) -> str:
    """Per setting and turn: TTFT (speedup vs recompute), cached share, recall, equality (``markdown``, for the
    docs: the first, middle and last turns only)."""
    rows: dict[str, dict[str, Any]] = {}
    for name, m in res["methods"].items():
        n = len(m["per_turn"])
        for i, t in enumerate(m["per_turn"], 1):
            if not markdown or i in (1, (n + 1) // 2, n):
                rows[f"{name}, turn {i}"] = {**t, "conversation_s": m["conversation_s"] if i == 1 else None}
    cols = [Column("TTFT s", "ttft_s", ".3f"), Column("vs recompute", "ttft_speedup_vs_recompute", ".2f", "x"),
            Column("prefill positions", "prefill_positions", ".0f"), Column("cached", "cached_share", ".2f"),
            Column("answer recall", "answer_recall", ".2f"), Column("equal to recompute", "equal_to_recompute", ".2f"),
            Column("conversation s", "conversation_s", ".1f")]
    return machine_line(res["machine"]) + "\n\n" + format_table_of(rows, cols, first="setting, turn",
                                                                   markdown=markdown)


__all__ = ["DEFAULT_SETTINGS", "SETTINGS", "format_chat_table", "mt_bench_conversations", "rag_conversations",
           "run_chat_suite", "run_conversation", "summarize_chat"]
