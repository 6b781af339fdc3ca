"""REFRAG on tiny models: chunking, layout, the mixed prefill (order and positions), policies, checkpoints,
and the engine's compressed context (with precomputed or on-the-fly chunk vectors, vanilla or RASD)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refrag_rasd_core import CheckpointError, ContextTooLongError, Engine, InvalidInputError
from refrag_rasd_core.refrag import (
    ExpansionPolicy,
    Passage,
    build_compressed_input,
    choose_expansions,
    chunk_texts,
    chunk_token_ids,
    expansion_count,
    layout_prompt,
    load_refrag_checkpoint,
    num_chunks,
    save_refrag_checkpoint,
)
from refrag_rasd_core.refrag.checkpoint import decoder_info
from tiny import tiny_chunk_encoder, tiny_loaded, tiny_refrag

PASSAGES = [
    "The Eiffel Tower is in Paris. It was finished in 1889 for the World's Fair.",
    "Mount Fuji is the highest mountain in Japan, at 3,776 metres.",
    "Café crème ☕ and croissants 🥐 are a French breakfast.",
]


@pytest.fixture(scope="module")
def setup():
    loaded = tiny_loaded(0)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    rm = tiny_refrag(loaded, enc)
    engine = Engine(loaded, drafter=None, refrag=rm, refrag_encoder=enc)
    return loaded, enc, rm, engine


# ---- chunking ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "k", "sizes"), [(0, 4, []), (3, 4, [3]), (4, 4, [4]), (9, 4, [4, 4, 1]),
                                               (16, 16, [16]), (17, 16, [16, 1])])
def test_chunking_sizes(n, k, sizes):
    chunks = chunk_token_ids(list(range(n)), k)
    assert [len(c) for c in chunks] == sizes
    assert [t for c in chunks for t in c] == list(range(n))  # order kept, nothing lost
    assert num_chunks(n, k) == len(sizes)


def test_chunking_rejects_bad_k():
    for k in (0, -1, 2.0, True):
        with pytest.raises(InvalidInputError):
            chunk_token_ids([1, 2], k)


def test_chunk_texts_unicode_boundaries(setup):
    loaded, enc, *_ = setup
    ids = loaded.tokenizer(PASSAGES[2], add_special_tokens=False)["input_ids"]  # byte-level: emoji split
    texts = chunk_texts(loaded.tokenizer, ids, 3)
    assert len(texts) == num_chunks(len(ids), 3)
    assert all(isinstance(t, str) for t in texts)
    vecs = enc.encode_passages([ids, [], ids[:2]])
    assert [v.shape for v in vecs] == [(num_chunks(len(ids), 4), enc.dim), (0, enc.dim), (1, enc.dim)]
    assert all(v.dtype == np.float16 for v in vecs)


# ---- layout and mixed input --------------------------------------------------------------------------
def _pids(tok, texts=PASSAGES):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_layout_segments(setup):
    loaded, *_ = setup
    tok = loaded.tokenizer
    pids = _pids(tok)
    lay = layout_prompt(tok, "Where is the tower?", pids + [[]])
    assert lay.passages == pids  # empty passages are dropped
    full = lay.full_ids()
    assert full[:len(lay.prefix)] == lay.prefix and full[-len(lay.suffix):] == lay.suffix
    text = tok.decode(full)
    assert "Where is the tower?" in text and PASSAGES[0] in text and text.startswith("<|user|>")
    with pytest.raises(InvalidInputError):
        layout_prompt(tok, [{"role": "system", "content": "x"}], pids)
    with pytest.raises(InvalidInputError):
        layout_prompt(tok, "   ", pids)


def test_compressed_input_in_place_order_and_positions(setup):
    loaded, enc, rm, _ = setup
    tok, model = loaded.tokenizer, loaded.model
    pids = _pids(tok)
    lay = layout_prompt(tok, "Where?", pids)
    embed = model.get_input_embeddings()
    vecs = [rm.project(v) for v in enc.encode_passages(pids)]
    total = sum(num_chunks(len(p), 4) for p in pids)
    with torch.no_grad():
        # everything expanded == the plain token prompt, exactly
        allx = build_compressed_input(lay, embed, vecs, 4, range(total))
        assert allx.token_ids == lay.full_ids()
        assert torch.equal(allx.inputs_embeds[0], embed(torch.tensor(lay.full_ids())))
        # nothing expanded: one position per chunk, each the chunk's own vector, in order
        none = build_compressed_input(lay, embed, vecs, 4, [])
        n_sep = len(lay.separator) * (len(pids) - 1)
        assert none.length == len(lay.prefix) + total + n_sep + len(lay.suffix)
        slots = [i for i, t in enumerate(none.token_ids) if t is None]
        assert len(slots) == total
        flat = torch.cat(vecs)
        assert torch.equal(none.inputs_embeds[0, slots], flat)
        # chunk 1 expanded: its k tokens sit exactly where its vector was
        one = build_compressed_input(lay, embed, vecs, 4, [1])
        at = slots[1]
        assert one.token_ids[at:at + 4] == pids[0][4:8]
        assert one.length == none.length + 3
        assert torch.equal(one.inputs_embeds[0, at + 4], flat[2])
    assert one.expanded == [1] and one.n_chunks == total


# ---- policies ----------------------------------------------------------------------------------------
def test_expansion_count():
    assert expansion_count(10) == 0
    assert expansion_count(10, 0.1) == 1
    assert expansion_count(10, 1.0) == 10
    assert expansion_count(10, expand_tokens=33, k=16) == 2
    assert expansion_count(10, 0.5, expand_tokens=16, k=16) == 1
    for bad in (-0.1, 1.5):
        with pytest.raises(InvalidInputError):
            expansion_count(10, bad)
    with pytest.raises(InvalidInputError):
        expansion_count(10, expand_tokens=-1)


@pytest.mark.parametrize("policy", ["none", "random", "rank", "similarity", "perplexity", "rl"])
@pytest.mark.parametrize("n", [0, 1, 3, 50])
def test_policies_respect_the_budget(setup, policy, n):
    loaded, enc, rm, _ = setup
    pids = _pids(loaded.tokenizer)
    raw = torch.cat([torch.as_tensor(v, dtype=torch.float32) for v in enc.encode_passages(pids)])
    chunks = [c for p in pids for c in chunk_token_ids(p, 4)]
    got = choose_expansions(policy, n, chunk_vectors=raw, projected=rm.project(raw),
                            query_embeds=torch.randn(5, loaded.model.config.hidden_size), chunks=chunks,
                            decoder=loaded.model, network=rm.policy, seed=3)
    want = 0 if policy == "none" else min(n, len(chunks))
    assert len(got) == want == len(set(got)) and all(0 <= i < len(chunks) for i in got)
    if policy == "rank":  # the best-ranked passages (first in the prompt) first
        assert got == list(range(want))


def test_policy_sequential_selection_and_log_prob():
    logits = torch.tensor([0.0, 2.0, 1.0, -1.0])
    assert ExpansionPolicy.select(logits, 3) == [1, 2, 0]
    lp = ExpansionPolicy.log_prob(logits, [1, 2])
    p1 = torch.softmax(logits, -1)[1]
    p2 = torch.softmax(torch.tensor([0.0, 1.0, -1.0]), -1)[1]
    assert torch.allclose(lp, torch.log(p1 * p2))
    g = torch.Generator().manual_seed(0)
    picks = ExpansionPolicy.select(logits, 4, sample=True, generator=g)
    assert sorted(picks) == [0, 1, 2, 3]


# ---- engine ------------------------------------------------------------------------------------------
def test_fully_expanded_compressed_equals_text_context(setup):
    *_, engine = setup
    q = "Where is the tower?"
    text = engine.generate(q, passages=PASSAGES, context="text", max_new_tokens=12)
    full = engine.generate(q, passages=PASSAGES, context="compressed", expand=1.0, policy="random",
                           max_new_tokens=12)
    assert full.token_ids == text.token_ids
    assert full.stats.prefill_positions == text.stats.prefill_positions == text.stats.prompt_tokens


def test_precomputed_vectors_equal_on_the_fly(setup):
    loaded, enc, rm, engine = setup
    pids = _pids(loaded.tokenizer)
    stored = [Passage(t, token_ids=p, chunk_embeddings=v)
              for t, p, v in zip(PASSAGES, pids, enc.encode_passages(pids), strict=True)]
    calls = {"n": 0}
    hook = enc.model.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        a = engine.generate("Where?", passages=stored, context="compressed", max_new_tokens=10)
        assert calls["n"] == 0  # no encoder forward at query time with stored vectors
        b = engine.generate("Where?", passages=PASSAGES, context="compressed", max_new_tokens=10)
        assert calls["n"] > 0
    finally:
        hook.remove()
    assert a.token_ids == b.token_ids
    assert a.stats.chunks == sum(num_chunks(len(p), 4) for p in pids)
    assert a.stats.prefill_positions < a.stats.prompt_tokens


@pytest.mark.parametrize("method", ["pld", "rest", "rasd"])
def test_speculation_over_compressed_context_is_lossless(setup, method):
    *_, engine = setup
    kw = dict(passages=PASSAGES, context="compressed", expand=0.25, policy="similarity", max_new_tokens=24)
    plain = engine.generate("Tell me about Paris.", method="vanilla", **kw)
    spec = engine.generate("Tell me about Paris.", method=method, **kw)
    assert spec.token_ids == plain.token_ids


def test_speculation_with_a_draft_over_compressed_context(setup):
    from refrag_rasd_core.eagle.head import DraftHead

    loaded, enc, rm, _ = setup
    head = DraftHead.for_target(loaded.model, draft_vocab_size=64)
    engine = Engine(loaded, drafter=head, refrag=rm, refrag_encoder=enc)
    kw = dict(passages=PASSAGES, context="compressed", max_new_tokens=20)
    assert engine.generate("Paris?", method="rasd", **kw).token_ids == \
        engine.generate("Paris?", method="vanilla", **kw).token_ids


def test_wrong_vectors_and_missing_checkpoint_are_clear_errors(setup):
    loaded, enc, rm, engine = setup
    pids = _pids(loaded.tokenizer)
    bad = [Passage(PASSAGES[0], token_ids=pids[0], chunk_embeddings=np.zeros((2, enc.dim), np.float16))]
    with pytest.raises(InvalidInputError, match="another encoder or chunk size"):
        engine.generate("Q?", passages=bad, context="compressed", max_new_tokens=2)
    plain = Engine(loaded, drafter=None, refrag=None)
    with pytest.raises(InvalidInputError, match="train-refrag"):
        plain.generate("Q?", passages=PASSAGES, context="compressed", max_new_tokens=2)
    with pytest.raises(InvalidInputError):
        engine.generate("Q?", passages=PASSAGES, context="zipped")
    with pytest.raises(InvalidInputError):
        engine.generate("Q?", passages=PASSAGES, context="compressed", expand=2.0)


def test_compression_reaches_past_the_position_limit():
    loaded = tiny_loaded(0, max_positions=160)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    engine = Engine(loaded, drafter=None, refrag=tiny_refrag(loaded, enc), refrag_encoder=enc)
    long = ["word " * 40]  # ~200 byte tokens: too long as text, ~50 positions compressed
    with pytest.raises(ContextTooLongError, match="compressed"):
        engine.generate("Q?", passages=long, context="text", max_new_tokens=2)
    out = engine.generate("Q?", passages=long, context="compressed", max_new_tokens=4)
    assert out.stats.prompt_tokens > 160 > out.stats.prefill_positions
    with pytest.raises(ContextTooLongError, match="positions"):
        engine.generate("Q?", passages=long * 3, context="compressed", max_new_tokens=2)


def test_auto_compresses_what_does_not_fit_and_says_so():
    loaded = tiny_loaded(0, max_positions=160)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    engine = Engine(loaded, drafter=None, refrag=tiny_refrag(loaded, enc), refrag_encoder=enc)
    short = engine.generate("Q?", passages=["word " * 4], max_new_tokens=4, method="vanilla")
    assert (short.stats.context, short.stats.context_reason) == ("text", "")
    long = ["word " * 40]  # ~200 byte tokens: past the 160-position window as text
    out = engine.generate("Q?", passages=long, max_new_tokens=8, method="vanilla")
    assert out.stats.context == "compressed" and "do not fit the 160-position window" in out.stats.context_reason
    assert 0 < out.stats.expanded_chunks < out.stats.chunks  # a raw budget, capped to what the window leaves
    assert out.stats.prefill_positions + 8 <= 160
    # the same as asking for it with the budget the reason names
    budget = int(out.stats.context_reason.split("), ")[1].split(" tokens")[0].replace(",", ""))
    same = engine.generate("Q?", passages=long, max_new_tokens=8, method="vanilla", context="compressed",
                           expand_tokens=budget, policy="auto")
    assert same.token_ids == out.token_ids and same.stats.expanded == out.stats.expanded
    with pytest.raises(ContextTooLongError):  # an explicit context is never changed
        engine.generate("Q?", passages=long, context="text", max_new_tokens=2)
    with pytest.raises(ContextTooLongError, match="even compressed"):  # past what compression can take
        engine.generate("Q?", passages=long * 4, max_new_tokens=2)
    plain = Engine(loaded, drafter=None)  # no REFRAG checkpoint: refused as before
    with pytest.raises(ContextTooLongError, match="compressed"):
        plain.generate("Q?", passages=long, max_new_tokens=2)


def test_a_long_document_checkpoint_reads_what_does_not_fit():
    loaded = tiny_loaded(0, max_positions=160)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    main, long_rm = tiny_refrag(loaded, enc), tiny_refrag(loaded, enc, seed=5)
    engine = Engine(loaded, drafter=None, refrag=main, refrag_encoder=enc, refrag_long=long_rm)
    assert Engine(loaded, drafter=None, refrag=main, refrag_encoder=enc).refrag_long is None  # "auto": shipped only
    long = ["word " * 40]
    out = engine.generate("Q?", passages=long, max_new_tokens=8, method="vanilla")
    assert out.stats.context == "compressed" and "long-document checkpoint" in out.stats.context_reason
    budget = int(out.stats.context_reason.split("), ")[1].split(" tokens")[0].replace(",", ""))
    alone = Engine(loaded, drafter=None, refrag=long_rm, refrag_encoder=enc)  # the long checkpoint as the main one
    same = alone.generate("Q?", passages=long, max_new_tokens=8, method="vanilla", context="compressed",
                          expand_tokens=budget, policy="auto")
    assert same.token_ids == out.token_ids
    main_only = engine.generate("Q?", passages=long, max_new_tokens=8, method="vanilla", context="compressed",
                                expand_tokens=budget, policy="auto")  # asked for: the main checkpoint reads it
    ref = Engine(loaded, drafter=None, refrag=main, refrag_encoder=enc).generate(
        "Q?", passages=long, max_new_tokens=8, method="vanilla", context="compressed", expand_tokens=budget,
        policy="auto")
    assert main_only.token_ids == ref.token_ids
    assert ref.token_ids != same.token_ids  # the two checkpoints read the chunks differently: the choice shows
    other = tiny_refrag(loaded, tiny_chunk_encoder(loaded.tokenizer, k=8))
    with pytest.raises(CheckpointError, match="same encoder"):
        Engine(loaded, drafter=None, refrag=main, refrag_encoder=enc, refrag_long=other)


def test_an_expand_tokens_budget_alone_expands(setup):
    *_, engine = setup
    out = engine.generate("Q?", passages=["word " * 12], context="compressed", expand_tokens=8, policy="rank",
                          max_new_tokens=2, method="vanilla")
    assert out.stats.expanded_chunks == 2


def test_no_passages_answers_the_question_alone(setup):
    *_, engine = setup
    out = engine.generate("Hello?", passages=[], context="compressed", max_new_tokens=3)
    ref = engine.generate([{"role": "user", "content": "Hello?"}], max_new_tokens=3)
    assert out.token_ids == ref.token_ids


# ---- checkpoints -------------------------------------------------------------------------------------
def test_checkpoint_round_trip_and_mismatches(setup, tmp_path):
    loaded, enc, rm, _ = setup
    info = decoder_info(loaded.model, loaded.tokenizer)
    path = save_refrag_checkpoint(rm, tmp_path / "r.safetensors", decoder_info=info, recipe={"x": 1})
    back = load_refrag_checkpoint(path, loaded.model, loaded.tokenizer)
    x = torch.randn(3, enc.dim)
    assert torch.equal(back.project(x), rm.project(x))
    assert (back.k == 4 and back.policy is not None
            and back.signature(loaded.tokenizer) == rm.signature(loaded.tokenizer))
    with pytest.raises(CheckpointError, match="k=4"):
        load_refrag_checkpoint(path, expect_k=16)
    other = tiny_loaded(0, hidden=32)
    with pytest.raises(CheckpointError, match="hidden_size"):
        load_refrag_checkpoint(path, other.model, other.tokenizer)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="sha256"):
        load_refrag_checkpoint(path)
    with pytest.raises(CheckpointError, match="truncated"):
        load_refrag_checkpoint(path, verify_hash=False)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="json"):
        load_refrag_checkpoint(path)


def test_checkpoint_lora_applies_to_compressed_requests_only(setup, tmp_path):
    """The decoder adapters never touch the target: a text or plain request decodes with the stock weights
    (the same tokens as an engine without REFRAG), a compressed one with the adapted second weight set,
    whose adapted linears are W + s * B @ A and whose other parameters are the stock tensors themselves."""
    loaded = tiny_loaded(5)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    rm = tiny_refrag(loaded, enc, policy=False)
    name = "model.layers.0.self_attn.q_proj"
    w = dict(loaded.model.named_modules())[name].weight
    rm.lora = {f"lora.{name}.A": torch.full((2, w.shape[1]), 0.01), f"lora.{name}.B": torch.ones(w.shape[0], 2)}
    path = save_refrag_checkpoint(rm, tmp_path / "l.safetensors", decoder_info=decoder_info(loaded.model))
    before = w.detach().clone()
    eng = Engine(loaded, drafter=None, refrag=path, refrag_encoder=enc)
    stock = Engine(loaded, drafter=None, refrag=None)
    assert torch.equal(w, before)  # loading does not adapt the target
    passages = ["alpha beta gamma delta epsilon zeta eta theta", "one two three four five six seven"]
    for context in ("text", "none"):
        kw = {"passages": passages, "context": context, "max_new_tokens": 6}
        assert eng.generate("Why?", **kw).token_ids == stock.generate("Why?", **kw).token_ids
    assert eng.runner_for(False) is eng.runner
    eng.generate("Why?", passages=passages, context="compressed", max_new_tokens=3)
    twin = eng.runner_for(True).model
    assert twin is not loaded.model and torch.equal(w, before)
    assert torch.allclose(dict(twin.named_modules())[name].weight, before + 0.02)
    assert twin.get_input_embeddings().weight is loaded.model.get_input_embeddings().weight
    other = "model.layers.0.self_attn.k_proj"
    assert dict(twin.named_modules())[other].weight is dict(loaded.model.named_modules())[other].weight
    assert eng.runner_for(True) is eng.runner_for(True)  # built once


def _random_lora(model, layers=(0, 1), rank=2, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mods = dict(model.named_modules())
    out = {}
    for i in layers:
        for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            name = f"model.layers.{i}.{part}"
            o, n = mods[name].weight.shape
            out[f"lora.{name}.A"] = 0.1 * torch.randn(rank, n, generator=g)
            out[f"lora.{name}.B"] = 0.1 * torch.randn(o, rank, generator=g)
    return out


@pytest.mark.parametrize("forward", ["hf", "lean"])
def test_chunk_scoped_lora_adapts_the_chunk_positions_only(forward, tmp_path):
    """A checkpoint with ``lora.scope: "chunks"``: the adapters add ``s * B @ A @ x`` at the compressed chunks'
    rows of the prefill and nowhere else; decoding runs the stock weights (no second weight set); on all rows
    the scoped forward equals the merged twin's; both forwards agree; the scope survives the checkpoint."""
    from refrag_rasd_core.refrag.lora import adapted_copy
    from refrag_rasd_core.refrag.scoped_lora import RowScopedLora

    loaded = tiny_loaded(5)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    rm = tiny_refrag(loaded, enc, policy=False)
    rm.lora, rm.lora_scaling, rm.lora_scope = _random_lora(loaded.model), 2.0, "chunks"
    path = save_refrag_checkpoint(rm, tmp_path / "s.safetensors", decoder_info=decoder_info(loaded.model))
    eng = Engine(loaded, drafter=None, refrag=path, refrag_encoder=enc, forward=forward)
    assert eng.refrag.lora_scope == "chunks"
    assert eng.runner_for(True) is eng.runner  # no second weight set: the adapters act on the chunk rows only
    # on every row, the row-scoped deltas are the merged adapters
    lora = RowScopedLora(eng.refrag.lora, eng.refrag.lora_scaling)
    twin = eng.runner.sibling(adapted_copy(loaded.model, eng.refrag.lora, eng.refrag.lora_scaling))
    x = 0.5 * torch.randn(1, 7, loaded.model.config.hidden_size)
    ref, _ = twin.forward(None, twin.new_cache(), logits_at=None, inputs_embeds=x)
    got, _ = eng.runner.forward(None, eng.runner.new_cache(), logits_at=None, inputs_embeds=x, adapter=lora,
                                adapter_rows=torch.arange(7))
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)
    # on some rows: the other rows' own outputs change only through attention, never before the first adapted row
    part, _ = eng.runner.forward(None, eng.runner.new_cache(), logits_at=None, inputs_embeds=x, adapter=lora,
                                 adapter_rows=torch.tensor([3, 4]))
    stock, _ = eng.runner.forward(None, eng.runner.new_cache(), logits_at=None, inputs_embeds=x)
    torch.testing.assert_close(part[:3], stock[:3], atol=2e-5, rtol=1e-5)
    assert float((part[3:] - stock[3:]).abs().max()) > 1e-3
    # a compressed request: adapted prefill, stock decoding; every chunk expanded = plain RAG exactly
    passages = ["alpha beta gamma delta epsilon zeta eta theta", "one two three four five six seven"]
    plain = Engine(loaded, drafter=None, refrag=tiny_refrag(loaded, enc, policy=False), refrag_encoder=enc,
                   forward=forward)
    kw = {"passages": passages, "max_new_tokens": 6}
    adapted = eng.prefill("Why?", context="compressed", expand=0.0, **kw)
    unadapted = plain.prefill("Why?", context="compressed", expand=0.0, **kw)
    assert float((adapted.logits - unadapted.logits).abs().max()) > 1e-3
    full = eng.generate("Why?", context="compressed", expand=1.0, policy="similarity", **kw)
    text = eng.generate("Why?", context="text", **kw)
    assert full.stats.prefill_positions == text.stats.prefill_positions  # the same tokens laid out
    assert full.token_ids == text.token_ids
