"""The copy-free GQA attention kernel gives the same tree-verify logits as transformers' eager attention."""

from __future__ import annotations

import torch

from refrag_rasd_core.attention import use_gqa_sdpa
from refrag_rasd_core.rasd import TokenTree
from refrag_rasd_core.target import TargetRunner


def test_tree_logits_match_eager():
    from tiny import tiny_llama

    lean = tiny_llama(seed=3, attn="sdpa")
    eager = tiny_llama(seed=3, attn="eager")
    assert use_gqa_sdpa(lean) and lean.config._attn_implementation == "sdpa_gqa"
    assert not use_gqa_sdpa(eager)  # only sdpa models are switched
    tree = TokenTree.from_sequences(5, [(1, 2, 3), (1, 4), (6,), (7, 8)])
    ctx_ids = torch.arange(10, 40)[None]
    outs = []
    for model in (lean, eager):
        runner = TargetRunner(model, lean_attention=False)
        cache = runner.new_cache()
        runner.forward(ctx_ids, cache)
        logits, _ = runner.forward(torch.tensor([tree.tokens]), cache, logits_at=None,
                                   attention_mask=tree.attention_mask(30), position_ids=tree.position_ids(30))
        outs.append(logits)
    assert torch.allclose(outs[0], outs[1], atol=1e-4)
