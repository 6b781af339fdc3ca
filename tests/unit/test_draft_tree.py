"""Draft trees over a tiny random LLaMA: tree scores equal sequential forwards; cache stays consistent."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from refrag_rasd_core.errors import InvalidInputError, TokenizerMismatchError
from refrag_rasd_core.rasd.draft_tree import (
    CausalLMDrafter,
    Drafter,
    build_draft_tree,
    check_same_tokenizer,
    draft_probe,
)
from refrag_rasd_core.rasd.token_tree import SOURCE_DRAFT, TokenTree

VOCAB = 97


def tiny_llama(attn: str, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        attn_implementation=attn,
    )
    model = LlamaForCausalLM(cfg).eval()
    # sharper distributions than the default init, so paths differ clearly in probability
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    return model


@torch.no_grad()
def seq_log_probs(model, ids: list[int]) -> torch.Tensor:
    """log_softmax of the next token after every prefix of ``ids`` (one plain forward, no cache)."""
    logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def path_log_prob(model, prompt: list[int], path: list[int]) -> float:
    lp = seq_log_probs(model, prompt + path)
    n = len(prompt)
    return sum(lp[n - 1 + d, tok].item() for d, tok in enumerate(path))


def check_tree(tree: TokenTree, total_tokens: int, depth: int) -> None:
    assert len(tree) <= total_tokens and tree.max_depth <= depth
    for i in range(1, len(tree)):
        assert 0 <= tree.parents[i] < i
        assert tree.sources[i] == SOURCE_DRAFT
        assert tree.scores[i] <= tree.scores[tree.parents[i]] + 1e-12
    for i in range(len(tree)):
        toks = [tree.tokens[c] for c in tree.children(i)]
        assert len(toks) == len(set(toks))


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def model(request):
    return tiny_llama(request.param)


def test_draft_tree_scores_equal_sequential_forwards(model):
    prompt = [3, 17, 42, 5, 8, 61, 2]
    drafter = CausalLMDrafter(model)
    assert isinstance(drafter, Drafter) and not drafter.uses_target_hidden
    drafter.sync(torch.tensor(prompt))
    tree = build_draft_tree(drafter, prompt[-1], depth=4, top_k=3, total_tokens=14)
    check_tree(tree, 14, 4)
    assert len(tree) == 14 and tree.tokens[0] == prompt[-1]
    for i in range(1, len(tree)):
        want = path_log_prob(model, prompt, tree.path_tokens(i))
        got = torch.tensor(tree.scores[i], dtype=torch.float64).log().item()
        assert got == pytest.approx(want, abs=1e-4)
    # the root's children are the draft's own top-k, and draft_probe says the same
    lp, ids = draft_probe(drafter, 3)
    full = seq_log_probs(model, prompt)[-1]
    assert ids.tolist() == torch.topk(full, 3).indices.tolist()
    assert torch.allclose(lp, torch.topk(full, 3).values, atol=1e-4)
    assert {tree.tokens[c] for c in tree.children(0)} <= set(ids.tolist())


def test_tree_is_global_top_of_candidates(model):
    """Brute-force EAGLE-2 with plain forwards picks the same node set (ties aside)."""
    prompt = [9, 1, 33, 7]
    depth, top_k, total = 3, 2, 6
    drafter = CausalLMDrafter(model)
    drafter.sync(torch.tensor(prompt))
    tree = build_draft_tree(drafter, prompt[-1], depth=depth, top_k=top_k, total_tokens=total)
    # reference: candidates level by level, scored by full forwards
    cands: dict[tuple[int, ...], float] = {}
    level = [()]
    for _ in range(depth):
        new = []
        ranked = sorted(level, key=lambda p: -cands.get(p, 0.0))[:top_k] if level != [()] else [()]
        for p in ranked:
            lp = seq_log_probs(model, prompt + list(p))[-1]
            v, ix = torch.topk(lp, top_k)
            for val, tok in zip(v.tolist(), ix.tolist(), strict=True):
                cands[p + (tok,)] = cands.get(p, 0.0) + val
                new.append(p + (tok,))
        level = new
    best = sorted(cands, key=lambda p: -cands[p])[: total - 1]
    assert {tuple(tree.path_tokens(i)) for i in range(1, len(tree))} == set(best)


def test_expand_chain_in_one_batch(model):
    prompt = [4, 4, 50, 12]
    drafter = CausalLMDrafter(model)
    drafter.sync(torch.tensor(prompt))
    lp, ids = drafter.expand(torch.tensor([20, 21, 22]), torch.tensor([-1, 0, -1]), 5)
    assert lp.shape == ids.shape == (3, 5)
    for row, path in enumerate([[20], [20, 21], [22]]):
        want = seq_log_probs(model, prompt + path)[-1]
        assert ids[row].tolist() == torch.topk(want, 5).indices.tolist()
        assert torch.allclose(lp[row], torch.topk(want, 5).values, atol=1e-4)
    # a second expand in the same step sees the earlier nodes as ancestors
    lp2, ids2 = drafter.expand(torch.tensor([30]), torch.tensor([1]), 4)
    want = torch.topk(seq_log_probs(model, prompt + [20, 21, 30])[-1], 4)
    assert ids2[0].tolist() == want.indices.tolist()
    assert torch.allclose(lp2[0], want.values, atol=1e-4)


def test_cache_consistent_after_sync(model):
    prompt = [3, 17, 42, 5, 8]
    drafter = CausalLMDrafter(model)
    drafter.sync(torch.tensor(prompt))
    build_draft_tree(drafter, prompt[-1], depth=3, top_k=3, total_tokens=10)
    # accept two tokens: the cache drops the tree's nodes and catches up
    committed = prompt + [11, 64]
    drafter.sync(torch.tensor(committed))
    assert drafter.cache.get_seq_length() == len(committed)
    fresh = CausalLMDrafter(model)
    fresh.sync(torch.tensor(committed))
    a = build_draft_tree(drafter, committed[-1], depth=3, top_k=3, total_tokens=10)
    b = build_draft_tree(fresh, committed[-1], depth=3, top_k=3, total_tokens=10)
    assert a.tokens == b.tokens and a.parents == b.parents
    assert a.scores == pytest.approx(b.scores, rel=1e-4)
    # a history that diverges from what the cache holds is recomputed from the common prefix
    other = prompt[:3] + [90, 91]
    drafter.sync(torch.tensor(other))
    fresh.reset()
    fresh.sync(torch.tensor(other))
    assert torch.allclose(draft_probe(drafter, 4)[0], draft_probe(fresh, 4)[0], atol=1e-4)
    # syncing the same tokens twice is fine
    drafter.sync(torch.tensor(other))
    assert drafter.cache.get_seq_length() == len(other)


def test_small_trees_and_errors(model):
    drafter = CausalLMDrafter(model)
    with pytest.raises(InvalidInputError):
        drafter.expand_root(2)
    with pytest.raises(InvalidInputError):
        drafter.sync(torch.tensor([], dtype=torch.long))
    drafter.sync(torch.tensor([1, 2]))
    assert build_draft_tree(drafter, 2, depth=3, top_k=2, total_tokens=1).tokens == [2]
    t = build_draft_tree(drafter, 2, depth=1, top_k=4, total_tokens=10)
    assert len(t) == 5 and t.max_depth == 1
    with pytest.raises(InvalidInputError):
        build_draft_tree(drafter, 2, depth=0, top_k=2, total_tokens=4)
    with pytest.raises(InvalidInputError):
        drafter.expand(torch.tensor([5]), torch.tensor([3]), 2)  # no node 3 yet
    with pytest.raises(InvalidInputError):
        draft_probe(drafter, 0)


def test_prune_retrieval_with_draft_probe(model):
    drafter = CausalLMDrafter(model)
    drafter.sync(torch.tensor([5, 6, 7]))
    lp, ids = draft_probe(drafter, 2)
    top = ids.tolist()
    retrieved = TokenTree.from_sequences(
        7, [(top[0], 1), (top[1],), (next(t for t in range(VOCAB) if t not in top),)]
    )
    pruned = retrieved.prune_by_draft(lp, ids)
    assert sorted(pruned.tokens[c] for c in pruned.children(0)) == sorted(top)


def _tokenizer(words: list[str]):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=words[0])


def test_tokenizer_check(model):
    words = ["<unk>", "a", "b", "c"]
    check_same_tokenizer(_tokenizer(words), _tokenizer(list(words)))
    CausalLMDrafter(model, tokenizer=_tokenizer(words), target_tokenizer=_tokenizer(words))
    with pytest.raises(TokenizerMismatchError, match="tokens"):
        CausalLMDrafter(model, tokenizer=_tokenizer(words), target_tokenizer=_tokenizer(words + ["d"]))
    with pytest.raises(TokenizerMismatchError, match="differ"):
        check_same_tokenizer(_tokenizer(words), _tokenizer(["<unk>", "a", "c", "b"]))
