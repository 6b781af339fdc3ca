"""Bad-input matrix, engine level (issue 9, part 1), on tiny random models.

Each row feeds the engine (or a checkpoint loader) one bad input and asserts two things: the exception is
of the documented TYPE (:mod:`refrag_rasd_core.errors`), and its message names the fix. Inputs that are
odd but legal (no passages, whitespace or emoji passages, a huge ``max_new_tokens``, a stop string longer
than the output) must simply work. No row may surface a raw torch / numpy / Python error from inside.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import (
    CheckpointError,
    ContextTooLongError,
    InvalidInputError,
    RefragRasdError,
    TokenizerMismatchError,
)
from refrag_rasd_core.rasd import CausalLMDrafter
from refrag_rasd_core.refrag import Passage, load_refrag_checkpoint, save_refrag_checkpoint
from refrag_rasd_core.refrag.checkpoint import decoder_info
from tiny import tiny_chunk_encoder, tiny_llama, tiny_loaded, tiny_refrag, tiny_tokenizer

LIMIT = 256  # the tiny decoder's max positions: long inputs are cheap to build
Q = "What is in the passages?"
CONTEXTS = ["none", "text", "compressed"]


@pytest.fixture(scope="module")
def parts():
    loaded = tiny_loaded(0, max_positions=LIMIT)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    rm = tiny_refrag(loaded, enc)
    return loaded, enc, rm


@pytest.fixture(scope="module")
def engine(parts):
    loaded, enc, rm = parts
    return Engine(loaded, drafter=None, refrag=rm, refrag_encoder=enc)


def _raises(exc_type, fix, fn, *args, **kwargs):
    """``fn`` raises exactly the documented type, and the message matches ``fix`` (what to do about it)."""
    with pytest.raises(exc_type, match=fix) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, RefragRasdError)
    return info.value


# ---- empty / malformed question --------------------------------------------------------------------------
@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("prompt", ["", "   \n\t", [], [{"role": "user", "content": "  "}], [{"role": "user"}]])
def test_empty_question(engine, context, prompt):
    _raises(InvalidInputError, r"empty|no messages with content|needs a user message", engine.generate, prompt,
            passages=["Some passage."], context=context, max_new_tokens=3)


@pytest.mark.parametrize("prompt", [None, 5, ["just a string"], [("user", "hi")]])
def test_prompt_of_the_wrong_type(engine, prompt):
    _raises(InvalidInputError, r"string or a list of chat messages", engine.generate, prompt, max_new_tokens=3)


# ---- odd passages: legal, must just work -------------------------------------------------------------------
def _question_alone(engine, **kw):
    return engine.generate([{"role": "user", "content": Q}], max_new_tokens=6, **kw).token_ids


@pytest.mark.parametrize("context", ["text", "compressed"])
@pytest.mark.parametrize("passages", [[], None, ["   ", "\n\n\t", ""]], ids=["empty-list", "none", "whitespace"])
@pytest.mark.parametrize("method", ["vanilla", "pld", "rest", "rasd"])
def test_no_usable_passages_answer_the_question_alone(engine, context, passages, method):
    out = engine.generate(Q, passages=passages, context=context, method=method, max_new_tokens=6)
    assert out.token_ids == _question_alone(engine)
    assert out.stats.finish_reason == "length"


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("method", ["vanilla", "rest", "rasd"])
def test_emoji_only_passages_work(engine, context, method):
    passages = ["🥐☕🥐", "😀" * 10, "🇫🇷 🇯🇵 👩‍👩‍👧"]  # multi-byte, joiners, flags: chunk edges split code points
    out = engine.generate(Q, passages=passages, context=context, method=method, max_new_tokens=6)
    base = engine.generate(Q, passages=passages, context=context, max_new_tokens=6)
    assert out.token_ids == base.token_ids and out.stats.new_tokens == 6  # and speculation stays lossless


@pytest.mark.parametrize("passage", [None, 5, 3.5, {"text": "dict"}, b"bytes"])
def test_passage_of_the_wrong_type(engine, passage):
    _raises(InvalidInputError, r"must be text, token ids or have \.text", engine.generate, Q,
            passages=[passage], context="text", max_new_tokens=3)


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("ids", [[5, 10**6], [-3, 7]])
def test_token_ids_outside_the_vocabulary(engine, context, ids):
    _raises(InvalidInputError, r"outside this model's vocabulary.*target's own tokenizer", engine.generate, Q,
            passages=[ids], context=context, method="rest", max_new_tokens=3)


@pytest.mark.parametrize("ids", [[10**6], [-1, 5], []])
def test_generate_ids_checks_its_ids(engine, ids):
    _raises(InvalidInputError, r"vocabulary|empty", engine.generate_ids, ids, max_new_tokens=3)


def test_wrong_chunk_embeddings_shape(engine, parts):
    loaded, enc, _ = parts
    ids = loaded.tokenizer("A passage of some length here.", add_special_tokens=False)["input_ids"]
    bad = Passage("A passage of some length here.", token_ids=ids,
                  chunk_embeddings=np.zeros((len(ids), enc.dim + 1), np.float16))
    _raises(InvalidInputError, r"re-index", engine.generate, Q, passages=[bad], context="compressed",
            max_new_tokens=3)


# ---- too long ----------------------------------------------------------------------------------------------
BIG = "lorem ipsum " * 8400  # 100,800 byte-level tokens


def test_100k_token_passage(engine):
    _raises(ContextTooLongError, r"fewer passages.*compressed", engine.generate, Q, passages=[BIG],
            context="text", max_new_tokens=3)
    _raises(ContextTooLongError, r"positions.*pass fewer passages", engine.generate, Q, passages=[BIG],
            context="compressed", max_new_tokens=3)
    # context="none": the passage only feeds the speculative datastore; a 100k-token one is fine
    out = engine.generate(Q, passages=[BIG], context="none", method="rest", max_new_tokens=4)
    assert out.stats.new_tokens == 4
    _raises(ContextTooLongError, r"shorten the prompt", engine.generate, BIG, max_new_tokens=3)


def test_prompt_plus_context_just_over_the_limit(engine, parts):
    loaded = parts[0]
    n_q = len(engine.encode_prompt([{"role": "user", "content": Q}]))
    # text: raw tokens; the layout adds a few tokens around the passage, so aim a little over the limit
    over = "x" * (LIMIT - n_q + 8)
    _raises(ContextTooLongError, r"reads at most 256", engine.generate, Q, passages=[over], context="text",
            max_new_tokens=3)
    # the same passage compressed (k=4) fits in about a quarter of the positions
    out = engine.generate(Q, passages=[over], context="compressed", max_new_tokens=3)
    assert out.stats.prefill_positions < LIMIT < out.stats.prompt_tokens
    # compressed but still over: 4x as many positions as allowed
    _raises(ContextTooLongError, r"compressed prompt takes \d+ positions", engine.generate, Q,
            passages=["y" * (4 * LIMIT + 64)], context="compressed", max_new_tokens=3)
    # prefill() applies the same limits
    _raises(ContextTooLongError, r"reads at most", engine.prefill, Q, passages=[over], context="text")
    assert len(loaded.tokenizer(over)["input_ids"]) > LIMIT - n_q


# ---- generation settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, -1, -(10**9), 2.5, True, "8"])
def test_max_new_tokens_out_of_range(engine, n):
    _raises(InvalidInputError, r"max_tokens must be", engine.generate, Q, max_new_tokens=n)
    _raises(InvalidInputError, r"max_tokens must be", engine.generate, Q, max_tokens=n)


def test_none_means_the_default(engine):
    """A setting passed as ``None`` is the config's default (as the frameworks pass unset settings)."""
    out = engine.generate(Q, max_new_tokens=None, temperature=None, top_p=None, method="vanilla")
    assert out.token_ids == engine.generate(Q, method="vanilla").token_ids


