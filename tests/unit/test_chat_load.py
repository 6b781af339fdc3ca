"""The conversation load harness on a tiny model: every conversation answered, turn 2 reuses turn 1 through the
server's prefix cache, and the served answers equal each conversation run alone with no cache."""

from __future__ import annotations

import pytest

pytest.importorskip("uvicorn")

from refrag_rasd_core.engine import Engine  # noqa: E402
from refrag_rasd_integrations.cli.bench.chat_load import run_chat_load  # noqa: E402


def test_many_clients_get_their_own_answers_and_the_cache_holds(tiny):
    engine = Engine(tiny, drafter=None, refrag=None)
    convs = [["Tell me about the old mill by the river.", "And then?"]] * 6
    res = run_chat_load(engine, convs, clients=3, prefix_cache_mb=1, max_tokens=4, warmup=2, check=6)
    assert res["answered_conversations"] == 6 and res["requests"] == 12 and not res["errors"]
    assert res["duplicate_ids"] == 0 and res["turn2_cached_share"] > 0
    assert res["equal_to_a_run_alone"] == res["checked_against_a_run_alone"] == 6
    assert engine.prefix_cache is not None and engine.prefix_cache.nbytes <= 1 << 20  # the replica's budget
