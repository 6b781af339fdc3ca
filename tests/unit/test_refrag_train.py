"""REFRAG training on tiny random models: every phase lowers its loss, resume is exact, the LoRA export
merges into the plain decoder exactly, checkpoints round-trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from refrag_rasd_core.refrag import ChunkEncoder, load_refrag_checkpoint
from refrag_rasd_core.refrag.lora import merge_lora_
from refrag_rasd_core.training.refrag import RefragTrainConfig, RefragTrainer, build_parser
from refrag_rasd_core.training.refrag.batches import Row, WindowSampler, assemble, curriculum_chunks
from refrag_rasd_core.training.refrag.cli import config_from_args
from refrag_rasd_core.training.refrag.config import STATE_FILE
from refrag_rasd_core.training.refrag.corpus import ChunkCorpus, Document, load_documents, record_passages
from refrag_rasd_core.training.refrag.evaluate import evaluate_quality, evaluate_reconstruction
from refrag_rasd_core.training.refrag.lora_export import peft_lora_state
from tiny import tiny_llama, tiny_loaded

K = 4
TEXT = (
    "The river rises in the northern hills and flows south through the valley towns. "
    "Farmers along its banks grow wheat, barley and apples, and the water mills grind the grain. "
    "In spring the snow melts and the river floods the low meadows, which makes the soil rich. "
)


def tiny_bert_encoder(dec_tok, k: int = K, pooling: str = "mean") -> ChunkEncoder:
    """A random 1-layer BERT with a character WordPiece tokenizer, built in memory."""
    chars = [chr(c) for c in range(32, 127)]
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *chars, *("##" + c for c in chars)])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]")
    torch.manual_seed(1)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    return ChunkEncoder(BertModel(cfg).eval(), fast, dec_tok, k=k, pooling=pooling, name="tiny-bert")


def setup(tmp: Path, docs: list[str] | None = None, **cfg_kw):
    lm = tiny_loaded(0)
    enc = tiny_bert_encoder(lm.tokenizer)
    documents = [Document(t, "spec_bench:rag" if i % 2 else "pydoc") for i, t in enumerate(docs or [TEXT, TEXT[::-1]])]
    corpus = ChunkCorpus.build(documents, lm.tokenizer, K, encoder=enc)
    base = {"k": K, "batch_tokens": 96, "recon_max_chunks": 3, "cpt_max_chunks": 6, "continuation": 8,
            "lora_rank": 4, "lora_alpha": 8.0, "warmup": 2, "ckpt_every": 3, "policy_chunks": 4,
            "policy_width": 16, "policy_max_chunks": 64}
    base.update(cfg_kw)
    cfg = RefragTrainConfig(**base)
    return lm, enc, corpus, cfg


def losses(out: Path, phase: str) -> list[float]:
    by_step: dict[int, float] = {}
    for line in (out / "train_log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["phase"] == phase:
            by_step[rec["step"]] = rec["loss"]
    return [by_step[s] for s in sorted(by_step)]


def mean(xs):
    return sum(xs) / len(xs)


def assert_logits_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Logits of two computations equal in exact arithmetic that round differently (a merged LoRA weight vs
    the base and LoRA matmuls; other kernels on another CPU): float32 rounding grows with the logits' overall
    scale, not with each logit's own size, so the tolerance is 1e-5 of the largest logit (tens of ulps) for
    every logit, a near-zero one included. A 1% error in the LoRA scaling is ~700x that tolerance."""
    torch.testing.assert_close(got, want, atol=1e-5 * float(want.abs().max()), rtol=0)


