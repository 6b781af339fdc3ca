"""The ``structured`` suite: JSON extraction from a retrieved passage and tool selection, every decoding method
constrained (under the grammar) and unconstrained (the same prompt, schema shown, no grammar), greedy, in one
process.

* **extraction**: each question of a QA file with its gold passage as the retrieved one (plain RAG) must be
  answered as ``{"answer": ..., "source": ...}`` (the answer, and the title of the passage it came from);
  field accuracy: a gold answer contained in ``answer`` and ``source`` equal to the passage's title;
* **tools**: three tools (``search_wikipedia``, ``calculator``, ``get_weather``), each offered with
  ``tool_choice="required"`` for questions written here (arithmetic and weather) and the QA file's questions
  (which need the search): the right tool chosen, and its arguments valid against its schema.

Per method and mode: ``valid`` (the share of answers that parse and validate), the field accuracies,
``decode_tokens_per_s`` (tokens after the first per second of decoding, all answers together),
``speedup_vs_vanilla`` (against the same mode's plain decoding), ``equal_to_vanilla`` (outputs identical to the
same mode's plain decoding), ``accepted_per_forward`` and ``grammar_ms_per_token`` (mask and tree-shaping time).

Example:
    $ refrag-rasd bench --suite structured --data ../shared/data/nq_open_dev.jsonl --limit 12 --out auto
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.qa_file import QAItem
from refrag_rasd_core.structured import ResponseFormat, parse_tool_calls, render_tool_messages

from .metrics import answer_recall
from .results import Column, format_table_of, machine_line, results_header

METHODS = ("vanilla", "pld", "rest", "draft", "rasd")
MODES = ("constrained", "unconstrained")


class Extraction(BaseModel):
    """The extraction task's answer."""

    answer: str
    source: str


