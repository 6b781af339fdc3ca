"""EAGLE trainer: features on disk, loss goes down, evaluation, resume, CLI parser."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from refrag_rasd_core.eagle.checkpoint import load_draft_head
from refrag_rasd_core.eagle.head import DraftHead
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.training.eagle.cli import build_parser
from refrag_rasd_core.training.eagle.features import FeatureStore, extract_features
from refrag_rasd_core.training.eagle.train import (
    DraftTrainConfig,
    FeatureData,
    evaluate,
    head_loss,
    train_draft,
)
from refrag_rasd_core.training.spec_bench import spec_bench_prompts, spec_bench_training_record
from tiny import tiny_target


def make_features(target, path: Path, n: int = 12, length: int = 40, seed: int = 0) -> None:
    rng = random.Random(seed)
    # a repetitive "language" so the next token is learnable
    seqs = []
    for _ in range(n):
        start = rng.randrange(8)
        seqs.append(([(start + 3 * i) % 24 for i in range(length)], length // 2))
    extract_features(target, seqs, path, chunk_tokens=100, show_progress=False)


def test_features_round_trip_and_resume(tmp_path: Path) -> None:
    target = tiny_target(vocab=64, layers=2)
    make_features(target, tmp_path / "f", n=5)
    store = FeatureStore(tmp_path / "f")
    seqs = list(store.iter_sequences())
    assert len(seqs) == 5 and seqs[0][1].dtype == torch.float16 and int(seqs[0][2].sum()) == 20
    with torch.no_grad():
        ref = target.model(input_ids=seqs[0][0][None]).last_hidden_state[0]
    torch.testing.assert_close(seqs[0][1].float(), ref, atol=2e-3, rtol=2e-3)
    n_chunks = len(store.chunk_files())
    make_features(target, tmp_path / "f", n=5)  # everything done: nothing is added
    assert len(store.chunk_files()) == n_chunks


def test_training_reduces_loss_and_resumes(tmp_path: Path) -> None:
    target = tiny_target(vocab=64, layers=2)
    make_features(target, tmp_path / "train", n=12, seed=0)
    make_features(target, tmp_path / "eval", n=3, seed=1)
    data = FeatureData([tmp_path / "train"])
    cfg = DraftTrainConfig(steps=40, seq_len=32, batch_size=4, lr=3e-3, warmup=5, unroll=2, draft_vocab_size=32,
                      eval_every=40, ckpt_every_s=2.0)
    head = DraftHead.for_target(target, draft_vocab_size=64)
    tok, hid, gen, valid = data.batch(random.Random(0), data.weights(1.0), 4, 32)
    before = float(head_loss(head, tok, hid, cfg, gen, valid)[0].detach())
    metrics = train_draft(target, [tmp_path / "train"], tmp_path / "out", [tmp_path / "eval"], cfg,
                          recipe={"test": True}, log=lambda m: None)
    loaded = load_draft_head(tmp_path / "out" / "draft_head.safetensors", target)
    loaded.train()
    after = float(head_loss(loaded, tok, hid, cfg, gen, valid)[0].detach())
    assert after < 0.7 * before, (before, after)
    assert 0.0 <= metrics["top1_agreement"] <= 1.0 and metrics["step"] == 40
    assert loaded.meta["recipe"]["steps_done"] == 40
    # resume: a longer run continues from step 60
    cfg2 = DraftTrainConfig(**{**cfg.__dict__, "steps": 45})
    m2 = train_draft(target, [tmp_path / "train"], tmp_path / "out", [tmp_path / "eval"], cfg2, log=lambda m: None)
    assert m2["step"] == 45


def test_evaluate_perfect_draft_accepts_everything(tmp_path: Path) -> None:
    """A head that predicts the true next feature exactly accepts the full chain on greedy text."""
    target = tiny_target(vocab=64, layers=2)
    # greedy text of the target itself, so each token is the target's argmax
    ids = [1]
    with torch.no_grad():
        for _ in range(30):
            ids.append(int(target(torch.tensor([ids])).logits[0, -1].argmax()))
    extract_features(target, [(ids, 1)], tmp_path / "g", show_progress=False)
    seqs = list(FeatureStore(tmp_path / "g").iter_sequences())
    head = DraftHead.for_target(target)

    def oracle(tokens, hidden, unroll=1, noise=0.0):  # predicted h_{i+1} = true h_{i+1}
        nxt = torch.cat((hidden[:, 1:], hidden[:, -1:]), 1)[:, :-1]
        return [nxt] * unroll

    head.forward_train = oracle
    m = evaluate(head, seqs, depth=4)
    assert m["top1_agreement"] > 0.95 and m["mean_accepted_chain"] > 3.5


def test_spec_bench_training_split_is_even_only(tmp_path: Path, monkeypatch) -> None:
    spec = tmp_path / "spec_bench_dev.jsonl"  # Spec-Bench-style lines (the real file is read at run time)
    spec.write_text("\n".join(json.dumps({"question_id": 10 * i + j, "category": cat, "turns": [f"{cat} {j}"]})
                              for i, cat in enumerate(["rag", "qa"]) for j in range(5)))
    recs = spec_bench_prompts(spec, parity=0)
    assert [r["question_id"] for r in recs] == [0, 2, 4, 10, 12, 14]
    assert all(r["index_in_category"] % 2 == 0 for r in recs)
    assert [r["question_id"] for r in spec_bench_prompts(spec, parity=1)] == [1, 3, 11, 13]
    rec = spec_bench_training_record(spec)  # what a checkpoint keeps: ids and the file's sha256, no text
    assert rec["question_ids"] == [0, 2, 4, 10, 12, 14] and len(rec["sha256"]) == 64
    assert "rag 0" not in json.dumps(rec)
    import refrag_rasd_core.shared_data as shared

    monkeypatch.setattr(shared, "default_data_path", lambda name: None)  # a fresh machine: no ../shared/data
    with pytest.raises(InvalidInputError, match="pass --spec-bench PATH"):
        spec_bench_prompts()



def test_cli_parser_defaults() -> None:
    a = build_parser().parse_args(["--out", "o", "--corpus", "pydoc", "--steps", "5", "--no-resume"])
    assert a.corpus == ["pydoc"] and a.steps == 5 and a.resume is False and a.device == "cpu"


def test_fine_tuning_starts_from_a_checkpoint_and_keeps_its_vocabulary(tmp_path: Path) -> None:
    target = tiny_target(vocab=64, layers=2)
    make_features(target, tmp_path / "train", n=8, seed=0)
    torch.manual_seed(3)
    start = DraftHead.for_target(target, vocab_ids=torch.tensor(sorted(random.Random(1).sample(range(64), 20))))
    from refrag_rasd_core.eagle.checkpoint import save_draft_head

    init = save_draft_head(start, tmp_path / "start.safetensors", target=target, dtype=torch.float32)
    cfg = DraftTrainConfig(steps=0, seq_len=32, batch_size=2, draft_vocab_size=32, ckpt_every_s=60.0)
    train_draft(target, [tmp_path / "train"], tmp_path / "zero", None, cfg, log=lambda m: None, init=init)
    kept = load_draft_head(tmp_path / "zero" / "draft_head.safetensors", target)  # no step: the start's weights
    assert torch.equal(kept.vocab_ids, start.vocab_ids)  # the checkpoint's 20 ids, not a new choice of 32
    for (name, a), (_, b) in zip(start.state_dict().items(), kept.state_dict().items(), strict=True):
        torch.testing.assert_close(b.float(), a.float(), atol=2e-3, rtol=1e-3, msg=name)  # stored as fp16
    cfg3 = DraftTrainConfig(**{**cfg.__dict__, "steps": 3, "lr": 1e-3, "warmup": 1})
    train_draft(target, [tmp_path / "train"], tmp_path / "three", None, cfg3, log=lambda m: None, init=init)
    moved = load_draft_head(tmp_path / "three" / "draft_head.safetensors", target)
    assert not torch.allclose(moved.fc.weight.float(), start.fc.weight.float(), atol=1e-4)
    # a run folder holding another vocabulary is refused, not silently mixed
    cfg_new = DraftTrainConfig(**{**cfg.__dict__, "steps": 1})
    train_draft(target, [tmp_path / "train"], tmp_path / "other", None, cfg_new, log=lambda m: None)
    with pytest.raises(InvalidInputError, match="another draft vocabulary"):
        train_draft(target, [tmp_path / "train"], tmp_path / "other", None, cfg_new, log=lambda m: None, init=init)


def test_self_distillation_takes_prompts_as_token_ids(tmp_path: Path) -> None:
    from refrag_rasd_core.training.eagle.features import generate_self_distill, read_generations
    from tiny import tiny_loaded

    lm = tiny_loaded(0)
    ids = lm.tokenizer("<|user|>hello there\n<|assistant|>", add_special_tokens=False)["input_ids"]
    n = generate_self_distill(lm.model, lm.tokenizer, [ids, "<|user|>hi\n<|assistant|>"], tmp_path / "g.jsonl",
                              max_new_tokens=4, batch_size=2)
    (seq_a, start_a), (seq_b, start_b) = read_generations(tmp_path / "g.jsonl")
    assert n == 2 and seq_a[:start_a] == ids and len(seq_a) - start_a == 4
    with torch.no_grad():  # the answer is the target's own greedy continuation of exactly those ids
        ref = lm.model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)[0, len(ids):].tolist()
    assert seq_a[start_a:] == ref
    assert seq_b[:start_b] == lm.tokenizer("<|user|>hi\n<|assistant|>", add_special_tokens=False)["input_ids"]


def test_rag_training_prompts_are_engine_requests_over_retrieved_training_passages(tmp_path: Path) -> None:
    from refrag_rasd_core.refrag.context import layout_prompt
    from refrag_rasd_core.training.eagle.rag_prompts import rag_training_prompts, rag_training_record
    from tiny import tiny_chunk_encoder, tiny_loaded

    facts = [(f"Where is item {i}?", f"Item {i} lies in room {i}.") for i in range(6)]
    f = tmp_path / "qa.jsonl"
    f.write_text("\n".join(json.dumps({"id": f"q{i}", "question": q, "answers": [f"room {i}"], "passage": p})
                           for i, (q, p) in enumerate(facts)))
    lm = tiny_loaded(0)
    enc = tiny_chunk_encoder(lm.tokenizer)
    prompts = rag_training_prompts(lm.tokenizer, [f], enc, holdout=2, top_k=2, limit=3)
    assert len(prompts) == 3  # questions 2, 3, 4: the first two held out, the limit stops before 5
    tok = lm.tokenizer
    text = [tok.decode(p) for p in prompts]
    for i, t in zip((2, 3, 4), text, strict=True):
        assert facts[i][0] in t  # the question, after its passages
        assert "Item 0 lies" not in t and "Item 1 lies" not in t  # held-out gold passages are never retrieved
        assert sum(f"Item {j} lies" in t for j in range(6)) == 2  # top_k passages
    # exactly the engine's plain-RAG layout of that question over two training passages
    passages = [tok(facts[j][1], add_special_tokens=False)["input_ids"] for j in range(2, 6) if facts[j][1] in text[0]]
    assert len(passages) == 2
    lay = layout_prompt(tok, facts[2][0], passages)
    assert prompts[0] == lay.full_ids() or prompts[0] == layout_prompt(tok, facts[2][0], passages[::-1]).full_ids()
    rec = rag_training_record([f], holdout=2, top_k=2, limit=3)[0]
    assert rec["file"] == "qa.jsonl" and len(rec["sha256"]) == 64 and "Item" not in json.dumps(rec)


def test_generate_minutes_bounds_the_answers_not_the_extraction(tmp_path: Path) -> None:
    from refrag_rasd_core.training.eagle.cli import prepare_features
    from tiny import tiny_loaded

    lm = tiny_loaded(0)
    corpus = tmp_path / "prompts.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"question number {i}?"}) for i in range(3)))
    base = ["--out", str(tmp_path / "o"), "--corpus", "pydoc", "--self-distill", str(corpus), "--max-new-tokens", "3"]
    args = build_parser().parse_args([*base, "--generate-minutes", "0"])
    args.corpus = []  # only the self-distilled prompts
    train_dirs, _ = prepare_features(lm.model, lm.tokenizer, args, tmp_path / "work", log=lambda m: None)
    gen = tmp_path / "work" / "gen_prompts.jsonl"
    assert not gen.exists() or gen.read_text().strip() == ""  # no time for answers: none made
    args = build_parser().parse_args(base)  # default: the answers share --extract-minutes
    args.corpus = []
    train_dirs, _ = prepare_features(lm.model, lm.tokenizer, args, tmp_path / "work", log=lambda m: None)
    assert len(gen.read_text().splitlines()) == 3
    assert FeatureStore(train_dirs[0]).chunk_files()  # and their features were extracted