# ---------------------------------------------------------------------------------------------- pieces
def test_assemble_layout_expands_in_place() -> None:
    emb = torch.nn.Embedding(20, 3)
    proj = torch.arange(12, dtype=torch.float32).view(4, 3) + 100
    rows = [Row(prefix=[1], context=[5, 6, 7, 8], n_chunks=2, target=[9, 10], expanded=[1]),
            Row(prefix=[1], context=[11, 12, 13, 14], n_chunks=2, target=[15])]
    inp = assemble(rows, proj, emb, 2)
    x = inp["inputs_embeds"]
    assert x.shape == (2, 6, 3)
    torch.testing.assert_close(x[0, 1], proj[0])                       # chunk 0 compressed: one position
    torch.testing.assert_close(x[0, 2:4], emb(torch.tensor([7, 8])))   # chunk 1 expanded in place
    torch.testing.assert_close(x[1, 1:3], proj[2:4])                   # row 2 uses its own vectors
    assert inp["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert inp["labels"].tolist() == [9, 10, 15]
    assert inp["pred_pos"].tolist() == [3, 4, 2] and inp["pred_rows"].tolist() == [0, 0, 1]


def test_curriculum_grows_and_corpus_windows(tmp_path: Path) -> None:
    import random

    rng = random.Random(0)
    early = [curriculum_chunks(0.0, 8, rng) for _ in range(50)]
    late = [curriculum_chunks(0.99, 8, rng) for _ in range(200)]
    assert set(early) == {1} and max(late) == 8 and min(late) < 8
    lm, enc, corpus, _ = setup(tmp_path)
    assert corpus.vectors.shape == (corpus.n_chunks, enc.dim) and corpus.vectors.dtype == torch.float16
    corpus.save(tmp_path / "c.safetensors")
    again = ChunkCorpus.load(tmp_path / "c.safetensors")
    assert torch.equal(again.tokens, corpus.tokens) and again.texts == corpus.texts
    ctx, vecs, texts, cont = corpus.window(0, 2, 3, 5)
    assert ctx.tolist() == corpus.doc_tokens(0)[8:20].tolist() and cont.tolist() == corpus.doc_tokens(0)[20:25].tolist()
    torch.testing.assert_close(vecs.float(), enc.encode_chunks(texts), atol=2e-3, rtol=2e-3)
    b = WindowSampler(corpus).rows(rng, 3, 2, continuation=5, n_expand=1)
    assert all(len(r.expanded) == 1 and len(r.target) == 5 for r in b.rows) and b.vectors.shape[0] == 6


def test_corpus_sources_keep_answers_out(tmp_path: Path) -> None:
    rec = {"category": "rag", "turns": ["Passage one.\nPassage two.\nWhat is it?"], "reference": ["SECRET"]}
    assert record_passages(rec) == ("Passage one.\nPassage two.", "What is it?")
    assert record_passages({"category": "qa", "turns": ["Who?"]}) is None
    spec = tmp_path / "spec_bench_dev.jsonl"  # a Spec-Bench-style file (the real one is read at run time)
    spec.write_text("\n".join(json.dumps(r) for r in [
        {"question_id": 1, "category": "rag", "turns": ["Alpha passage.\nBeta passage.\nQ one?"], "reference": ["A"]},
        {"question_id": 2, "category": "rag", "turns": ["Held passage.\nQ two?"], "reference": ["B"]},
        {"question_id": 3, "category": "summarization", "turns": ["Summarize: An article."]},
        {"question_id": 4, "category": "qa", "turns": ["Who?"]}]))
    docs = load_documents(["spec_bench_train"], spec_bench=spec)  # the even index within each category
    assert [(d.source, d.text, d.query) for d in docs] == [
        ("spec_bench:rag:1", "Alpha passage.\nBeta passage.", "Q one?"),
        ("spec_bench:summarization:3", "An article.", None)]
    from refrag_rasd_core.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="Spec-Bench questions file not found"):
        load_documents(["spec_bench_train"], spec_bench=tmp_path / "missing.jsonl")


# ---------------------------------------------------------------------------------------------- phases
@pytest.mark.parametrize("phase,steps,lr", [("recon", 16, {"lr_recon": 1e-2}),
                                            ("cpt", 16, {"lr_projector": 3e-3, "lr_lora": 1e-2}),
                                            ("mixed", 16, {"lr_projector": 3e-3, "lr_lora": 1e-2})])
def test_phase_reduces_loss(tmp_path: Path, phase: str, steps: int, lr: dict) -> None:
    lm, enc, corpus, cfg = setup(tmp_path, phases=[phase], **{f"steps_{phase}": steps}, mixed_fraction=0.3, **lr)
    tr = RefragTrainer(lm.model, lm.tokenizer, enc, corpus, cfg, tmp_path / "run", log=lambda m: None, progress=False)
    tr.run()
    ls = losses(tmp_path / "run", phase)
    assert len(ls) == steps
    assert mean(ls[-4:]) < mean(ls[:4]) - 0.25, ls


def test_sft_reduces_loss(tmp_path: Path) -> None:
    lm, enc, corpus, cfg = setup(tmp_path, phases=["sft"], steps_sft=12, sft_answer_tokens=6, sft_batch=2,
                                 lr_projector=3e-3, lr_lora=1e-2)
    recs = [{"question_id": i, "category": "rag", "turns": [f"{TEXT[i * 7:i * 7 + 120]}\nWhat grows there?"]}
            for i in range(3)]
    tr = RefragTrainer(lm.model, lm.tokenizer, enc, corpus, cfg, tmp_path / "run", log=lambda m: None, progress=False,
                       sft_records=recs)
    tr.run()
    ls = losses(tmp_path / "run", "sft")
    assert mean(ls[-3:]) < mean(ls[:3]) - 0.25, ls
    assert len((tmp_path / "run" / "sft_answers.jsonl").read_text().splitlines()) == 3


