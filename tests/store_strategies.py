"""Hypothesis strategies for what the store is given to index: texts (unicode, empty, blank, huge lines, one
huge word), metadata with values Chroma takes and values it does not (``None``, nested dicts, empty and mixed
lists, bytes), source ids, and documents in the shapes the store accepts (``(text, metadata)`` pairs and
LangChain ``Document`` s named by their id)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

__all__ = ["corpora", "documents", "metadata_values", "sources", "texts"]

_WORDS = st.sampled_from(
    ["Paris", "river", "naïve", "東京", "emoji🙂", "x", "résumé", "Ωmega", "tab\tsep", "42"]
)

sources = st.sampled_from(["a.txt", "/abs/b.md", "notes/c", "ünï-söurce", "id-7", "s p a c e"])
"""Source ids: file-like paths and plain ids, unicode and spaces included."""

texts = st.one_of(
    st.text(max_size=300),  # any unicode, "" included
    st.just(""),
    st.just("   \n\n  "),  # nothing to index
    st.lists(_WORDS, min_size=1, max_size=60).map(" ".join),  # prose-like
    st.builds(lambda w, n: (w + " ") * n, _WORDS, st.integers(100, 400)),  # one huge line
    st.builds(lambda w, n: w * n, _WORDS, st.integers(50, 300)),  # one huge word (hard cut)
    st.lists(st.lists(_WORDS, min_size=1, max_size=12).map(" ".join), min_size=1, max_size=8).map(
        "\n\n".join
    ),
)
"""Document texts."""

_SCALARS = st.one_of(
    st.text(max_size=20),
    st.integers(-(2**40), 2**40),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
metadata_values = st.one_of(
    _SCALARS,
    st.lists(st.text(max_size=5), min_size=1, max_size=3),
    st.lists(st.integers(0, 9), min_size=1, max_size=3),
    st.none(),
    st.just([]),
    st.lists(_SCALARS, min_size=2, max_size=3),  # None, empty / mixed lists
    st.dictionaries(st.text(max_size=4), _SCALARS, max_size=2),
    st.binary(max_size=6),
    st.lists(st.lists(st.integers(0, 3), max_size=2), min_size=1, max_size=2),  # nested
)
"""Metadata values: Chroma's types and the ones the store must flatten or drop."""

_KEYS = st.sampled_from(["title", "page", "tags", "score", "extra", "ünï", "refrag_tokens", "refrag_passage"])


@st.composite
def documents(draw: Any, source: Any = sources) -> Any:
    """One document with a source: a ``(text, metadata)`` pair, or a LangChain ``Document`` named by id."""
    from langchain_core.documents import Document

    src = draw(source)
    meta = draw(st.dictionaries(_KEYS, metadata_values, max_size=3))
    text = draw(texts)
    if draw(st.booleans()):
        return (text, {**meta, "source": src})
    return Document(page_content=text, metadata=meta, id=src)


corpora = st.lists(documents(), max_size=6)
"""A set of documents to index (sources may repeat: several documents of one source)."""