TOOLS = [
    {"type": "function", "function": {"name": "search_wikipedia", "description": "Look up a fact in Wikipedia",
                                      "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                                                     "required": ["query"]}}},
    {"type": "function", "function": {"name": "calculator", "description": "Evaluate an arithmetic expression",
                                      "parameters": {"type": "object",
                                                     "properties": {"expression": {"type": "string"}},
                                                     "required": ["expression"]}}},
    {"type": "function", "function": {"name": "get_weather", "description": "The weather forecast of a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
]
CITIES = ("Lisbon", "Nairobi", "Osaka", "Lima", "Oslo", "Hanoi", "Quito", "Perth")


def written_tool_questions(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` arithmetic and weather questions written here, with the tool each needs."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2 == 0:
            a, b = rng.randint(12, 99), rng.randint(12, 99)
            out.append((f"What is {a} times {b}?", "calculator"))
        else:
            out.append((f"Will it rain in {rng.choice(CITIES)} tomorrow?", "get_weather"))
    return out


def _title(item: QAItem) -> str:
    return item.gold[0].split("\n", 1)[0].strip() if item.gold else ""


def _extraction_prompt(item: QAItem) -> list[dict[str, Any]]:
    return [{"role": "user", "content": item.question}]


def _score_extraction(text: str, item: QAItem) -> dict[str, Any]:
    try:
        got = Extraction.model_validate_json(text)
    except ValidationError:
        return {"valid": 0.0, "answer_right": 0.0, "source_right": 0.0}
    return {"valid": 1.0, "answer_right": float(answer_recall(got.answer, item.answers) or 0.0),
            "source_right": float(got.source.strip().lower() == _title(item).lower())}


def _score_tool(text: str, want: str) -> dict[str, Any]:
    _, calls = parse_tool_calls(text)
    if len(calls) != 1:
        return {"valid": 0.0, "tool_right": 0.0}
    call = calls[0]
    spec = next((t["function"] for t in TOOLS if t["function"]["name"] == call["name"]), None)
    ok = spec is not None and set(spec["parameters"]["required"]) <= set(call["arguments"]) and all(
        isinstance(v, str) for v in call["arguments"].values())
    return {"valid": float(ok), "tool_right": float(call["name"] == want)}


def _tasks(items: Sequence[QAItem]) -> list[dict[str, Any]]:
    """Extraction and tool tasks: each QA item twice (extraction; the search tool), plus as many written tool
    questions."""
    tasks: list[dict[str, Any]] = []
    for item in items:
        tasks.append({"kind": "extraction", "id": item.qid, "item": item})
    for item in items:
        tasks.append({"kind": "tools", "id": f"{item.qid}:search", "question": item.question,
                      "want": "search_wikipedia"})
    for i, (q, want) in enumerate(written_tool_questions(len(items))):
        tasks.append({"kind": "tools", "id": f"written-{i}", "question": q, "want": want})
    return tasks


def _run_one(engine: Engine, task: dict[str, Any], method: str, mode: str, max_tokens: int) -> dict[str, Any]:
    constrained = mode == "constrained"
    if task["kind"] == "extraction":
        item = task["item"]
        fmt = ResponseFormat.of(Extraction)
        prompt: Any = _extraction_prompt(item)
        settings: dict[str, Any] = {"passages": list(item.gold), "context": "text"}
        if constrained:
            settings["response_format"] = fmt
        else:  # the same prompt: the schema shown, no grammar
            prompt = [{"role": "system", "content": fmt.instruction()}, *prompt]
    else:
        prompt = [{"role": "user", "content": task["question"]}]
        settings = {"tools": TOOLS, "tool_choice": "required"}
        if not constrained:  # the same prompt (the tools shown), the answer free
            prompt = render_tool_messages(prompt, TOOLS)
            settings = {}
    res = engine.generate(prompt, method=method, max_tokens=max_tokens, **settings)
    score = (_score_extraction(res.text, task["item"]) if task["kind"] == "extraction"
             else _score_tool(res.text, task["want"]))
    s = res.stats
    return {"id": task["id"], "kind": task["kind"], "method": method, "mode": mode, "token_ids": res.token_ids,
            "new_tokens": s.new_tokens, "decode_s": s.decode_s, "target_forwards": s.target_forwards,
            "grammar_s": s.grammar_s, "finish_reason": res.finish_reason, **score}


def run_structured_suite(engine: Engine, items: Sequence[QAItem], *, methods: Sequence[str] = METHODS,
                         max_tokens: int = 64) -> dict[str, Any]:
    """Every task with every method in both modes, interleaved task by task (see the module docstring)."""
    methods = ["vanilla", *[m for m in methods if m != "vanilla"]]
    tasks = _tasks(items)
    runs: list[dict[str, Any]] = []
    for task in tasks:
        for mode in MODES:
            for method in methods:
                runs.append(_run_one(engine, task, method, mode, max_tokens))
    summary: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        base = {r["id"]: r["token_ids"] for r in runs if r["mode"] == mode and r["method"] == "vanilla"}
        base_rate = None
        for method in methods:
            rows = [r for r in runs if r["mode"] == mode and r["method"] == method]
            tokens = sum(max(r["new_tokens"] - 1, 0) for r in rows)
            rate = tokens / max(sum(r["decode_s"] for r in rows), 1e-9)
            base_rate = rate if method == "vanilla" else base_rate
            ext = [r for r in rows if r["kind"] == "extraction"]
            tools = [r for r in rows if r["kind"] == "tools"]
            summary[f"{method} {mode}"] = {
                "method": method, "mode": mode,
                "valid": statistics.mean(r["valid"] for r in rows),
                "extraction_answer_right": statistics.mean(r["answer_right"] for r in ext) if ext else None,
                "extraction_source_right": statistics.mean(r["source_right"] for r in ext) if ext else None,
                "tool_right": statistics.mean(r["tool_right"] for r in tools) if tools else None,
                "decode_tokens_per_s": rate,
                "speedup_vs_vanilla": rate / base_rate if base_rate else None,
                "equal_to_vanilla": statistics.mean(float(r["token_ids"] == base[r["id"]]) for r in rows),
                "accepted_per_forward": tokens / max(sum(r["target_forwards"] for r in rows), 1),
                "grammar_ms_per_token": 1000 * sum(r["grammar_s"] for r in rows) / max(
                    sum(r["new_tokens"] for r in rows), 1),
                "tokens": sum(r["new_tokens"] for r in rows),
            }
    res = results_header(engine, "structured", n_questions=len(items), n_tasks=len(tasks), methods=methods,
                         max_tokens=max_tokens, tools=[t["function"]["name"] for t in TOOLS],
                         schema=json.loads(ResponseFormat.of(Extraction).spec))
    res["methods"] = summary
    res["per_task"] = [{k: v for k, v in r.items() if k != "token_ids"} for r in runs]
    return res


COLUMNS = (
    Column("valid", "valid", ".0%"), Column("answer right", "extraction_answer_right", ".0%"),
    Column("source right", "extraction_source_right", ".0%"), Column("tool right", "tool_right", ".0%"),
    Column("tok/s", "decode_tokens_per_s", ".1f"), Column("vs vanilla", "speedup_vs_vanilla", ".2f", "x"),
    Column("= vanilla", "equal_to_vanilla", ".0%"), Column("acc/fwd", "accepted_per_forward", ".2f"),
    Column("grammar ms/tok", "grammar_ms_per_token", ".3f"),
)


def format_structured_table(res: dict[str, Any], markdown: bool = False) -> str:
    """The table of a run (printed at its end; rendered into docs/benchmarks.md with ``markdown``)."""
    table = format_table_of(res["methods"], COLUMNS, first="method, mode", markdown=markdown)
    if markdown:
        return table
    return (f"{table}\n{res['settings']['n_tasks']} tasks from {res['settings']['n_questions']} questions; "
            f"machine: {machine_line(res['machine'])}")
