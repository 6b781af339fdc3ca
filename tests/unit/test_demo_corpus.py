"""The demo corpus: passages of Python's reference topics and the project's docs (with titles and sources, about
100-200 words), questions whose reference answers stand in it, rows for notebooks, and no docs questions where
the docs are not there."""

from __future__ import annotations

from refrag_rasd_integrations.cli.bench.metrics import answer_recall
from refrag_rasd_integrations.cli.demo_corpus import (
    DEMO_QUESTIONS,
    MAX_WORDS,
    MIN_WORDS,
    WARM_UP_QUESTION,
    demo_passages,
    demo_questions,
    demo_rows,
    split_passage_text,
)


def test_passages_have_titles_sources_and_size() -> None:
    ps = demo_passages()
    sources = {p.source for p in ps}
    assert any(s.startswith("pydoc:") for s in sources) and any(s.startswith("docs/") for s in sources)
    assert 100 <= len(ps) <= 400
    assert all(p.text.startswith(p.title + ": ") and "\n" not in p.text for p in ps)
    words = [len(p.text.split()) - len(p.title.split()) for p in ps]
    assert max(words) <= MAX_WORDS + MIN_WORDS // 3  # a short tail may join the piece before it
    assert sorted(words)[len(words) // 2] >= 80  # ~100-word passages
    assert len({(p.source, p.text) for p in ps}) == len(ps)
    assert demo_passages() == ps  # deterministic: the store's ids (and a reused index) depend on it


def test_every_question_is_answered_in_its_source() -> None:
    ps = demo_passages()
    assert demo_questions(ps) == list(DEMO_QUESTIONS) and len(DEMO_QUESTIONS) >= 3
    for q in DEMO_QUESTIONS:
        texts = [p.text for p in ps if p.source == q.source]
        assert any(r in t for t in texts for r in q.reference), q
        assert answer_recall(" ".join(texts), list(q.reference)) == 1.0


def test_without_the_docs_only_python_reference_questions() -> None:
    ps = demo_passages(docs_dir=None)
    assert ps and all(p.source.startswith("pydoc:") for p in ps)
    qs = demo_questions(ps)
    assert qs and all(q.source.startswith("pydoc:") for q in qs)


def test_rows_put_the_answer_passage_first() -> None:
    rows = demo_rows(n_passages=3)
    assert rows[0]["question"] == WARM_UP_QUESTION and not rows[0]["held_out"] and rows[0]["passages"]
    assert [r["question"] for r in rows[1:]] == [q.question for q in DEMO_QUESTIONS]
    for r in rows[1:]:
        assert r["held_out"] and 1 <= len(r["passages"]) <= 3
        assert any(ref in r["passages"][0] for ref in r["reference"])


def test_split_packs_paragraphs_and_cuts_long_ones() -> None:
    short = ["one two three."] * 3
    assert split_passage_text(short) == ["one two three. one two three. one two three."]
    long = " ".join(f"Sentence number {i} has six words." for i in range(100))  # 600 words
    pieces = split_passage_text([long], max_words=150)
    assert all(len(p.split()) <= 150 for p in pieces) and " ".join(pieces) == long
    assert all(p.endswith(".") for p in pieces)  # cut at sentence ends
