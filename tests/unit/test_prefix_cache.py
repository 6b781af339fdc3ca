"""The engine's prefix cache: a request that repeats an earlier request's prefix reuses its KV and computes
only the rest, with the same greedy output as a recompute, for every decoding method, context mode and
forward; the cache keeps its byte budget and never mixes prefixes."""

from __future__ import annotations

import threading

import pytest
import torch

from refrag_rasd_core.engine import Engine
from refrag_rasd_core.prefix_cache import KVSnapshot, PrefixCache
from refrag_rasd_core.rasd import CausalLMDrafter

PASSAGES = ["The old mill by the river was built in 1820 by a family of millers from the north.",
            "Paris is the capital of France; its river is the Seine, crossed by many bridges."]
TURN1 = [{"role": "user", "content": "When was the old mill built?"}]


def _turn2(answer: str) -> list[dict]:
    """The second turn: the first one with the passages it read (laid out as they were), its answer, a question."""
    return [{**TURN1[0], "passages": PASSAGES}, {"role": "assistant", "content": answer},
            {"role": "user", "content": "And by whom?"}]


@pytest.fixture(scope="module")
def parts():
    from tiny import tiny_chunk_encoder, tiny_loaded, tiny_refrag

    loaded = tiny_loaded(0)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    return loaded, enc, tiny_refrag(loaded, enc)


def _engines(parts, forward="auto"):
    loaded, enc, rm = parts
    drafter = CausalLMDrafter(loaded.model, tokenizer=loaded.tokenizer, target_tokenizer=loaded.tokenizer)
    kw = dict(drafter=drafter, refrag=rm, refrag_encoder=enc, forward=forward)
    return Engine(loaded, prefix_cache=64 << 20, **kw), Engine(loaded, **kw)


@pytest.mark.parametrize("forward", ["lean", "hf"])
@pytest.mark.parametrize("context", ["none", "text", "compressed"])
@pytest.mark.parametrize("method", ["vanilla", "pld", "rest", "draft", "rasd"])
def test_second_turn_reuses_the_first_and_answers_as_a_recompute(parts, forward, context, method):
    cached, plain = _engines(parts, forward)
    kw = dict(context=context, method=method, max_tokens=12, expand=0.25)
    first = cached.generate(TURN1, passages=PASSAGES, **kw)
    assert first.stats.cached_tokens == 0
    again = cached.generate(_turn2(first.text), passages=PASSAGES[1:], **kw)
    fresh = plain.generate(_turn2(first.text), passages=PASSAGES[1:], **kw)
    assert again.token_ids == fresh.token_ids
    # everything the first turn read is reused, compressed turns included (a turn's chunks are expanded the
    # same way in every later turn), and so is the answer it decoded, as far as its text tokenizes the same
    head = first.stats.prefill_positions
    assert again.stats.cached_tokens >= head
    assert again.stats.cached_tokens < again.stats.prefill_positions
    ids = first.token_ids[:-1]  # the last token was emitted, never fed back: its KV was not computed
    retokenized = cached.encode_prompt(_turn2(first.text))
    shared = next((i for i, (a, b) in enumerate(zip(ids, retokenized[head:], strict=False)) if a != b),
                  min(len(ids), len(retokenized) - head))
    if context == "none":  # the prompt is the messages alone: the answer's retokenized head was reused too
        assert shared > 0 and again.stats.cached_tokens >= head + shared
    assert fresh.stats.cached_tokens == 0


@pytest.mark.parametrize("forward", ["lean", "hf"])
@pytest.mark.parametrize("drafter", ["eagle", "causal"])
@pytest.mark.parametrize("method", ["vanilla", "pld", "draft", "rasd"])
def test_the_next_request_reuses_the_answer_decoded_into_the_cache(parts, forward, drafter, method):
    """A conversation's next prompt starts with the last prompt and its answer: the answer's KV (and, for the
    EAGLE head, the target's hidden states of it) computed while decoding are reused, not re-read; the output
    equals a recompute's."""
    from refrag_rasd_core.eagle.head import DraftHead

    loaded, _, _ = parts
    torch.manual_seed(1)
    d = (DraftHead.for_target(loaded.model, draft_vocab_size=64).eval() if drafter == "eagle"
         else CausalLMDrafter(loaded.model, tokenizer=loaded.tokenizer, target_tokenizer=loaded.tokenizer))
    cached = Engine(loaded, drafter=d, forward=forward, refrag=None, prefix_cache=64 << 20)
    plain = Engine(loaded, drafter=d, forward=forward, refrag=None)
    prompt = cached.encode_prompt(TURN1)
    first = cached.generate_ids(prompt, method=method, max_tokens=20)
    assert first.stats.finish_reason == "length"
    turn2 = prompt + first.token_ids + cached.encode_prompt("And by whom?")
    again = cached.generate_ids(turn2, method=method, max_tokens=20)
    assert again.token_ids == plain.generate_ids(turn2, method=method, max_tokens=20).token_ids
    # every position whose KV the first request computed: its prompt and all of its answer but the last token
    assert again.stats.cached_tokens == len(prompt) + len(first.token_ids) - 1


def test_a_closed_stream_keeps_what_it_read(parts):
    cached, _ = _engines(parts)
    stream = cached.stream(TURN1, passages=PASSAGES, context="text", method="vanilla", max_tokens=16)
    next(iter(stream))
    stream.close()
    again = cached.generate(TURN1, passages=PASSAGES, context="text", method="vanilla", max_tokens=4)
    assert again.stats.cached_tokens == again.stats.prefill_positions - 1


