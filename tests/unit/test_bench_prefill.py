"""The prefill suite on a tiny engine: every setting present, baselines consistent, numbers sane."""

from __future__ import annotations

import pytest
import torch

from refrag_rasd_core import Engine
from refrag_rasd_integrations.cli.bench.data import BenchQuestion
from refrag_rasd_integrations.cli.bench.metrics import answer_recall
from refrag_rasd_integrations.cli.bench.prefill import format_table, run_prefill_suite
from tiny import tiny_chunk_encoder, tiny_loaded, tiny_refrag

PASSAGES = ["Paris is the capital of France.", "Berlin is the capital of Germany.", "Rome is in Italy."]


@pytest.fixture(scope="module")
def engine():
    loaded = tiny_loaded(0, max_positions=1024)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    return Engine(loaded, drafter=None, refrag=tiny_refrag(loaded, enc), refrag_encoder=enc)


def test_continuation_nll_matches_a_full_forward(engine):
    q, answer = "Capital of France?", engine.passage_token_ids([" Paris"])[0]
    pre = engine.prefill(q, passages=PASSAGES, context="text")
    nll = engine.continuation_nll(pre, answer)
    ids = engine._request(q, PASSAGES, engine_cfg(context="text")).prompt_ids + answer
    with torch.no_grad():
        logits = engine.model(torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits[-len(answer) - 1:-1], -1)
    want = -lp[torch.arange(len(answer)), torch.tensor(answer)].mean()
    assert nll == pytest.approx(float(want), abs=1e-4)
    assert pre.kv_bytes() > 0 and pre.positions == len(ids) - len(answer)


def engine_cfg(**kw):
    from refrag_rasd_core.engine import GenerationConfig

    return GenerationConfig(**kw)


def test_prefill_suite_shape(engine):
    qs = [BenchQuestion(i, "rag", "\n".join(PASSAGES[i:] + PASSAGES[:i]) + "\nWhich capital?", ["Paris"])
          for i in range(2)]
    res = run_prefill_suite(engine, qs, PASSAGES * 10, contexts=[40], expands=[0.0, 0.5],
                            policies=["random", "similarity", "rl"], answer_tokens=4, progress=False)
    names = {"no_context", "full", "compressed", "compressed-random-p0.5", "compressed-similarity-p0.5",
             "compressed-rl-p0.5"}
    assert set(res["methods"]) == {f"{n}@{c}" for n in names for c in ("own", 40)}
    m = res["methods"]
    gap = m["no_context@40"]["log_ppl"] - m["full@40"]["log_ppl"]
    if gap >= 0.1:
        assert m["full@40"]["gap_recovered"] == 1.0 and m["no_context@40"]["gap_recovered"] == 0.0
    else:  # the context barely helps: the ratio would be noise
        assert m["full@40"]["gap_recovered"] is None
    assert m["compressed@40"]["positions"] < m["full@40"]["positions"]
    assert m["compressed@40"]["kv_bytes"] < m["full@40"]["kv_bytes"]
    assert m["full@own"]["answer_recall"] in (0.0, 0.5, 1.0) and m["full@40"]["answer_recall"] is None
    assert all(r["context_tokens"] == 40 for r in res["per_question"] if r["context"] == 40)
    assert "compressed-rl-p0.5@40" in format_table(res)


def test_answer_recall():
    assert answer_recall("The answer: PARIS!", ["paris"]) == 1.0
    assert answer_recall("Parisian", ["Paris"]) == 0.0
    assert answer_recall("x", []) is None
