"""Offline training text every Python install has: the documentation topics and module docstrings.

Shared by the EAGLE draft-head corpus (:mod:`refrag_rasd_core.training.eagle.corpus`) and the REFRAG training corpus
(:mod:`refrag_rasd_core.training.refrag.corpus`). Importing modules to read their docstrings can run code, so
modules that start programs, open windows or exit on import are skipped, and any failure skips the module.

Example:
    >>> next(iter(pydoc_topics()))[:20] != ""
    True
    >>> any("JSON" in d for d in module_docstrings(["json"]))
    True
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from collections.abc import Iterable, Iterator
from typing import Any

# modules that run a program, open windows or print when imported
SKIP_MODULES = frozenset({"antigravity", "this", "idlelib", "turtledemo", "tkinter", "turtle", "pydoc_data",
                          "lib2to3", "ensurepip", "venv", "webbrowser"})


def pydoc_topics() -> Iterator[str]:
    """The Python documentation topics (``pydoc_data.topics``)."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]


def stdlib_names() -> list[str]:
    """Public standard-library top-level module names."""
    return sorted(n for n in sys.stdlib_module_names if not n.startswith("_"))


def _import(name: str) -> Any:
    """Import ``name``, or ``None`` when that fails in any way (some modules ``sys.exit`` on import)."""
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit):  # noqa: BLE001 - optional C parts, platform-only modules, scripts
        return None


def module_docstrings(names: Iterable[str]) -> Iterator[str]:
    """One text per module: its docstring and its classes' / functions' (longer than 80 characters), for the
    packages ``names`` and their public submodules; texts of 200 characters or less are skipped."""
    for name in names:
        if name.split(".")[0] in SKIP_MODULES:
            continue
        pkg = _import(name)
        if pkg is None:
            continue
        mods = [pkg]
        if hasattr(pkg, "__path__"):
            for info in pkgutil.iter_modules(pkg.__path__, name + "."):
                if info.name.rsplit(".", 1)[-1].startswith("_") or "test" in info.name:
                    continue
                sub = _import(info.name)
                if sub is not None:
                    mods.append(sub)
        for m in mods:
            parts = [inspect.getdoc(m) or ""]
            for _, obj in sorted(vars(m).items()):
                if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", "") == m.__name__:
                    doc = inspect.getdoc(obj)
                    if doc and len(doc) > 80:
                        parts.append(f"{obj.__name__}: {doc}")
            text = "\n\n".join(p for p in parts if p)
            if len(text) > 200:
                yield text
