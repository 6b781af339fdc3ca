"""EAGLE trainer: features on disk, loss goes down, evaluation, resume, CLI parser."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from refrag_rasd_core.eagle.checkpoint import load_draft_head
from refrag_rasd_core.eagle.corpus import spec_bench_prompts, spec_bench_training_record
from refrag_rasd_core.eagle.features import FeatureStore, extract_features
from refrag_rasd_core.eagle.head import DraftHead
from refrag_rasd_core.eagle.train import (
    DraftTrainConfig,
    FeatureData,
    build_parser,
    evaluate,
    head_loss,
    train_draft,
)
from refrag_rasd_core.errors import InvalidInputError
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
