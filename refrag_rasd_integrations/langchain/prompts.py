"""``PassagePrompt``: the documents-aware prompt step of an LCEL RAG chain.

It formats a chat prompt from the chain's input (by default just ``{question}``) and attaches the retrieved
documents' passage handles to the last human message (``additional_kwargs["refrag_passages"]``). The model
resolves the handles to the stored token ids and chunk embeddings and lets the engine lay out the context
(REFRAG: compressed chunk vectors; no encoder runs at query time). The passages' text is NOT formatted into
the prompt: the engine places it.

Example:
    >>> from langchain_core.runnables import RunnablePassthrough
    >>> from refrag_rasd_integrations.langchain import ChatRefragRasd, PassagePrompt
    >>> chain = (
    ...     {"context": store.as_retriever(k=2), "question": RunnablePassthrough()}
    ...     | PassagePrompt()
    ...     | ChatRefragRasd(max_tokens=16)
    ... )                                                                   # doctest: +REAL_MODEL
    >>> bool(chain.invoke("Where is the Eiffel Tower?").content)           # doctest: +REAL_MODEL
    True
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.prompt_values import ChatPromptValue, PromptValue
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from pydantic import ConfigDict

from ..passages import MESSAGE_KEY, handles_of


def _default_template() -> ChatPromptTemplate:
    return ChatPromptTemplate.from_messages([("human", "{question}")])


class PassagePrompt(RunnableSerializable[Any, PromptValue]):
    """Input: a dict with the retrieved documents under ``documents_key`` (default ``"context"``) and the
    template's variables (default template: one human message ``{question}``), or a plain question string.
    Output: a ``ChatPromptValue`` whose last human message carries the passage handles.

    Documents that did not come from a refrag-rasd retriever are handed over as text (the engine encodes them
    on the fly). If the template uses the documents variable, it is filled with an empty string.

    Example:
        >>> from langchain_core.documents import Document
        >>> pv = PassagePrompt().invoke({"question": "Why?", "context": [
        ...     Document("text", metadata={"refrag_passage": "docs/abc-0000"})]})
        >>> pv.to_messages()[-1].additional_kwargs
        {'refrag_passages': ['docs/abc-0000']}
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    template: ChatPromptTemplate | None = None
    documents_key: str = "context"

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> PromptValue:
        return self._call_with_config(self._format, input, config, run_type="prompt")

    def _format(self, input: Any) -> PromptValue:
        if isinstance(input, str):
            input = {"question": input}
        docs = list(input.get(self.documents_key) or [])
        template = self.template or _default_template()
        values = {k: v for k, v in input.items() if k != self.documents_key}
        if self.documents_key in template.input_variables:
            values[self.documents_key] = ""
        messages = list(template.invoke(values).to_messages())
        refs = []
        for d in docs:
            h = handles_of([d])
            refs.append(h[0] if h else getattr(d, "page_content", str(d)))
        for i in range(len(messages) - 1, -1, -1):
            if isinstance(messages[i], HumanMessage):
                m = messages[i]
                messages[i] = m.model_copy(update={"additional_kwargs": {**m.additional_kwargs, MESSAGE_KEY: refs}})
                break
        else:
            messages.append(HumanMessage(content="", additional_kwargs={MESSAGE_KEY: refs}))
        return ChatPromptValue(messages=messages)


__all__ = ["PassagePrompt"]
