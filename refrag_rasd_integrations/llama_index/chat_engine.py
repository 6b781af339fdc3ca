"""``RefragChatEngine``: a LlamaIndex chat engine over the store whose turns each retrieve their own passages
and hand them to the LLM with their stored chunk embeddings; the chat memory keeps every turn's passage
handles on its user message, so later turns lay earlier ones out as they were and the engine's prefix cache
reuses them. (LlamaIndex's ``ContextChatEngine`` / ``CondensePlusContextChatEngine`` write the context into a
system prompt that changes every turn: no chunk embeddings reach the model, and no prefix repeats.)

Example (the shared engines have a prefix cache; this one is given one for the example):
    >>> from refrag_rasd_core.prefix_cache import PrefixCache
    >>> engine.prefix_cache = PrefixCache(256 << 20)                          # doctest: +REAL_MODEL
    >>> chat = store.as_chat_engine(llm=RefragRasdLLM(engine=engine, max_tokens=16),
    ...                             similarity_top_k=2)                       # doctest: +REAL_MODEL
    >>> first = chat.chat("Who wrote Hamlet?")                                # doctest: +REAL_MODEL
    >>> second = chat.chat("When?")                                           # doctest: +REAL_MODEL
    >>> second.metadata["stats"]["cached_tokens"] > 0                         # doctest: +REAL_MODEL
    True
    >>> engine.prefix_cache = None                                            # doctest: +REAL_MODEL
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.chat_engine.types import AgentChatResponse, BaseChatEngine, StreamingAgentChatResponse
from llama_index.core.memory import ChatMemoryBuffer

from ..passages import MESSAGE_KEY, handles_of
from .llms import RefragRasdLLM
from .retrievers import RefragLlamaRetriever

__all__ = ["RefragChatEngine"]


class RefragChatEngine(BaseChatEngine):
    """Retrieve per turn, answer with the passages (handles, so chunk embeddings reach the engine), remember
    them with the question."""

    def __init__(self, retriever: Any, llm: RefragRasdLLM, *, memory: ChatMemoryBuffer | None = None,
                 system_prompt: str | None = None) -> None:
        self._retriever = retriever
        self._llm = llm
        self._memory = memory or ChatMemoryBuffer.from_defaults(token_limit=1 << 20)
        self._system = [ChatMessage(role=MessageRole.SYSTEM, content=system_prompt)] if system_prompt else []

    @classmethod
    def from_store(cls, store: Any, llm: RefragRasdLLM | None = None, *, similarity_top_k: int = 4,
                   filters: Any = None, system_prompt: str | None = None, **llm_kwargs: Any) -> RefragChatEngine:
        """The retriever over ``store``, the LLM (``llm_kwargs`` are its settings) and a chat memory."""
        llm = llm or RefragRasdLLM(store=store, **llm_kwargs)
        return cls(RefragLlamaRetriever(store, similarity_top_k=similarity_top_k, filters=filters), llm,
                   system_prompt=system_prompt)

    @property
    def chat_history(self) -> list[ChatMessage]:
        return self._memory.get_all()

    def reset(self) -> None:
        self._memory.reset()

    def _turn(self, message: str) -> tuple[list[ChatMessage], ChatMessage, list[Any]]:
        nodes = self._retriever.retrieve(message)
        handles = handles_of(nodes) or [n.node.get_content() for n in nodes]
        user = ChatMessage(role=MessageRole.USER, content=message, additional_kwargs={MESSAGE_KEY: handles})
        return [*self._system, *self._memory.get_all(), user], user, nodes

    def chat(self, message: str, chat_history: list[ChatMessage] | None = None) -> AgentChatResponse:
        if chat_history is not None:
            self._memory.set(chat_history)
        messages, user, nodes = self._turn(message)
        response = self._llm.chat(messages)
        self._memory.put(user)
        self._memory.put(response.message)
        return AgentChatResponse(response=response.message.content or "", source_nodes=nodes,
                                 metadata=dict(response.raw or {}))

    def stream_chat(self, message: str, chat_history: list[ChatMessage] | None = None
                    ) -> StreamingAgentChatResponse:
        if chat_history is not None:
            self._memory.set(chat_history)
        messages, user, nodes = self._turn(message)
        self._memory.put(user)
        response = StreamingAgentChatResponse(chat_stream=self._llm.stream_chat(messages), source_nodes=nodes)
        threading.Thread(target=response.write_response_to_history, args=(self._memory,), daemon=True).start()
        return response

    async def achat(self, message: str, chat_history: list[ChatMessage] | None = None) -> AgentChatResponse:
        return await asyncio.to_thread(self.chat, message, chat_history)

    async def astream_chat(self, message: str, chat_history: list[ChatMessage] | None = None
                           ) -> StreamingAgentChatResponse:
        if chat_history is not None:
            self._memory.set(chat_history)
        messages, user, nodes = await asyncio.to_thread(self._turn, message)
        self._memory.put(user)
        response = StreamingAgentChatResponse(achat_stream=await self._llm.astream_chat(messages),
                                              source_nodes=nodes)
        response.awrite_response_to_history_task = asyncio.create_task(
            response.awrite_response_to_history(self._memory))
        return response
