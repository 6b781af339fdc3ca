"""Batch invariance of the int4 forward (refrag_rasd_core.lean.invariant): the C++ kernels build and load; each
kernel's row equals the same row computed alone, bit for bit; a whole M-row tree verify on a tiny 4-bit model
gives every node the logits (and cache entries) of the 1-row plain steps that decode it after its ancestors, for
M up to the largest tree; and the engine's greedy and sampled speculation equal its plain int4 decoding.

Bit-for-bit comparisons here are between two calls of the *same* kernels (an M-row call and 1-row calls): that
invariance is what the kernels are built for. Against torch's own kernels only tolerances are asserted."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from refrag_rasd_core.lean import LeanRunner
from refrag_rasd_core.lean.cache import LeanCache
from refrag_rasd_core.lean.int4 import DECODE_ROWS, int4_available
from refrag_rasd_core.lean.invariant import InvariantHead, kernels, kernels_problem, q8_grid, tree_tails

pytestmark = [
    pytest.mark.skipif(not int4_available(), reason="this torch build has no CPU int4 kernels"),
    pytest.mark.skipif(os.environ.get("REFRAG_RASD_KERNELS", "1") == "0", reason="REFRAG_RASD_KERNELS=0"),
]
LARGEST_TREE = DECODE_ROWS  # token trees hold at most 64 nodes; every forward up to this many rows is invariant


@pytest.fixture(scope="module")
def ops():
    got = kernels()
    assert got is not None, f"the batch-invariant kernels did not build: {kernels_problem()}"
    return got


def snap_to_q8(w: torch.Tensor) -> torch.Tensor:
    """``w`` on a Q8_0 grid as ggml writes one: per block of 32 inputs ``d = max |w| / 127``, ``q = round(w / d)``,
    stored ``d`` rounded to fp16; the values are ``fp16(d) * q``."""
    n, k = w.shape
    g = w.reshape(n, k // 32, 32)
    d = g.abs().amax(-1, keepdim=True) / 127
    return ((g / d.clamp_min(1e-30)).round().clamp(-127, 127) * d.half().float()).reshape(n, k)


def int8_activations(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the kernels see it: per row and block of 32, ``dx * round(x / dx)`` with ``dx = max |x| / 127``,
    plus the remainder in steps of ``dx / 254`` (the kernels' second level)."""
    g = x.reshape(x.shape[0], -1, 32)
    amax = g.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    dx = amax / 127
    xq = (g * inv).round().clamp(-127, 127)
    dr = dx / 254
    xr = ((g - dx * xq) * torch.where(dr > 0, 1 / dr, torch.zeros_like(dr))).round().clamp(-127, 127)
    return (xq.double() * dx.double() + xr.double() * dr.double()).reshape(x.shape).float()


@pytest.mark.parametrize("q8", [False, True])
def test_head_rows_equal_rows_alone(ops, q8):
    torch.manual_seed(0)
    w = torch.randn(300, 96) * 0.1
    if q8:
        w = snap_to_q8(w)
    head = InvariantHead.from_weight(w, None)
    assert head is not None and head.kind == ("q8" if q8 else "fp32")
    x = torch.randn(LARGEST_TREE, 96)
    alone = torch.cat([head(x[i:i + 1]) for i in range(len(x))])
    for m in (2, 3, 5, 8, 16, 17, 33, LARGEST_TREE):
        assert torch.equal(head(x[:m]), alone[:m]), m
    if q8:  # Q8_0 x two-level int8 activations: exact up to float rounding against that reference
        torch.testing.assert_close(alone, int8_activations(x) @ w.T, rtol=1e-4, atol=1e-4)
    else:
        torch.testing.assert_close(alone, x @ w.T, rtol=1e-5, atol=1e-5)  # torch's kernel: close, not identical


