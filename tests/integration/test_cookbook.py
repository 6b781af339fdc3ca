"""Execute every cookbook notebook top to bottom on the real default models (offline), in a kernel of this very
interpreter, with ``cookbook/`` as the working folder. A COPY of each notebook is executed: the committed files
keep their recorded outputs. Any cell error fails the test, with the cell's source and traceback."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.integration

COOKBOOK = Path(__file__).resolve().parents[2] / "cookbook"
NOTEBOOKS = sorted(COOKBOOK.glob("[0-9][0-9]-*.ipynb"))
KERNEL = "refrag-rasd-cookbook"
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A kernelspec whose interpreter is ``sys.executable`` (not whatever ``python3`` kernel a machine has)."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    spec.joinpath("kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "refrag-rasd cookbook", "language": "python"}))
    return root


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path: Path, kernel_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(kernel_env), os.environ.get("JUPYTER_PATH")])))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # one torch thread in the kernel: on a small shared CPU two threads contend badly (3-7x slower measured)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    committed = path.read_bytes()
    nb = nbformat.reads(committed.decode("utf-8"), as_version=4)
    for cell in nb.cells:  # run from a clean slate
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
                            resources={"metadata": {"path": str(COOKBOOK)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as exc:
        pytest.fail(f"{path.name}: a cell failed:\n{exc}", pytrace=False)
    elapsed = time.perf_counter() - t0
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code"), "a code cell did not run"
    assert path.read_bytes() == committed, f"{path.name} was rewritten by its own execution"
    print(f"{path.name}: {elapsed:.0f} s")
