"""The vanilla engine loop on a tiny random LLaMA: equality with transformers' generate, sampling
reproducibility, stop strings, max_new_tokens, statistics and input validation."""

from __future__ import annotations

import pytest
import torch

from refrag_rasd_core.engine import Engine, GenerationConfig
from refrag_rasd_core.errors import ContextTooLongError, InvalidInputError

PROMPTS = ["hello there", "The quick brown fox jumps over", "a"]


@pytest.fixture(scope="module")
def engine(tiny):
    return Engine(tiny)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_equals_generate(engine, prompt):
    msgs = [{"role": "user", "content": prompt}]
    res = engine.generate(msgs, max_new_tokens=40)
    ids = torch.tensor([engine.encode_prompt(msgs)])
    ref = engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False)
    assert res.token_ids == ref[0, ids.shape[1]:].tolist()
    assert res.stats.new_tokens == len(res.token_ids)


def test_sampling_is_reproducible_with_seed(engine):
    a = engine.generate("hello", max_new_tokens=30, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    b = engine.generate("hello", max_new_tokens=30, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    c = engine.generate("hello", max_new_tokens=30, temperature=1.0, top_p=0.9, top_k=50, seed=8)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids  # 30 sampled tokens from a 261-token vocab: equal only by a fluke


def test_max_new_tokens_and_stats(engine):
    res = engine.generate("hello", max_new_tokens=12, method="vanilla")
    s = res.stats
    assert s.new_tokens == 12 and s.finish_reason == "length"
    assert s.target_forwards == 11  # the first token comes from the prefill
    assert s.accepted_per_forward == 1.0
    assert 0 < s.ttft_s <= s.total_s
    assert s.prompt_tokens == len(engine.encode_prompt("hello"))
    d = s.to_dict()
    assert d["decode_tokens_per_s"] > 0 and d["method"] == "vanilla"


def test_stream_pieces_join_to_text(engine):
    stream = engine.stream([{"role": "user", "content": "stream me"}], max_new_tokens=25)
    pieces = list(stream)
    full = engine.tokenizer.decode(stream.token_ids, skip_special_tokens=True)
    assert "".join(pieces) == stream.text == full.rstrip("\ufffd")


def test_stop_string_ends_exactly(engine):
    free = engine.generate("hello there", max_new_tokens=40)
    text = free.text
    assert len(text) > 10
    stop = text[5:8]
    start = text.find(stop)
    stream = engine.stream("hello there", max_new_tokens=40, stop=[stop])
    pieces = list(stream)
    assert stream.text == text[:start]
    assert "".join(pieces) == text[:start]
    assert stream.stats.finish_reason == "stop"
    # a stop string that never appears changes nothing
    never = engine.generate("hello there", max_new_tokens=40, stop=["\x00never\x00"])
    assert never.token_ids == free.token_ids


@pytest.mark.parametrize("bad", [
    {"max_new_tokens": 0}, {"max_new_tokens": -3}, {"temperature": -0.1}, {"top_p": 0.0},
    {"top_p": 1.5}, {"top_k": -1}, {"method": "nope"}, {"stop": [""]}, {"unknown_setting": 1},
])
def test_bad_settings_are_clear_errors(engine, bad):
    with pytest.raises(InvalidInputError):
        engine.generate("hello", **bad)


@pytest.mark.parametrize("prompt", ["", "   ", [], [{"role": "user", "content": " "}]])
def test_empty_prompt(engine, prompt):
    with pytest.raises(InvalidInputError, match="empty|no messages"):
        engine.generate(prompt)


def test_context_too_long(engine):
    limit = engine.runner.max_positions
    with pytest.raises(ContextTooLongError, match="at most"):
        engine.generate_ids([65] * limit, max_new_tokens=4)
    # a prompt that fits but leaves fewer positions than asked stops at the model's limit
    res = engine.generate_ids([65] * (limit - 3), max_new_tokens=50)
    assert res.stats.new_tokens == 3 and res.finish_reason == "length"


def test_eos_ends_generation(tiny):
    engine = Engine(tiny)
    first = engine.generate("hello", max_new_tokens=5).token_ids[0]
    engine.eos_ids = frozenset({first})
    res = engine.generate("hello", max_new_tokens=5)
    assert res.token_ids == [first] and res.finish_reason == "stop" and res.text == ""


def test_config_object_and_max_tokens_alias(engine):
    cfg = GenerationConfig(max_tokens=4)
    assert engine.generate("hi", config=cfg).stats.new_tokens == 4
    assert engine.generate("hi", max_tokens=3).stats.new_tokens == 3
    assert engine.generate("hi", config=cfg, max_new_tokens=2).stats.new_tokens == 2  # keywords win


def test_concurrent_threads_give_sequential_outputs(engine):
    from concurrent.futures import ThreadPoolExecutor

    prompts = [f"prompt number {i}" for i in range(6)]
    seq = [engine.generate(p, max_new_tokens=10).token_ids for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        par = list(pool.map(lambda p: engine.generate(p, max_new_tokens=10).token_ids, prompts))
    assert par == seq


def test_a_call_inside_an_open_stream_of_the_same_thread_raises_instead_of_deadlocking(tiny):
    from refrag_rasd_core import Engine, InvalidInputError

    engine = Engine(tiny, drafter=None)
    stream = engine.stream("Hello there", max_new_tokens=8)
    next(iter(stream))  # the stream now holds the engine
    with pytest.raises(InvalidInputError, match="close"):
        engine.generate("Another", max_new_tokens=2)
    stream.close()
    assert engine.generate("Another", max_new_tokens=2).stats.new_tokens == 2
