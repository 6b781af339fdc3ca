"""The committed cookbook notebooks are valid nbformat, carry their executed outputs (no errors, plots where
there are plots), match their builder (cookbook/build_notebooks.py) and are all listed in cookbook/README.md.
Executing them is tests/integration/test_cookbook.py's job."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

COOKBOOK = Path(__file__).resolve().parents[2] / "cookbook"
NOTEBOOKS = sorted(COOKBOOK.glob("[0-9][0-9]-*.ipynb"))
WITH_PLOTS = ("03-", "04-", "05-")


def _builder():
    spec = importlib.util.spec_from_file_location("cookbook_build_notebooks", COOKBOOK / "build_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_eight_notebooks_listed_in_readme() -> None:
    assert len(NOTEBOOKS) == 8
    readme = (COOKBOOK / "README.md").read_text()
    for nb in NOTEBOOKS:
        assert nb.name in readme, f"cookbook/README.md does not link {nb.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_valid_and_executed(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    assert all(c.execution_count for c in code), "a code cell was never executed (run build_notebooks.py --execute)"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], "an error output was committed"
    assert any(o.output_type == "stream" and o.name == "stdout" for o in outputs), "no printed output"
    if path.name.startswith(WITH_PLOTS):
        assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook's plots are missing"


def test_notebooks_match_their_builder() -> None:
    build = _builder()
    assert sorted(build.NOTEBOOKS) == [p.name for p in NOTEBOOKS]
    for name in build.NOTEBOOKS:
        want = [(c.cell_type, c.source) for c in build.build(name).cells]
        have = [(c.cell_type, c.source) for c in nbformat.read(COOKBOOK / name, as_version=4).cells]
        assert have == want, f"{name} differs from cookbook/build_notebooks.py: rebuild and re-execute it"
