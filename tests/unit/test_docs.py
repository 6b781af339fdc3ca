"""The documentation site builds with warnings as errors, and names every exception the package defines."""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("refrag_rasd_core", "refrag_rasd_integrations")
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict``: broken links, missing nav pages and docstring problems fail the build."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (it comes with the dev extra: pip install -e '.[dev]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's notice, not a build warning
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "site" / "troubleshooting" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "engine" / "index.html").is_file()


def _import_all(package: str) -> list[str]:
    """Import every module of ``package``; return those skipped for a missing optional third-party dependency."""
    pkg = importlib.import_module(package)
    skipped = []
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        try:
            importlib.import_module(info.name)
        except ImportError as exc:  # an optional extra that is not installed; our own modules must import
            if exc.name and exc.name.split(".")[0] in PACKAGES:
                raise
            skipped.append(f"{info.name} ({exc.name})")
    return skipped


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out


def test_troubleshooting_names_every_exception() -> None:
    """Every ``RefragRasdError`` subclass defined in either package has a section on docs/troubleshooting.md."""
    from refrag_rasd_core.errors import RefragRasdError

    for package in PACKAGES:
        _import_all(package)
    ours = {c for c in _subclasses(RefragRasdError) | {RefragRasdError}
            if c.__module__.split(".")[0] in PACKAGES}
    assert {"InvalidInputError", "StoreMismatchError"} <= {c.__name__ for c in ours}
    page = TROUBLESHOOTING.read_text(encoding="utf-8")
    missing = sorted(f"{c.__module__}.{c.__qualname__}" for c in ours
                     if f"## `{c.__name__}`" not in page)
    assert not missing, f"docs/troubleshooting.md has no '## `Name`' section for: {', '.join(missing)}"
