"""The lean forward (refrag_rasd_core.lean) against transformers' forward (TargetRunner) on tiny random
LLaMA and Qwen2 models: logits and hidden states equal within fp32 tolerance at every kind of forward the
engine runs (prefill from ids or embeddings, plain steps, a tree verify, after compaction and truncation),
with plain F.linear and with every prepared-weight backend forced; and the engine's greedy outputs equal for
every method and context."""

from __future__ import annotations

import pytest
import torch

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.forward import make_runner, runner_kind
from refrag_rasd_core.lean import LeanCache, LeanRunner, PackPlan, unsupported_reason
from refrag_rasd_core.lean.linear import (
    NO_PACKING,
    PackedLinear,
    measure_pack_plans,
    mkl_available,
    onednn_available,
)
from refrag_rasd_core.rasd import CausalLMDrafter
from refrag_rasd_core.rasd.token_tree import TokenTree
from refrag_rasd_core.target import TargetRunner, keep_cache_path, truncate_cache

TOL = {"rtol": 1e-4, "atol": 1e-4}
# every backend and padding path forced (the engine measures instead); unavailable backends fall back to plain
FORCED = {
    "decoder": PackPlan(rows={1: (1, "mkl"), 2: (2, "onednn"), 3: (4, "onednn"), 4: (4, "mkl"), 5: (8, "plain"),
                              **{n: (16, "mkl") for n in range(9, 17)}}, long="mkl"),
    "head": PackPlan(rows={1: (1, "onednn"), **{n: (8, "mkl") for n in range(2, 9)}}, long="onednn"),
}


def tiny_qwen2(seed: int = 0, vocab_size: int = 262):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      initializer_range=0.25, tie_word_embeddings=True)
    cfg._attn_implementation = "sdpa"
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # qkv biases are zero at init: make them count
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.3)
    return model


def _models():
    from tiny import tiny_llama

    return {"llama": tiny_llama(3), "qwen2": tiny_qwen2(3)}


MODELS = _models()


def _tree(root: int, n: int) -> TokenTree:
    tree = TokenTree(root)
    for i in range(n - 1):  # a bushy tree: half the nodes hang off the root, half extend the last node
        tree.add(0 if i % 2 == 0 else len(tree) - 1, 10 + 3 * i, 0.5, 1)
    return tree


def _same(a, b):
    torch.testing.assert_close(a[0], b[0], **TOL)
    if a[1] is None or b[1] is None:
        assert a[1] is None and b[1] is None
    else:
        torch.testing.assert_close(a[1], b[1], **TOL)


@pytest.mark.parametrize("plans", [None, FORCED], ids=["plain", "forced-backends"])
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_lean_equals_transformers_at_every_kind_of_forward(arch, plans):
    model = MODELS[arch]
    hf = TargetRunner(model)
    lean = LeanRunner(model, plans=plans or {"decoder": NO_PACKING, "head": NO_PACKING})
    ch, cl = hf.new_cache(), lean.new_cache()
    both = [(hf, ch), (lean, cl)]

    def run(*args, **kw):
        a, b = (r.forward(*args, c, **kw) for r, c in both)
        _same(a, b)
        return a

    ids = torch.randint(0, 250, (1, 150), generator=torch.Generator().manual_seed(1))
    run(ids[:, :140], logits_at=None, want_hidden=True)              # prefill (long: blocks of 128 rows)
    for t in range(140, 145):                                         # plain steps
        run(ids[:, t:t + 1], logits_at=-1, want_hidden=t % 2 == 0)
    ctx = 145
    for n in (2, 3, 5, 12):                                           # tree verifies, then compaction
        tree = _tree(7 + n, n)
        run(torch.tensor([tree.tokens]), logits_at=None, want_hidden=True,
            attention_mask=tree.attention_mask(ctx, torch.float32), position_ids=tree.position_ids(ctx))
        keep = torch.tensor([0, *[i for i in range(1, n) if i % 2 == 0]])  # a non-contiguous path
        for _, c in both:
            keep_cache_path(c, ctx, keep)
        ctx += len(keep)
        assert cl.get_seq_length() == ch.get_seq_length() == ctx
    run(ids[:, 145:148], logits_at=torch.tensor([0, 2]))              # several positions after a cache
    for _, c in both:
        truncate_cache(c, 100)
    assert cl.get_seq_length() == 100
    run(ids[:, 100:104], logits_at=1)                                 # continue after truncation


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_lean_prefill_from_embeddings_then_ids(arch):
    model = MODELS[arch]
    hf, lean = TargetRunner(model), LeanRunner(model, plans=FORCED)
    embeds = torch.randn(1, 20, model.config.hidden_size, generator=torch.Generator().manual_seed(2)) * 0.5
    ch, cl = hf.new_cache(), lean.new_cache()
    _same(hf.forward(None, ch, inputs_embeds=embeds, want_hidden=True),
          lean.forward(None, cl, inputs_embeds=embeds, want_hidden=True))
    step = torch.tensor([[5, 6]])
    _same(hf.forward(step, ch, logits_at=None), lean.forward(step, cl, logits_at=None))


