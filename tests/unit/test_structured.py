"""Structured output on tiny random models: formats are checked, every answer follows its grammar, and
speculation under a grammar is lossless (greedy equals constrained plain decoding; sampling keeps the
constrained distribution, chi-square tested)."""

from __future__ import annotations

import json
import typing

import pytest
import torch
from pydantic import BaseModel, Field, ValidationError
from test_speculative import _engine, _seed, chisquare_of_counts

from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_core.generation_config import GenerationConfig
from refrag_rasd_core.rasd import TokenTree
from refrag_rasd_core.rasd.token_tree import SOURCE_GRAMMAR
from refrag_rasd_core.sampling import SamplingParams, logits_to_probs
from refrag_rasd_core.structured import ResponseFormat, parse_tool_calls, render_tool_messages
from refrag_rasd_core.structured.constraint import Grammars

PROMPT = [{"role": "user", "content": "abc abc abc abc, the cat sat on the mat; the cat sat"}]


class Pet(BaseModel):
    name: str = Field(pattern=r"^[a-z ]{1,8}$")
    legs: int = Field(ge=0, le=8)
    kind: typing.Literal["cat", "dog", "bird"]
    tame: bool


class Point(typing.TypedDict):
    x: int
    y: int


TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                     "b": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["a", "b"], "additionalProperties": False}}},
    {"name": "echo", "description": "Echo a word", "parameters": {
        "type": "object", "properties": {"word": {"enum": ["yes", "no"]}}, "required": ["word"]}}]


# ---- formats and settings ---------------------------------------------------------------------------------

def test_response_formats_normalize():
    assert ResponseFormat.of(Pet).kind == "json_schema" and ResponseFormat.of(Pet).name == "Pet"
    assert list(ResponseFormat.of(Pet).schema()["properties"]) == ["name", "legs", "kind", "tame"]  # order kept
    assert ResponseFormat.of(Point).schema()["required"] == ["x", "y"]
    openai = {"type": "json_schema", "json_schema": {"name": "pt", "schema": {"type": "object"}}}
    assert ResponseFormat.of(openai) == ResponseFormat("json_schema", '{"type": "object"}', "pt")
    assert ResponseFormat.of({"type": "object", "properties": {}}).kind == "json_schema"
    assert ResponseFormat.of({"type": "regex", "pattern": "[0-9]+"}).spec == "[0-9]+"
    assert json.loads(ResponseFormat.of({"type": "choice", "choices": ["a", "b", "a"]}).spec) == ["a", "b"]
    assert ResponseFormat.of({"type": "text"}) is None and ResponseFormat.of(None) is None
    assert GenerationConfig(response_format={"type": "json_object"}).response_format.kind == "json_object"


@pytest.mark.parametrize("bad,match", [
    (42, "response_format must be"), (int, "Pydantic model or a TypedDict"),
    ({"type": "choice", "choices": []}, "choices"), ({"type": "regex"}, "pattern"),
    ({"type": "jsonx"}, "unknown response_format type"), ({"type": "object", "default": {1, 2}}, "JSON-serializable"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "'schema'"),
])
def test_bad_response_formats_are_refused(bad, match):
    with pytest.raises(InvalidInputError, match=match):
        GenerationConfig(response_format=bad)


@pytest.mark.parametrize("settings,match", [
    ({"tools": "add"}, "list of tool definitions"), ({"tools": [{"name": "bad name"}]}, "needs a 'name'"),
    ({"tools": [{"name": "a"}, {"name": "a"}]}, "unique"), ({"tools": TOOLS, "tool_choice": "sub"}, "not among"),
    ({"tools": TOOLS, "tool_choice": 3}, "tool_choice must be"),
    ({"tools": TOOLS, "response_format": Pet}, "cannot be combined"),
    ({"parallel_tool_calls": "yes"}, "true or false"),
])
def test_bad_tool_settings_are_refused(settings, match):
    with pytest.raises(InvalidInputError, match=match):
        GenerationConfig.of(settings)


def test_tool_choice_forms():
    assert GenerationConfig(tools=TOOLS, tool_choice="any").tool_choice == "required"
    assert GenerationConfig(tools=TOOLS, tool_choice="echo").tool_choice == {"type": "function",
                                                                             "function": {"name": "echo"}}
    cfg = GenerationConfig(tools=TOOLS, tool_choice="none", response_format=Pet)  # tools off: the format holds
    assert not cfg.offers_tools and cfg.constraint_format().kind == "json_schema"
    assert GenerationConfig(tools=TOOLS).constraint_format().kind == "structural_tag"


def test_tool_messages_render_and_parse():
    msgs = render_tool_messages([
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "name": "add", "args": {"a": 2, "b": 3}}]},
        {"role": "tool", "content": "5", "tool_call_id": "c1"}], GenerationConfig(tools=TOOLS).tools)
    assert msgs[0]["role"] == "system" and msgs[0]["content"].startswith("Be brief.") and '"add"' in msgs[0]["content"]
    assert msgs[2]["content"] == '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    assert msgs[3] == {"role": "user", "content": "<tool_response>\n5\n</tool_response>"}
    text = 'Sure. <tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call><tool_call>{broken</tool_call>'
    content, calls = parse_tool_calls(text)
    assert [c["name"] for c in calls] == ["add"] and calls[0]["arguments"] == {"a": 1}
    assert content == "Sure. <tool_call>{broken</tool_call>" and calls[0]["id"].startswith("call_")


