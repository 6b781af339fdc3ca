"""The demo corpus: text the project writes or every Python install has, so a fresh machine can run the demo.

Two sources, split into passages of about 100 words (80 to 150), each with a title and a source:

* Python's reference documentation that ships with CPython (``pydoc_data.topics``: the language reference
  sections ``help("try")`` shows), source ``pydoc:<topic>``;
* the project's own documentation (``docs/*.md`` of the repository, when the package runs from a checkout),
  source ``docs/<file>``.

:data:`DEMO_QUESTIONS` are questions written for this corpus, each with short reference answers that stand
verbatim in one of its passages (:func:`demo_questions` keeps those whose answer is in the corpus at hand).
:func:`demo_rows` gives them in the shape of :func:`refrag_rasd_integrations.cli.bench.rag.load_rag_rows`
(question, a few passages, reference answers), for notebooks and tests.

Example:
    >>> from refrag_rasd_integrations.cli.demo_corpus import demo_passages, demo_questions
    >>> ps = demo_passages(docs_dir=None)              # the Python reference topics only
    >>> ps[0].source.startswith("pydoc:") and 1 <= len(ps[0].text.split()) <= 260
    True
    >>> all(any(q.reference[0] in p.text for p in ps) for q in demo_questions(ps))
    True
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEMO_DOCS", "DEMO_QUESTIONS", "DEMO_TOPICS", "DOCS_DIR", "WARM_UP_QUESTION", "WARM_UP_SOURCE",
           "DemoPassage", "DemoQuestion", "demo_passages", "demo_questions", "demo_rows", "docs_passages",
           "index_demo_corpus", "pydoc_passages", "split_passage_text"]

DOCS_DIR = Path(__file__).resolve().parents[2] / "docs"
MIN_WORDS, MAX_WORDS = 80, 150  # ~100-250 decoder tokens: most passages fit the store's 256 without a cut
# The corpus the demo indexes: the statements and basic objects of the Python reference, and the user guide
# part of the docs (~150 passages, indexed in a few minutes on a small CPU). ``None`` takes them all.
DEMO_TOPICS: tuple[str, ...] = (
    "assert", "break", "continue", "del", "global", "nonlocal", "pass", "raise", "return", "yield", "if", "while",
    "for", "try", "with", "lambda", "import", "class", "function", "bltin-null-object", "bltin-ellipsis-object",
    "truth", "naming", "booleans", "integers", "floating", "imaginary", "exceptions", "dict", "lists")
DEMO_DOCS: tuple[str, ...] = (
    "index.md", "getting-started.md", "cli.md", "store.md", "langchain.md", "llamaindex.md", "engine.md",
    "howto-models.md", "howto-chroma-server.md", "howto-gpu.md", "concepts.md")


@dataclass(frozen=True)
class DemoPassage:
    """One passage: its text (one line, starting with its title), its title and where it comes from."""

    text: str
    title: str
    source: str

    @property
    def metadata(self) -> dict[str, str]:
        return {"source": self.source, "title": self.title}


@dataclass(frozen=True)
class DemoQuestion:
    """A question, its reference answers (each verbatim in a passage of ``source``) and that source."""

    question: str
    reference: tuple[str, ...]
    source: str


# Written for this corpus: short reference answers that stand verbatim in a passage of ``source``, kept because
# the default model (SmolLM2-135M-Instruct) answers them right with plain RAG over the retrieved passages. Three
# come from the Python reference (every machine has it), two from the project's docs (a checkout has them).
DEMO_QUESTIONS: tuple[DemoQuestion, ...] = (
    DemoQuestion("What is the name of Python's null object?", ("None",), "pydoc:bltin-null-object"),
    DemoQuestion("Which environment variable sets the folder of the embedded Chroma database?",
                 ("REFRAG_RASD_CHROMA_DIR",), "docs/getting-started.md"),
    DemoQuestion("What does an imaginary literal yield?", ("complex number",), "pydoc:imaginary"),
    DemoQuestion("What are the items of a dictionary display enclosed in?", ("curly braces",), "pydoc:dict"),
    DemoQuestion("Which environment variable sets the cache folder of refrag-rasd?", ("REFRAG_RASD_CACHE",),
                 "docs/getting-started.md"),
)
# Asked once before the timed questions, to warm both pipelines up (never shown).
WARM_UP_QUESTION, WARM_UP_SOURCE = "What does the continue statement do?", "pydoc:continue"


# ---- splitting --------------------------------------------------------------------------------------------
_SENTENCE = re.compile(r"(?<=[.!?:;])\s+")


def _words(text: str) -> int:
    return len(text.split())


def _one_line(text: str) -> str:
    return " ".join(text.split())


def split_passage_text(paragraphs: Iterable[str], *, min_words: int = MIN_WORDS,
                       max_words: int = MAX_WORDS) -> list[str]:
    """Pack paragraphs (each flattened to one line) into pieces of at most ``max_words`` words, cutting a
    longer paragraph at sentence ends (then at words): neighbours are joined while they fit in ``max_words``
    together and one of them is shorter than ``min_words``; a last piece shorter than ``min_words // 3`` joins
    the one before in any case."""
    units: list[str] = []
    for par in paragraphs:
        par = _one_line(par)
        if not par:
            continue
        if _words(par) <= max_words:
            units.append(par)
            continue
        cur: list[str] = []
        for sent in _SENTENCE.split(par):
            words = sent.split()
            while len(words) > max_words:  # one huge "sentence" (a grammar block, a table)
                if cur:
                    units.append(" ".join(cur))
                    cur = []
                units.append(" ".join(words[:max_words]))
                words = words[max_words:]
            if cur and len(cur) + len(words) > max_words:
                units.append(" ".join(cur))
                cur = []
            cur.extend(words)
        if cur:
            units.append(" ".join(cur))
    out: list[str] = []
    for u in units:
        if out and _words(out[-1]) + _words(u) <= max_words and (_words(out[-1]) < min_words or _words(u) < min_words):
            out[-1] = f"{out[-1]} {u}"
        else:
            out.append(u)
    if len(out) > 1 and _words(out[-1]) < min_words // 3:
        last = out.pop()
        out[-1] = f"{out[-1]} {last}"
    return out


def _passages(source: str, sections: Iterable[tuple[str, list[str]]]) -> Iterator[DemoPassage]:
    for title, paragraphs in sections:
        for piece in split_passage_text(paragraphs):
            yield DemoPassage(f"{title}: {piece}", title, source)


# ---- the Python reference topics ---------------------------------------------------------------------------
_UNDERLINE = re.compile(r"^([*=\-~^\"])\1{2,}\s*$")


def _topic_sections(text: str) -> list[tuple[str, list[str]]]:
    """A pydoc topic as (section title, paragraphs): titles are the lines underlined with ``***`` / ``===``."""
    lines = text.splitlines()
    main = lines[0].strip() if len(lines) > 1 and _UNDERLINE.match(lines[1]) else ""
    sections: list[tuple[str, list[str]]] = []
    title, buf = main, []
    i = 2 if main else 0
    while i < len(lines):
        if i + 1 < len(lines) and lines[i].strip() and _UNDERLINE.match(lines[i + 1]):
            sections.append((title, buf))
            sub = lines[i].strip()
            title, buf = (f"{main} ({sub})" if main and sub != main else sub), []
            i += 2
            continue
        buf.append(lines[i])
        i += 1
    sections.append((title, buf))
    return [(t or "Python reference", _paragraphs("\n".join(b))) for t, b in sections if "".join(b).strip()]


def _paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def pydoc_passages(topics: Sequence[str] | None = DEMO_TOPICS) -> list[DemoPassage]:
    """Passages of the Python reference topics (``pydoc_data.topics``): those named (the ones this Python's
    copy has), or all of them for ``None``."""
    from pydoc_data.topics import topics as all_topics

    out: list[DemoPassage] = []
    for key in sorted(all_topics) if topics is None else [t for t in topics if t in all_topics]:
        out.extend(_passages(f"pydoc:{key}", _topic_sections(all_topics[key])))
    return out


# ---- the project's docs ------------------------------------------------------------------------------------
_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _plain_markdown(line: str) -> str:
    line = _LINK.sub(r"\1", line)
    line = re.sub(r"\*\*|__|`", "", line)
    return "" if re.fullmatch(r"\s*\|?[\s:|-]*-{3,}[\s:|-]*\|?\s*", line) else line


def _doc_sections(text: str) -> list[tuple[str, list[str]]]:
    """A markdown file as (heading, paragraphs): ``#`` headings start sections; a fenced block is a paragraph."""
    sections: list[tuple[str, list[str]]] = []
    top, title, paras, cur = "", "", [], []
    fenced = False
    for raw in text.splitlines():
        if _FENCE.match(raw):
            fenced = not fenced
            if cur:
                paras.append("\n".join(cur))
                cur = []
            continue
        m = None if fenced else _HEADING.match(raw)
        if m:
            if cur:
                paras.append("\n".join(cur))
                cur = []
            if paras:
                sections.append((title, paras))
            paras = []
            head = _plain_markdown(m.group(2)).strip()
            if len(m.group(1)) == 1:
                top = title = head
            else:
                title = f"{top} ({head})" if top else head
            continue
        if not fenced and not raw.strip():
            if cur:
                paras.append("\n".join(cur))
                cur = []
            continue
        line = raw if fenced else _plain_markdown(raw)
        if line.strip():
            cur.append(line)
    if cur:
        paras.append("\n".join(cur))
    if paras:
        sections.append((title, paras))
    return [(t or "refrag-rasd", p) for t, p in sections]