def test_repeating_a_request_reuses_all_but_its_last_position(parts):
    cached, plain = _engines(parts)
    a = cached.generate(TURN1, passages=PASSAGES, context="text", method="vanilla", max_tokens=8)
    b = cached.generate(TURN1, passages=PASSAGES, context="text", method="vanilla", max_tokens=8)
    assert a.token_ids == b.token_ids == plain.generate(TURN1, passages=PASSAGES, context="text",
                                                         method="vanilla", max_tokens=8).token_ids
    n = b.stats.prefill_positions
    assert b.stats.cached_tokens == n - 1  # whole blocks, then the entry's partly shared block position by position


def test_other_passages_or_modes_do_not_share_a_prefix_they_do_not_have(parts):
    cached, _ = _engines(parts)
    cached.generate(TURN1, passages=PASSAGES, context="compressed", method="vanilla", max_tokens=4)
    other = cached.generate(TURN1, passages=PASSAGES[::-1], context="compressed", method="vanilla", max_tokens=4)
    # the prompt's head (template, instruction) is shared; the first chunk vector differs: nothing past it
    from refrag_rasd_core.refrag.context import layout_prompt

    head = len(layout_prompt(cached.tokenizer, TURN1, cached.passage_token_ids(PASSAGES)).prefix)
    assert 0 < other.stats.cached_tokens <= head
    as_text = cached.generate(TURN1, passages=PASSAGES, context="text", method="vanilla", max_tokens=4)
    assert as_text.stats.cached_tokens < as_text.stats.prefill_positions // 2


def test_the_byte_budget_holds_and_extended_entries_are_replaced():
    cache = PrefixCache(max_bytes=3 * 2 * 32 * 4 * 4, block=4)  # room for 3 entries of 32 positions
    def kv(n):
        return KVSnapshot.of_tensors(torch.zeros(1, 1, n, 4), torch.zeros(1, 1, n, 4))

    for i in range(10):
        cache.store("ns", [i] * 32, kv(32))
        assert cache.nbytes <= cache.max_bytes
    assert len(cache) == 3 and cache.lookup("ns", [0] * 33).length == 0 and cache.lookup("ns", [9] * 33).length == 32
    cache.store("ns", [9] * 32 + [1] * 8, kv(40))  # extends the [9] * 32 entry: it replaces it
    assert cache.nbytes <= cache.max_bytes and cache.lookup("ns", [9] * 32 + [1] * 8 + [5]).length == 40
    assert cache.lookup("ns", [9] * 32 + [2]).length == 32  # the extended entry serves the shorter prefix too
    assert cache.lookup("other", [9] * 33).length == 0  # namespaces (runners, adapters) never mix


def test_concurrent_requests_share_the_cache_safely(parts):
    cached, plain = _engines(parts)
    questions = [[{"role": "user", "content": f"Question number {i}: when was the old mill built?"}]
                 for i in range(4)]
    want = [plain.generate(q, passages=PASSAGES, context="text", method="pld", max_tokens=6).token_ids
            for q in questions]
    got: dict[int, list[int]] = {}

    def ask(i: int) -> None:
        for _ in range(2):
            got[i] = cached.generate(questions[i], passages=PASSAGES, context="text", method="pld",
                                     max_tokens=6).token_ids

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(4)] == want


def test_history_compressed_keeps_the_question_raw_and_compresses_earlier_turns(parts):
    loaded, enc, rm = parts
    engine = Engine(loaded, drafter=None, refrag=rm, refrag_encoder=enc)
    conv = _turn2("It was built in 1820.")
    kw = dict(passages=PASSAGES[1:], method="vanilla", max_tokens=4)
    text = engine.generate(conv, context="text", **kw)
    hist = engine.generate(conv, context="text", history="compressed", expand=0.0, **kw)
    allc = engine.generate(conv, context="compressed", expand=0.0, **kw)
    assert text.stats.context == hist.stats.context == "text" and text.stats.chunks == 0
    # the earlier turn's two passages compressed, the question's one passage raw (all its chunks expanded)
    k = rm.k
    question_chunks = -(-len(engine.passage_token_ids(PASSAGES[1:])[0]) // k)
    assert hist.stats.chunks == allc.stats.chunks and hist.stats.expanded_chunks == question_chunks
    assert allc.stats.prefill_positions < hist.stats.prefill_positions < text.stats.prefill_positions
    # without earlier passages there is nothing to compress: the request is plain RAG
    first = engine.generate(TURN1, context="text", history="compressed", passages=PASSAGES, method="vanilla",
                            max_tokens=4)
    assert first.stats.chunks == 0


@pytest.mark.parametrize("method", ["vanilla", "rasd"])
def test_int4_weights_reuse_the_prefix_and_answer_as_a_recompute(parts, method):
    from refrag_rasd_core.lean.int4 import int4_available

    if not int4_available():
        pytest.skip("this torch build lacks the CPU int4 kernels")
    loaded, _, _ = parts
    cached = Engine(loaded, drafter=None, refrag=None, weights="int4", prefix_cache=64 << 20)
    plain = Engine(loaded, drafter=None, refrag=None, weights="int4")
    kw = dict(context="text", method=method, max_tokens=12)
    first = cached.generate(TURN1, passages=PASSAGES, **kw)
    again = cached.generate(_turn2(first.text), passages=PASSAGES[1:], **kw)
    assert again.stats.cached_tokens >= first.stats.prefill_positions - 16
    assert again.token_ids == plain.generate(_turn2(first.text), passages=PASSAGES[1:], **kw).token_ids
