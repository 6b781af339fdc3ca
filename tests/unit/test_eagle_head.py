"""EAGLE draft head: tree scoring equals sequential forwards; KV cache consistency over steps."""

from __future__ import annotations

import pytest
import torch

from refrag_rasd_core.eagle.head import DraftHead
from refrag_rasd_core.errors import InvalidInputError
from tiny import tiny_target

ATOL = 1e-5


def make_head(target, draft_vocab: int = 64, seed: int = 1) -> DraftHead:
    torch.manual_seed(seed)
    head = DraftHead.for_target(target, draft_vocab_size=draft_vocab)
    with torch.no_grad():  # make the layer matter (the init is near identity)
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return head.eval()


@torch.no_grad()
def reference_hidden(head: DraftHead, tokens: torch.Tensor, hidden: torch.Tensor, path: list[int]) -> torch.Tensor:
    """No cache: rebuild the whole pair sequence and run a causal forward for each step of ``path``."""
    n = len(tokens)
    xs = [head.fuse(tokens[1:n], hidden[: n - 1])]

    def run(x: torch.Tensor) -> torch.Tensor:
        L = x.shape[0]
        q, k, v = head._qkv(x, torch.arange(L))
        mask = torch.full((L, L), float("-inf")).triu_(1)
        return head._finish(x, q[None], k[None], v[None], mask)

    out = run(torch.cat(xs))
    h = out[-1]
    for tok in path:
        xs.append(head.fuse(torch.tensor([tok]), h[None]))
        h = run(torch.cat(xs))[-1]
    return h


def ref_logprobs(head: DraftHead, tokens, hidden, path) -> torch.Tensor:
    return torch.log_softmax(head.draft_logits(reference_hidden(head, tokens, hidden, path)), -1)


@pytest.mark.parametrize("heads,kv", [(4, 2), (4, 4)])
def test_tree_expand_matches_sequential(heads: int, kv: int) -> None:
    target = tiny_target(heads=heads, kv=kv)
    head = make_head(target)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 96, (12,), generator=g)
    hidden = torch.randn(11, 32, generator=g)
    head.sync(tokens, hidden)
    k = 5
    lp0, ids0 = head.expand_root(k)
    ref0 = ref_logprobs(head, tokens, hidden, [])
    pos = (head.vocab_ids[None] == ids0[:, None]).float().argmax(-1)
    torch.testing.assert_close(lp0, ref0[pos], atol=ATOL, rtol=0)
    assert torch.all(lp0[:-1] >= lp0[1:])
    # depth 1: three children of the root; depth 2: children of nodes 0 and 2; depth 3: one more.
    paths: list[list[int]] = []
    d1 = ids0[:3]
    lp1, ids1 = head.expand(d1, torch.tensor([-1, -1, -1]), k)
    paths += [[int(t)] for t in d1]
    d2 = torch.stack([ids1[0, 0], ids1[0, 1], ids1[2, 0]])
    lp2, ids2 = head.expand(d2, torch.tensor([0, 0, 2]), k)
    paths += [paths[0] + [int(d2[0])], paths[0] + [int(d2[1])], paths[2] + [int(d2[2])]]
    d3 = ids2[1, :1]
    lp3, ids3 = head.expand(d3, torch.tensor([4]), k)
    paths += [paths[4] + [int(d3[0])]]
    got_lp = torch.cat([lp1, lp2, lp3])
    got_ids = torch.cat([ids1, ids2, ids3])
    for i, path in enumerate(paths):
        ref = ref_logprobs(head, tokens, hidden, path)
        vals, idx = ref.topk(k)
        torch.testing.assert_close(got_lp[i], vals, atol=ATOL, rtol=0)
        assert torch.equal(got_ids[i], head.vocab_ids[idx]), f"node {i} path {path}"


def test_sync_after_partial_acceptance_equals_fresh_head() -> None:
    target = tiny_target()
    head = make_head(target)
    g = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, 96, (20,), generator=g)
    hidden = torch.randn(19, 32, generator=g)
    # step 1: prompt of 10 tokens (root = tokens[9])
    head.sync(tokens[:10], hidden[:9])
    _, ids = head.expand_root(3)
    lp, ids1 = head.expand(ids, torch.tensor([-1, -1, -1]), 2)
    head.expand(ids1[:, 0], torch.tensor([0, 1, 2]), 2)
    # 3 tokens accepted: committed = tokens[:13]; the target computed features of positions 9..11
    head.sync(tokens[:13], hidden[9:12])
    head.expand(torch.tensor([5, 6]), torch.tensor([-1, -1]), 2)  # a rejected tree
    # zero accepted + bonus: one more committed token
    head.sync(tokens[:14], hidden[12:13])
    got_root = head.expand_root(6)
    got_exp = head.expand(torch.tensor([7, 8]), torch.tensor([-1, -1]), 4)
    fresh = make_head(target)
    fresh.load_state_dict(head.state_dict())
    fresh.sync(tokens[:14], hidden[:13])
    want_root = fresh.expand_root(6)
    want_exp = fresh.expand(torch.tensor([7, 8]), torch.tensor([-1, -1]), 4)
    for a, b in zip(got_root + got_exp, want_root + want_exp, strict=True):
        if a.is_floating_point():  # log-probs: the cached and the fresh forward take different kernels
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
        else:  # token ids: the same top-k (its gaps here are ~2e-3, the kernels' differences ~1e-7)
            assert torch.equal(a, b)
    assert head._n_commit == 13 and fresh._n_commit == 13


