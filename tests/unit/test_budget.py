"""TreeBudget: the tree is cut where its expected yield stops paying for the wider forward, calibration
learns from verified trees, and a source that went quiet is retried later."""

from __future__ import annotations

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.rasd import TokenTree, TreeBudget
from refrag_rasd_core.rasd.token_tree import SOURCE_DRAFT, SOURCE_PROMPT

COSTS = {1: 1.0, 2: 1.4, 4: 1.6, 8: 1.7, 16: 1.9, 32: 2.4, 64: 3.4}


def chain(n, score=1.0, source=SOURCE_PROMPT):
    t = TokenTree(0)
    node = 0
    for i in range(n):
        node = t.add(node, i + 1, score, source)
    return t


def test_cost_interpolation():
    b = TreeBudget(COSTS)
    assert b.cost(1) == 1.0 and b.cost(4) == 1.6
    assert 1.6 < b.cost(6) < 1.7
    assert b.cost(128) == 3.4 * 2


def test_select_keeps_ancestor_closed_best_prefix():
    b = TreeBudget(COSTS)
    t = TokenTree.from_sequences(0, [(1, 2, 3, 4), (5,), (6, 7)], [0.9, 0.05, 0.05])
    sel = b.select(t)
    assert sel is not None and sel.tokens[:2] == [0, 1]
    for i in range(1, len(sel)):
        assert sel.parents[i] < i  # parents precede children
    assert 5 not in sel.tokens  # the weak branch is not worth its cost


def test_unreliable_source_falls_back_to_plain_steps_and_recovers():
    b = TreeBudget(COSTS, decay=0.9)
    t = chain(4)
    assert b.select(t) is not None
    for _ in range(30):  # never accepted: calibration drops
        b.update(t, [0])
    assert b.select(t) is None
    for _ in range(80):  # no verification for a while: statistics relax toward the prior
        b.select(None)
    assert b.select(t) is not None


def test_buckets_and_kinds_are_calibrated_separately():
    b = TreeBudget(COSTS)
    t = chain(3)
    for _ in range(40):
        b.update(t, [0], bucket=1)  # 1-token suffix matches: never right
        b.update(t, [0, 1, 2, 3], bucket=3)  # 3-token matches: always right
    assert b.alpha(SOURCE_PROMPT, 1, bucket=1) < 0.2 < 0.8 < b.alpha(SOURCE_PROMPT, 1, bucket=3)
    assert b.select(t, bucket=1) is None and len(b.select(t, bucket=3)) == 4
    assert abs(b.alpha(SOURCE_DRAFT, 1) - 0.6) < 1e-9  # draft statistics untouched (prior)


def test_calibrate_verify_costs_on_tiny_model(tiny):
    engine = Engine(tiny)
    costs = engine.calibrate_verify_costs(context_len=32, repeats=1)
    assert costs[1] == 1.0 and set(costs) == {1, 2, 4, 8, 16, 32, 64}
    assert all(v >= 1.0 for v in costs.values())
    assert engine.tree_budget("pld").cost(1) == 1.0


def test_uncalibrated_engines_take_the_table_of_their_weights(tiny):
    """An engine that never calibrated budgets with the table of what its steps run: fp32 or 4-bit on a CPU."""
    from types import SimpleNamespace

    import torch

    from refrag_rasd_core.rasd.budget import CPU_COSTS, CPU_INT4_COSTS, GPU_COSTS, default_verify_costs

    cpu = torch.device("cpu")
    assert default_verify_costs(SimpleNamespace(device=cpu, int4=False)) is CPU_COSTS
    assert default_verify_costs(SimpleNamespace(device=cpu, int4=True)) is CPU_INT4_COSTS
    assert default_verify_costs(SimpleNamespace(device=torch.device("cuda"), int4=True)) is GPU_COSTS
    assert CPU_INT4_COSTS[16] > CPU_COSTS[16]  # a 4-bit step is cheap, so a wide verify weighs more
    engine = Engine(tiny)
    assert engine.verify_costs is None
    assert engine.tree_budget("pld").cost(16) == CPU_COSTS[16]  # the tiny fp32 model's lean or hf runner
