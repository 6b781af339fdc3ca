"""A corpus datastore for the decode and rag suites: REST's setting (a generic corpus beside the request's own
passages), built from files by the store's builder (:meth:`~refrag_rasd_integrations.store.CorpusDatastore.
write_segments`), minus what would make the measurement trivial.

What goes in (``refrag-rasd bench --datastore-corpus PATH[,PATH...]``), per file (folders walked for ``.txt``,
``.md``, ``.rst``, ``.jsonl``):

* Spec-Bench / MT-Bench lines (``turns`` + ``category``): a ``rag`` line's passages (its prompt but the question),
  any other line's turns (a ``summarization`` line: its article);
* NQ-open / SQuAD lines (``passage``): ``title`` + ``passage``; PEPs-style lines: ``document``; other lines: ``text``;
* any other text file: its text.

Never a ``reference``, ``answers`` or ``summary`` field. What is left out, for the questions the run measures
(:class:`Measured`): their own lines of the question file (when it is one of the corpus files), QA lines asking
one of their questions (NQ-open holds the same Natural Questions as Spec-Bench's ``rag`` lines: its gold passage
would be the measured question's own), and every text that shares a run of :data:`SHINGLE` words with a measured
prompt (its passages, its article), is one of its lines (a shorter passage), or holds one of its references (a
reference of :data:`MIN_REFERENCE_WORDS` words or more, verbatim; a long one by a shared run of :data:`SHINGLE`
words). Shorter references (a name, a year) are too common to filter on. The counts of what was left out go into
the results. (The NQ-open lines left out are those of the measured questions only; with more questions measured,
more are left out.)

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> from refrag_rasd_integrations.cli.bench.data import BenchQuestion
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "nq.jsonl").write_text("\\n".join(json.dumps(x) for x in [
    ...     {"question": "who wrote it", "answers": ["Ada"], "title": "A", "passage": "Ada wrote it."},
    ...     {"question": "where is rome", "answers": ["Italy"], "title": "R", "passage": "Rome is in Italy."}]))
    >>> measured = Measured.of_questions([BenchQuestion(1, "rag", "Some passage.\\nWho wrote it?", ["Ada"])])
    >>> texts, report = corpus_texts([d / "nq.jsonl"], measured)
    >>> texts, report["left_out"]["same_question"]
    (['R\\nRome is in Italy.'], 1)
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refrag_rasd_core.errors import InvalidInputError

from .data import BenchQuestion

SHINGLE = 12
"""A corpus text sharing a run of this many words with a measured prompt or reference is left out."""
MIN_REFERENCE_WORDS = 3
"""References shorter than this (names, years) are not filtered on: they occur everywhere."""
POLICY = (f"the files' texts (Spec-Bench lines: rag passages, other prompts; QA lines: title + passage; never a "
          f"reference, answer or summary field), without the measured questions' own lines, QA lines asking a "
          f"measured question, and texts sharing a {SHINGLE}-word run with a measured prompt (or equal to one of "
          f"its lines) or holding a measured reference of {MIN_REFERENCE_WORDS}+ words")
_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _shingles(words: Sequence[str]) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


@dataclass
class Measured:
    """What the corpus must not hold of the questions a run measures: their ids in ``data`` (the question file),
    their questions, prompts and references."""

    data: Path | None = None
    ids: set[str] = field(default_factory=set)
    questions: set[str] = field(default_factory=set)
    prompts: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)

    @classmethod
    def of_questions(cls, questions: Sequence[BenchQuestion], data: str | os.PathLike | None = None) -> Measured:
        """The decode suite's questions (a ``rag`` prompt's last line is its question)."""
        return cls(Path(data).expanduser().resolve() if data else None, {str(q.question_id) for q in questions},
                   {" ".join(_words(q.prompt.strip().split("\n")[-1])) for q in questions if q.category == "rag"},
                   [q.prompt for q in questions], [r for q in questions for r in q.reference])

    @classmethod
    def of_rows(cls, rows: Sequence[dict[str, Any]], data: str | os.PathLike | None = None) -> Measured:
        """The rag suite's rows (``question_id``, ``question``, ``passages``, ``reference``)."""
        return cls(Path(data).expanduser().resolve() if data else None, {str(r["question_id"]) for r in rows},
                   {" ".join(_words(r["question"])) for r in rows},
                   ["\n".join([*r["passages"], r["question"]]) for r in rows],
                   [str(x) for r in rows for x in r.get("reference") or []])

    def filter(self) -> tuple[set[tuple[str, ...]], list[str]]:
        """The word runs a kept text must not share (a prompt line shorter than a run counts as one), and the
        short references it must not hold (``" a b c "``)."""
        runs: set[tuple[str, ...]] = set()
        for p in self.prompts:
            runs |= _shingles(_words(p))
            runs |= {tuple(w) for w in map(_words, p.split("\n")) if 0 < len(w) < SHINGLE}
        short = []
        for r in self.references:
            w = _words(r)
            if len(w) >= SHINGLE:
                runs |= _shingles(w)
            elif len(w) >= MIN_REFERENCE_WORDS:
                short.append(" " + " ".join(w) + " ")
        return runs, short