def test_reset_and_cache_growth() -> None:
    target = tiny_target()
    head = make_head(target)
    head._k = head._k[:, :4].clone()  # force growth of the preallocated cache
    head._v = head._v[:, :4].clone()
    tokens = torch.randint(0, 96, (30,))
    hidden = torch.randn(29, 32)
    head.sync(tokens, hidden)
    a = head.expand_root(4)
    head.reset()
    head.sync(tokens, hidden)
    b = head.expand_root(4)
    torch.testing.assert_close(a[0], b[0], atol=ATOL, rtol=0)
    assert torch.equal(a[1], b[1])


def test_forward_train_unroll_matches_tree_chain() -> None:
    """Training-time-test step s at position i equals a depth-s node drafted from root i-s+2."""
    target = tiny_target()
    head = make_head(target)
    tokens = torch.randint(0, 96, (16,))
    hidden = torch.randn(16, 32)
    with torch.no_grad():
        outs = head.forward_train(tokens[None], hidden[None], unroll=3)
    r = 7  # root position: committed tokens[:8], features 0..6
    head.sync(tokens[: r + 1], hidden[:r])
    torch.testing.assert_close(head._root_h, outs[0][0, r - 1], atol=ATOL, rtol=0)
    head.expand(tokens[r + 1 : r + 2], torch.tensor([-1]), 1)
    torch.testing.assert_close(head._spec_h[0], outs[1][0, r], atol=ATOL, rtol=0)
    head.expand(tokens[r + 2 : r + 3], torch.tensor([0]), 1)
    torch.testing.assert_close(head._spec_h[1], outs[2][0, r + 1], atol=ATOL, rtol=0)


def test_protocol_errors_and_attributes() -> None:
    target = tiny_target()
    head = make_head(target)
    assert head.uses_target_hidden is True
    with pytest.raises(InvalidInputError):
        head.expand_root(2)
    with pytest.raises(InvalidInputError):
        head.sync(torch.tensor([1, 2, 3]), torch.randn(1, 32))  # needs 2 features
    head.sync(torch.tensor([1, 2, 3]), torch.randn(2, 32))
    with pytest.raises(InvalidInputError):
        head.expand(torch.tensor([1]), torch.tensor([0]), 2)  # node 0 does not exist yet
    lp, ids = head.expand_root(200)  # top_k larger than the draft vocab is clipped
    assert lp.shape == ids.shape == (64,)
    assert int(ids.max()) < 96


def test_is_a_drafter_for_the_tree_builder() -> None:
    draft_tree = pytest.importorskip("refrag_rasd_core.rasd.draft_tree")
    target = tiny_target()
    head = make_head(target)
    assert isinstance(head, draft_tree.Drafter)
    tokens = torch.randint(0, 96, (10,))
    head.sync(tokens, torch.randn(9, 32))
    tree = draft_tree.build_draft_tree(head, int(tokens[-1]), depth=4, top_k=3, total_tokens=12)
    assert len(tree) == 12 and tree.max_depth <= 4
    assert all(0 <= t < 96 for t in tree.tokens)


@torch.no_grad()
def test_with_vocab_size_keeps_the_prediction_and_adds_ids() -> None:
    target = tiny_target()  # vocabulary 96, hidden 32
    head = make_head(target, draft_vocab=32)
    big = head.with_vocab_size(96)
    assert big.config.draft_vocab_size == 96 and torch.equal(big.vocab_ids[:32], head.vocab_ids)
    assert sorted(big.vocab_ids.tolist()) == list(range(96))  # every target id once
    tokens = torch.randint(0, 96, (10,))
    feats = torch.randn(9, 32)
    head.sync(tokens, feats)
    big.sync(tokens, feats)
    lp, ids = head.expand_root(5)
    lp_big, ids_big = big.expand_root(96)
    h = reference_hidden(head, tokens, feats, [])
    # the same predicted feature: the old columns' logits are unchanged, the new ones are the target's LM head
    full = h @ target.get_output_embeddings().weight.T
    logits_big = big.draft_logits(h)
    assert torch.allclose(logits_big, full[big.vocab_ids], atol=ATOL)
    assert torch.allclose(logits_big[:32], head.draft_logits(h), atol=ATOL)
    assert int(ids_big[0]) == int(full.argmax())  # the full vocabulary drafts the LM head's own top token
    assert set(ids.tolist()) <= set(head.vocab_ids.tolist())
    with pytest.raises(InvalidInputError, match="between"):
        head.with_vocab_size(8)
    with pytest.raises(InvalidInputError, match="between"):
        head.with_vocab_size(97)