def test_policy_learns_the_best_chunk(tmp_path: Path) -> None:
    # one document with exactly 4 chunks + the continuation: every step sees the same context, so the
    # rewards are deterministic and the policy must find the single best chunk to expand
    text = TEXT[:16 + 8]
    lm, enc, corpus, cfg = setup(tmp_path, docs=[text], phases=["policy"], steps_policy=25, lr_policy=3e-2,
                                 policy_fractions=[0.25], policy_group=4, policy_contexts=1, ppo_epochs=2)
    tr = RefragTrainer(lm.model, lm.tokenizer, enc, corpus, cfg, tmp_path / "run", log=lambda m: None, progress=False)
    ctx, vecs, _, cont = corpus.window(0, 0, 4, 8)
    with torch.no_grad():
        proj = tr.projector(vecs.float())
        from refrag_rasd_core.training.refrag.rl import selection_nll

        rows = [Row(prefix=tr.start_ids, context=ctx.tolist(), n_chunks=4, target=cont.tolist(), expanded=[j])
                for j in range(4)]
        per_chunk = selection_nll(tr, rows, proj.repeat(4, 1))
    tr.run()
    ls = losses(tmp_path / "run", "policy")
    best = int(per_chunk.argmin())
    with torch.no_grad():
        q = tr.embed(ctx).float().mean(0)
        choice = int(tr.policy(vecs.float(), q).argmax())
    assert choice == best, (per_chunk.tolist(), ls)
    assert mean(ls[-4:]) < mean(ls[:4]) - 0.3 * (float(per_chunk.mean()) - float(per_chunk.min())), ls


def test_bfloat16_autocast_runs(tmp_path: Path) -> None:
    lm, enc, corpus, cfg = setup(tmp_path, phases=["recon", "cpt"], steps_recon=2, steps_cpt=2, dtype="bfloat16")
    tr = RefragTrainer(lm.model, lm.tokenizer, enc, corpus, cfg, tmp_path / "run", log=lambda m: None, progress=False)
    tr.run()
    assert all(torch.isfinite(torch.tensor(losses(tmp_path / "run", p))).all() for p in ("recon", "cpt"))


# ---------------------------------------------------------------------------------------------- resume
def test_resume_continues_exactly(tmp_path: Path) -> None:
    kw = {"phases": ["recon", "cpt", "policy"], "steps_recon": 5, "steps_cpt": 5, "steps_policy": 3, "ckpt_every": 2}

    def trainer(out: Path) -> RefragTrainer:
        lm, enc, corpus, cfg = setup(tmp_path, **kw)
        return RefragTrainer(lm.model, lm.tokenizer, enc, corpus, cfg, out, log=lambda m: None, progress=False)

    trainer(tmp_path / "a").run()
    first = trainer(tmp_path / "b")
    first.run(stop_after=7)  # inside cpt, between checkpoints
    assert (first.phase_index, first.step) == (1, 2)
    trainer(tmp_path / "b").run(resume=True, stop_after=4)  # into the policy phase
    trainer(tmp_path / "b").run(resume=True)
    for phase in ("recon", "cpt", "policy"):
        assert losses(tmp_path / "a", phase) == losses(tmp_path / "b", phase), phase
    a = load_refrag_checkpoint(tmp_path / "a" / "refrag.safetensors")
    b = load_refrag_checkpoint(tmp_path / "b" / "refrag.safetensors")
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), n
    assert a.lora.keys() == b.lora.keys() and all(torch.equal(a.lora[n], b.lora[n]) for n in a.lora)
    assert_same_state(tmp_path / "a", tmp_path / "b")


def assert_same_state(a: Path, b: Path) -> None:
    """The float32 trainables of the final state files are bit for bit equal (the float16 export alone
    would hide last-bit differences)."""
    from safetensors.torch import load_file

    x, y = load_file(str(a / STATE_FILE)), load_file(str(b / STATE_FILE))
    assert x.keys() == y.keys()
    bad = {n: float((x[n] - y[n]).abs().max()) for n in x if not torch.equal(x[n], y[n])}
    assert not bad, bad


@pytest.mark.parametrize("seed", [0, 2, 5])
def test_policy_resume_is_bitwise(tmp_path: Path, seed: int) -> None:
    """A resumed policy phase starts from freshly built modules (train mode), an uninterrupted one from the
    modes the previous step left: the numbers must not depend on that (in eval mode without gradient the
    policy's nn.TransformerEncoder takes a fused fast path whose rounding differs)."""
    kw = {"phases": ["policy"], "steps_policy": 4, "ckpt_every": 2, "seed": seed}

    def trainer(out: Path) -> RefragTrainer:
        lm, enc, corpus, cfg = setup(tmp_path, **kw)
        return RefragTrainer(lm.model, lm.tokenizer, enc, corpus, cfg, out, log=lambda m: None, progress=False)

    trainer(tmp_path / "a").run()
    trainer(tmp_path / "b").run(stop_after=1)  # between checkpoints
    trainer(tmp_path / "b").run(resume=True)
    assert losses(tmp_path / "a", "policy") == losses(tmp_path / "b", "policy")
    assert_same_state(tmp_path / "a", tmp_path / "b")


