"""Concurrency, engine level (issue 9, part 2), on one tiny engine.

8 threads and 32 asyncio tasks call ONE engine at once with a mix of methods and context modes; every
output must equal the sequential output of the same request (greedy), nothing may deadlock (each wait has
a timeout, so a deadlock fails the test instead of hanging it), and memory must stay bounded.
"""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest
from reliability_util import rss_mb

from refrag_rasd_core.engine import Engine
from tiny import tiny_chunk_encoder, tiny_loaded, tiny_refrag

TIMEOUT_S = 120.0
PASSAGES = [
    "The Eiffel Tower is in Paris. It was finished in 1889 for the World's Fair.",
    "Mount Fuji is the highest mountain in Japan, at 3,776 metres. 🗻",
    "The cat sat on the mat; the cat sat on the hat; the cat sat on the bat.",
]
METHODS = ["vanilla", "pld", "rest", "rasd"]
CONTEXTS = ["none", "text", "compressed"]


@pytest.fixture(scope="module")
def engine():
    loaded = tiny_loaded(0, max_positions=512)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    return Engine(loaded, drafter=None, refrag=tiny_refrag(loaded, enc), refrag_encoder=enc)


def requests(n: int) -> list[dict]:
    """``n`` distinct requests cycling through methods x contexts x questions."""
    out = []
    for i in range(n):
        out.append(dict(prompt=f"Question {i}: where is the cat {i % 5}?", passages=PASSAGES[: 1 + i % 3],
                        method=METHODS[i % len(METHODS)], context=CONTEXTS[(i // 4) % len(CONTEXTS)],
                        max_new_tokens=8 + i % 5))
    return out


def run(engine: Engine, req: dict) -> list[int]:
    r = dict(req)
    return engine.generate(r.pop("prompt"), **r).token_ids


@pytest.fixture(scope="module")
def sequential(engine):
    reqs = requests(32)
    return reqs, [run(engine, r) for r in reqs]


def test_8_threads_equal_sequential(engine, sequential):
    reqs, want = sequential
    got: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    rss0 = rss_mb()

    def worker(idx: list[int]) -> None:
        try:
            for i in idx:
                got[i] = run(engine, reqs[i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(list(range(t, 32, 8)),), daemon=True) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "deadlock: a thread is still running after the timeout"
    assert not errors, errors
    assert [got[i] for i in range(32)] == want
    gc.collect()
    assert rss_mb() - rss0 < 150, "memory grew by more than 150 MB over 32 tiny requests"


def test_32_asyncio_tasks_equal_sequential(engine, sequential):
    reqs, want = sequential

    async def main() -> list[list[int]]:
        tasks = [asyncio.to_thread(run, engine, r) for r in reqs]
        return await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT_S)

    assert asyncio.run(main()) == want


def test_streams_interleaved_with_generate(engine, sequential):
    """Threads that stream (consuming piece by piece) and threads that generate, at once."""
    reqs, want = sequential
    got: dict[int, list[int]] = {}
    texts: dict[int, str] = {}

    def streamer(i: int) -> None:
        r = dict(reqs[i])
        s = engine.stream(r.pop("prompt"), **r)
        texts[i] = "".join(s)
        got[i] = list(s.token_ids)

    def generator(i: int) -> None:
        got[i] = run(engine, reqs[i])

    threads = [threading.Thread(target=streamer if i % 2 else generator, args=(i,), daemon=True) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "deadlock between streams and generate calls"
    assert [got[i] for i in range(16)] == want[:16]
    assert len(texts) == 8


def test_an_abandoned_stream_does_not_block_the_engine(engine, sequential):
    """A caller that reads two pieces and drops the stream must not keep the engine's lock."""
    reqs, want = sequential
    r = dict(reqs[0])
    s = engine.stream(r.pop("prompt"), **r)
    it = iter(s)
    next(it)
    del it, s
    gc.collect()
    done = threading.Event()
    out: list[list[int]] = []

    def call() -> None:
        out.append(run(engine, reqs[1]))
        done.set()

    threading.Thread(target=call, daemon=True).start()
    assert done.wait(TIMEOUT_S), "the dropped stream kept the engine locked"
    assert out[0] == want[1]