def _jsonl_texts(path: Path, measured: Measured, left_out: dict[str, int]) -> Iterator[str]:
    from ...store import jsonl_objects

    same_file = measured.data is not None and path.resolve() == measured.data
    for n, rec in jsonl_objects(path):
        turns = rec.get("turns")
        if isinstance(turns, list) and "category" in rec:  # Spec-Bench / MT-Bench
            if same_file and str(rec.get("question_id")) in measured.ids:
                left_out["measured_lines"] += 1
                continue
            if rec.get("category") == "rag":
                lines = [ln for ln in str(turns[0] if turns else "").split("\n") if ln.strip()]
                yield from lines[:-1]
            else:
                yield from (str(t) for t in turns)
        elif rec.get("passage"):  # NQ-open / SQuAD
            if " ".join(_words(str(rec.get("question") or ""))) in measured.questions:
                left_out["same_question"] += 1
                continue
            title, passage = str(rec.get("title") or "").strip(), str(rec["passage"]).strip()
            yield f"{title}\n{passage}" if title else passage
        elif isinstance(rec.get("document"), str):
            yield rec["document"]
        elif isinstance(rec.get("text"), str):
            yield rec["text"]
        else:
            raise InvalidInputError(f"--datastore-corpus: {path}, line {n}: no text to index (a Spec-Bench line, or a "
                                    "line with passage, document or text)")


def _files(raw: str | os.PathLike) -> list[Path]:
    from ...store.documents import TEXT_SUFFIXES

    path = Path(raw).expanduser()
    if not path.exists():
        raise InvalidInputError(f"--datastore-corpus: no such file or folder: {raw}")
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)


def corpus_texts(paths: Sequence[str | os.PathLike], measured: Measured) -> tuple[list[str], dict[str, Any]]:
    """The distinct texts of ``paths`` for a corpus datastore, without what ``measured`` rules out (see the module
    docstring), and a report of where they came from and what was left out (no text of the data)."""
    from ...store import iter_file_documents

    runs, short = measured.filter()
    left_out = {"measured_lines": 0, "same_question": 0, "shares_measured_text": 0, "holds_reference": 0}
    kept: dict[str, None] = {}
    files = [f for p in paths for f in _files(p)]
    try:
        for f in files:
            texts = (_jsonl_texts(f, measured, left_out) if f.suffix.lower() == ".jsonl"
                     else (t for t, _ in iter_file_documents([f])))
            _keep(texts, kept, runs, short, left_out)
    except InvalidInputError as exc:
        if str(exc).startswith("--datastore-corpus"):
            raise
        raise InvalidInputError(f"--datastore-corpus: {exc}") from exc
    if not kept:
        raise InvalidInputError(f"--datastore-corpus: no text left in {', '.join(str(p) for p in paths)} (after "
                                "leaving out the measured questions' own text)")
    return list(kept), {"sources": [f.name for f in files], "texts": len(kept), "left_out": left_out,
                        "policy": POLICY}


def _keep(texts: Iterable[str], kept: dict[str, None], runs: set[tuple[str, ...]], short: Sequence[str],
          left_out: dict[str, int]) -> None:
    """Add each of ``texts`` to ``kept`` unless it shares a run in ``runs`` or holds one of ``short``."""
    for text in texts:
        text = text.strip()
        if not text or text in kept:
            continue
        w = _words(text)
        if runs and (tuple(w) in runs or not runs.isdisjoint(_shingles(w))):
            left_out["shares_measured_text"] += 1
            continue
        if short:
            joined = " " + " ".join(w) + " "
            if any(s in joined for s in short):
                left_out["holds_reference"] += 1
                continue
        kept[text] = None


def build_corpus_datastore(texts: Sequence[str], tokenizer: Any, folder: str | os.PathLike, *,
                           batch_size: int = 256) -> tuple[Any, dict[str, Any]]:
    """Tokenize ``texts`` and index them as one segment of a :class:`~refrag_rasd_integrations.store.
    CorpusDatastore` in ``folder`` (the store's own builder). Returns the datastore and the build's numbers
    (``tokenize_s``, ``build_s``: suffix array + save)."""
    from ...store import CorpusDatastore

    t0 = time.perf_counter()
    seqs: list[list[int]] = []
    for start in range(0, len(texts), batch_size):
        seqs.extend(tokenizer(list(texts[start:start + batch_size]), add_special_tokens=False,
                              verbose=False)["input_ids"])
    tokenize_s = time.perf_counter() - t0
    ds = CorpusDatastore(folder)
    report = ds.write_segments([([f"c{i:07d}" for i in range(len(seqs))], seqs)], replace=True)
    return ds, {"tokenize_s": round(tokenize_s, 3), "build_s": report["build_s"], "built": "in this run"}


