"""REFRAG trained for RAG question answering, on tiny random models: QA rows in the engine's exact layout,
the held-out split, the answer-bearing chunks, the sft / select / policy phases on QA data, the
question-aware policy in the engine, and starting a run from a checkpoint."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from refrag_rasd_core import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.refrag import ExpansionPolicy, load_refrag_checkpoint
from refrag_rasd_core.refrag.context import build_compressed_input, layout_prompt
from refrag_rasd_core.refrag.policy import choose_expansions
from refrag_rasd_core.training.qa_split import load_qa_split
from refrag_rasd_core.training.refrag import RefragTrainConfig, RefragTrainer
from refrag_rasd_core.training.refrag.batches import assemble
from refrag_rasd_core.training.refrag.corpus import ChunkCorpus, Document
from refrag_rasd_core.training.refrag.qa_rows import answer_chunks, build_qa_examples, rag_row
from tiny import tiny_chunk_encoder, tiny_loaded

K = 4
FACTS = [("Where do the blue owls nest?", "Owls nest in the Marrow Hills.", "Marrow Hills"),
         ("What colour is the river Tav?", "The Tav runs green in May.", "green"),
         ("Who built the old mill?", "Ada Lund built the old mill.", "Ada Lund"),
         ("When does the fair open?", "The fair opens on the 9th.", "9th"),
         ("What do farmers grow here?", "Farmers here grow rye and kale.", "rye"),
         ("How tall is the bell tower?", "The tower rises 40 metres.", "40 metres"),
         ("Which bird sings at dusk?", "At dusk the wren sings.", "wren"),
         ("What is the town's name?", "The town is called Oskby.", "Oskby")]


def qa_file(tmp: Path) -> Path:
    f = tmp / "qa.jsonl"
    f.write_text("\n".join(json.dumps({"id": f"q{i}", "question": q, "answers": [a], "passage": p, "title": "T"})
                           for i, (q, p, a) in enumerate(FACTS)))
    return f


def setup(tmp: Path, holdout: int = 2, k: int = K, **cfg_kw):
    lm = tiny_loaded(0)
    enc = tiny_chunk_encoder(lm.tokenizer, k=k)
    splits = load_qa_split([qa_file(tmp)], holdout)
    examples = build_qa_examples(splits, lm.tokenizer, enc, tmp / f"cache-k{k}", top_k=2, log=lambda m: None)
    corpus = ChunkCorpus.build([Document(p, "qa_train") for _, _, c in splits for p in c], lm.tokenizer, k,
                               encoder=enc)
    base = {"k": k, "lora_rank": 4, "lora_alpha": 8.0, "warmup": 2, "ckpt_every": 50, "policy_width": 16,
            "policy_max_chunks": 64, "sft_answer_tokens": 5, "sft_batch": 2, "policy_query": "question",
            "select_batch": 4, "policy_contexts": 2, "policy_group": 3, "entropy_coef": 0.01}
    base.update(cfg_kw)
    return lm, enc, corpus, examples, RefragTrainConfig(**base)


def trainer(tmp: Path, out: str = "run", **cfg_kw) -> RefragTrainer:
    lm, enc, corpus, examples, cfg = setup(tmp, **cfg_kw)
    return RefragTrainer(lm.model, lm.tokenizer, enc, corpus, cfg, tmp / out, log=lambda m: None, progress=False,
                         qa_examples=examples)


def losses(out: Path, phase: str, key: str = "loss") -> list[float]:
    return [json.loads(x)[key] for x in (out / "train_log.jsonl").read_text().splitlines()
            if json.loads(x)["phase"] == phase]


def mean(xs):
    return sum(xs) / len(xs)


# ---------------------------------------------------------------------------------------------- data
def test_answer_chunks_span_boundaries_and_cases() -> None:
    assert answer_chunks(["The Tav ", "runs GRE", "EN in May"], ["green"]) == [1, 2]
    assert answer_chunks(["a b", "c d"], ["zzz", ""]) == []
    assert answer_chunks(["x ab x", "ab"], ["ab"]) == [0, 1]


def test_split_holds_out_the_first_questions_and_their_passages(tmp_path: Path) -> None:
    (train, held, corpus), = load_qa_split([qa_file(tmp_path)], holdout=3)
    assert [it.qid for it in held] == ["q0", "q1", "q2"] and [it.qid for it in train][0] == "q3"
    held_gold = {g for it in held for g in it.gold}
    assert held_gold and not held_gold & set(corpus)           # held-out text is never trained on
    assert len(corpus) == len(FACTS) - 3
    with pytest.raises(InvalidInputError, match="all held out"):
        load_qa_split([qa_file(tmp_path)], holdout=len(FACTS))


def test_qa_examples_retrieve_encode_and_cache(tmp_path: Path) -> None:
    lm = tiny_loaded(0)
    enc = tiny_chunk_encoder(lm.tokenizer, k=K)
    splits = load_qa_split([qa_file(tmp_path)], 2)
    ex = build_qa_examples(splits, lm.tokenizer, enc, tmp_path, top_k=2, log=lambda m: None)
    assert [e.qid for e in ex] == [f"q{i}" for i in range(2, len(FACTS))]
    for e in ex:
        assert len(e.passages) == 2 and e.question_vector.shape == (enc.dim,)
        assert e.vectors.shape == (sum(-(-len(p) // K) for p in e.passages), enc.dim)
        want = torch.cat([torch.from_numpy(v.astype("float32")) for v in enc.encode_passages(e.passages)])
        torch.testing.assert_close(e.vectors, want, atol=2e-3, rtol=2e-3)
        # the answer chunks are exactly where a gold answer is in the retrieved text
        texts = [lm.tokenizer.decode(p[i:i + K]) for p in e.passages for i in range(0, len(p), K)]
        assert e.answer_chunks == answer_chunks(texts, e.answers)
        gold_in = any(e.answers[0].lower() in lm.tokenizer.decode(p).lower() for p in e.passages)
        assert bool(e.answer_chunks) == gold_in and (e.gold_rank is not None) == gold_in
    assert len(list(tmp_path.glob("qa-*.json"))) == 1
    calls = []
    enc.register_forward_hook(lambda *a: calls.append(1))
    again = build_qa_examples(splits, lm.tokenizer, enc, tmp_path, top_k=2, log=lambda m: None)
    assert not calls and [e.answer_chunks for e in again] == [e.answer_chunks for e in ex]  # read from the cache


def test_qa_row_is_the_engines_layout(tmp_path: Path) -> None:
    """A training row reads, position for position, what the engine's compressed prefill reads."""
    lm = tiny_loaded(0)
    tok, emb = lm.tokenizer, lm.model.get_input_embeddings()
    passages = [tok("First passage, a bit long.", add_special_tokens=False)["input_ids"],
                tok("Second one.", add_special_tokens=False)["input_ids"]]
    n = [-(-len(p) // K) for p in passages]
    proj = [torch.randn(c, lm.model.config.hidden_size) for c in n]
    row = rag_row(tok, "What is it?", passages, K, [65, 66], expanded=[1, n[0]])
    lay = layout_prompt(tok, "What is it?", passages)
    assert row.prompt_ids(K) == lay.full_ids()
    with torch.no_grad():
        want = build_compressed_input(lay, emb, proj, K, expanded=[1, n[0]])
        got = assemble([row], torch.cat(proj), emb, K)
    L = want.length
    assert torch.equal(got["inputs_embeds"][0, :L], want.inputs_embeds[0])
    assert got["pred_pos"].tolist() == [L - 1, L]  # the answer starts right after the assistant turn


# ---------------------------------------------------------------------------------------------- phases
def test_sft_on_qa_rows_reduces_loss_with_teacher_targets(tmp_path: Path) -> None:
    tr = trainer(tmp_path, phases=["sft"], steps_sft=14, lr_projector=3e-3, lr_lora=1e-2)
    tr.run()
    ls = losses(tmp_path / "run", "sft")
    assert mean(ls[-4:]) < mean(ls[:4]) - 0.2, ls
    cached = [json.loads(x) for x in (tmp_path / "run" / "sft_answers.jsonl").read_text().splitlines()]
    assert sorted(c["id"] for c in cached) == sorted(e.qid for e in tr.qa_examples)
    # the teacher is the unadapted decoder answering the full-text prompt greedily
    ex, (row, _) = tr.qa_examples[0], tr.sft_rows()[0]
    ids = torch.tensor([row.prompt_ids(K)])
    with torch.no_grad(), tr.decoder.disable_adapter():
        want = tr.lm.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=257)[0, ids.shape[1]:].tolist()
    got = next(c for c in cached if c["id"] == ex.qid)
    assert got["answer"] == (want[:want.index(257)] if 257 in want else want)


@pytest.mark.parametrize("shuffle", [0.0, 1.0])
def test_select_learns_the_answer_chunks(tmp_path: Path, shuffle: float) -> None:
    # shuffle=1: every row's chunks in a random order, so only what the chunks hold can be learned
    tr = trainer(tmp_path, phases=["select"], steps_select=40, lr_select=1e-2, select_batch=6,
                 select_shuffle=shuffle)
    assert tr.policy.reads_question_vector
    tr.run()
    ls, hits = losses(tmp_path / "run", "select"), losses(tmp_path / "run", "select", "top1_hit")
    assert mean(ls[-5:]) < mean(ls[:5]) - 0.2, ls
    assert mean(hits[-5:]) > mean(hits[:5]), hits
    rm = load_refrag_checkpoint(tmp_path / "run" / "refrag.safetensors")  # the phase's export holds the policy
    assert rm.policy is not None and rm.policy.config["query_dim"] == tr.encoder.dim


def test_policy_phase_on_qa_rewards_the_answer(tmp_path: Path) -> None:
    tr = trainer(tmp_path, phases=["policy"], steps_policy=3, policy_fractions=[0.25])
    tr.run()
    rec = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(rec) == 3 and all(r["phase"] == "policy" and r["entropy"] > 0 for r in rec)
    assert all(abs(r["random_nll"] - r["loss"] - r["gain_vs_random"]) < 1e-9 for r in rec)


def test_question_aware_policy_in_the_engine(tmp_path: Path) -> None:
    tr = trainer(tmp_path, phases=["select"], steps_select=2)
    tr.run()
    path = tr.export(tmp_path / "qa.safetensors", dtype=torch.float32)
    lm = tiny_loaded(0)
    # the run's in-memory encoder (no file to load it from)
    engine = Engine(target=lm, refrag=load_refrag_checkpoint(path), refrag_encoder=tr.encoder)
    passages = [p for _, p, _ in FACTS[:3]]
    for policy in ("rl", "question"):
        res = engine.generate("Who built the old mill?", passages=passages, context="compressed", expand=0.25,
                              policy=policy, max_new_tokens=4)
        assert res.stats.expanded_chunks == int(0.25 * res.stats.chunks) and len(res.token_ids) == 4
        assert len(res.stats.expanded) == res.stats.expanded_chunks and max(res.stats.expanded) < res.stats.chunks
    # "question" ranks chunks by the encoder's cosine to the question
    vecs = torch.randn(6, 8)
    q = vecs[4] + 0.01 * torch.randn(8)
    got = choose_expansions("question", 1, chunk_vectors=vecs, projected=vecs, query_embeds=torch.zeros(2, 3),
                            chunks=[[1]] * 6, question_vector=lambda: q)
    assert got == [4]
    with pytest.raises(InvalidInputError, match="question's encoder vector"):
        choose_expansions("question", 1, chunk_vectors=vecs, projected=vecs, query_embeds=torch.zeros(2, 3),
                          chunks=[[1]] * 6)


def test_policy_config_round_trip_and_old_policies() -> None:
    old = ExpansionPolicy(8, 12, width=16, heads=2)
    assert "query_dim" not in old.config and not old.reads_question_vector
    assert ExpansionPolicy(**old.config).state_dict().keys() == old.state_dict().keys()
    new = ExpansionPolicy(8, 12, width=16, heads=2, query_dim=8)
    assert new.reads_question_vector and ExpansionPolicy(**new.config).config == new.config
    assert new(torch.randn(5, 8), torch.randn(8)).shape == (5,)


def test_init_from_a_checkpoint(tmp_path: Path) -> None:
    a = trainer(tmp_path, out="a", phases=["sft"], steps_sft=2, lr_lora=5e-2, policy_query="decoder")
    a.run()
    path = a.export(tmp_path / "a.safetensors", dtype=torch.float32)
    b = trainer(tmp_path, out="b", phases=["sft"], steps_sft=1, policy_query="decoder")
    b.init_from(path)
    for (n, x), (_, y) in zip(a.named_trainables().items(), b.named_trainables().items(), strict=True):
        if n.startswith(("projector.", "peft.")):
            assert torch.equal(x, y), n
    c = trainer(tmp_path, out="c", phases=["sft"], steps_sft=1, lora_rank=2, lora_alpha=4.0)
    with pytest.raises(InvalidInputError, match="LoRA"):
        c.init_from(path)
    # another chunk size: the projector and the adapters are k-agnostic, so they carry over (and it is logged)
    said: list[str] = []
    d = trainer(tmp_path, out="d", phases=["sft"], steps_sft=1, policy_query="decoder", k=K // 2)
    d.log = said.append
    d.init_from(path)
    assert any(f"k = {K}" in m and f"k = {K // 2}" in m for m in said)
    for (n, x), (_, y) in zip(a.named_trainables().items(), d.named_trainables().items(), strict=True):
        if n.startswith(("projector.", "peft.")):
            assert torch.equal(x, y), n


def test_selection_evaluation_scores_every_policy(tmp_path: Path) -> None:
    from refrag_rasd_core.training.refrag.evaluate import evaluate_selection

    tr = trainer(tmp_path, phases=["select"], steps_select=2)
    res = evaluate_selection(tr, tr.qa_examples)  # before training: the rl policy is not scored
    assert not any(k.startswith("rl@") for k in res["hit_rate"])
    tr.run()
    res = evaluate_selection(tr, tr.qa_examples, fractions=(0.25, 1.0))
    usable = [e for e in tr.qa_examples if e.answer_chunks]
    assert res["questions"] == len(usable) and 0 < res["answer_chunk_share"] <= 1
    for pol in ("random", "rank", "similarity", "question", "rl"):
        assert 0.0 <= res["hit_rate"][f"{pol}@0.25"] <= 1.0
        assert res["hit_rate"][f"{pol}@1.0"] == 1.0  # expanding every chunk always expands the answer
    first = [int(e.answer_chunks[0] < max(1, int(0.25 * e.n_chunks))) for e in usable]
    assert res["hit_rate"]["rank@0.25"] == round(sum(first) / len(first), 4)
    for pol in ("random", "rank", "similarity", "question", "rl"):
        assert res["hit_rate_shuffled"][f"{pol}@1.0"] == 1.0
    # the content-only policies choose the same chunks whatever their order: the shuffled answers map right
    for pol in ("similarity", "question"):
        assert res["hit_rate_shuffled"][f"{pol}@0.25"] == res["hit_rate"][f"{pol}@0.25"]


def test_chunk_scoped_adapters_leave_raw_tokens_to_the_stock_decoder(tmp_path: Path) -> None:
    tr = trainer(tmp_path, phases=["sft"], steps_sft=2, lr_lora=5e-2, lora_scope="chunks", policy_query="decoder")
    tr.run()
    assert any(float(p.abs().max()) > 0 for n, p in tr.lora_params.items() if "lora_B" in n)  # they trained
    row, _ = tr.sft_rows()[0]
    raw = replace(row, expanded=list(range(row.n_chunks)))  # every chunk as tokens: no compressed position
    vecs = tr.projector(torch.randn(row.n_chunks, tr.encoder.dim))
    with torch.no_grad():
        on_raw, _, _ = tr.row_nll([raw], vecs)
        on_mixed, _, _ = tr.row_nll([row], vecs)
        with tr.decoder.disable_adapter():
            off_raw, _, _ = tr.row_nll([raw], vecs)
            off_mixed, _, _ = tr.row_nll([row], vecs)
    torch.testing.assert_close(on_raw, off_raw)           # raw tokens: the stock decoder, exactly
    assert float((on_mixed - off_mixed).abs().max()) > 1e-4  # compressed positions: adapted
    assert tr.refrag_model().lora_scope == "chunks"
    with pytest.raises(InvalidInputError, match="lora_scope"):
        trainer(tmp_path, out="bad", lora_scope="tokens")
