"""Source code into documents for the store (``refrag-rasd index SRC/ --code``, ``store.add_code``): each file
split at function and class boundaries by LangChain's ``RecursiveCharacterTextSplitter`` with its language
separators (Python's extended with indented methods), chunks of at most ``max_tokens`` decoder tokens, each with
its path, language, first and last line and, for Python, the symbol it sits in (``Class.method``, found with
:mod:`ast`) in its metadata.

Example:
    >>> code = "import os\\n\\nclass A:\\n    def f(self):\\n        return 1\\n\\n"
    >>> code += "    def g(self):\\n        return 2\\n"
    >>> [(c.start_line, c.end_line, c.symbol) for c in split_code(code, "python", len, 45)]
    [(1, 1, ''), (3, 5, 'A'), (7, 8, 'A.g')]
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refrag_rasd_core.errors import InvalidInputError

from ..errors import StoreError
from ..passages import SOURCE_KEY
from .documents import binary_reason
from .sources import file_source

__all__ = ["CODE_SUFFIXES", "CodeChunk", "code_files", "iter_code_documents", "python_symbols", "split_code"]

CODE_SUFFIXES = {".py": "python", ".pyi": "python", ".js": "js", ".mjs": "js", ".ts": "ts", ".go": "go",
                 ".rs": "rust", ".java": "java", ".kt": "kotlin", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp",
                 ".hpp": "cpp", ".rb": "ruby", ".php": "php", ".scala": "scala", ".swift": "swift", ".lua": "lua",
                 ".cs": "csharp"}
"""The files a folder is walked for with ``--code``, and the splitter language of each."""
_PY_EXTRA = ["\n    def ", "\n    async def ", "\nasync def ", "\n@", "\n    @"]  # methods, coroutines, decorators


@dataclass(frozen=True)
class CodeChunk:
    """One piece of a source file: its text, its first and last line (1-based) and its enclosing symbol."""

    text: str
    start_line: int
    end_line: int
    symbol: str = ""


def _splitter(language: str, count: Callable[[str], int], max_tokens: int) -> Any:
    try:
        from langchain_text_splitters import Language, RecursiveCharacterTextSplitter
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise StoreError("--code needs langchain-text-splitters: pip install 'refrag-rasd-integrations[code]'"
                         ) from exc
    seps = RecursiveCharacterTextSplitter.get_separators_for_language(Language(language))
    if language == "python":
        seps = seps[:3] + _PY_EXTRA + seps[3:]
    return RecursiveCharacterTextSplitter(separators=seps, keep_separator="start", chunk_size=max_tokens,
                                          chunk_overlap=0, length_function=count, strip_whitespace=False)


def python_symbols(text: str) -> list[tuple[int, int, str]]:
    """``(first line, last line, qualified name)`` of every function and class in Python source (decorators
    included; ``[]`` when it does not parse)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    out: list[tuple[int, int, str]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                start = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                out.append((start, child.end_lineno or child.lineno, name))
                walk(child, name + ".")
            else:
                walk(child, prefix)

    walk(tree, "")
    return out


def split_code(text: str, language: str, count: Callable[[str], int], max_tokens: int) -> list[CodeChunk]:
    """``text`` (source in ``language``, a LangChain ``Language`` value) as chunks of at most ``max_tokens`` as
    ``count`` measures (a single over-long line may exceed it: the store's splitter cuts it later), each
    with its lines and, for Python, the innermost function or class holding its first code line."""
    if language not in {v for v in CODE_SUFFIXES.values()}:
        raise InvalidInputError(f"unknown code language {language!r}; choose one of "
                                f"{', '.join(sorted(set(CODE_SUFFIXES.values())))}")
    pieces = _splitter(language, count, max_tokens).split_text(text)
    symbols = python_symbols(text) if language == "python" else []
    out: list[CodeChunk] = []
    line = 1
    for piece in pieces:
        lead = len(piece) - len(piece.lstrip("\n"))
        first = line + lead
        last = line + piece.rstrip("\n").count("\n")
        line += piece.count("\n")
        if not piece.strip():
            continue
        holding = [s for s in symbols if s[0] <= first <= s[1]]
        symbol = max(holding, key=lambda s: s[0])[2] if holding else ""
        out.append(CodeChunk(piece.strip("\n"), first, last, symbol))
    return out


def _code_files(path: Path) -> list[Path]:
    if not path.exists():
        raise InvalidInputError(f"no such file or folder: {path}")
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in CODE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(path).parts))


def code_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The files ``--code`` reads under ``paths`` (an :class:`InvalidInputError` for a missing path)."""
    return [f for given in paths for f in _code_files(Path(given))]


def iter_code_documents(paths: Iterable[str | os.PathLike], count: Callable[[str], int], max_tokens: int, *,
                        encoding: str = "utf-8", exclude: Callable[[Path], bool] | None = None,
                        on_skip: Callable[[str, str], None] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(chunk text, metadata)`` of every code chunk of the files given (folders walked for
    :data:`CODE_SUFFIXES`; ``exclude(path)`` leaves a file out). Metadata: ``source`` (the file's resolved
    path, as text indexing records it), ``path`` (relative to the folder given), ``language``, ``symbol``,
    ``start_line``, ``end_line``."""
    for given in paths:
        root = Path(given)
        for f in _code_files(root):
            if exclude is not None and exclude(f):
                continue
            why = binary_reason(f, encoding)
            if why is not None:
                if on_skip is not None:
                    on_skip(str(f), why)
                continue
            language = CODE_SUFFIXES.get(f.suffix.lower(), "python")
            text = f.read_text(encoding=encoding)
            rel = str(f.relative_to(root)) if root.is_dir() else f.name
            for c in split_code(text, language, count, max_tokens):
                yield c.text, {SOURCE_KEY: file_source(f), "path": rel, "language": language, "symbol": c.symbol,
                               "start_line": c.start_line, "end_line": c.end_line}