@pytest.mark.parametrize(("context", "method"), [("none", "vanilla"), ("text", "vanilla"), ("compressed", "vanilla"),
                                                 ("text", "pld"), ("compressed", "rasd")])
def test_huge_max_new_tokens_is_clamped_by_the_context_window(engine, context, method):
    out = engine.generate(Q, passages=["The cat sat on the mat. " * 3], context=context, method=method,
                          max_new_tokens=10**9)
    assert out.stats.finish_reason in {"length", "stop"}
    assert out.stats.new_tokens <= LIMIT - out.stats.prefill_positions
    if out.stats.finish_reason == "length":
        assert out.stats.new_tokens == LIMIT - out.stats.prefill_positions


@pytest.mark.parametrize("t", [-0.1, -1, float("nan"), float("inf"), "hot"])
def test_temperature_out_of_range(engine, t):
    _raises(InvalidInputError, r"temperature.*(>= 0|number)", engine.generate, Q, temperature=t, max_new_tokens=2)


@pytest.mark.parametrize("p", [0, 0.0, -0.5, 1.0001, 1.5, float("nan"), "0.5"])
def test_top_p_outside_0_1(engine, p):
    _raises(InvalidInputError, r"top_p (must be in \(0, 1\]|and)|top_p must", engine.generate, Q,
            temperature=0.7, top_p=p, max_new_tokens=2)


