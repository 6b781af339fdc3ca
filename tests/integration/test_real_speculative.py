"""Every speculative method on the real default model with RAG prompts (Spec-Bench's from ../shared/data when
it is there, else the demo corpus's): the greedy output equals vanilla's. A divergence is only tolerated at a
float32 near-tie, and is then reported with the logit margin (a warning in the test summary), never hidden."""

from __future__ import annotations

import warnings

import pytest
import torch

from refrag_rasd_integrations.cli.bench.data import load_questions

pytestmark = pytest.mark.integration
TIE_MARGIN = 1e-3


@pytest.fixture(scope="module")
def questions():
    from conftest import SHARED_DEV, demo_rag_questions

    if SHARED_DEV.exists():  # Spec-Bench, read at run time from ../shared/data (never copied into the project)
        return load_questions(SHARED_DEV, "rag", limit=2)
    return demo_rag_questions(limit=2)  # a fresh machine: the demo corpus's questions


def _margin_at(engine, prompt_ids, prefix):
    with torch.no_grad():
        logits = engine.model(torch.tensor([prompt_ids + prefix])).logits[0, -1].float()
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


@pytest.mark.parametrize("method", ["pld", "rest", "draft", "rasd"])
def test_greedy_equals_vanilla_on_rag(real_engine, questions, method):
    if method == "draft" and real_engine.drafter is None:
        pytest.skip("no shipped draft head for the default model in this checkout")
    for q in questions:
        base = real_engine.generate(q.messages, method="vanilla", max_new_tokens=40)
        res = real_engine.generate(q.messages, passages=q.passages, context="none", method=method, max_new_tokens=40)
        if res.token_ids == base.token_ids:
            continue
        i = next(k for k, (a, b) in enumerate(zip(res.token_ids, base.token_ids, strict=False)) if a != b)
        margin = _margin_at(real_engine, real_engine.encode_prompt(q.messages), base.token_ids[:i])
        assert margin < TIE_MARGIN, (
            f"{method} diverged from vanilla at token {i} of question {q.question_id} with a clear logit "
            f"margin {margin:.4g}: a real bug, not a float tie")
        warnings.warn(f"{method}: question {q.question_id} diverges at token {i} at a float32 near-tie "
                      f"(top-2 logit margin {margin:.2e})", stacklevel=1)


def test_rasd_accepts_more_than_one_token_per_forward(real_engine, questions):
    q = questions[0]
    res = real_engine.generate(q.messages, passages=q.passages, method="rasd", max_new_tokens=64)
    assert res.stats.target_forwards < res.stats.new_tokens - 1
    assert res.stats.accepted_per_forward > 1.0
