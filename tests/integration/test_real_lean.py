"""The lean forward on the real default model (SmolLM2-135M-Instruct): logits and hidden states equal
transformers' forward within fp32 tolerance at every kind of forward the engine runs, and the engine's
greedy output with ``forward="lean"`` equals ``forward="hf"`` for vanilla and rasd with no, text and
compressed context. A divergence is only tolerated at a float32 near-tie (reported with its logit margin).
With int4 weights every row of a tree verify equals the 1-row step bit for bit, and greedy speculation (rasd, pld,
rest, draft) equals the int4 engine's plain decoding exactly."""

from __future__ import annotations

import warnings

import pytest
import torch

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.lean import LeanRunner
from refrag_rasd_core.rasd.token_tree import TokenTree
from refrag_rasd_core.target import TargetRunner, keep_cache_path, truncate_cache

pytestmark = pytest.mark.integration
TOL = {"rtol": 1e-4, "atol": 3e-4}
TIE_MARGIN = 1e-3


@pytest.fixture(scope="module")
def question():
    from conftest import demo_rag_questions

    return demo_rag_questions(limit=1)[0]


@pytest.fixture(scope="module")
def hf_engine(exact_engine):
    return Engine(exact_engine.target, forward="hf")


def _same(a, b):
    torch.testing.assert_close(a[0], b[0], **TOL)
    if a[1] is not None or b[1] is not None:
        torch.testing.assert_close(a[1], b[1], **TOL)


def test_lean_equals_transformers_on_the_real_model(real_engine, question):
    model = real_engine.model
    hf, lean = TargetRunner(model), LeanRunner(model)
    ids = torch.tensor([real_engine.encode_prompt(q_msgs := question.messages)])
    assert ids.shape[1] > 300, q_msgs
    ch, cl = hf.new_cache(), lean.new_cache()
    both = [(hf, ch), (lean, cl)]

    def run(*args, **kw):
        a, b = (r.forward(*args, c, **kw) for r, c in both)
        _same(a, b)

    n_ctx = ids.shape[1] - 8
    run(ids[:, :n_ctx], logits_at=-1, want_hidden=True)               # prefill from ids
    for t in range(n_ctx, n_ctx + 3):                                  # plain steps
        run(ids[:, t:t + 1], logits_at=-1, want_hidden=True)
    ctx = n_ctx + 3
    tree = TokenTree(int(ids[0, ctx]))
    for i in range(15):  # 16 nodes: a bushy tree
        tree.add(0 if i % 2 == 0 else len(tree) - 1, int(ids[0, (i * 7) % ctx]), 0.5, 1)
    run(torch.tensor([tree.tokens]), logits_at=None, want_hidden=True,
        attention_mask=tree.attention_mask(ctx, model.dtype), position_ids=tree.position_ids(ctx))
    for _, c in both:
        keep_cache_path(c, ctx, torch.tensor([0, 2, 4, 6]))
    run(ids[:, ctx + 1:ctx + 3], logits_at=None)                       # after compaction
    for _, c in both:
        truncate_cache(c, n_ctx)
    run(ids[:, n_ctx:n_ctx + 4], logits_at=None)                       # after truncation
    embeds = model.get_input_embeddings()(ids[:, :64])
    embeds = embeds + 0.01 * torch.randn(embeds.shape, generator=torch.Generator().manual_seed(0))
    ch, cl = hf.new_cache(), lean.new_cache()
    both = [(hf, ch), (lean, cl)]
    run(None, inputs_embeds=embeds, logits_at=-1, want_hidden=True)    # prefill from embeddings
    run(ids[:, 64:66], logits_at=None)


@pytest.mark.parametrize("context", ["none", "text", "compressed"])
@pytest.mark.parametrize("method", ["vanilla", "rasd"])
def test_engine_greedy_lean_equals_hf_on_the_real_model(exact_engine, hf_engine, question, method, context):
    assert exact_engine.forward == "lean" and hf_engine.forward == "hf"
    if context == "none":
        kw = {"passages": question.passages if method == "rasd" else None}
        prompt = question.messages
    else:
        kw = {"passages": question.passages, "context": context}
        prompt = question.messages[-1]["content"].splitlines()[-1]
    out = {name: e.generate(prompt, method=method, max_new_tokens=32, **kw)
           for name, e in (("lean", exact_engine), ("hf", hf_engine))}
    _equal_or_near_tie(hf_engine, prompt, context, kw["passages"], out["lean"].token_ids, out["hf"].token_ids,
                       TIE_MARGIN, f"lean vs hf ({method}, {context})")