def test_packed_linear_every_backend_equals_f_linear():
    w, bias = torch.randn(48, 24), torch.randn(48)
    lin = PackedLinear(w, bias, FORCED["decoder"])
    if mkl_available():
        assert {1, 4, 16, 128} <= set(lin.mkl)
    if onednn_available():
        assert lin.onednn is not None
    for n in (1, 2, 3, 4, 5, 7, 9, 16, 20, 33, 130, 300):
        x = torch.randn(n, 24)
        torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, w, bias), rtol=1e-5, atol=1e-5)


def test_pack_plan_is_measured_and_described():
    plans = measure_pack_plans({"decoder": [torch.randn(96, 64)] * 3, "head": [torch.randn(256, 64)]},
                               repeats=1, long=("decoder",))
    for plan in plans.values():
        assert all(m >= n and m in (1, 2, 4, 8, 16, 32) for n, (m, _) in plan.rows.items())
        assert "plain" in plan.timings and isinstance(plan.describe(), str)
    assert FORCED["decoder"].describe().startswith(
        "M 1:mkl, 2:onednn, 3:onednn@4, 4:mkl, 5:plain@8, 9-16:mkl@16, >32:mkl")


def test_lean_cache_compaction_and_growth():
    cache = LeanCache(layers=2, kv_heads=2, head_dim=3, dtype=torch.float32, device="cpu", capacity=4)
    ref = torch.randn(2, 2, 300, 3)
    cache.reserve(300)  # grows, keeping nothing (length 0)
    cache.keys[:, :, :300], cache.values[:, :, :300] = ref, -ref
    cache.length = 300
    cache.reserve(700)  # grows, keeping the 300 valid positions
    assert cache.capacity >= 700 and torch.equal(cache.keys[:, :, :300], ref)
    keep = torch.tensor([0, 3, 4, 9])
    keep_cache_path(cache, 200, keep)
    want = torch.cat([ref[:, :, :200], ref[:, :, 200 + keep]], dim=2)
    assert cache.length == 204 and torch.equal(cache.keys[:, :, :204], want)
    assert torch.equal(cache.values[:, :, :204], -want)
    assert cache.kv_bytes() == 2 * 2 * 2 * 204 * 3 * 4


def test_make_runner_picks_by_setting_and_support(tiny):
    from transformers import GPT2Config, GPT2LMHeadModel

    assert isinstance(make_runner(tiny.model, "auto"), LeanRunner)
    assert isinstance(make_runner(tiny.model, "hf"), TargetRunner)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).eval()
    assert "gpt2" in unsupported_reason(gpt2)
    assert runner_kind(make_runner(gpt2, "auto")) == "hf"
    with pytest.raises(InvalidInputError, match="cannot run"):
        make_runner(gpt2, "lean")
    with pytest.raises(InvalidInputError, match="forward must be"):
        make_runner(tiny.model, "fast")


