"""LangChain adapters on tiny in-memory models: the chat model and string LLM (invoke, stream, async, stop,
usage, statistics), passages flowing through LCEL with their stored chunk embeddings (no encoder forward at
query time), the recognition path, sharing and thread safety, and the langchain-tests unit suite."""

from __future__ import annotations

import asyncio
import threading

import pytest
from integration_fakes import CORPUS, fake_store
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_tests.unit_tests import ChatModelUnitTests

from conftest import ChatRefragRasdCapabilities
from refrag_rasd_core.engine import Engine
from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_integrations import engines
from refrag_rasd_integrations.langchain import ChatRefragRasd, PassagePrompt, RefragRasdLLM, RefragRetriever
from refrag_rasd_integrations.passages import PASSAGES
from refrag_rasd_integrations.store import make_client
from tiny import tiny_chunk_encoder, tiny_loaded, tiny_refrag


@pytest.fixture(scope="module")
def parts():
    loaded = tiny_loaded(0)
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    # a checkpoint whose measured operating point is compressed: context='auto' reads the stored chunk vectors
    engine = Engine(loaded, drafter=None, refrag=tiny_refrag(loaded, enc, auto={"context": "compressed"}),
                    refrag_encoder=enc)
    return engine, enc


@pytest.fixture(scope="module")
def store(parts, tmp_path_factory):
    engine, enc = parts
    s = fake_store("lc-docs", client=make_client(tmp_path_factory.mktemp("db")), tokenizer=engine.tokenizer,
                   chunk_encoder=enc)
    s.add_texts([t for t, _ in CORPUS], [m for _, m in CORPUS])
    return s


@pytest.fixture
def encoder_forwards(parts):
    calls = []
    handle = parts[1].model.register_forward_hook(lambda *a: calls.append(1))
    yield calls
    handle.remove()


@pytest.fixture
def chat(parts):
    return ChatRefragRasd(engine=parts[0], max_tokens=6, method="pld")


def test_invoke_usage_and_statistics(chat):
    msg = chat.invoke("Hello there")
    assert isinstance(msg.content, str) and msg.usage_metadata["output_tokens"] == 6
    u = msg.usage_metadata
    assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"]
    meta = msg.response_metadata
    assert meta["model_name"] == "tiny-llama-0" and meta["finish_reason"] == "length"
    assert meta["context"] == "none" and meta["time_to_first_token_s"] > 0 and meta["accepted_per_forward"] >= 1


def test_stream_calls_on_llm_new_token_and_sends_usage_once(chat):
    class Tokens(BaseCallbackHandler):
        def __init__(self):
            self.tokens = []

        def on_llm_new_token(self, token, **kwargs):
            self.tokens.append(token)

    cb = Tokens()
    chunks = list(chat.stream("Hello", config={"callbacks": [cb]}))
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata["output_tokens"] == 6
    assert sum(1 for c in chunks if c.usage_metadata) == 1
    assert "".join(cb.tokens) == "".join(c.content for c in chunks)
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert full.response_metadata["model_name"] == "tiny-llama-0"


@pytest.mark.parametrize("tools", [False, True])
def test_stream_yields_each_piece_as_it_is_decoded(parts, tools):
    """The first chunk reaches the caller while the engine is still decoding (not all at the end), with tools
    offered or not, and through an LCEL chain."""
    engine = parts[0]
    chat = ChatRefragRasd(engine=engine, max_tokens=12, method="vanilla")
    if tools:
        def lookup(q: str) -> str:
            """Look something up."""
            return q

        chat = chat.bind_tools([lookup], tool_choice="none")
    for runnable in (chat, ChatPromptTemplate.from_messages([("human", "{q}")]) | chat):
        before = engine.runner.forward
        forwards = []
        engine.runner.forward = lambda *a, _f=forwards, _b=before, **k: _f.append(1) or _b(*a, **k)
        try:
            it = iter(runnable.stream("Hello there" if runnable is chat else {"q": "Hello there"}))
            first = next(c for c in it if c.content)
            at_first = len(forwards)
            rest = list(it)
        finally:
            engine.runner.forward = before
        assert first.content and at_first < len(forwards), "every forward ran before the first chunk"
        assert rest[-1].chunk_position == "last"