def docs_passages(docs_dir: str | Path | None = DOCS_DIR, files: Sequence[str] | None = DEMO_DOCS
                  ) -> list[DemoPassage]:
    """Passages of the project's documentation (``docs/*.md``: the ``files`` named that exist, or all for
    ``None``); none when the folder is not there (an installed wheel without the repository)."""
    if docs_dir is None or not Path(docs_dir).is_dir():
        return []
    paths = sorted(Path(docs_dir).glob("*.md")) if files is None else [Path(docs_dir) / f for f in files]
    out: list[DemoPassage] = []
    for path in (p for p in paths if p.is_file()):
        out.extend(_passages(f"docs/{path.name}", _doc_sections(path.read_text(encoding="utf-8"))))
    return out


# ---- the corpus, its questions, and rows -------------------------------------------------------------------
def demo_passages(*, docs_dir: str | Path | None = DOCS_DIR, topics: Sequence[str] | None = DEMO_TOPICS,
                  docs: Sequence[str] | None = DEMO_DOCS) -> list[DemoPassage]:
    """The demo corpus: the Python reference topics, then the project's docs (when the checkout has them)."""
    return pydoc_passages(topics) + docs_passages(docs_dir, docs)


def demo_questions(passages: Sequence[DemoPassage] | None = None) -> list[DemoQuestion]:
    """The questions of :data:`DEMO_QUESTIONS` whose reference answer stands in ``passages`` (default: the
    whole corpus), i.e. without the docs questions where the docs are not there."""
    passages = demo_passages() if passages is None else passages
    by_source: dict[str, list[str]] = {}
    for p in passages:
        by_source.setdefault(p.source, []).append(p.text)
    return [q for q in DEMO_QUESTIONS
            if any(r in t for t in by_source.get(q.source, ()) for r in q.reference)]


