"""The packages' import graph, read from the source with ``ast`` (nothing is imported): no module-level
import cycles, and the engine (``refrag_rasd_core``) never imports LangChain, LlamaIndex or Chroma.

Module-level imports are the ones that run when a module is imported: at the top of the module and inside
module-level ``if`` / ``try`` / ``with`` blocks, but not under ``if TYPE_CHECKING:`` nor inside functions or
classes' methods. ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``;
importing ``a.b.c`` also runs ``a`` and ``a.b``, so those are edges too.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"refrag_rasd_core": ROOT / "core" / "refrag_rasd_core",
            "refrag_rasd_integrations": ROOT / "refrag_rasd_integrations"}
FRAMEWORKS = ("langchain", "langchain_core", "langchain_text_splitters", "llama_index", "chromadb")


def _modules() -> dict[str, Path]:
    """Every module of the packages by dotted name (a package by its ``__init__.py``)."""
    out: dict[str, Path] = {}
    for pkg, folder in PACKAGES.items():
        for f in sorted(folder.rglob("*.py")):
            parts = [pkg, *f.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of ``body`` that run when the module is imported."""
    out: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        elif isinstance(node, ast.ClassDef):  # a class body runs on import; its methods do not
            out.extend(_module_level_imports(node.body))
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            out.extend(_module_level_imports(node.orelse))
        else:  # if / try / with / for blocks at module level run on import
            children = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
            children += [s for h in getattr(node, "handlers", []) for s in h.body]  # except blocks
            out.extend(_module_level_imports(children))
    return out


def _resolve(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names an import statement imports (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


@functools.cache
def _edges(module_level: bool) -> dict[str, set[str]]:
    """Module -> the modules of the packages (and the outside top-level packages) it imports."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        nodes = _module_level_imports(tree.body) if module_level else [
            n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        targets: set[str] = set()
        for node in nodes:
            for name in _resolve(module, path, node):
                parts = name.split(".")
                if parts[0] not in PACKAGES:
                    targets.add(parts[0])
                    continue
                # importing a.b.c runs a, a.b and a.b.c; a module never "imports" its own parent packages
                targets.update(p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1))
                               if p in MODULES and not module.startswith(p + ".") and p != module)
        graph[module] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_parser_sees_the_packages():
    graph = _edges(module_level=True)
    assert "refrag_rasd_integrations.store.chroma_store" in graph
    assert "refrag_rasd_integrations.store.client" in graph["refrag_rasd_integrations.store.chroma_store"]
    assert "refrag_rasd_integrations.store" in graph["refrag_rasd_integrations.langchain.vectorstores"]
    assert "langchain_core" in graph["refrag_rasd_integrations.langchain.vectorstores"]


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c", "outside"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_module_level_import_cycles():
    cycles = _cycles(_edges(module_level=True))
    assert cycles == [], "module-level import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_store_does_not_import_the_framework_adapters():
    graph = _edges(module_level=True)
    store = [m for m in graph
             if m == "refrag_rasd_integrations.store" or m.startswith("refrag_rasd_integrations.store.")]
    bad = {m: sorted(t for t in graph[m] if t.startswith(("refrag_rasd_integrations.langchain",
                                                           "refrag_rasd_integrations.llama_index", *FRAMEWORKS)))
           for m in store}
    assert {m: t for m, t in bad.items() if t} == {}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("refrag_rasd_core")))
def test_core_never_imports_the_frameworks(module):
    """Not at module level, not lazily inside a function either."""
    graph = _edges(module_level=False)
    assert sorted(t for t in graph[module] if t in FRAMEWORKS or t.startswith("refrag_rasd_integrations")) == []