def _equal_or_near_tie(engine, prompt, context, passages, a, b, margin_limit, what):
    """``a == b``, or they first differ where ``engine``'s own logits (after ``b``'s prefix) have their top two
    within ``margin_limit``: a near-tie, reported as a warning with its margin."""
    if a == b:
        return
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    pre = engine.prefill(prompt, context=context, passages=passages if context != "none" else None)
    logits = pre.logits if i == 0 else pre.runner.forward(torch.tensor([b[:i]]), pre.cache, logits_at=-1)[0][0]
    top = torch.topk(logits.float(), 2).values
    margin = float(top[0] - top[1])
    assert margin < margin_limit, f"{what} differ at token {i} with a clear logit margin {margin:.4g}"
    warnings.warn(f"{what}: diverge at token {i} at a near-tie (margin {margin:.2e})", stacklevel=2)


# ---- int4 weights (the default model as stored; its default) on the real model --------------------------------
@pytest.fixture(scope="module")
def int4_engine(real_engine):
    from refrag_rasd_core.lean.int4 import int4_available

    if not int4_available():
        pytest.skip("this torch build has no CPU int4 kernels")
    return real_engine if real_engine.weights == "int4" else Engine(real_engine.target, weights="int4")


def test_the_default_runs_the_default_model_as_stored(real_engine):
    """``weights="auto"`` (the default) runs the Q4_1 checkpoint 4-bit wherever the kernels build (this machine
    has a compiler: the test suite builds them), with the EAGLE head's linears int8."""
    from refrag_rasd_core.lean.invariant import kernels

    assert kernels() is not None
    assert real_engine.weights == "int4" and real_engine.runner.int4_linears == (120, 121)
    assert real_engine.drafter is not None and real_engine.drafter.int8


def test_int4_runs_every_q4_linear_and_stays_close(exact_engine, int4_engine, question):
    """The default model's 120 Q4_1 decoder linears run int4 (its Q8_0 LM head through the int8 kernel for
    steps and verifies); prompt logits stay within a few percent of the exact forward."""
    assert int4_engine.runner.int4_linears == (120, 121)
    ids = torch.tensor([exact_engine.encode_prompt(question.messages)])
    exact, _ = exact_engine.runner.forward(ids, exact_engine.runner.new_cache(), logits_at=None)
    fast, _ = int4_engine.runner.forward(ids, int4_engine.runner.new_cache(), logits_at=None)
    rel = float((fast - exact).abs().max() / exact.abs().max())
    agree = float((fast.argmax(-1) == exact.argmax(-1)).float().mean())
    assert rel < 0.1 and agree > 0.9, (rel, agree)


def test_int4_tree_verify_rows_equal_plain_steps_on_the_real_model(int4_engine, question):
    """Batch invariance on the real model: a 64-node tree over a real prompt's cache gives each node (sampled
    rows) the logits of the plain 1-row steps that decode it after its ancestors, bit for bit."""
    from refrag_rasd_core.lean.int4 import DECODE_ROWS

    runner = int4_engine.runner
    assert "batch-invariant attention and LM head (q8)" in runner.describe(), runner.describe()
    ids = torch.tensor([int4_engine.encode_prompt(question.messages)])
    m = DECODE_ROWS
    parents = [-1] + [max(0, i - 1 - (i % 3 == 0) - (i % 5 == 0)) for i in range(1, m)]
    tree = TokenTree(int(ids[0, -1]))
    tokens = [int(t) for t in ids[0, 7:7 + m - 1]]
    for i, tok in enumerate(tokens, start=1):
        tree.add(parents[i], tok, 0.5, 1)
    base = runner.new_cache()
    runner.forward(ids[:, :-1], base)
    start = base.length
    big, _ = runner.forward(torch.tensor([tree.tokens]), base, logits_at=None,
                            attention_mask=tree.attention_mask(start, torch.float32),
                            position_ids=tree.position_ids(start))
    for i in (0, 1, 2, 5, 16, 31, m - 1):
        path, j = [], i
        while j >= 0:
            path.append(tree.tokens[j])
            j = parents[j]
        cache = runner.new_cache()
        runner.forward(ids[:, :-1], cache)
        for tok in path[::-1]:
            step, _ = runner.forward(torch.tensor([[tok]]), cache)
        assert torch.equal(step[0], big[i]), i


@pytest.mark.parametrize("method", ["pld", "rest", "draft", "rasd"])
def test_int4_speculation_equals_int4_plain_decoding(int4_engine, method):
    """Greedy speculation under int4 equals the int4 engine's plain decoding, token for token, on every demo
    question (no near-tie exception: a verify row and a plain step give the same bits)."""
    from conftest import demo_rag_questions

    for q in demo_rag_questions(limit=3):
        prompt = q.messages[-1]["content"].splitlines()[-1]
        kw = {"passages": q.passages, "context": "text", "max_new_tokens": 64}
        base = int4_engine.generate(prompt, **kw, method="vanilla")
        out = int4_engine.generate(prompt, method=method, **kw)
        assert out.token_ids == base.token_ids, (q.question_id, method)