# ---- the grammar over candidate trees ------------------------------------------------------------------

@pytest.fixture(scope="module")
def grammars(tiny):
    return Grammars(tiny.tokenizer, tiny.model.config.vocab_size, {257})


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_tree_masks_equal_one_matcher_per_path(tiny, grammars):
    """Each row of ``tree_masks`` is what a fresh matcher fed the node's path allows."""
    fmt = ResponseFormat.of({"type": "choice", "choices": ["cat", "cab", "dog", "do"]})
    c = grammars.constraint(fmt)
    tok = tiny.tokenizer
    c.accept(_ids(tok, "c"))  # committed so far: "c" (the root)
    root = _ids(tok, "c")[0]
    tree = TokenTree.from_sequences(root, [tuple(_ids(tok, "at")), tuple(_ids(tok, "ab")), tuple(_ids(tok, "ow"))])
    masks = c.tree_masks(tree)
    for node in range(len(tree)):
        ref = grammars.constraint(fmt)
        ok = all(ref.matcher.accept_token(t) for t in [root] + tree.path_tokens(node))
        if not ok:  # a forbidden path: the node is cut, its row stays empty
            assert not masks[node].any()
            continue
        row = ref._xgr.allocate_token_bitmask(1, c.vocab_size)
        ref.matcher.fill_next_token_bitmask(row)
        assert torch.equal(masks[node], row[0])
    shaped = c.shape(tree, root)
    assert {tok.decode(shaped.path_tokens(n)) for n in range(1, len(shaped))} >= {"a", "at", "ab"}
    assert not any(tok.decode(shaped.path_tokens(n)).startswith("o") for n in range(1, len(shaped)))


def test_forced_spans_join_the_tree(tiny, grammars):
    c = grammars.constraint(ResponseFormat.of(Point))
    root = _ids(tiny.tokenizer, "{")[0]
    c.accept([root])
    shaped = c.shape(None, root)  # no candidates at all: the forced span alone
    assert tiny.tokenizer.decode(shaped.path_tokens(len(shaped) - 1)) == '"x": '
    assert all(s == SOURCE_GRAMMAR for s in shaped.sources[1:])


def test_bad_grammars_are_refused_before_decoding(tiny):
    engine = _engine(tiny)
    with pytest.raises(InvalidInputError, match="does not compile"):
        engine.stream(PROMPT, response_format={"type": "regex", "pattern": "(unclosed"})
    with pytest.raises(InvalidInputError, match="does not compile"):
        engine.generate(PROMPT, response_format={"type": "grammar", "grammar": "root ::= undefined_rule"})


# ---- lossless under a grammar ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wide():
    """The tiny model with a window for a JSON schema in the system message (byte tokens: ~300 of them)."""
    from tiny import tiny_loaded

    return tiny_loaded(0, max_positions=4096)


@pytest.fixture(scope="module")
def self_draft(wide):
    return _engine(wide, wide.model)


@pytest.fixture(scope="module")
def other_draft(wide):
    from tiny import tiny_llama

    return _engine(wide, tiny_llama(seed=1, vocab_size=len(wide.tokenizer), max_positions=4096))


@pytest.mark.parametrize("fmt", [Pet, Point, {"type": "regex", "pattern": "[a-c]{3,20}"},
                                 {"type": "choice", "choices": ["the cat", "the dog", "a bird"]}])
def test_constrained_answers_follow_the_format(self_draft, fmt):
    res = self_draft.generate(PROMPT, max_new_tokens=120, method="vanilla", response_format=fmt)
    assert res.finish_reason == "stop", res.text
    if fmt is Pet:
        Pet.model_validate_json(res.text)
    elif fmt is Point:
        assert set(json.loads(res.text)) == {"x", "y"}
    elif fmt["type"] == "regex":
        assert 3 <= len(res.text) <= 20 and set(res.text) <= set("abc")
    else:
        assert res.text in fmt["choices"]
    free = self_draft.generate(PROMPT, max_new_tokens=40, method="vanilla")
    with pytest.raises((ValidationError, ValueError)):  # the random model alone writes no JSON
        Pet.model_validate_json(free.text)


@pytest.mark.parametrize("method", ["pld", "rest", "draft", "rasd"])
@pytest.mark.parametrize("which", ["self_draft", "other_draft"])
def test_constrained_greedy_equals_constrained_vanilla(request, method, which):
    engine = request.getfixturevalue(which)
    for fmt in (Pet, {"type": "regex", "pattern": "(ab|c){4,30}"}):
        base = engine.generate(PROMPT, max_new_tokens=100, method="vanilla", response_format=fmt)
        passages = [base.token_ids[3:30], [t + 1 for t in base.token_ids], _ids(engine.tokenizer, '"legs": 4')]
        res = engine.generate(PROMPT, max_new_tokens=100, method=method, context="none", passages=passages,
                              response_format=fmt)
        assert res.token_ids == base.token_ids and res.text == base.text
        assert res.stats.grammar_s > 0


