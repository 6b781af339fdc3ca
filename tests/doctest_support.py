"""pytest plugin (``-p doctest_support``): docstring examples that need the real default models.

An example marked ``# doctest: +REAL_MODEL`` runs in the ``integration`` group (the default test run includes
it; ``-m "not integration"`` leaves it out) with these names in its namespace: ``engine`` (the shared default
engine: SmolLM2-135M-Instruct with the shipped REFRAG checkpoint and draft head, on the CPU), ``store`` (a
Chroma store in a temporary folder holding a few passages, indexed by that engine), ``question`` and
``passages`` (that question's top passages, with their stored arrays). ``$REFRAG_RASD_CHROMA_DIR`` points
at a temporary folder, so an example that opens a store by name writes nothing outside the test.
"""

from __future__ import annotations

import doctest
import functools
from typing import Any

import pytest

REAL_MODEL = doctest.register_optionflag("REAL_MODEL")

PASSAGES = [
    ("Hamlet is a tragedy written by William Shakespeare sometime between 1599 and 1601.", {"source": "hamlet"}),
    ("Paris is the capital of France. It is known for the Eiffel Tower and the Louvre.", {"source": "paris"}),
    ("Madrid is the capital of Spain. The Prado museum holds paintings by Velazquez.", {"source": "madrid"}),
]


def _needs_real_model(item: Any) -> bool:
    test = getattr(item, "dtest", None)
    return test is not None and any(ex.options.get(REAL_MODEL) for ex in test.examples)


def pytest_collection_modifyitems(items: list[Any]) -> None:
    for item in items:
        if _needs_real_model(item):
            item.add_marker(pytest.mark.integration)


@functools.cache
def real_engine() -> Any:
    """The session's one real engine (the integration tests' ``real_engine`` fixture is this one too)."""
    from refrag_rasd_core.engine import Engine
    from refrag_rasd_core.models import load_target

    return Engine(load_target(device="cpu"))


def share_real_engine() -> Any:
    """Make the real engine the shared one every framework class without ``engine=`` uses."""
    from refrag_rasd_integrations import engines

    engine = real_engine()
    for device in ("auto", "cpu"):
        engines.register_engine(engine, None, device=device)
    return engine


@functools.cache
def _real_objects(folder: str) -> dict[str, Any]:
    from refrag_rasd_integrations.store import RefragChromaStore

    engine = real_engine()
    store = RefragChromaStore("doctest-passages", path=folder, engine=engine)
    store.add_texts([t for t, _ in PASSAGES], [m for _, m in PASSAGES])
    question = "Who wrote Hamlet?"
    return {"engine": engine, "store": store, "question": question,
            "passages": [p for p, _ in store.search(question, k=2)]}


@pytest.fixture(autouse=True)
def _real_model_namespace(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if not _needs_real_model(request.node):
        return
    share_real_engine()
    folders = request.getfixturevalue("tmp_path_factory")
    monkeypatch.setenv("REFRAG_RASD_CHROMA_DIR", str(folders.mktemp("chroma-by-name")))
    request.getfixturevalue("doctest_namespace").update(_real_objects(str(folders.getbasetemp() / "doctest-store")))