def test_q8_grid_is_exact_or_none():
    torch.manual_seed(1)
    w = snap_to_q8(torch.randn(20, 64))
    q, d = q8_grid(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    assert torch.equal((q.float().reshape(20, 2, 32) * d[..., None]).reshape(20, 64), w)
    assert q8_grid(torch.randn(20, 64)) is None and q8_grid(torch.randn(20, 40)) is None


def _tree(m: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [-1] + [int(torch.randint(max(0, i - 5), i, (1,), generator=g)) for i in range(1, m)]


def _ancestors(parents: list[int]) -> list[list[int]]:
    out = []
    for i in range(len(parents)):
        path, j = [], i
        while j >= 0:
            path.append(j)
            j = parents[j]
        out.append(path[::-1])
    return out


def test_attend_tree_rows_equal_plain_steps(ops):
    """Each tree node reads the context then its ancestors and itself: the same key sequence a plain step reads
    after decoding its ancestors, laid out contiguously; so the same bits. Close to SDPA (torch's kernel)."""
    torch.manual_seed(2)
    kv, heads, hd, start, m = 2, 6, 32, 150, 40
    keys, values = torch.randn(kv, 256, hd), torch.randn(kv, 256, hd)
    q = torch.randn(m, heads, hd)
    anc = _ancestors(_tree(m, 3))
    mask = torch.full((1, 1, m, start + m), float("-inf"))
    mask[..., :start] = 0
    for i, path in enumerate(anc):
        mask[0, 0, i, [start + j for j in path]] = 0
    tails = tree_tails(mask, m, start)
    out = ops.attend(q, keys, values, start, *tails, 0.2)
    for i, path in enumerate(anc):
        k2, v2 = keys.clone(), values.clone()
        slots = [start + j for j in path]
        k2[:, start:start + len(path)], v2[:, start:start + len(path)] = keys[:, slots], values[:, slots]
        last = start + len(path) - 1
        step = ops.attend(q[i:i + 1], k2, v2, last, torch.tensor([[last]]), torch.tensor([1]), 0.2)
        assert torch.equal(step[0], out[i]), i
    ref = F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys[None, :, :start + m],
                                         values[None, :, :start + m], attn_mask=mask, scale=0.2, enable_gqa=True)
    torch.testing.assert_close(out, ref[0].transpose(0, 1), rtol=1e-5, atol=1e-5)
    assert tree_tails(torch.zeros(1, 1, 3, start + 3).index_fill_(3, torch.tensor([5]), float("-inf")), 3,
                      start) is None  # a hidden cached position: not a plain step's key sequence


def _copy(cache: LeanCache) -> LeanCache:
    out = LeanCache(layers=cache.shape[0], kv_heads=cache.shape[1], head_dim=cache.shape[2], dtype=cache.dtype,
                    device=cache.device, capacity=cache.capacity)
    out.keys.copy_(cache.keys)
    out.values.copy_(cache.values)
    out.length = cache.length
    return out


def four_bit_runner(q8_head: bool) -> LeanRunner:
    from test_lean_int4 import four_bit_tiny

    loaded = four_bit_tiny()
    if q8_head:
        with torch.no_grad():
            loaded.model.lm_head.weight.copy_(snap_to_q8(loaded.model.lm_head.weight))
    runner = LeanRunner(loaded.model, prepack=True, int4=True)
    assert runner.weights.row_head is not None and runner.weights.row_head.kind == ("q8" if q8_head else "fp32")
    assert "batch-invariant attention and LM head" in runner.describe()
    if runner.weights.invariant.q4_vnni():  # AVX-512 VNNI: Q4_1 x int8 linears, every layer in one C++ call
        assert runner.weights.fused is not None and "Q4_1 x int8" in runner.describe()
    return runner


def test_fused_layers_compute_the_python_loops_function():
    """``decoder_layers`` (one C++ call) and the forward's Python loop over the same Q4_1 x int8 linears give the
    same logits up to float rounding (RMSNorm, rotary and SiLU are written out in C++)."""
    runner = four_bit_runner(False)
    if runner.weights.fused is None:
        pytest.skip("no AVX-512 VNNI here: the int4 linears run torch's kernel and no fused path exists")
    ids = torch.randint(3, 250, (1, 40), generator=torch.Generator().manual_seed(6))
    base = runner.new_cache()
    runner.forward(ids[:, :30], base)
    fused_cache, loop_cache = _copy(base), _copy(base)
    fused, _ = runner.forward(ids[:, 30:], fused_cache, logits_at=None)
    runner.weights.fused, kept = None, runner.weights.fused
    try:
        loop, _ = runner.forward(ids[:, 30:], loop_cache, logits_at=None)
    finally:
        runner.weights.fused = kept
    torch.testing.assert_close(fused, loop, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(fused_cache.keys[:, :, :40], loop_cache.keys[:, :, :40], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("q8_head", [False, True])
def test_every_row_of_a_tree_verify_equals_the_plain_step(q8_head):
    """The property speculation needs: for M = 1 .. the largest tree, a verify's row i (node i after the prompt)
    has the logits of the 1-row step that decodes node i after its ancestors, bit for bit, and the cache a verify
    leaves on an accepted path is the plain steps' cache."""
    runner = four_bit_runner(q8_head)
    prompt = torch.randint(3, 250, (1, 45), generator=torch.Generator().manual_seed(4))
    base = runner.new_cache()
    runner.forward(prompt, base)
    start = base.length
    for m in (1, 2, 3, 7, 16, 33, LARGEST_TREE):
        parents = _tree(m, m)
        anc = _ancestors(parents)
        tokens = torch.randint(3, 250, (m,), generator=torch.Generator().manual_seed(m))
        mask = torch.full((1, 1, m, start + m), float("-inf"))
        mask[..., :start] = 0
        for i, path in enumerate(anc):
            mask[0, 0, i, [start + j for j in path]] = 0
        pos = torch.tensor([[start + len(p) - 1 for p in anc]])
        tree = _copy(base)
        big, _ = runner.forward(tokens[None], tree, logits_at=None, attention_mask=mask, position_ids=pos)
        after: dict[int, LeanCache] = {}
        for i, par in enumerate(parents):  # plain decoding: node i one row at a time after its parent's cache
            cache = _copy(after[par] if par >= 0 else base)
            step, _ = runner.forward(tokens[i].view(1, 1), cache)
            assert torch.equal(step[0], big[i]), (m, i)
            after[i] = cache
        deepest = max(range(m), key=lambda i: len(anc[i]))
        tree.keep_path(start, torch.tensor(anc[deepest]))
        plain = after[deepest]
        assert tree.length == plain.length
        assert torch.equal(tree.keys[:, :, :tree.length], plain.keys[:, :, :plain.length])
        assert torch.equal(tree.values[:, :, :tree.length], plain.values[:, :, :plain.length])


def test_causal_forward_rows_equal_steps():
    """A short prefill (a prefix-cache tail of up to 64 rows) gives its last row the logits of plain steps."""
    runner = four_bit_runner(False)
    ids = torch.randint(3, 250, (1, 30), generator=torch.Generator().manual_seed(5))
    start = runner.new_cache()
    runner.forward(ids[:, :10], start)
    tail = _copy(start)
    all_rows, _ = runner.forward(ids[:, 10:], tail, logits_at=None)
    steps = _copy(start)
    for j in range(10, 30):
        step, _ = runner.forward(ids[:, j:j + 1], steps)
        assert torch.equal(step[0], all_rows[j - 10]), j


@pytest.mark.parametrize("why", ["no kernels", "int4 rows vary"])
def test_without_invariance_the_runner_says_so_and_keeps_torchs_kernels(monkeypatch, why):
    """No compiler (or a machine whose int4 kernel blocks rows): the int4 path runs as before, never claimed
    batch-invariant, and describe() says why."""
    from refrag_rasd_core.lean import weights

    if why == "no kernels":
        monkeypatch.setattr(weights, "kernels", lambda: None)
        monkeypatch.setattr(weights, "kernels_problem", lambda: "no C++ compiler")
    else:
        monkeypatch.setattr(weights, "_int4_rows_invariant", lambda layers: False)
    from test_lean_int4 import four_bit_tiny

    runner = LeanRunner(four_bit_tiny().model, prepack=False, int4=True)
    assert runner.weights.invariant is None and runner.weights.row_head is None
    text = runner.describe()
    assert "NOT batch-invariant" in text
    assert ("no C++ compiler" if why == "no kernels" else "depend on the row count") in text
    logits, _ = runner.forward(torch.tensor([[5, 6, 7]]), runner.new_cache())
    assert logits.shape == (1, runner.config.vocab_size)
