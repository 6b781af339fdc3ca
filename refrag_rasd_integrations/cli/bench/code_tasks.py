"""The code suite's tasks: complete a function from what precedes it, with similar code retrieved as context.

* From a source tree (``--source DIR``): the Python files are split into an indexed part and a held-out part
  (:func:`split_files`, by a hash of each file's path, so the split is the same on every machine); the tasks are
  the functions of held-out files that have a docstring and at least ``min_lines`` lines of body
  (:func:`function_tasks`): the prompt is the file's preceding lines plus the signature and docstring, the
  reference the real body.
* From a HumanEval-style file (``--data FILE.jsonl``: ``task_id``, ``prompt``, optional ``canonical_solution``,
  ``test``, ``entry_point``): :func:`humaneval_tasks`.

:func:`with_passages` puts the code the store retrieves for each task's signature and docstring before its
prompt (and hands the same passages to the engine's datastore). :func:`similarity` scores a completion
against the reference body (exact lines, edit similarity).

Example:
    >>> src = "import os\\n\\ndef f(x):\\n    'Twice.'\\n    y = x\\n    return y * 2\\n"
    >>> [(t.question_id, t.reference) for t in function_tasks_of(src, "m.py", min_lines=2)]
    [('m.py::f', '    y = x\\n    return y * 2\\n')]
    >>> similarity("    y = x\\n    return y + 2\\n", "    y = x\\n    return y * 2\\n")["exact_lines"]
    0.5
"""

from __future__ import annotations

import ast
import difflib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from refrag_rasd_core.errors import InvalidInputError

__all__ = ["CodeTask", "function_tasks", "function_tasks_of", "humaneval_tasks", "similarity", "split_files",
           "with_passages"]


@dataclass(frozen=True)
class CodeTask:
    """One completion task; ``messages`` / ``passages`` / ``category`` / ``question_id`` as the decode suite reads
    a question (the prompt is raw text: no chat template)."""

    question_id: str
    prompt: str
    reference: str = ""
    context: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    test: str | None = None
    entry_point: str | None = None
    category: str = "code"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def messages(self) -> str:
        return self.prompt

    @property
    def passages(self) -> list[str]:
        return list(self.context)


def _held_out(rel: str, fraction: float, salt: str) -> bool:
    h = int(hashlib.sha256(f"{salt}\0{rel}".encode()).hexdigest()[:8], 16)
    return h < fraction * 0xFFFFFFFF


def split_files(source: str | Path, holdout_fraction: float, *, salt: str = "refrag-rasd-code"
                ) -> tuple[list[Path], list[Path]]:
    """``(indexed, held out)`` Python files under ``source`` (hidden folders and ``test`` folders skipped: a test
    suite's data files are not code to complete), each file held out with probability ``holdout_fraction``."""
    root = Path(source)
    if not root.is_dir():
        raise InvalidInputError(f"--source: {source} is not a folder")
    if not 0 < holdout_fraction < 1:
        raise InvalidInputError(f"--holdout-fraction must be between 0 and 1, got {holdout_fraction}")
    files = sorted(p for p in root.rglob("*.py") if p.is_file() and not any(
        part.startswith(".") or part in ("test", "tests", "__pycache__", "site-packages")
        for part in p.relative_to(root).parts))
    if not files:
        raise InvalidInputError(f"--source: no Python files under {source}")
    held = [f for f in files if _held_out(str(f.relative_to(root)), holdout_fraction, salt)]
    return [f for f in files if f not in set(held)], held