@pytest.mark.parametrize("k", [-1, 2.5, "3"])
def test_top_k_out_of_range(engine, k):
    _raises(InvalidInputError, r"top_k must be an integer >= 0", engine.generate, Q, top_k=k, max_new_tokens=2)


def test_top_p_edges_are_legal(engine):
    for p in (1.0, 1e-9):
        out = engine.generate(Q, temperature=0.7, top_p=p, seed=3, max_new_tokens=4)
        assert out.stats.new_tokens == 4
    greedy = engine.generate(Q, max_new_tokens=4)
    assert engine.generate(Q, temperature=0.7, top_p=1e-9, seed=3, max_new_tokens=4).token_ids == greedy.token_ids


@pytest.mark.parametrize("seed", ["x", 1.5, [1], -1, 2**70])
def test_seed_of_the_wrong_type(engine, seed):
    _raises(InvalidInputError, r"seed must be an integer", engine.generate, Q, seed=seed, temperature=1.0,
            max_new_tokens=2)


@pytest.mark.parametrize("stop", ["", [""], ["ok", ""], [None], [3]])
def test_empty_or_non_string_stop(engine, stop):
    _raises(InvalidInputError, r"stop strings must be non-empty strings", engine.generate, Q, stop=stop,
            max_new_tokens=4)


@pytest.mark.parametrize("method", ["vanilla", "pld", "rasd"])
def test_stop_longer_than_the_output(engine, method):
    base = engine.generate(Q, max_new_tokens=12, method=method)
    long_stop = base.text + "and then some more text that never comes" * 5
    out = engine.generate(Q, max_new_tokens=12, method=method, stop=[long_stop, base.text + "\x00"])
    assert out.token_ids == base.token_ids and out.stats.finish_reason == "length"


@pytest.mark.parametrize("spec", ["fast", ["max_nodes", 4], {"max_nodes": 0}, {"max_nodes": "8"},
                                  {"retrieval_len": -2}, {"no_such_option": 1}])
def test_bad_speculation_options(engine, spec):
    _raises(InvalidInputError, r"spec|speculation option", engine.generate, Q, method="rest", spec=spec,
            max_new_tokens=3)


@pytest.mark.parametrize(("key", "value", "fix"), [
    ("method", "turbo", r"choose one of"), ("context", "zipped", r"choose one of"),
    ("policy", "magic", r"choose one of auto"), ("expand", 1.5, r"expand"), ("expand_tokens", -3, r">= 0"),
    ("no_such_setting", 1, r"unknown generation setting"),
])
def test_unknown_or_out_of_range_settings(engine, key, value, fix):
    _raises(InvalidInputError, fix, engine.generate, Q, passages=["abc"], max_new_tokens=2, **{key: value})


def test_draft_method_without_a_drafter(engine):
    _raises(InvalidInputError, r"needs a draft model.*pld", engine.generate, Q, method="draft", max_new_tokens=2)


def test_compressed_without_a_refrag_checkpoint(parts):
    plain = Engine(parts[0], drafter=None, refrag=None)
    _raises(InvalidInputError, r"train-refrag.*context='text'", plain.generate, Q, passages=["abc"],
            context="compressed", max_new_tokens=2)


# ---- a draft model with another tokenizer -------------------------------------------------------------------
def test_draft_with_another_tokenizer(parts):
    loaded = parts[0]
    bigger = tiny_tokenizer()
    bigger.add_tokens(["hello"])
    _raises(TokenizerMismatchError, r"must share the target's tokenizer", CausalLMDrafter,
            tiny_llama(1, vocab_size=len(bigger)), tokenizer=bigger, target_tokenizer=loaded.tokenizer)
    # same size, different ids: the vocabularies are compared entry by entry
    from transformers import PreTrainedTokenizerFast

    swapped = PreTrainedTokenizerFast(tokenizer_object=loaded.tokenizer.backend_tokenizer)
    vocab = loaded.tokenizer.get_vocab()
    a, b = sorted(vocab, key=vocab.get)[:2]
    tok_json = json.loads(loaded.tokenizer.backend_tokenizer.to_str())
    tok_json["model"]["vocab"][a], tok_json["model"]["vocab"][b] = vocab[b], vocab[a]
    from tokenizers import Tokenizer

    swapped = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(tok_json)))
    swapped.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>",
                                "additional_special_tokens": ["<|user|>", "<|assistant|>", "<|system|>"]})
    assert len(swapped) == len(loaded.tokenizer)
    _raises(TokenizerMismatchError, r"differ.*must share", CausalLMDrafter, tiny_llama(1, vocab_size=len(swapped)),
            tokenizer=swapped, target_tokenizer=loaded.tokenizer)


