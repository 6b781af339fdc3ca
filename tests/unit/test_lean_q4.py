"""The Q4_1 x int8 and Q8_0 x int8 kernels (refrag_rasd_core.lean.q4, csrc/q4_rows.cpp): the packed layouts hold
the weights as documented, each output equals the exact arithmetic on int8-quantized activations up to float
rounding, and a row gives the same bits alone and among up to 64 rows, for shapes that need padding."""

from __future__ import annotations

import os

import pytest
import torch

from refrag_rasd_core.lean.invariant import kernels, kernels_problem
from refrag_rasd_core.lean.q4 import TILE, q4_pack, q8_pack

pytestmark = pytest.mark.skipif(os.environ.get("REFRAG_RASD_KERNELS", "1") == "0", reason="REFRAG_RASD_KERNELS=0")


@pytest.fixture(scope="module")
def ops():
    got = kernels()
    assert got is not None, f"the kernels did not build: {kernels_problem()}"
    return got


def quantized(x: torch.Tensor, fine: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The kernels' view of ``x``, per level ``(xq [M, K / 32, 32], scale [M, K / 32, 1])`` (float32 arithmetic):
    int8 per block of 32 (``dx = max |x| / 127``), and with ``fine`` the remainder again in steps of
    ``dx / 254``; ``x`` ~ the levels' sum of ``scale * xq``."""
    g = x.reshape(x.shape[0], -1, 32)
    amax = g.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    xq, dx = (g * inv).round().clamp(-127, 127), amax / 127
    if not fine:
        return [(xq, dx)]
    dr = dx / 254
    rest = g - dx * xq
    xr = (rest * torch.where(dr > 0, 1 / dr, torch.zeros_like(dr))).round().clamp(-127, 127)
    return [(xq, dx), (xr, dr)]


def q4_reference(x: torch.Tensor, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor, fine: bool = True
                 ) -> torch.Tensor:
    qb = q.double().reshape(q.shape[0], -1, 32)
    out = torch.zeros(x.shape[0], q.shape[0], dtype=torch.float64)
    for xq, scale in quantized(x, fine):
        xq, scale = xq.double(), scale.double()[..., 0]
        dots = torch.einsum("mbk,nbk->mnb", xq, qb)
        out += (dots * d.double()[None] * scale[:, None] + m.double()[None] * (xq.sum(-1) * scale)[:, None]).sum(-1)
    return out


def random_q4(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 16, (n, k), generator=g), torch.rand(n, k // 32, generator=g) * 0.02,
            -torch.rand(n, k // 32, generator=g) * 0.1)


def test_q4_pack_layout():
    q, d, m = random_q4(20, 96, 0)
    w, dp, mp, n = q4_pack(q, d, m)
    assert n == 20 and w.shape == (2, 3, 256) and dp.shape == mp.shape == (2, 3, TILE)
    for t, b, r, k in [(0, 0, 0, 0), (0, 2, 5, 13), (1, 1, 3, 31), (1, 0, 3, 4), (0, 1, 15, 7)]:
        j, low = (k // 4) // 2, (k // 4) % 2 == 0
        byte = int(w[t, b, 64 * j + 4 * r + k % 4])
        assert (byte & 15 if low else byte >> 4) == int(q[16 * t + r, 32 * b + k])
        assert float(dp[t, b, r]) == float(d[16 * t + r, b]) and float(mp[t, b, r]) == float(m[16 * t + r, b])
    assert int(w[1, :, :].reshape(3, 4, 16, 4)[:, :, 4:].abs().sum()) == 0  # rows 20..31: zero padding
    with pytest.raises(ValueError, match="multiple of 32"):
        q4_pack(q[:, :40], d[:, :1], m[:, :1])


def test_q8_pack_layout():
    q = torch.randint(-127, 128, (17, 64), generator=torch.Generator().manual_seed(1), dtype=torch.int8)
    d = torch.rand(17, 2)
    w, dp, qsum, n = q8_pack(q, d)
    assert n == 17 and w.shape == (2, 2, 512) and qsum.dtype == torch.int32
    for t, b, r, k in [(0, 0, 0, 0), (0, 1, 9, 30), (1, 0, 0, 17)]:
        assert int(w[t, b, 64 * (k // 4) + 4 * r + k % 4]) == int(q[16 * t + r, 32 * b + k])
        assert int(qsum[t, b, r]) == int(q[16 * t + r, 32 * b:32 * b + 32].int().sum())


@pytest.mark.parametrize(("n", "k"), [(20, 96), (48, 64), (100, 160)])
def test_q4_rows_equal_the_exact_arithmetic_and_rows_alone(ops, n, k):
    q, d, m = random_q4(n, k, n)
    packed = q4_pack(q, d, m)
    x = torch.randn(64, k, generator=torch.Generator().manual_seed(k))
    x[3] = 0  # an all-zero row: every block's scale is 0
    y = ops.rows_linear_q4(x, *packed, None)
    assert y.shape == (64, n)
    torch.testing.assert_close(y.double(), q4_reference(x, q, d, m), rtol=1e-5, atol=1e-5)
    coarse = ops.rows_linear_q4(x, *packed, None, False)  # int8 activations alone, as llama.cpp computes
    torch.testing.assert_close(coarse.double(), q4_reference(x, q, d, m, fine=False), rtol=1e-5, atol=1e-5)
    exact = x.double() @ (q.double().view(n, -1, 32) * d.double()[..., None] + m.double()[..., None]).view(n, k).T
    scale = float(exact.abs().max())
    assert float((y - exact).abs().max()) < 2e-4 * scale < float((coarse - exact).abs().max())
    assert not bool(y[3].any())
    for rows in (1, 2, 3, 5, 8, 9, 17, 33, 64):
        assert torch.equal(ops.rows_linear_q4(x[:rows], *packed, None), y[:rows]), rows
        assert torch.equal(ops.rows_linear_q4(x[rows - 1:rows], *packed, None), y[rows - 1:rows]), rows
    bias = torch.randn(n)
    torch.testing.assert_close(ops.rows_linear_q4(x, *packed, bias), y + bias)


def test_q8x_rows_equal_the_exact_arithmetic_and_rows_alone(ops):
    g = torch.Generator().manual_seed(2)
    q = torch.randint(-127, 128, (70, 96), generator=g, dtype=torch.int8)
    d = torch.rand(70, 3, generator=g) * 0.01
    packed = q8_pack(q, d)
    x = torch.randn(40, 96, generator=g) * 3
    for fine in (True, False):
        y = ops.rows_linear_q8x(x, *packed, None, fine)
        ref = sum((torch.einsum("mbk,nbk->mnb", xq.double(), q.double().reshape(70, 3, 32)) * d.double()[None]
                   * scale.double()[..., 0][:, None]).sum(-1) for xq, scale in quantized(x, fine))
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
        for rows in (1, 4, 7, 16, 40):
            assert torch.equal(ops.rows_linear_q8x(x[rows - 1:rows], *packed, None, fine), y[rows - 1:rows]), rows


def test_kernels_give_the_same_bits_on_any_number_of_threads(ops):
    """The kernels split their outputs over threads (OpenMP), never one output's sums: one thread and all of
    them give the same bits, for the 4-bit and 8-bit linears and attention over a shared context and tails."""
    q, d, m = random_q4(200, 160, 7)
    packed = q4_pack(q, d, m)
    q8 = q8_pack(torch.randint(-127, 128, (90, 160), dtype=torch.int8), torch.rand(90, 5) * 0.01)
    x = torch.randn(24, 160, generator=torch.Generator().manual_seed(3))
    kv, heads, hd, start, n = 2, 6, 64, 77, 13
    keys, values = torch.randn(kv, 128, hd), torch.randn(kv, 128, hd)
    qa = torch.randn(n, heads, hd)
    tails = (torch.arange(n)[None].expand(n, n) + start).contiguous(), torch.arange(1, n + 1)
    threads = torch.get_num_threads()

    def run() -> list[torch.Tensor]:
        return [ops.rows_linear_q4(x, *packed, None), ops.rows_linear_q8x(x, *q8, None),
                ops.attend(qa, keys, values, start, *tails, 0.125)]

    try:
        torch.set_num_threads(1)
        alone = run()
        torch.set_num_threads(max(2, threads))
        for a, b in zip(alone, run(), strict=True):
            assert torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)


def test_bad_layouts_are_refused(ops):
    q, d, m = random_q4(16, 64, 3)
    w, dp, mp, n = q4_pack(q, d, m)
    with pytest.raises(RuntimeError, match="rows_linear_q4"):
        ops.rows_linear_q4(torch.randn(2, 96), w, dp, mp, n, None)  # K larger than the weights'
    with pytest.raises(RuntimeError, match="rows_linear_q4"):
        ops.rows_linear_q4(torch.randn(2, 64), w.view(torch.int8), dp, mp, n, None)


def test_q8_linear_is_close_to_its_linear_and_falls_back_past_its_rows(ops):
    from refrag_rasd_core.lean.q4 import Q8Linear, int8_linears

    torch.manual_seed(4)
    lin = torch.nn.Linear(64, 40)
    q8 = Q8Linear(lin, ops)
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        y, ref = q8(x), lin(x)
    assert y.shape == ref.shape
    assert float((y - ref).abs().max() / ref.abs().max()) < 0.03  # int8 weights and activations
    big = torch.randn(65, 64)  # past max_rows: the fp32 weights, exactly
    with torch.no_grad():
        assert torch.equal(q8(big), torch.nn.functional.linear(big, lin.weight, lin.bias))
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8), torch.nn.Linear(8, 2))
    assert int8_linears(net, ops) == 2 and isinstance(net[3], torch.nn.Linear)  # 8 inputs: not a multiple of 32


def test_int4_engine_runs_an_eagle_head_int8_and_stays_exact():
    """At int4 the EAGLE head's linears run Q8_0 x int8 (cheap next to the int4 step); its state dict is
    unchanged and greedy rasd still equals plain int4 decoding."""
    from test_lean_int4 import PROMPT, four_bit_tiny

    from refrag_rasd_core.eagle.head import DraftHead
    from refrag_rasd_core.engine import Engine

    loaded = four_bit_tiny()
    head = DraftHead.for_target(loaded.model, draft_vocab_size=64)
    keys = set(head.state_dict())
    engine = Engine(loaded, drafter=head, refrag=None, weights="int4")
    assert engine.drafter is head and head.int8 and set(head.state_dict()) == keys
    base = engine.generate(PROMPT, max_new_tokens=30, method="vanilla")
    for method in ("draft", "rasd"):
        out = engine.generate(PROMPT, max_new_tokens=30, method=method, context="none",
                              passages=[base.token_ids[2:20]])
        assert out.token_ids == base.token_ids, method
