"""A griffe extension that adapts this project's docstrings to mkdocstrings (used by mkdocs.yml only).

The package's docstrings are Google style with two habits mkdocstrings does not read as intended:

* ``Example:`` (singular) heads the doctest examples; griffe knows only ``Examples:`` and would render the
  ``>>>`` lines as Markdown (where ``x[0][1]`` is a broken link). It is renamed before parsing.
* Sphinx roles (``:class:`~refrag_rasd_core.refrag.RefragModel```, ``:func:`.layout_prompt```) become
  *optional* cross-references: a link when the target is on an API page, plain code otherwise, never a
  warning in ``mkdocs build --strict``.

The source files are never changed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`(~?)([^`<>]+?)`")


def _target(path: str, obj: griffe.Object) -> str:
    """The dotted path a role names, resolved from the documented object's module for relative names."""
    if path.startswith("."):
        base = obj.module
        package = base.path if base.is_init_module else base.path.rpartition(".")[0]
        dots = len(path) - len(path.lstrip("."))
        for _ in range(dots - 1):
            package = package.rpartition(".")[0]
        return f"{package}.{path.lstrip('.')}"
    if path.startswith(("refrag_rasd_core.", "refrag_rasd_integrations.")):
        return path
    head, _, rest = path.partition(".")
    scopes = [obj, obj.parent, obj.module]  # a method's class, a class's module, the module
    for scope in scopes:
        try:
            if scope is not None and head in scope.members:
                return scope.members[head].path + (f".{rest}" if rest else "")
        except (AttributeError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
    return path


def _role(match: re.Match[str], obj: griffe.Object) -> str:
    tilde, path = match.group(1), match.group(2).strip()
    shown = path.rsplit(".", 1)[-1] if tilde or path.startswith(".") else path
    return f'<autoref identifier="{_target(path, obj)}" optional><code>{shown}</code></autoref>'


class ProjectDocstrings(griffe.Extension):
    """Rewrite ``Example:`` to ``Examples:`` and Sphinx roles to optional autorefs, on every object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        doc = obj.docstring
        if doc is None or not doc.value:
            return
        value = _EXAMPLE.sub(r"\1Examples:", doc.value)
        value = _ROLE.sub(lambda m: _role(m, obj), value)
        doc.value = value