def test_forced_spans_save_forwards(self_draft):
    """Keys and separators come in whole spans: fewer forwards than tokens even with no other candidates."""
    base = self_draft.generate(PROMPT, max_new_tokens=100, method="vanilla", response_format=Pet)
    res = self_draft.generate(PROMPT, max_new_tokens=100, method="pld", response_format=Pet)
    assert res.token_ids == base.token_ids
    assert res.stats.target_forwards < 0.75 * base.stats.target_forwards


def _exact_constrained(engine, grammars, fmt, params, k):
    """Exact probabilities of the first ``k`` tokens under the grammar-masked target distribution."""
    ids = engine.encode_prompt(PROMPT)
    support: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(k):
        nxt = {}
        for prefix, p in support.items():
            c = grammars.constraint(fmt)
            c.accept(prefix)
            if c.matcher.is_terminated():
                nxt[prefix] = p
                continue
            with torch.no_grad():
                logits = engine.model(torch.tensor([ids + list(prefix)])).logits[0, -1:]
            probs = logits_to_probs(c.mask_logits(logits, _row(c)), params)[0]
            for t in torch.nonzero(probs).flatten().tolist():
                nxt[prefix + (t,)] = p * float(probs[t])
        support = nxt
    return support


def _row(c):
    row = c._xgr.allocate_token_bitmask(1, c.vocab_size)
    c.matcher.fill_next_token_bitmask(row)
    return row


@pytest.mark.parametrize("method,which", [("vanilla", "self_draft"), ("draft", "self_draft"),
                                          ("rasd", "other_draft"), ("pld", "self_draft")])
def test_constrained_sampling_keeps_the_constrained_distribution(request, grammars, method, which):
    engine = request.getfixturevalue(which)
    fmt = ResponseFormat.of({"type": "regex", "pattern": "(ab|ac|b|ca)(a|b|c)(abc|cab|b)"})
    params = SamplingParams(temperature=1.5)
    k = 3
    exact = _exact_constrained(engine, grammars, fmt, params, k)
    passages = [_ids(engine.tokenizer, "abcab acb cab"), _ids(engine.tokenizer, "cacab bbb")]
    n = 1200
    counts = dict.fromkeys(exact, 0)
    for i in range(n):
        r = engine.generate(PROMPT, max_new_tokens=k, temperature=1.5, seed=_seed(i), method=method,
                            context="none", passages=passages, spec={"adaptive": False}, response_format=fmt)
        counts[tuple(r.token_ids[:k])] += 1
    stat, p = chisquare_of_counts(counts, exact)
    assert p > 1e-3, f"constrained sampled {method} deviates (chi2={stat:.1f}, p={p:.2e})"


# ---- tool calls ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("choice", ["required", "echo", "auto"])
def test_tool_calls_follow_the_tools(self_draft, choice):
    res = self_draft.generate("add or echo?", max_new_tokens=200, method="rasd", tools=TOOLS, tool_choice=choice)
    if choice == "auto" and not res.tool_calls:  # the random model may answer in text: then no call block
        assert "<tool_call>" not in res.text
        return
    assert res.finish_reason == "tool_calls" and len(res.tool_calls) == 1, res.text
    call = res.tool_calls[0]
    assert call["name"] in ("add", "echo") and (choice != "echo" or call["name"] == "echo")
    if call["name"] == "add":
        assert set(call["arguments"]) == {"a", "b"} and all(0 <= v <= 99 for v in call["arguments"].values())
    else:
        assert call["arguments"]["word"] in ("yes", "no")
    assert res.content == ""
    ref = self_draft.generate("add or echo?", max_new_tokens=200, method="vanilla", tools=TOOLS, tool_choice=choice)
    assert ref.token_ids == res.token_ids


def test_tool_call_stream_reads_any_split():
    """Streamed pieces cut anywhere give the same text, names and arguments as the whole answer."""
    import random

    from refrag_rasd_core.structured.tool_stream import ToolCallStream

    text = ('Sure <b> x <tool_call>\n{"name": "add", "arguments": {"a": {"x": 1}, "b": "}"}}\n</tool_call> then '
            '<tool_call>\n{"name": "echo", "arguments": {}}\n</tool_call><tool_call>not json')
    rng = random.Random(0)
    for _ in range(300):
        s, events, i = ToolCallStream(), [], 0
        while i < len(text):
            n = rng.randint(1, 9)
            events += s.push(text[i:i + n])
            i += n
        events += s.finish()
        args: dict[int, str] = {}
        for e in events:
            if e.kind == "args":
                args[e.index] = args.get(e.index, "") + e.text
        assert "".join(e.text for e in events if e.kind == "text") == "Sure <b> x  then <tool_call>not json"
        assert args == {0: '{"a": {"x": 1}, "b": "}"}', 1: "{}"}
        assert [e.text for e in events if e.kind == "call"] == ["add", "echo"]
        assert len({e.call_id for e in events if e.kind == "call"}) == 2
