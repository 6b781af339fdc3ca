"""The engine on the real default model (SmolLM2-135M-Instruct, offline): greedy output equals
transformers' ``generate`` token for token on RAG prompts (the demo corpus's questions with their passages),
and the CLI streams an answer."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rag_questions():
    from conftest import demo_rag_questions

    return demo_rag_questions(limit=2)


def test_greedy_equals_generate_on_rag_prompts(exact_engine, rag_questions):
    for q in rag_questions:
        res = exact_engine.generate(q.messages, max_new_tokens=24)
        ids = torch.tensor([exact_engine.encode_prompt(q.messages)])
        ref = exact_engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                                         do_sample=False)
        assert res.token_ids == ref[0, ids.shape[1]:].tolist()
        assert res.stats.prompt_tokens > 300 and res.stats.ttft_s > 0


def test_answer_is_coherent(real_engine):
    res = real_engine.generate([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=20)
    assert "Paris" in res.text


def test_cli_generate_streams(capsys):
    from refrag_rasd_integrations.cli import main

    assert main(["generate", "Name a primary colour.", "--max-new-tokens", "12", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip()
    assert "tokens per forward" in captured.err
