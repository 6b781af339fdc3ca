"""Shared test setup: offline always; tiny in-memory models for unit tests; the real defaults, loaded once,
for tests marked ``integration``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

SHARED_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "spec_bench_dev.jsonl"


@pytest.fixture
def client(tmp_path):
    """An embedded Chroma database in the test's own folder."""
    from refrag_rasd_integrations.store import make_client

    return make_client(tmp_path / "chroma")


@pytest.fixture
def store(client):
    """The fake store (tiny tokenizer, hashing chunk encoder, bag-of-words retrieval) holding CORPUS."""
    from integration_fakes import CORPUS, fake_store

    s = fake_store(client=client)
    s.add_texts([t for t, _ in CORPUS], [m for _, m in CORPUS], batch_size=3)
    return s


class ChatRefragRasdCapabilities:
    """What langchain-tests' chat-model suites must know of ChatRefragRasd: a text model with tool calling,
    structured output and JSON mode (decoded under a grammar), without image, audio or PDF inputs (the suites
    skip those tests: the model reads text only)."""

    @property
    def chat_model_class(self):
        from refrag_rasd_integrations.langchain import ChatRefragRasd

        return ChatRefragRasd

    has_tool_calling = property(lambda self: True)
    has_tool_choice = property(lambda self: True)
    has_structured_output = property(lambda self: True)
    supports_json_mode = property(lambda self: True)
    supports_image_inputs = property(lambda self: False)


def free_port() -> int:
    """A TCP port free on loopback now."""
    from refrag_rasd_integrations.store.server import free_port as free

    return free()


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory):
    """A real ``chroma run`` server on loopback for the module (its :class:`ChromaServer`)."""
    from refrag_rasd_integrations.store.server import ChromaServer, chroma_executable

    if not chroma_executable():
        pytest.skip("the `chroma` server binary is not installed")
    server = ChromaServer(tmp_path_factory.mktemp("chroma-data"),
                          log=tmp_path_factory.mktemp("chroma-log") / "server.log").start()
    yield server
    server.stop()


def mark_async_tests(cls):
    """Mark a langchain-tests suite's coroutine tests for pytest-asyncio (strict mode); its sync tests stay
    unmarked."""
    import inspect

    for name in dir(cls):
        fn = getattr(cls, name)
        if name.startswith("test_") and inspect.iscoroutinefunction(fn):
            setattr(cls, name, pytest.mark.asyncio(fn))
    return cls


def demo_rag_questions(limit: int | None = None, n_passages: int = 4) -> list:
    """The demo corpus's questions (text every machine has; see refrag_rasd_integrations.cli.demo_corpus) as
    Spec-Bench-style ``rag`` questions: their passages, one per line, then the question."""
    from refrag_rasd_integrations.cli.bench.data import BenchQuestion
    from refrag_rasd_integrations.cli.demo_corpus import demo_rows

    rows = [r for r in demo_rows(n_passages) if r["held_out"]][:limit]
    return [BenchQuestion(r["question_id"], "rag", "\n".join([*r["passages"], r["question"]]), list(r["reference"]))
            for r in rows]


@pytest.fixture(scope="session")
def tiny():
    from tiny import tiny_loaded

    return tiny_loaded(0)


@pytest.fixture(scope="session")
def real_engine():
    """The real default engine, one per session (the docstring examples' ``engine`` too)."""
    from doctest_support import real_engine as shared

    return shared()


@pytest.fixture(scope="session")
def exact_engine(real_engine):
    """The real default model with ``weights="exact"`` (fp32, as transformers runs it): the tests that compare
    with transformers' own forward or ``generate``. The default engine runs it as stored (4-bit)."""
    from refrag_rasd_core.engine import Engine

    return real_engine if real_engine.weights == "exact" else Engine(real_engine.target, weights="exact")


@pytest.fixture(scope="session")
def real_target(real_engine):
    return real_engine.target


@pytest.fixture(autouse=True)
def _torch_threads(request):
    """Tiny models run fastest (and steadiest on a busy 2-core box) on one thread; real models use all."""
    import torch

    want = (os.cpu_count() or 1) if request.node.get_closest_marker("integration") else 1
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)
