"""The long-document rows of REFRAG training (``train-refrag --long-data``, the ``long`` phase): the split, the
engine's layout with a rank-expanded lead, the targets; tiny in-memory models only."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from refrag_rasd_core.refrag.context import build_compressed_input, layout_prompt
from refrag_rasd_core.refrag.policy import choose_expansions, expansion_count
from refrag_rasd_core.splitting import PassageSplitter
from refrag_rasd_core.training.refrag import RefragTrainConfig, RefragTrainer
from refrag_rasd_core.training.refrag.batches import assemble
from refrag_rasd_core.training.refrag.cli import long_training_record
from refrag_rasd_core.training.refrag.corpus import ChunkCorpus, Document
from refrag_rasd_core.training.refrag.long_rows import (
    INSTRUCTION,
    build_long_examples,
    held_out_split,
    load_long_records,
    long_batch,
    long_row,
    summary_target,
    trim_to_positions,
)
from tiny import tiny_chunk_encoder, tiny_loaded

K = 4
WORDS = ["alpha", "beta", "gamma", "delta", "owl", "river", "mill", "tower", "kale", "wren", "hill", "bell"]


def doc_text(i: int, paragraphs: int = 6) -> str:
    rng = random.Random(i)
    return "\n\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + "."
                       for _ in range(paragraphs))


def long_file(tmp: Path, n: int = 7) -> Path:
    f = tmp / "long.jsonl"
    f.write_text("\n".join(json.dumps({"id": f"d{i}", "title": "T", "document": doc_text(i),
                                       "summary": f"Doc {i} is about owls. It has {i} hills. The end is near."})
                           for i in range(n)))
    return f


def test_split_holds_out_every_third_line_and_never_trains_on_it(tmp_path: Path) -> None:
    f = long_file(tmp_path)
    train, held = held_out_split(load_long_records(f))
    assert [r["id"] for r in held] == ["d0", "d3", "d6"]
    assert [r["id"] for r in train] == ["d1", "d2", "d4", "d5"]
    rec = long_training_record(str(f), train, held)
    assert set(rec["trained_ids"]).isdisjoint(rec["held_out"]) and rec["held_out"] == ["d0", "d3", "d6"]
    lm = tiny_loaded(0)
    ex = build_long_examples(train, lm.tokenizer, tiny_chunk_encoder(lm.tokenizer, k=K), tmp_path / "c",
                             log=lambda m: None)
    assert [e.id for e in ex] == ["d1", "d2", "d4", "d5"]


def test_examples_are_the_stores_passages_with_their_chunk_vectors(tmp_path: Path) -> None:
    lm = tiny_loaded(0)
    tok, enc = lm.tokenizer, tiny_chunk_encoder(lm.tokenizer, k=K)
    train, _ = held_out_split(load_long_records(long_file(tmp_path)))
    ex = build_long_examples(train, tok, enc, tmp_path / "c", log=lambda m: None)
    again = build_long_examples(train, tok, enc, tmp_path / "c", log=lambda m: None)  # from the cache
    for e, a, r in zip(ex, again, train, strict=True):
        want = [tok(t, add_special_tokens=False)["input_ids"] for t in PassageSplitter(tok, 256)(r["document"])]
        assert e.passages == want == a.passages
        vec = torch.from_numpy(np.concatenate(enc.encode_passages(want), 0)).float()
        assert torch.allclose(e.vectors, vec, atol=1e-2) and torch.equal(e.vectors, a.vectors)
        assert e.target == summary_target(tok, r["summary"], 128)


def test_summary_target_cuts_at_a_sentence_end_then_eos() -> None:
    tok = tiny_loaded(0).tokenizer
    eos = tok.eos_token_id
    full = summary_target(tok, "One two. Three four.", 128)
    assert full[-1] == eos and tok.decode(full[:-1]) == "One two. Three four."
    cut = summary_target(tok, "One two. Three four five six.", 12)
    assert cut[-1] == eos and tok.decode(cut[:-1]) == "One two."
    hard = summary_target(tok, "abcdefghijklmnop", 5)
    assert len(hard) == 6 and hard[-1] == eos


def test_long_row_is_the_engines_compressed_layout_with_the_lead_expanded() -> None:
    lm = tiny_loaded(0)
    tok, emb = lm.tokenizer, lm.model.get_input_embeddings()
    passages = [tok(doc_text(i, 2), add_special_tokens=False)["input_ids"] for i in range(3)]
    n = [-(-len(p) // K) for p in passages]
    proj = [torch.randn(c, lm.model.config.hidden_size) for c in n]
    for budget in (0, 8, 40, 10_000):
        row = long_row(tok, passages, K, [65, 66, tok.eos_token_id], budget)
        # what the engine builds for generate([{"role": "user", "content": INSTRUCTION}], passages=...,
        # context="compressed", expand_tokens=budget, policy="rank")
        lay = layout_prompt(tok, [{"role": "user", "content": INSTRUCTION}], passages)
        m = expansion_count(sum(n), expand_tokens=budget, k=K)
        exp = choose_expansions("rank", m, chunk_vectors=torch.empty(0), projected=torch.empty(0),
                                query_embeds=torch.empty(0), chunks=[[]] * sum(n))
        assert row.expanded == exp == list(range(min(sum(n), budget // K)))
        assert row.prompt_ids(K) == lay.full_ids()
        with torch.no_grad():
            want = build_compressed_input(lay, emb, proj, K, expanded=exp)
            got = assemble([row], torch.cat(proj), emb, K)
        L = want.length
        assert torch.equal(got["inputs_embeds"][0, :L], want.inputs_embeds[0])
        assert got["vector_mask"][0, :L].tolist() == [t is None for t in want.token_ids]
        assert got["pred_pos"].tolist() == [L - 1, L, L + 1]  # the summary right after the assistant turn
        assert got["labels"].tolist() == [65, 66, tok.eos_token_id]


def test_long_batch_keeps_the_prompt_within_max_positions(tmp_path: Path) -> None:
    lm = tiny_loaded(0)
    tok, enc = lm.tokenizer, tiny_chunk_encoder(lm.tokenizer, k=K)
    train, _ = held_out_split(load_long_records(long_file(tmp_path)))
    ex = build_long_examples(train, tok, enc, tmp_path / "c", log=lambda m: None)
    emb = lm.model.get_input_embeddings()
    for seed in range(6):
        b = long_batch(ex, tok, K, random.Random(seed), rows=1, budgets=[8, 16], max_positions=260)
        row = b.rows[0]
        slots, t0 = row.slots(K, 0)
        assert t0 + len(row.target) <= 260 and b.vectors.shape[0] == row.n_chunks
        assert 0 < row.n_chunks < sum(-(-len(p) // K) for p in ex[0].passages) or len(ex) > 1
        full = next(e for e in ex if e.passages[0] == row.context[:len(e.passages[0])])
        assert torch.equal(b.vectors, full.vectors[:row.n_chunks])  # the document's leading chunks, in order
        assert row.expanded == list(range(len(row.expanded)))  # the lead (rank), 8 or 16 tokens
        assert len(row.expanded) in (min(row.n_chunks, 2), min(row.n_chunks, 4))
        assemble([row], torch.zeros(row.n_chunks, emb.weight.shape[1]), emb, K)
    # a long document is cut at the passage that would cross the limit, and one passage always stays
    ps = [[1] * 10, [2] * 10, [3] * 10]
    assert trim_to_positions(ps, K, 0, 11, 3) == ps[:2]  # 3 + 3 chunks, then 3 chunks + a separator
    assert trim_to_positions(ps, K, 0, 1, 3) == ps[:1]
    assert trim_to_positions(ps, K, 5, 25, 3) == ps[:2]  # the expanded lead costs its tokens


def test_the_long_phase_trains_and_resumes_exactly(tmp_path: Path) -> None:
    lm = tiny_loaded(0)
    tok, enc = lm.tokenizer, tiny_chunk_encoder(lm.tokenizer, k=K)
    train, _ = held_out_split(load_long_records(long_file(tmp_path)))
    ex = build_long_examples(train, tok, enc, tmp_path / "c", log=lambda m: None)
    corpus = ChunkCorpus.build([Document(doc_text(9), "x")], tok, K, encoder=enc)
    cfg = dict(k=K, phases=["long"], steps_long=4, lora_rank=4, lora_alpha=8.0, warmup=1, ckpt_every=2,
               long_budgets=[8, 16], long_max_positions=300, policy_width=16, lora_scope="chunks")

    def make(out: str) -> RefragTrainer:
        m = tiny_loaded(0)
        return RefragTrainer(m.model, tok, enc, corpus, RefragTrainConfig(**cfg), tmp_path / out,
                             log=lambda m: None, progress=False, long_examples=ex)

    make("a").run()
    make("b").run(stop_after=2)
    make("b").run()
    la, lb = ([json.loads(x)["loss"] for x in (tmp_path / o / "train_log.jsonl").read_text().splitlines()]
              for o in ("a", "b"))
    assert len(la) == 4 and la == lb and all(x == x for x in la)
    assert (tmp_path / "a" / "refrag.safetensors").exists()


def test_the_frozen_lead_runs_without_gradient_with_the_same_loss_and_gradients(tmp_path: Path) -> None:
    lm = tiny_loaded(0)
    tok, enc = lm.tokenizer, tiny_chunk_encoder(lm.tokenizer, k=K)
    train, _ = held_out_split(load_long_records(long_file(tmp_path)))
    ex = build_long_examples(train, tok, enc, tmp_path / "c", log=lambda m: None)
    corpus = ChunkCorpus.build([Document(doc_text(9), "x")], tok, K, encoder=enc)
    cfg = RefragTrainConfig(k=K, phases=["long"], steps_long=2, lora_rank=4, lora_alpha=8.0, policy_width=16,
                            lora_scope="chunks")
    tr = RefragTrainer(lm.model, tok, enc, corpus, cfg, tmp_path / "r", log=lambda m: None, progress=False,
                       long_examples=ex)
    tr._set_trainable("long")
    with torch.no_grad():  # non-zero adapters, so the scope matters
        for p in tr.lora_params.values():
            p.normal_(0, 0.05)
    batch = long_batch(ex, tok, K, random.Random(3), rows=2, budgets=[16, 40], max_positions=400)
    assert len({len(r.slots(K, 0)[0]) for r in batch.rows}) == 2  # padded: rows of different lengths
    out = {}
    for split in (False, True):
        tr.split_lead = split
        for p in tr.named_trainables().values():
            p.grad = None
        nll, rows, _ = tr.row_nll(batch.rows, tr.projector(batch.vectors))
        nll.mean().backward()
        out[split] = (nll.detach(), {n: p.grad.clone() for n, p in tr.named_trainables().items() if p.grad is not None})
    vm = assemble(batch.rows, torch.zeros(len(batch.vectors), 64), lm.model.get_input_embeddings(), K)
    assert tr._frozen_lead(vm["vector_mask"], vm["pred_pos"]) >= 64  # the split happened
    assert torch.allclose(out[True][0], out[False][0], atol=1e-5)
    assert out[True][1].keys() == out[False][1].keys() and out[True][1]
    for n, g in out[False][1].items():
        assert torch.allclose(out[True][1][n], g, atol=1e-5, rtol=1e-4), n