def datastore_info(ds: Any, prompts: Sequence[str], tokenizer: Any, *, corpus: dict[str, Any],
                   build: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a results file records of a corpus datastore: the corpus (``corpus``: sources, policy, what was left
    out), its size (passages, tokens, bytes on disk, bytes per token), its build time (``build``, else this run's
    sync of a store's datastore, else an in-memory rebuild with libdivsufsort timed now) and the share of the
    ``prompts``' 16-token suffixes it matches, with the time of a lookup."""
    d = ds.describe()
    info: dict[str, Any] = {**corpus, "passages": d["passages"], "n_tokens": d["n_tokens"], "bytes": d["bytes"],
                            "bytes_per_token": d["bytes_per_token"], "segments": d["segments"]}
    if build is None and d.get("last_build", {}).get("build_s") is not None:
        build = {"build_s": d["last_build"]["build_s"], "built": "in this run (the store's sync)"}
    rebuilt = measure_build(ds, ("divsufsort",))
    if build is None:
        tps = rebuilt.get("build_tokens_per_s_divsufsort") or 0
        build = {"build_s": round(d["n_tokens"] / tps, 4) if tps else None,
                 "built": "earlier (the store's datastore was up to date): build_s is an in-memory rebuild"}
    info.update(build)
    info["build_tokens_per_s_divsufsort"] = rebuilt.get("build_tokens_per_s_divsufsort")
    info.update(lookup_cost(ds, [_Prompt(p) for p in prompts], tokenizer))
    return info


@dataclass
class _Prompt:
    prompt: str


def lookup_cost(datastore: Any, tasks: Sequence[Any], tokenizer: Any, *, per_task: int = 50) -> dict[str, Any]:
    """Mean time of one corpus-datastore lookup (16-token suffixes taken from the tasks' ``prompt``), and the
    share of them that match in it."""
    if datastore is None:
        return {}
    suffixes: list[list[int]] = []
    for t in tasks:
        ids = tokenizer(t.prompt, add_special_tokens=False)["input_ids"]
        step = max(1, (len(ids) - 16) // per_task)
        suffixes.extend(ids[i - 16:i] for i in range(16, len(ids), step))
    datastore.candidates(suffixes[0] if suffixes else [0], max_len=10)  # maps the pages in
    t0 = time.perf_counter()
    hits = sum(datastore.candidates(s, max_len=10).suffix_len > 0 for s in suffixes)
    dt = time.perf_counter() - t0
    return {"lookups": len(suffixes), "lookup_ms": round(1000 * dt / max(1, len(suffixes)), 4),
            "matched_share": round(hits / max(1, len(suffixes)), 3)}


def measure_build(datastore: Any, backends: Sequence[str] = ("divsufsort", "numpy")) -> dict[str, Any]:
    """Build speed (tokens/s) of the corpus datastore's tokens rebuilt in memory by each suffix-array backend."""
    import numpy as np

    from refrag_rasd_core.rasd.datastore import SEPARATOR, RestDatastore

    seqs: list[Any] = []
    for seg in datastore.current().segments:
        t = np.asarray(seg._r[::-1])
        cuts = np.flatnonzero(t == SEPARATOR)
        seqs.extend(p[p != SEPARATOR] for p in np.split(t, cuts))
    n = sum(len(s) for s in seqs)
    out: dict[str, Any] = {"build_tokens": n}
    for b in backends:
        t0 = time.perf_counter()
        RestDatastore.build(seqs, backend=b)
        out[f"build_tokens_per_s_{b}"] = round(n / (time.perf_counter() - t0))
    return out


def corpus_effect(summary: dict[str, dict[str, Any]], pairs: Sequence[tuple[str, str]],
                  keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{base: {key: [without, with]}}`` for each ``(base, base-corpus)`` pair present in ``summary``."""
    return {a: {k: [summary[a].get(k), summary[b].get(k)] for k in keys}
            for a, b in pairs if a in summary and b in summary}


def datastore_lines(ds: dict[str, Any], accepted_key: str) -> list[str]:
    """The lines a suite's table prints under it about its corpus datastore (size, build, matches, effect)."""
    mib = (ds.get("bytes") or 0) / 2**20
    lines = [f"corpus datastore: {ds.get('n_tokens') or 0:,} tokens in {ds.get('passages') or 0:,} passages "
             f"({mib:.1f} MiB, {ds.get('bytes_per_token')} bytes/token), built in {ds.get('build_s')} s"
             + (f" (+{ds['tokenize_s']} s tokenizing)" if ds.get("tokenize_s") is not None else "")
             + f"; {ds.get('matched_share')} of the prompts' 16-token suffixes match in it, a lookup "
             f"{ds.get('lookup_ms')} ms; from {', '.join(ds.get('sources') or ['the store'])}"
             + _left_out(ds.get("left_out"))]
    effect = ds.get("effect") or {}
    if effect:
        lines.append("accepted / forward without -> with it: " + ", ".join(
            f"{m} {_num(v[accepted_key][0])} -> {_num(v[accepted_key][1])}" for m, v in effect.items()))
    return lines


def _left_out(left: dict[str, int] | None) -> str:
    if not left:
        return ""
    return (f", without the measured questions' own {left.get('measured_lines', 0)} lines, "
            f"{left.get('same_question', 0)} QA lines asking their questions, {left.get('shares_measured_text', 0)} "
            f"texts sharing their text and {left.get('holds_reference', 0)} holding a reference")


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.2f}"
