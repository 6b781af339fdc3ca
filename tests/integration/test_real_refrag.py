"""REFRAG with the shipped checkpoint on the real default models: a demo-corpus question (with the passages
around its answer) answered from compressed passages (stored chunk vectors, no encoder at query time), RASD over
the compressed cache equal to vanilla over it, and the compressed prefill far shorter than the text one."""

from __future__ import annotations

import warnings

import pytest

from refrag_rasd_core.refrag import DEFAULT_REFRAG_CHECKPOINT, Passage
from refrag_rasd_integrations.cli.demo_corpus import demo_rows

pytestmark = pytest.mark.integration
TIE_MARGIN = 1e-3  # as in test_real_speculative: below this top-2 logit margin a divergence is a float32 tie


@pytest.fixture(scope="module")
def question():
    return next(r for r in demo_rows(n_passages=5) if r["held_out"])


@pytest.fixture(scope="module")
def stored(real_engine, question):
    assert DEFAULT_REFRAG_CHECKPOINT.exists(), "the shipped REFRAG checkpoint is missing"
    assert real_engine.refrag is not None and real_engine.refrag.k == 16
    ids = real_engine.passage_token_ids(question["passages"])
    vecs = real_engine.refrag_encoder().encode_passages(ids)  # what the store keeps, made at indexing time
    return [Passage(t, token_ids=i, chunk_embeddings=v) for t, i, v in zip(question["passages"], ids, vecs,
                                                                           strict=True)]


def test_shipped_checkpoint_answers_from_compressed_passages(real_engine, question, stored):
    enc = real_engine.refrag_encoder()
    calls = {"n": 0}
    hook = enc.model.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        out = real_engine.generate(question["question"], passages=stored, context="compressed", method="vanilla",
                                   max_new_tokens=32)
    finally:
        hook.remove()
    assert calls["n"] == 0
    s = out.stats
    assert s.chunks >= sum(len(p.token_ids) for p in stored) // 16
    assert s.prefill_positions < s.prompt_tokens / 4  # ~one position per 16 passage tokens
    words = out.text.split()
    assert len(words) >= 3 and sum(w.isascii() for w in words) / len(words) > 0.8  # readable text


def _logit_margin(engine, prompt, passages, expand, prefix, a, b) -> float:
    """log p(a) - log p(b) after ``prefix`` over the same compressed context (one forward of the prefix)."""
    total = []
    for tok in (a, b):
        pre = engine.prefill(prompt, passages=passages, context="compressed", expand=expand)
        ids = [*prefix, tok]
        total.append(engine.continuation_nll(pre, ids) * len(ids))
    return total[1] - total[0]


def test_rasd_over_the_compressed_cache_is_lossless(real_engine, question, stored):
    kw = dict(passages=stored, context="compressed", expand=0.1, max_new_tokens=32)
    plain = real_engine.generate(question["question"], method="vanilla", **kw)
    fast = real_engine.generate(question["question"], method="rasd", **kw)
    assert fast.stats.expanded_chunks >= 1
    if fast.token_ids == plain.token_ids:
        return
    # the tree verify and vanilla's one-token steps take different kernels: greedy may differ only at a
    # float32 near-tie, which is then reported with its margin (a warning in the test summary), never hidden
    n = min(len(fast.token_ids), len(plain.token_ids))
    i = next((k for k in range(n) if fast.token_ids[k] != plain.token_ids[k]), n)
    assert i < n, f"one output is a prefix of the other: {plain.finish_reason} vs {fast.finish_reason}"
    margin = _logit_margin(real_engine, question["question"], stored, 0.1, plain.token_ids[:i],
                           plain.token_ids[i], fast.token_ids[i])
    assert abs(margin) < TIE_MARGIN, (
        f"rasd diverged from vanilla at token {i} with a clear logit margin {margin:.4g}: a real bug, not a tie")
    warnings.warn(f"rasd over the compressed cache diverges at token {i} at a float32 near-tie "
                  f"(top-2 logit margin {margin:.2e})", stacklevel=1)


def test_compressed_ttft_beats_text(real_engine, question, stored):
    text = real_engine.prefill(question["question"], passages=stored, context="text")
    comp = real_engine.prefill(question["question"], passages=stored, context="compressed")
    assert comp.positions < text.positions / 4
    assert comp.kv_bytes() < text.kv_bytes() / 4
