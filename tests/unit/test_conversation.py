"""Multi-turn RAG conversations through LangChain's documented chat-history path
(``RunnableWithMessageHistory``) on tiny models: each turn retrieves its own passages, the history keeps every
earlier turn's passages (laid out in the turn that read them), and the engine's prefix cache reuses what the
previous turns read, with the answers a recompute gives."""

from __future__ import annotations

import pytest
from integration_fakes import CORPUS, fake_store
from langchain_core.chat_history import InMemoryChatMessageHistory
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables import RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory

from refrag_rasd_core.engine import Engine
from refrag_rasd_integrations.langchain import ChatRefragRasd, PassagePrompt
from refrag_rasd_integrations.store import make_client
from tiny import tiny_chunk_encoder, tiny_loaded, tiny_refrag

QUESTIONS = ["Madrid Spain", "What about Paris?", "And the river Seine?", "Madrid again", "The old mill?"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    loaded = tiny_loaded(0, max_positions=2048)  # five turns of a byte-level tokenizer
    enc = tiny_chunk_encoder(loaded.tokenizer, k=4)
    rm = tiny_refrag(loaded, enc)
    store = fake_store("conv-docs", client=make_client(tmp_path_factory.mktemp("db")), tokenizer=loaded.tokenizer,
                       chunk_encoder=enc)
    store.add_texts([t for t, _ in CORPUS], [m for _, m in CORPUS])
    return loaded, enc, rm, store


def _conversation(engine: Engine, store, context: str) -> list:
    """Five turns through RunnableWithMessageHistory; returns each turn's AIMessage."""
    prompt = ChatPromptTemplate.from_messages([MessagesPlaceholder("history"), ("human", "{question}")])
    llm = ChatRefragRasd(engine=engine, max_tokens=6, method="pld", context=context)
    retrieve = RunnableLambda(lambda x: {**x, "context": store.as_retriever(k=1).invoke(x["question"])})
    chain = retrieve | PassagePrompt(template=prompt) | llm
    histories: dict[str, InMemoryChatMessageHistory] = {}
    with_history = RunnableWithMessageHistory(
        chain, lambda sid: histories.setdefault(sid, InMemoryChatMessageHistory()),
        input_messages_key="question", history_messages_key="history")
    cfg = {"configurable": {"session_id": "s1"}}
    return [with_history.invoke({"question": q}, config=cfg) for q in QUESTIONS]


@pytest.mark.parametrize("context", ["text", "compressed"])
def test_later_turns_reuse_earlier_ones_and_answer_as_a_recompute(parts, context):
    loaded, enc, rm, store = parts
    cached = Engine(loaded, drafter=None, refrag=rm, refrag_encoder=enc, prefix_cache=64 << 20)
    plain = Engine(loaded, drafter=None, refrag=rm, refrag_encoder=enc)
    a = _conversation(cached, store, context)
    b = _conversation(plain, store, context)
    assert [m.content for m in a] == [m.content for m in b]
    stats = [m.response_metadata["stats"] for m in a]
    assert stats[0]["cached_tokens"] == 0
    for before, s in zip(stats, stats[1:], strict=False):  # from turn 2 on: all the turn before read, but
        assert s["cached_tokens"] >= before["prefill_positions"] - 16  # its last partial block of 16
    assert all(m.response_metadata["stats"]["cached_tokens"] == 0 for m in b)
    # each turn hands over its own passage; the prompt holds those of all the turns before too
    assert [m.response_metadata["passages"] for m in a] == [1] * 5
    assert stats[4]["prefill_positions"] > 2 * stats[0]["prefill_positions"]


def test_llama_index_chat_engine_keeps_each_turns_passages_and_reuses_them(parts):
    from refrag_rasd_integrations.llama_index import RefragChatEngine, RefragRasdLLM

    loaded, enc, rm, store = parts
    cached = Engine(loaded, drafter=None, refrag=rm, refrag_encoder=enc, prefix_cache=64 << 20)
    plain = Engine(loaded, drafter=None, refrag=rm, refrag_encoder=enc)
    answers = {}
    for name, engine in (("cached", cached), ("plain", plain)):
        chat = RefragChatEngine.from_store(store, llm=RefragRasdLLM(engine=engine, max_tokens=6, method="pld",
                                                                    context="text"), similarity_top_k=1)
        answers[name] = [chat.chat(q) for q in QUESTIONS[:3]]
        history = chat.chat_history
        assert len(history) == 6 and all(m.additional_kwargs.get("refrag_passages") for m in history[::2])
    assert [r.response for r in answers["cached"]] == [r.response for r in answers["plain"]]
    stats = [r.metadata["stats"] for r in answers["cached"]]
    assert stats[0]["cached_tokens"] == 0
    assert all(b["cached_tokens"] >= a["prefill_positions"] - 16 for a, b in zip(stats, stats[1:], strict=False))
    assert all(r.metadata["passages"] == 1 and len(r.source_nodes) == 1 for r in answers["cached"])
    streamed = RefragChatEngine.from_store(store, llm=RefragRasdLLM(engine=cached, max_tokens=6, method="pld",
                                                                    context="text"), similarity_top_k=1)
    text = "".join(streamed.stream_chat(QUESTIONS[0]).response_gen)
    assert text == answers["cached"][0].response


def test_langgraph_graph_with_a_checkpointer(parts):
    """LangGraph's persistence (the path LangChain now documents): a one-node graph over MessagesState with
    an in-memory checkpointer; the answers carry their passages, so every turn lays the earlier ones out."""
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import START, MessagesState, StateGraph

    loaded, enc, rm, store = parts
    engine = Engine(loaded, drafter=None, refrag=rm, refrag_encoder=enc, prefix_cache=64 << 20)
    llm = ChatRefragRasd(engine=engine, max_tokens=6, method="pld", context="text")
    prompt = PassagePrompt(template=ChatPromptTemplate.from_messages([MessagesPlaceholder("history"),
                                                                       ("human", "{question}")]))
    retriever = store.as_retriever(k=1)

    def answer(state: MessagesState) -> dict:
        question = state["messages"][-1].content
        value = prompt.invoke({"history": state["messages"][:-1], "question": question,
                               "context": retriever.invoke(question)})
        return {"messages": [llm.invoke(value)]}

    graph = (StateGraph(MessagesState).add_node("answer", answer).add_edge(START, "answer")
             .compile(checkpointer=InMemorySaver()))
    cfg = {"configurable": {"thread_id": "t1"}}
    out = [graph.invoke({"messages": [HumanMessage(q)]}, cfg)["messages"][-1] for q in QUESTIONS[:3]]
    stats = [m.response_metadata["stats"] for m in out]
    assert stats[0]["cached_tokens"] == 0
    assert all(b["cached_tokens"] >= a["prefill_positions"] - 16 for a, b in zip(stats, stats[1:], strict=False))
    assert all(m.additional_kwargs["refrag_passages"] for m in out)


def test_the_terminal_chat_reuses_earlier_turns(parts):
    import io

    from refrag_rasd_integrations.cli.chat_command import chat_loop

    loaded, enc, rm, store = parts
    engine = Engine(loaded, drafter=None, refrag=rm, refrag_encoder=enc, prefix_cache=64 << 20)
    llm = ChatRefragRasd(engine=engine, max_tokens=5, method="pld", context="text")
    out, err = io.StringIO(), io.StringIO()
    lines = io.StringIO("Madrid Spain\n\nWhat about Paris?\n/reset\nThe old mill?\n/quit\nnever asked\n")
    assert chat_loop(llm, store.as_retriever(k=1), lines, out, err, system="Be brief.") == 3
    cached = [int(line.split("(")[1].split()[0]) for line in err.getvalue().splitlines() if "cached)" in line]
    assert len(cached) == 3 and cached[1] > 0  # the second turn reuses the first
    assert cached[2] < cached[1]  # after /reset only the shared head (system message, instruction) is reused