def function_tasks_of(text: str, rel: str, *, min_lines: int = 8, prefix_lines: int = 40) -> list[CodeTask]:
    """The tasks of one file's source ``text`` (its path ``rel`` names them)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    lines = text.splitlines(keepends=True)
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or ast.get_docstring(node) is None:
            continue
        doc = node.body[0]
        if len(node.body) < 2 or doc.end_lineno is None or node.end_lineno is None:
            continue
        body = lines[doc.end_lineno:node.end_lineno]
        if sum(1 for ln in body if ln.strip()) < min_lines:
            continue
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        prefix = "".join(lines[max(0, start - 1 - prefix_lines):doc.end_lineno])
        out.append(CodeTask(f"{rel}::{node.name}@{node.lineno}" if _dup(tree, node) else f"{rel}::{node.name}",
                            prefix, "".join(body), meta={"path": rel, "line": node.lineno}))
    return sorted(out, key=lambda t: t.meta["line"])


def _dup(tree: ast.AST, node: ast.AST) -> bool:
    name = getattr(node, "name", "")
    return sum(1 for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
               and n.name == name) > 1


def function_tasks(files: Sequence[Path], root: str | Path, *, min_lines: int = 8, prefix_lines: int = 40,
                   limit: int | None = None) -> list[CodeTask]:
    """The tasks of held-out ``files`` (relative to ``root``), at most ``limit``, spread over the files (one per
    file in turn, so a big file does not fill the sample)."""
    per_file = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        tasks = function_tasks_of(text, str(f.relative_to(root)), min_lines=min_lines, prefix_lines=prefix_lines)
        if tasks:
            per_file.append(tasks)
    out: list[CodeTask] = []
    i = 0
    while per_file and (limit is None or len(out) < limit):
        live = [t for t in per_file if i < len(t)]
        if not live:
            break
        out.extend(t[i] for t in live)
        i += 1
    return out[:limit] if limit else out


def humaneval_tasks(path: str | Path) -> list[CodeTask]:
    """Tasks of a HumanEval-format ``.jsonl`` file."""
    import json

    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise InvalidInputError(f"{path}:{n}: not JSON ({exc})") from exc
        if not isinstance(rec, dict) or not isinstance(rec.get("task_id"), str | int) or not isinstance(
                rec.get("prompt"), str):
            raise InvalidInputError(f"{path}:{n}: a HumanEval line needs 'task_id' and 'prompt'")
        out.append(CodeTask(str(rec["task_id"]), rec["prompt"], str(rec.get("canonical_solution") or ""),
                            test=rec.get("test"), entry_point=rec.get("entry_point")))
    if not out:
        raise InvalidInputError(f"{path}: no tasks")
    return out


def with_passages(tasks: Sequence[CodeTask], store: Any, k: int, *, query_lines: int = 12) -> list[CodeTask]:
    """Each task with the ``k`` passages ``store`` retrieves for the end of its prompt (signature and
    docstring) put before it, as commented context, and handed to the engine as its passages."""
    out = []
    for t in tasks:
        query = "".join(t.prompt.splitlines(keepends=True)[-query_lines:])
        hits = store.search(query, k=k) if k > 0 else []
        blocks = [f"# {p.metadata.get('path', '?')}:{p.metadata.get('start_line', '?')}\n{p.text}\n\n"
                  for p, _ in hits]
        out.append(replace(t, prompt="".join(blocks) + t.prompt, context=tuple(p.text for p, _ in hits),
                           sources=tuple(str(p.id) for p, _ in hits)))
    return out


def _body_lines(completion: str) -> list[str]:
    """The completion's lines up to where the function ends (the first non-blank line indented less than its
    first line)."""
    lines = completion.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    indent = len(first) - len(first.lstrip())
    out = []
    for ln in lines:
        if ln.strip() and len(ln) - len(ln.lstrip()) < indent:
            break
        out.append(ln)
    return out


def similarity(completion: str, reference: str) -> dict[str, float | None]:
    """How close a completion is to the real body, over the completion's length (a budget of new tokens may cut
    it short): ``exact_lines`` (share of its non-blank lines equal to the reference's line at the same place,
    whitespace ignored) and ``edit_similarity`` (difflib's ratio against the reference cut to as many lines)."""
    got = [ln for ln in _body_lines(completion) if ln.strip()]
    ref = [ln for ln in reference.splitlines() if ln.strip()]
    if not got or not ref:
        return {"exact_lines": None, "edit_similarity": None}
    n = len(got)
    exact = sum(a.strip() == b.strip() for a, b in zip(got, ref[:n], strict=False)) / n
    ratio = difflib.SequenceMatcher(None, "\n".join(got), "\n".join(ref[:n])).ratio()
    return {"exact_lines": round(exact, 4), "edit_similarity": round(ratio, 4)}
