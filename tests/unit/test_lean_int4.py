"""The opt-in int4 linears (refrag_rasd_core.lean.int4): 4-bit grids found exactly (and full-precision weights
left alone), outputs within bf16 tolerance of fp32, the lean forward and the engine on a tiny model whose
linears are snapped to a 4-bit grid (as the default model's Q4_1 ones are), greedy speculation equal to the
same engine's plain decoding for every method, sampling keeping that engine's distribution, and clear errors
where int4 cannot run."""

from __future__ import annotations

import pytest
import torch

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.lean import LeanRunner
from refrag_rasd_core.lean.int4 import (
    DECODE_ROWS,
    GROUP,
    Int4Linear,
    int4_available,
    int4_grid,
    measure_prefill,
)
from refrag_rasd_core.models import LoadedModel
from refrag_rasd_core.rasd import CausalLMDrafter

pytestmark = pytest.mark.skipif(not int4_available(), reason="this torch build has no CPU int4 kernels")
PROMPT = [{"role": "user", "content": "abc abc abc abc, the cat sat on the mat; the cat sat"}]


def snap_to_grid(w: torch.Tensor) -> torch.Tensor:
    """``w`` rounded onto a Q4_1-style grid: per block of 32 inputs, 16 levels from its min to its max."""
    n, k = w.shape
    g = w.reshape(n, k // GROUP, GROUP)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    step = (hi - lo) / 15
    return (((g - lo) / step).round() * step + lo).reshape(n, k)


def four_bit_tiny(seed: int = 0) -> LoadedModel:
    from tiny import tiny_loaded

    loaded = tiny_loaded(seed)
    with torch.no_grad():
        for layer in loaded.model.model.layers:
            for mod in (*[getattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")],
                        *[getattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj")]):
                mod.weight.copy_(snap_to_grid(mod.weight))
    return loaded


def test_grid_is_found_exactly_and_full_precision_is_left_alone():
    torch.manual_seed(0)
    w = snap_to_grid(torch.randn(48, 96))
    q, sz = int4_grid(w)
    assert q.dtype == torch.int32 and int(q.min()) == 0 and int(q.max()) == 15
    assert tuple(sz.shape) == (96 // GROUP, 48, 2)
    rebuilt = ((q.reshape(48, 3, GROUP).float() - 8) * sz[..., 0].T[..., None]
               + sz[..., 1].T[..., None]).reshape(48, 96)
    torch.testing.assert_close(rebuilt, w, rtol=0, atol=1e-6)
    assert int4_grid(torch.randn(48, 96)) is None            # full precision: never quantized here
    assert int4_grid(torch.randn(48, 40)) is None            # inputs not a multiple of 32
    assert Int4Linear.from_weight(torch.randn(48, 96), None) is None


@pytest.mark.parametrize("rows", [1, 3, 16, 70])
def test_int4_linear_is_within_bf16_tolerance_of_fp32(rows):
    torch.manual_seed(rows)
    w, b = snap_to_grid(torch.randn(64, 128)), torch.randn(64)
    lin = Int4Linear.from_weight(w, b)
    x = torch.randn(rows, 128)
    ref = x @ w.T + b
    out = lin(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    err = float((out - ref).abs().max() / ref.abs().max())
    assert 0 < err < 0.02, err  # bf16 rounding: close, not identical
    # the same rows give the same outputs whatever else is in the batch (verify vs plain step)
    torch.testing.assert_close(lin(x[:1]), out[:1], rtol=0, atol=0)


def test_lean_runner_int4_runs_grid_linears_and_keeps_the_rest():
    loaded = four_bit_tiny()
    exact = LeanRunner(loaded.model, prepack=False)
    fast = LeanRunner(loaded.model, prepack=False, int4=True)
    n, total = fast.int4_linears
    assert (n, total) == (4 * len(loaded.model.model.layers), total) and total == n + 1  # the LM head stays fp32
    assert exact.int4_linears[0] == 0 and "int4 kernel" in fast.describe()
    ids = torch.tensor([[5, 9, 11, 40, 7, 7, 3]])
    a, _ = exact.forward(ids, exact.new_cache(), logits_at=None)
    b, _ = fast.forward(ids, fast.new_cache(), logits_at=None)
    assert float((a - b).abs().max() / a.abs().max()) < 0.05
    # a model that is not on a grid gets no int4 linear at all
    from tiny import tiny_loaded

    assert LeanRunner(tiny_loaded(1).model, prepack=False, int4=True).int4_linears[0] == 0


def test_long_forwards_take_the_fp32_weights_only_past_the_decode_rows():
    torch.manual_seed(3)
    w = snap_to_grid(torch.randn(64, 128))
    lin = Int4Linear.from_weight(w, None)
    lin.long = lambda x: x @ w.T
    for rows in (1, DECODE_ROWS):  # steps and verifies: always the kernel (bf16-rounded, not fp32-exact)
        x = torch.randn(rows, 128)
        assert not torch.equal(lin(x), x @ w.T)
        torch.testing.assert_close(lin(x), lin.int4(x), rtol=0, atol=0)
    x = torch.randn(DECODE_ROWS + 1, 128)
    torch.testing.assert_close(lin(x), x @ w.T, rtol=0, atol=0)
    timed = measure_prefill([(lin, lambda x: x @ w.T)], rows=16, repeats=1)
    assert timed["long"] in ("int4", "fp32") and timed["int4_ms"] > 0 and timed["fp32_ms"] > 0


@pytest.mark.parametrize("choice", ["fp32", "int4"])
def test_lean_runner_prefill_runs_what_was_measured_faster(monkeypatch, choice):
    """The load-time choice for long forwards is applied: with "fp32" a prefill reads the exact weights (equal to
    the exact runner's logits), with "int4" the kernel; short forwards are int4 either way."""
    from refrag_rasd_core.lean import weights

    monkeypatch.setattr(weights, "_PREFILL", {})
    monkeypatch.setattr(weights, "measure_prefill", lambda pairs: {"rows": 256, "int4_ms": 2.0, "fp32_ms": 1.0,
                                                                   "long": choice})
    loaded = four_bit_tiny()
    exact = LeanRunner(loaded.model, prepack=False)
    fast = LeanRunner(loaded.model, prepack=False, int4=True)
    assert f"on {'the fp32 weights' if choice == 'fp32' else 'int4'}" in fast.describe()
    ids = torch.randint(3, 60, (1, DECODE_ROWS + 6))
    ce, cf = exact.new_cache(), fast.new_cache()
    a, _ = exact.forward(ids, ce, logits_at=None)
    b, _ = fast.forward(ids, cf, logits_at=None)
    if choice == "fp32":
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cf.keys[:, :, :cf.length], ce.keys[:, :, :ce.length], rtol=1e-5, atol=1e-5)
    else:
        assert 0 < float((a - b).abs().max() / a.abs().max()) < 0.05
    step = torch.tensor([[7]])
    a, _ = exact.forward(step, ce)
    b, _ = fast.forward(step, cf)
    assert 0 < float((a - b).abs().max() / a.abs().max()) < 0.05  # a step: the int4 kernel


@pytest.fixture(scope="module")
def int4_engine():
    loaded = four_bit_tiny()
    drafter = CausalLMDrafter(loaded.model, tokenizer=loaded.tokenizer, target_tokenizer=loaded.tokenizer)
    return Engine(loaded, drafter=drafter, weights="int4")


@pytest.mark.parametrize("method", ["pld", "rest", "draft", "rasd"])
def test_greedy_speculation_equals_the_int4_engines_plain_decoding(int4_engine, method):
    assert int4_engine.weights == "int4" and int4_engine.runner.int4_linears[0] > 0
    base = int4_engine.generate(PROMPT, max_new_tokens=40, method="vanilla")
    passages = [base.token_ids[3:25], base.token_ids[15:40], [7, 8, 9]]
    out = int4_engine.generate(PROMPT, max_new_tokens=40, method=method, context="none", passages=passages)
    assert out.token_ids == base.token_ids
    assert out.stats.target_forwards < len(base.token_ids) or method == "draft"


def test_int4_sampling_keeps_the_engines_distribution(int4_engine):
    """rasd sampling = plain sampling of the same (int4) engine: first-token frequencies over seeds, chi-square."""
    import numpy as np
    from scipy.stats import chi2_contingency

    n = 600
    base = int4_engine.generate(PROMPT, max_new_tokens=2, method="vanilla")
    passages = [base.token_ids, [t + 1 for t in base.token_ids]]
    counts: dict[str, dict[tuple[int, ...], int]] = {"vanilla": {}, "rasd": {}}
    for j, method in enumerate(counts):  # separate seeds per method: independent samples
        for i in range(n):
            r = int4_engine.generate(PROMPT, max_new_tokens=2, temperature=1.5, top_k=3, seed=1000 + 7919 * i + j,
                                     method=method, context="none", passages=passages, spec={"adaptive": False})
            key = tuple(r.token_ids)
            counts[method][key] = counts[method].get(key, 0) + 1
    keys = sorted(set(counts["vanilla"]) | set(counts["rasd"]))
    table = np.array([[counts[m].get(k, 0) for k in keys] for m in counts]) + 1
    p = chi2_contingency(table)[1]
    assert p > 1e-3, f"rasd sampling under int4 deviates from plain sampling (p={p:.2e})"


def test_int4_refuses_what_it_cannot_run():
    loaded = four_bit_tiny()
    with pytest.raises(InvalidInputError, match="weights must be one of"):
        Engine(loaded, drafter=None, weights="int8")
    with pytest.raises(InvalidInputError, match="lean forward on CPU only"):
        Engine(loaded, drafter=None, weights="int4", forward="hf")


def test_auto_weights_run_a_4bit_checkpoint_as_stored_and_leave_full_precision_exact():
    """``weights="auto"``: the model's own format. A 4-bit checkpoint runs int4 on the lean CPU forward (with the
    batch-invariant kernels: speculation stays exact); full precision, ``forward="hf"`` stay exact."""
    from refrag_rasd_core.forward import resolve_weights
    from refrag_rasd_core.lean.invariant import kernels
    from tiny import tiny_loaded

    four = four_bit_tiny()
    expected = "int4" if kernels() is not None else "exact"
    assert resolve_weights(four.model, "auto", "auto") == expected
    assert Engine(four, drafter=None, refrag=None, weights="auto").weights == expected
    assert resolve_weights(four.model, "hf", "auto") == "exact"
    assert resolve_weights(tiny_loaded(0).model, "auto", "auto") == "exact"
    assert Engine(tiny_loaded(0), drafter=None, refrag=None, weights="auto").weights == "exact"
    assert resolve_weights(four.model, "auto", "exact") == "exact"


def test_prompts_are_read_wide_and_steps_4bit():
    """``forward(prompt=True)`` (how the engine reads a prompt) runs the linears on their fp32 weights, or in
    bf16 when that measured faster at load; plain forwards of up to 64 rows run the 4-bit kernels."""
    loaded = four_bit_tiny()
    exact = LeanRunner(loaded.model, prepack=False)
    fast = LeanRunner(loaded.model, prepack=False, int4=True)
    ids = torch.randint(3, 250, (1, 20), generator=torch.Generator().manual_seed(9))
    ref, _ = exact.forward(ids, exact.new_cache(), logits_at=None)
    for lin in (x for layer in fast.weights.layers for x in (layer.qkv, layer.o, layer.gate_up, layer.down)):
        lin.bf16 = None
    wide, _ = fast.forward(ids, fast.new_cache(), logits_at=None, prompt=True)
    torch.testing.assert_close(wide, ref, rtol=1e-4, atol=1e-4)   # fp32 weights: the exact model
    narrow, _ = fast.forward(ids, fast.new_cache(), logits_at=None)
    assert float((narrow - ref).abs().max()) > 1e-4                 # 4-bit kernels: not the exact bits
    for lin in (x for layer in fast.weights.layers for x in (layer.qkv, layer.o, layer.gate_up, layer.down)):
        lin.bf16 = lin.weight.detach().to(torch.bfloat16)
    half, _ = fast.forward(ids, fast.new_cache(), logits_at=None, prompt=True)
    assert float((half - ref).abs().max() / ref.abs().max()) < 0.05  # bf16: close to the exact model