def test_async_and_settings(chat):
    async def run():
        a = await chat.ainvoke("Hi", max_tokens=3)
        chunks = [c async for c in chat.astream("Hi", temperature=0.7, seed=1)]
        return a, chunks

    a, chunks = asyncio.run(run())
    assert a.usage_metadata["output_tokens"] == 3
    assert chunks[-1].usage_metadata["output_tokens"] == 6
    sampled = [chat.invoke("Hi", temperature=0.9, seed=3).content for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_stop_sequences(chat):
    full = chat.invoke("Hello", max_tokens=12).content
    if len(full) > 4:
        stop = full[3:5]
        cut = chat.invoke("Hello", max_tokens=12, stop=[stop]).content
        assert stop not in cut and full.startswith(cut)
        assert ChatRefragRasd(engine=chat.engine, max_tokens=12, stop=[stop]).invoke("Hello").content == cut


def test_bad_settings_are_clear_errors(chat):
    with pytest.raises(ValueError, match="unknown method"):
        ChatRefragRasd(method="nope")
    with pytest.raises(ValueError, match="unknown generation setting"):
        chat.invoke("hi", frobnicate=1)


def test_chain_hands_over_stored_chunk_embeddings_without_encoder(chat, store, encoder_forwards, parts):
    seen = []
    real_stream = parts[0].stream

    def spy(prompt, *, passages=None, **kw):
        seen.append((prompt, passages, kw))
        return real_stream(prompt, passages=passages, **kw)

    parts[0].stream = spy
    try:
        retriever = RefragRetriever(store=store, k=2)
        chain = {"context": retriever, "question": RunnablePassthrough()} | PassagePrompt() | chat
        msg = chain.invoke("Madrid Spain")
    finally:
        del parts[0].stream
    assert encoder_forwards == []  # no chunk encoder forward at query time
    meta = msg.response_metadata
    assert meta["context"] == "compressed" and meta["passages"] == 2 and meta["stats"]["chunks"] > 0
    prompt, passages, kw = seen[-1]
    assert "config" in kw and prompt[-1]["content"] == "Madrid Spain"
    assert all(p.chunk_embeddings is not None and p.token_ids for p in passages)
    # the control: a passage handed over as text IS encoded on the fly
    chat.invoke("Madrid Spain", passages=["A passage without stored embeddings, given as plain text."])
    assert encoder_forwards


def test_recognised_passages_in_a_plain_prompt(chat, store, encoder_forwards):
    PASSAGES.clear()  # only this store's passages (other tests index the same texts with other encoders)
    retriever = store.as_retriever(k=2)
    prompt = ChatPromptTemplate.from_messages([("human", "Context:\n{context}\n\nQuestion: {question}")])

    def fmt(docs):
        return "\n\n".join(d.page_content for d in docs)

    chain = {"context": retriever | fmt, "question": RunnablePassthrough()} | prompt | chat
    meta = chain.invoke("Berlin Germany").response_metadata
    long_enough = [d for d in retriever.invoke("Berlin Germany") if len(d.page_content.strip()) >= 24]
    assert meta["passages_recognized"] == len(long_enough) >= 1 and meta["context"] == "compressed"
    assert encoder_forwards == []
    off = ChatRefragRasd(engine=chat.engine, max_tokens=4, method="pld", recognize_passages=False)
    assert ({"context": retriever | fmt, "question": RunnablePassthrough()} | prompt | off
            ).invoke("Berlin Germany").response_metadata["context"] == "none"


def test_string_llm(parts, store):
    llm = RefragRasdLLM(engine=parts[0], max_tokens=5, method="pld")
    out = llm.invoke("Hello")
    assert isinstance(out, str)
    res = llm.generate(["a", "b"])
    assert res.llm_output["token_usage"]["output_tokens"] == 10
    info = res.generations[0][0].generation_info
    assert info["usage"]["output_tokens"] == 5 and "accepted_per_forward" in info
    assert "".join(llm.stream("Hello")) == out
    assert llm.get_token_ids("ab") == parts[0].tokenizer("ab", add_special_tokens=False)["input_ids"]
    assert llm.get_num_tokens("ab") == 2
    assert asyncio.run(llm.ainvoke("Hello")) == out
    chain = ({"context": store.as_retriever(k=1) | (lambda d: d[0].page_content), "q": RunnablePassthrough()}
             | PromptTemplate.from_template("{context}\n\nQ: {q}") | llm | StrOutputParser())
    assert isinstance(chain.invoke("Rome Italy Colosseum"), str)


def test_concurrent_threads_and_tasks(chat):
    expected = chat.invoke("same prompt").content
    results, errors = [], []

    def work():
        try:
            results.append(chat.invoke("same prompt").content)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [expected] * 4

    async def many():
        return await asyncio.gather(*(chat.ainvoke("same prompt") for _ in range(3)))

    assert [m.content for m in asyncio.run(many())] == [expected] * 3


def test_engines_are_shared_and_lazy(monkeypatch):
    loads = []

    def fake_load(model=None, device="auto", dtype=None, weights="auto", prefix_cache=None):
        assert prefix_cache == engines.prefix_cache_bytes() == engines.DEFAULT_PREFIX_CACHE_MB << 20
        loads.append((model, weights))
        return object()

    monkeypatch.setattr(Engine, "load", staticmethod(fake_load))
    engines.clear_engines()
    try:
        a, b = ChatRefragRasd(model="m1"), RefragRasdLLM(model="m1")
        assert loads == []  # construction loads nothing
        assert engines.get_engine("m1") is engines.get_engine("m1", device="auto")
        assert loads == [("m1", "auto")]  # one load, shared by both calls (weights as stored, the default)
        assert a.target_name() == "m1" and b.model == "m1"
    finally:
        engines.clear_engines()


class TestChatRefragRasdUnit(ChatRefragRasdCapabilities, ChatModelUnitTests):
    """The langchain-tests unit suite (tool calling, structured output and images are not supported: the
    suite skips those tests from the capability flags)."""

    @property
    def chat_model_params(self):
        return {"method": "rasd"}


def test_auto_context_is_the_checkpoints_measured_point(parts, store):
    """``context="auto"`` with passages: plain RAG unless the checkpoint records a compressed operating point;
    the point's expansion settings apply unless the caller gives their own."""
    engine, enc = parts
    loaded = engine.target
    plain = Engine(loaded, drafter=None, refrag=tiny_refrag(loaded, enc), refrag_encoder=enc)
    assert plain.auto_context() == {"context": "text"}
    retriever = RefragRetriever(store=store, k=2)

    def run(eng, **kw):
        chain = ({"context": retriever, "question": RunnablePassthrough()} | PassagePrompt()
                 | ChatRefragRasd(engine=eng, max_tokens=3, method="vanilla", **kw))
        return chain.invoke("Madrid Spain").response_metadata

    assert run(plain)["context"] == "text"
    assert run(plain, context="compressed")["context"] == "compressed"  # asked for: compressed
    point = {"context": "compressed", "expand": 0.5, "policy": "similarity"}
    half = Engine(loaded, drafter=None, refrag=tiny_refrag(loaded, enc, auto=point), refrag_encoder=enc)
    assert half.auto_context() == point
    meta = run(half)
    assert meta["context"] == "compressed" and 0 < meta["stats"]["expanded_chunks"] < meta["stats"]["chunks"]
    meta = run(half, engine_kwargs={"expand": 0.0})  # the caller's setting wins over the point's
    assert meta["context"] == "compressed" and meta["stats"]["expanded_chunks"] == 0

    # a "long" point applies only to requests whose passages hold at least its min_passage_tokens
    for threshold, expected in ((1, "compressed"), (10**6, "text")):
        long = {"context": "text", "long": {**point, "min_passage_tokens": threshold}}
        eng = Engine(loaded, drafter=None, refrag=tiny_refrag(loaded, enc, auto=long), refrag_encoder=enc)
        assert eng.auto_context()["context"] == "text"  # no length given: the base point
        assert eng.auto_context(passage_tokens=threshold) == point
        assert eng.auto_context(passage_tokens=threshold - 1)["context"] == "text"
        assert run(eng)["context"] == expected, threshold


@pytest.mark.parametrize("cls", ["chat", "llm", "llama"])
@pytest.mark.parametrize("bad", [{"method": "fast"}, {"context": "maybe"}, {"max_tokens": 0}, {"top_p": 0.0},
                                 {"temperature": -1.0}, {"top_k": -2}, {"engine_kwargs": {"expnad": 0.2}}])
def test_settings_are_checked_once_with_typed_errors(cls, bad):
    """Every framework class takes the one settings model, and the same check refuses the same bad value at
    construction and per call, as InvalidInputError."""
    from refrag_rasd_integrations.llama_index import RefragRasdLLM as LlamaLLM
    from refrag_rasd_integrations.settings import ModelSettings

    make = {"chat": ChatRefragRasd, "llm": RefragRasdLLM, "llama": LlamaLLM}[cls]
    assert issubclass(make, ModelSettings)
    with pytest.raises(InvalidInputError):
        make(**bad)
    model = make(engine=Engine(tiny_loaded(0), drafter=None, refrag=None))
    call = {"chat": lambda: model.invoke("Hi", **bad), "llm": lambda: model.invoke("Hi", **bad),
            "llama": lambda: model.complete("Hi", **bad)}[cls]
    with pytest.raises(InvalidInputError):
        call()