def demo_rows(n_passages: int = 4, passages: Sequence[DemoPassage] | None = None) -> list[dict[str, Any]]:
    """The demo questions as RAG rows ``{"question_id", "question", "passages", "reference", "held_out",
    "source"}``: ``passages`` are the passage holding the answer first, then the others of its source, then its
    neighbours in the corpus (``n_passages`` in all). The warm-up question comes first, with ``held_out=False``."""
    passages = demo_passages() if passages is None else passages

    def around(source: str, hit: int) -> list[str]:
        order = sorted(range(len(passages)), key=lambda j: (passages[j].source != source, abs(j - hit), j))
        return [passages[j].text for j in order[:n_passages]]

    warm = next((j for j, p in enumerate(passages) if p.source == WARM_UP_SOURCE), 0)
    rows = [{"question_id": 0, "question": WARM_UP_QUESTION, "passages": around(WARM_UP_SOURCE, warm),
             "reference": [], "held_out": False, "source": WARM_UP_SOURCE}]
    for i, q in enumerate(demo_questions(passages), 1):
        hit = next(j for j, p in enumerate(passages) if p.source == q.source and any(r in p.text for r in q.reference))
        rows.append({"question_id": i, "question": q.question, "passages": around(q.source, hit),
                     "reference": list(q.reference), "held_out": True, "source": q.source})
    return rows


def index_demo_corpus(store: Any, passages: Sequence[DemoPassage] | None = None, *, progress: bool = True,
                      prune: bool = True) -> tuple[Any, int]:
    """Index the demo corpus into a :class:`~refrag_rasd_integrations.store.RefragChromaStore` (resumable:
    passages already there are skipped, so a second run reuses the index). With ``prune``, passages of the
    collection that are no longer in the corpus (an edited doc, an older corpus) are deleted. Returns the
    ``IndexReport`` and how many passages were pruned."""
    passages = demo_passages() if passages is None else passages
    report = store.add_texts([p.text for p in passages], [p.metadata for p in passages], progress=progress)
    stale: list[str] = []
    if prune:
        keep = set(report.ids)
        stale = [i for i in store.collection().get(include=[])["ids"] if i not in keep]
        if stale:
            store.delete(ids=stale)
    return report, len(stale)
