"""Speculative decoding through the engine on tiny random LLaMAs: every method is lossless.

Greedy: each method's output equals vanilla's token for token (draft = the target itself, so long paths
are accepted, and draft = another random model, so most are rejected). Sampling: a chi-square test that
the joint distribution of the first generated tokens equals the target's exact distribution.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.rasd import CausalLMDrafter
from refrag_rasd_core.sampling import SamplingParams, logits_to_probs

METHODS = ["pld", "rest", "draft", "rasd"]
PROMPT = [{"role": "user", "content": "abc abc abc abc, the cat sat on the mat; the cat sat"}]


def _engine(target, draft_model=None):
    drafter = None
    if draft_model is not None:
        drafter = CausalLMDrafter(draft_model, tokenizer=target.tokenizer, target_tokenizer=target.tokenizer)
    return Engine(target, drafter=drafter)


@pytest.fixture(scope="module")
def self_draft(tiny):
    return _engine(tiny, tiny.model)


@pytest.fixture(scope="module")
def other_draft(tiny):
    from tiny import tiny_llama

    return _engine(tiny, tiny_llama(seed=1, vocab_size=len(tiny.tokenizer)))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("adaptive", [True, False])
@pytest.mark.parametrize("which", ["self_draft", "other_draft"])
def test_greedy_equals_vanilla(request, method, adaptive, which):
    engine = request.getfixturevalue(which)
    base = engine.generate(PROMPT, max_new_tokens=64, method="vanilla")
    passages = [base.token_ids[5:40], base.token_ids[20:60], [7, 8, 9]]  # the answer is "in the passages"
    res = engine.generate(PROMPT, max_new_tokens=64, method=method, context="none", passages=passages,
                          spec={"adaptive": adaptive})
    assert res.token_ids == base.token_ids
    assert res.text == base.text
    s = res.stats
    assert s.method == method and s.new_tokens == 64
    assert sum(k * v for k, v in s.accepted_hist.items()) == s.new_tokens - 1  # every token after the first
    assert s.target_forwards == sum(s.accepted_hist.values())


def test_speculation_actually_accepts(self_draft):
    base = self_draft.generate(PROMPT, max_new_tokens=64, method="vanilla")
    rest = self_draft.generate(PROMPT, max_new_tokens=64, method="rest", context="none", passages=[base.token_ids])
    draft = self_draft.generate(PROMPT, max_new_tokens=64, method="draft", spec={"adaptive": False})
    assert rest.stats.accepted_per_forward > 3.0  # the whole answer is in the datastore
    assert draft.stats.accepted_per_forward > 2.0  # the draft is the target itself
    assert rest.stats.target_forwards < base.stats.target_forwards / 2


@pytest.mark.parametrize("method", METHODS)
def test_stop_and_max_tokens_end_where_vanilla_ends(self_draft, method):
    base = self_draft.generate(PROMPT, max_new_tokens=50, method="vanilla")
    stop = base.text[20:23]
    ref = self_draft.generate(PROMPT, max_new_tokens=50, method="vanilla", stop=[stop])
    passages = [base.token_ids]
    res = self_draft.generate(PROMPT, max_new_tokens=50, stop=[stop], method=method, context="none", passages=passages)
    assert res.text == ref.text and res.token_ids == ref.token_ids and res.finish_reason == "stop"
    for n in (1, 2, 7):
        r = self_draft.generate(PROMPT, max_new_tokens=n, method=method, context="none", passages=passages)
        assert r.token_ids == base.token_ids[:n] and r.finish_reason == "length"


def test_eos_inside_an_accepted_path_ends_there(tiny):
    engine = _engine(tiny, tiny.model)
    base = engine.generate(PROMPT, max_new_tokens=30, method="vanilla")
    eos = base.token_ids[12]
    engine.eos_ids = frozenset({eos})
    ref = engine.generate(PROMPT, max_new_tokens=30, method="vanilla")
    res = engine.generate(PROMPT, max_new_tokens=30, method="rasd", context="none", passages=[base.token_ids])
    assert res.token_ids == ref.token_ids == base.token_ids[: base.token_ids.index(eos) + 1]


def test_draft_method_needs_a_drafter(tiny):
    with pytest.raises(InvalidInputError, match="draft model"):
        Engine(tiny).generate(PROMPT, max_new_tokens=4, method="draft")


def test_unknown_spec_option(self_draft):
    with pytest.raises(InvalidInputError, match="speculation option"):
        self_draft.generate(PROMPT, max_new_tokens=4, method="pld", spec={"tree_size": 3})


def test_rasd_without_drafter_runs_on_retrieval_alone(tiny):
    engine = Engine(tiny)
    base = engine.generate(PROMPT, max_new_tokens=40, method="vanilla")
    res = engine.generate(PROMPT, max_new_tokens=40, method="rasd", context="none", passages=[base.token_ids])
    assert res.token_ids == base.token_ids and res.stats.accepted_per_forward > 2.0


# ---- sampling: the distribution is the target's ----------------------------------------------------------

def _exact_joint(engine, params, k=2):
    """Exact probabilities of the first k generated tokens (enumerated over the top-k support)."""
    ids = engine.encode_prompt(PROMPT)
    model = engine.model
    support: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(k):
        nxt = {}
        for prefix, p in support.items():
            with torch.no_grad():
                logits = model(torch.tensor([ids + list(prefix)])).logits[0, -1]
            probs = logits_to_probs(logits, params)
            for t in torch.nonzero(probs).flatten().tolist():
                nxt[prefix + (t,)] = p * float(probs[t])
        support = nxt
    return support


def _chisquare(observed, probs):
    """scipy's chi-square test of ``observed`` counts against cell probabilities ``probs``, normalized here in
    float64 so that the expected counts sum to the observed total to float64 rounding. (scipy rejects sums that
    differ by more than 1.5e-8 relative, and probabilities multiplied out of float32 softmaxes sum to 1 only
    within a few 1e-8, depending on the CPU's kernels.)"""
    obs = np.asarray(observed, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    return chisquare(obs, obs.sum() * p / p.sum())


def chisquare_of_counts(counts: dict, exact: dict) -> tuple[float, float]:
    """The chi-square test of sampled ``counts`` per outcome against ``exact`` probabilities, the cells with
    expected counts under 5 merged into one (the test's validity condition)."""
    keys = sorted(exact)
    n = sum(counts.values())
    f_exp = [exact[key] for key in keys]
    f_obs = [counts[key] for key in keys]
    small = [i for i, e in enumerate(f_exp) if e * n < 5]
    if small:
        f_exp = [e for i, e in enumerate(f_exp) if i not in small] + [sum(f_exp[i] for i in small)]
        f_obs = [o for i, o in enumerate(f_obs) if i not in small] + [sum(f_obs[i] for i in small)]
    return _chisquare(f_obs, f_exp)


def _seed(i: int) -> int:
    """Well-spread seeds (consecutive small seeds give visibly correlated first draws)."""
    return (i * 2654435761 + 12345) % (2**31 - 1)


@pytest.mark.parametrize("method,which", [("vanilla", "self_draft"), ("draft", "self_draft"), ("draft", "other_draft"),
                                          ("rasd", "other_draft"), ("pld", "self_draft")])
def test_sampling_keeps_the_target_distribution(request, method, which):
    engine = request.getfixturevalue(which)
    params = SamplingParams(temperature=1.5, top_k=3)
    k = 3
    exact = _exact_joint(engine, params, k)
    # passages that propose likely and unlikely continuations, so retrieval branches get rejected too
    base = engine.generate(PROMPT, max_new_tokens=k, method="vanilla")
    passages = [base.token_ids, [t + 1 for t in base.token_ids]]
    n = 1500
    counts = dict.fromkeys(exact, 0)
    for i in range(n):
        r = engine.generate(PROMPT, max_new_tokens=k, temperature=1.5, top_k=3, seed=_seed(i), method=method,
                            context="none", passages=passages, spec={"adaptive": False})
        counts[tuple(r.token_ids)] += 1
    stat, p = chisquare_of_counts(counts, exact)
    assert p > 1e-3, f"sampled {method} deviates from the target distribution (chi2={stat:.1f}, p={p:.2e})"


def test_sampling_test_has_power(tiny):
    """The chi-square check above does reject a wrong sampler (here: temperature 1.0 instead of 1.5)."""
    engine = Engine(tiny)
    exact = _exact_joint(engine, SamplingParams(temperature=1.5, top_k=3), 2)
    n = 1500
    counts = dict.fromkeys(exact, 0)
    for i in range(n):
        r = engine.generate(PROMPT, max_new_tokens=2, method="vanilla", temperature=0.7, top_k=3, seed=_seed(i))
        counts[tuple(r.token_ids)] += 1
    keys = sorted(exact)
    _, p = _chisquare([counts[k_] for k_ in keys], [exact[k_] for k_ in keys])
    assert p < 1e-3


def test_tree_verification_samples_exactly_on_a_toy_tree():
    """accept_sampled on a hand-made tree: the first emitted token follows p exactly (enumerated)."""
    from refrag_rasd_core.rasd import TokenTree, accept_sampled

    tree = TokenTree.from_sequences(0, [(1,), (2,), (3,)], [0.5, 0.3, 0.2])
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 4))
    params = SamplingParams(temperature=1.0)
    n = 20000
    gen = torch.Generator().manual_seed(0)
    firsts = [accept_sampled(tree, logits, params, gen)[1][0] for _ in range(n)]
    obs = [firsts.count(t) for t in range(4)]
    _, p = _chisquare(obs, [0.1, 0.2, 0.3, 0.4])
    assert p > 1e-3
    assert all(len(x) == 2 for x in itertools.islice((accept_sampled(tree, logits, params, gen)[1]
                                                      for _ in range(50)), 50)
               if x[0] != 0)