def test_draft_model_whose_vocabulary_is_too_small(parts):
    """No tokenizers given: the engine still refuses a draft that cannot embed the target's ids (was an
    IndexError from inside torch at the first draft step)."""
    small = CausalLMDrafter(tiny_llama(1, vocab_size=100))
    _raises(TokenizerMismatchError, r"embeds 100 tokens.*must share", Engine, parts[0], drafter=small)


# ---- damaged checkpoints -----------------------------------------------------------------------------------
def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def refrag_ckpt(parts, tmp_path):
    loaded, _, rm = parts
    return save_refrag_checkpoint(rm, tmp_path / "r.safetensors", decoder_info=decoder_info(loaded.model,
                                                                                               loaded.tokenizer))


@pytest.fixture
def eagle_ckpt(parts, tmp_path):
    from refrag_rasd_core.eagle import DraftHead, save_draft_head

    target = parts[0].model
    torch.manual_seed(0)
    head = DraftHead.for_target(target, draft_vocab_size=64)
    return save_draft_head(head, tmp_path / "h.safetensors", dtype=torch.float32, target=target)


def _load_refrag_via_engine(parts, path, **_):
    return Engine(parts[0], drafter=None, refrag=path)


def _load_eagle(parts, path, verify_hash=True):
    from refrag_rasd_core.eagle import load_draft_head

    return load_draft_head(path, parts[0].model, verify_hash=verify_hash)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def _wrong_hash(path):
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "sha256": "0" * 64}))


def _wrong_shapes(path):
    """Every 2-D tensor loses a column; the sidecar's hash is updated so only the shape check can catch it."""
    state = load_file(str(path))
    state = {k: (v[:, :-1].contiguous() if v.ndim == 2 else v) for k, v in state.items()}
    save_file(state, str(path), metadata={"format": "x"})
    side = path.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "sha256": _sha(path)}))


def _bad_sidecar(path):
    path.with_suffix(".json").write_text("{truncated")


def _no_weights(path):
    path.unlink()


DAMAGE = {
    "truncated": (_truncate, r"sha256.*re-download or re-train"),
    "flipped-byte": (_flip_byte, r"sha256.*corrupt or was replaced"),
    "wrong-hash": (_wrong_hash, r"sha256"),
    "wrong-shapes": (_wrong_shapes, r"shape|does not match|size mismatch"),
    "bad-json": (_bad_sidecar, r"json"),
    "missing-file": (_no_weights, r"not found"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("kind", ["refrag", "eagle"])
def test_damaged_checkpoint(parts, request, kind, damage):
    path = request.getfixturevalue(f"{kind}_ckpt")
    hurt, fix = DAMAGE[damage]
    hurt(path)
    before = {p.name: _sha(p) for p in path.parent.iterdir()}
    load = _load_refrag_via_engine if kind == "refrag" else _load_eagle
    _raises(CheckpointError, fix, load, parts, path)
    if damage == "truncated":  # without the hash check, safetensors' own parse error is still typed
        if kind == "refrag":
            _raises(CheckpointError, r"truncated or corrupt", load_refrag_checkpoint, path, verify_hash=False)
        else:
            _raises(CheckpointError, r"truncated or corrupt", _load_eagle, parts, path, verify_hash=False)
    assert {p.name: _sha(p) for p in path.parent.iterdir()} == before  # a failed load writes nothing


def test_checkpoint_for_another_decoder(parts, refrag_ckpt, eagle_ckpt):
    other = tiny_loaded(3, hidden=32, max_positions=LIMIT)
    _raises(CheckpointError, r"hidden_size.*train one for this model", Engine, other, drafter=None,
            refrag=refrag_ckpt)
    from refrag_rasd_core.eagle import load_draft_head

    _raises(CheckpointError, r"hidden", load_draft_head, eagle_ckpt, other.model)
    _raises(CheckpointError, r"k=4 tokens per chunk, k=16", load_refrag_checkpoint, refrag_ckpt, expect_k=16)