# ---------------------------------------------------------------------------------------------- export
def test_lora_export_merges_to_the_peft_model(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(0, vocab_size=262)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=12, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    ids = torch.randint(0, 262, (2, 12))
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
    state, scaling = peft_lora_state(peft_model)
    assert scaling == 3.0 and len(state) == 2 * 7 * 2
    plain = tiny_llama(0, vocab_size=262)
    assert merge_lora_(plain, state, scaling) == 14
    with torch.no_grad():
        got = plain(input_ids=ids).logits
    assert_logits_close(got, want)
    with torch.no_grad():
        assert (plain(input_ids=ids).logits - tiny_llama(0, vocab_size=262)(input_ids=ids).logits).abs().max() > 1e-3


def test_trained_checkpoint_round_trip(tmp_path: Path) -> None:
    lm, enc, corpus, cfg = setup(tmp_path, phases=["recon", "cpt", "policy"], steps_recon=2, steps_cpt=3,
                                 steps_policy=2, lr_lora=5e-2)
    tr = RefragTrainer(lm.model, lm.tokenizer, enc, corpus, cfg, tmp_path / "run", log=lambda m: None, progress=False)
    tr.run()
    path = tr.export(tmp_path / "final.safetensors", metrics={"x": 1}, dtype=torch.float32)
    rm = load_refrag_checkpoint(path, tiny_llama(0, vocab_size=len(lm.tokenizer)), lm.tokenizer, expect_k=K)
    assert rm.k == K and rm.pooling == "mean" and rm.policy is not None and rm.meta["metrics"] == {"x": 1}
    assert rm.meta["recipe"]["train"]["steps_cpt"] == 3
    v = corpus.vectors[:3].float()
    with torch.no_grad():
        torch.testing.assert_close(rm.project(v), tr.projector(v))
        q = torch.randn(lm.model.config.hidden_size)
        torch.testing.assert_close(rm.policy(v, q), tr.policy(v, q))
    # the decoder the engine builds (plain target + merged LoRA) reads the mixed input as the trained one does
    plain = tiny_llama(0, vocab_size=len(lm.tokenizer))
    merge_lora_(plain, rm.lora, rm.lora_scaling)
    row = Row(prefix=tr.start_ids, context=corpus.doc_tokens(0)[:12].tolist(), n_chunks=3, target=[65, 66])
    with torch.no_grad():
        inp = assemble([row], rm.project(v), plain.get_input_embeddings(), K)
        got = plain(inputs_embeds=inp["inputs_embeds"]).logits
        inp2 = assemble([row], tr.projector(v), tr.embed, K)
        want = tr.decoder(inputs_embeds=inp2["inputs_embeds"]).logits
    assert_logits_close(got, want)
    # float16 export (what ships): still loads, projector close
    p16 = tr.export(tmp_path / "f16.safetensors")
    assert p16.stat().st_size < path.stat().st_size
    rm16 = load_refrag_checkpoint(p16)
    torch.testing.assert_close(rm16.project(v), rm.project(v), atol=2e-2, rtol=2e-2)


def test_evaluation_reports_every_mode(tmp_path: Path) -> None:
    lm, enc, corpus, cfg = setup(tmp_path, phases=["recon", "policy"], steps_recon=1, steps_policy=1)
    tr = RefragTrainer(lm.model, lm.tokenizer, enc, corpus, cfg, tmp_path / "run", log=lambda m: None, progress=False)
    tr.run()
    q = evaluate_quality(tr, corpus, samples=3, n_chunks=8, continuation=8, log=lambda m: None)
    assert q["windows"] == 3
    for key in ("none", "full", "none_trained", "full_trained", "compressed", "random@0.25", "similarity@0.25",
                "perplexity@0.1", "rl@0.25"):
        assert key in q["nll"], key
    r = evaluate_reconstruction(tr, corpus, chunks=(1, 2), samples=4)
    assert 0.0 <= r["1_chunk"]["token_accuracy"] <= 1.0 and r["2_chunk"]["windows"] == 4


def test_cli_parser_and_config() -> None:
    args = build_parser().parse_args(["--out", "x", "--phases", "policy,recon", "--steps-recon", "7", "--k", "8",
                                      "--lora-rank", "0", "--device", "cpu", "--dtype", "bfloat16"])
    cfg = config_from_args(args)
    assert cfg.phases == ["recon", "policy"] and cfg.steps_recon == 7 and cfg.k == 8 and cfg.lora_rank == 0
    assert cfg.dtype == "bfloat16"
    with pytest.raises(ValueError):
        config_from_args(build_parser().parse_args(["--out", "x", "--phases", "bogus"]))