def test_shared_persistent_datastore(tiny, tmp_path):
    """A corpus-level REST datastore, built once, saved and loaded, serves every request."""
    from refrag_rasd_core.rasd import RestDatastore

    plain = Engine(tiny, drafter=None)
    base = plain.generate(PROMPT, max_new_tokens=48, method="vanilla")
    RestDatastore.build([base.token_ids, [1, 2, 3] * 20]).save(tmp_path / "store")
    engine = Engine(tiny, drafter=None, datastore=RestDatastore.load(tmp_path / "store"))
    res = engine.generate(PROMPT, max_new_tokens=48, method="rest")  # no passages: the shared store only
    assert res.token_ids == base.token_ids
    assert res.stats.accepted_per_forward > 2.0


def test_time_breakdown_is_reported(tiny):
    engine = Engine(tiny, drafter=None)
    base = engine.generate(PROMPT, max_new_tokens=32, method="vanilla")
    s = engine.generate(PROMPT, max_new_tokens=32, method="rasd", context="none", passages=[base.token_ids]).stats
    assert s.retrieval_s > 0 and s.verify_s > 0 and s.draft_s >= 0
    assert s.retrieval_s + s.draft_s + s.verify_s <= s.total_s


class _ScriptedGate:
    """A draft gate that drafts on a fixed pattern, so the draft skips steps and then has to catch up."""

    def __init__(self, pattern: list[bool]) -> None:
        self.pattern, self.calls, self.drafted = pattern, 0, 0

    def should_draft(self) -> bool:
        d = self.pattern[self.calls % len(self.pattern)]
        self.calls += 1
        self.drafted += d
        return d

    def record(self, **_: object) -> None:
        pass


@pytest.mark.parametrize("drafter", ["eagle", "causal"])
def test_rasd_draft_catches_up_after_gated_steps(tiny, drafter):
    """Steps the gate skips do not sync the draft; the next drafting step feeds it every missed position at
    once (EAGLE: the target's features of all of them). Output stays vanilla's; the draft really drafts."""
    from refrag_rasd_core.eagle.head import DraftHead

    if drafter == "eagle":
        torch.manual_seed(1)
        d = DraftHead.for_target(tiny.model, draft_vocab_size=64).eval()
    else:
        d = CausalLMDrafter(tiny.model, tokenizer=tiny.tokenizer, target_tokenizer=tiny.tokenizer)
    engine = Engine(tiny, drafter=d)
    gate = _ScriptedGate([True, False, False, True, False, True, True, False, False, False])
    engine._draft_gate = gate
    base = engine.generate(PROMPT, max_new_tokens=48, method="vanilla")
    passages = [base.token_ids[5:30], [7, 8, 9]]
    res = engine.generate(PROMPT, max_new_tokens=48, method="rasd", context="none", passages=passages)
    assert res.token_ids == base.token_ids
    assert gate.calls > 4 and 0 < gate.drafted < gate.calls
    assert res.stats.draft_s > 0