def test_lean_shares_the_weights_it_fuses():
    from tiny import tiny_llama

    model = tiny_llama(4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lean = LeanRunner(model, prepack=False)
    attn = model.model.layers[0].self_attn
    qkv = lean.weights.layers[0].qkv.weight
    assert attn.k_proj.weight.untyped_storage().data_ptr() == qkv.untyped_storage().data_ptr()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # same values
    again = LeanRunner(model, prepack=False)  # fused before: recognised, not copied again
    assert again.weights.layers[0].qkv.weight.data_ptr() == qkv.data_ptr()


def test_pack_plans_time_the_matrices_the_forward_multiplies():
    from refrag_rasd_core.lean.weights import linear_groups
    from tiny import tiny_llama

    model = tiny_llama(5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = linear_groups(model)  # fused q/k/v and gate/up, as the forward runs them
    lean = LeanRunner(model, prepack=False)
    ran = [lin.weight for layer in lean.weights.layers for lin in (layer.qkv, layer.o, layer.gate_up, layer.down)]
    assert [tuple(w.shape) for w in groups["decoder"]] == [tuple(w.shape) for w in ran]
    assert [w.data_ptr() for w in groups["decoder"]] == [w.data_ptr() for w in ran]  # the same memory
    assert groups["head"][0].data_ptr() == lean.weights.head.weight.data_ptr()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


# ---- the engine: greedy outputs equal with either forward ----------------------------------------------
PROMPT = [{"role": "user", "content": "abc abc abc abc, the cat sat on the mat; the cat sat"}]


@pytest.fixture(scope="module")
def engines(tiny):
    drafter = CausalLMDrafter(tiny.model, tokenizer=tiny.tokenizer, target_tokenizer=tiny.tokenizer)
    return {f: Engine(tiny, drafter=drafter, forward=f) for f in ("hf", "lean")}


@pytest.mark.parametrize("method", ["vanilla", "pld", "rest", "draft", "rasd"])
def test_engine_greedy_lean_equals_hf_for_every_method(engines, method):
    assert engines["lean"].forward == "lean" and engines["hf"].forward == "hf"
    base = engines["hf"].generate(PROMPT, max_new_tokens=48, method="vanilla")
    passages = [base.token_ids[5:30], base.token_ids[20:45], [7, 8, 9]]
    out = {f: e.generate(PROMPT, max_new_tokens=48, method=method, context="none", passages=passages)
           for f, e in engines.items()}
    assert out["lean"].token_ids == out["hf"].token_ids == base.token_ids
    assert out["lean"].text == out["hf"].text


@pytest.mark.parametrize("context", ["text", "compressed"])
@pytest.mark.parametrize("method", ["vanilla", "rasd"])
def test_engine_greedy_lean_equals_hf_with_passages(method, context):
    from refrag_rasd_core.eagle.head import DraftHead
    from tiny import tiny_chunk_encoder, tiny_loaded, tiny_refrag

    loaded = tiny_loaded(0)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    rm = tiny_refrag(loaded, enc)
    name = "model.layers.0.self_attn.q_proj"  # a decoder adapter: compressed requests run the adapted copy
    w = dict(loaded.model.named_modules())[name].weight
    rm.lora = {f"lora.{name}.A": torch.full((2, w.shape[1]), 0.01), f"lora.{name}.B": torch.ones(w.shape[0], 2)}
    head = DraftHead.for_target(loaded.model, draft_vocab_size=64)
    passages = ["The Eiffel Tower is in Paris. It was finished in 1889 for the World's Fair.",
                "Mount Fuji is the highest mountain in Japan, at 3,776 metres."]
    out = {}
    for f in ("hf", "lean"):
        engine = Engine(loaded, drafter=head, refrag=rm, refrag_encoder=enc, forward=f)
        out[f] = engine.generate("Tell me about Paris.", passages=passages, context=context, method=method,
                                 max_new_tokens=24, expand=0.25, policy="similarity")
        if context == "compressed":
            assert runner_kind(engine.runner_for(True)) == f and engine.runner_for(True) is not engine.runner
    assert out["lean"].token_ids == out["hf"].token_ids
