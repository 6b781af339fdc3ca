"""Re-indexing on the fake store and a real embedded Chroma: a changed, moved (relative vs absolute path) or
re-sized source leaves 0 stale passages and 0 duplicates; the clean-up modes; a run killed before its clean-up
resumes exactly; delete_source / sources; binary files; LangChain's own indexing API over RefragVectorStore.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
from integration_fakes import BagOfWordsEmbedder, CountingChunkEncoder, fake_store

from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_integrations.errors import StoreMismatchError
from tiny import tiny_tokenizer

LONG = " ".join(f"Sentence {i} of the guide says something about topic {i % 5}." for i in range(40))


def _passages(store) -> list[tuple[str, str]]:
    """(source, text) of every stored passage."""
    res = store.collection().get(include=["documents", "metadatas"])
    return [(m["source"], t) for t, m in zip(res["documents"], res["metadatas"], strict=True)]


def _expected(store, files: dict) -> Counter:
    """The (source, text) passages the files hold now, as a fresh index would store them."""
    return Counter((str(p.resolve()), piece) for p in files for piece in store.split(p.read_text()))


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    files = {d / "a.md": "Alpha. " + LONG, d / "b.txt": "Beta is a short note.", d / "c.rst": "Gamma " + LONG}
    for p, text in files.items():
        p.write_text(text)
    return d, files


def test_changed_file_is_replaced_not_duplicated(client, folder):
    d, files = folder
    store = fake_store(client=client)
    first = store.add_files([d], cleanup="incremental")
    assert first.added == first.passages and first.deleted == 0
    (d / "a.md").write_text("Alpha, rewritten: " + LONG.replace("topic", "subject"))
    again = store.add_files([d], cleanup="incremental")
    assert Counter(_passages(store)) == _expected(store, files)  # 0 stale, 0 duplicates
    assert again.deleted > 0 and store.count() == again.passages
    assert store.add_files([d], cleanup="incremental").added == 0  # unchanged: all skipped


def test_without_cleanup_the_old_passages_stay(client, folder):
    d, _ = folder
    store = fake_store(client=client)
    store.add_files([d])
    (d / "b.txt").write_text("Beta changed.")
    report = store.add_files([d])
    assert report.deleted == 0 and "Beta is a short note." in [t for _, t in _passages(store)]


def test_relative_and_absolute_paths_are_one_source(client, folder, monkeypatch):
    d, files = folder
    store = fake_store(client=client)
    store.add_files([d], cleanup="incremental")
    monkeypatch.chdir(d.parent)
    report = store.add_files(["docs", "./docs/../docs/a.md"], cleanup="incremental")
    assert report.added == 0 and report.deleted == 0
    assert Counter(_passages(store)) == _expected(store, files)


def test_full_cleanup_drops_removed_files_and_incremental_keeps_them(client, folder):
    d, files = folder
    store = fake_store(client=client)
    store.add_files([d], cleanup="full")
    (d / "c.rst").unlink()
    assert store.add_files([d], cleanup="incremental").deleted == 0  # incremental: c.rst not in the batch
    report = store.add_files([d], cleanup="full")
    assert report.deleted > 0
    assert Counter(_passages(store)) == _expected(store, {p: t for p, t in files.items() if p.exists()})


def test_another_passage_size_is_refused_and_rebuild_works(client, folder):
    d, files = folder
    fake_store(client=client, passage_tokens=256).add_files([d])
    small = fake_store(client=client, passage_tokens=64)
    with pytest.raises(StoreMismatchError, match=r"passage_tokens: stored 256, asked 64.*--rebuild"):
        small.add_files([d], cleanup="incremental")
    assert small.recorded()["refrag_passage_tokens"] == 256 and small.sources()  # untouched
    small.delete_collection()
    small.add_files([d], cleanup="incremental")
    assert Counter(_passages(small)) == _expected(small, files)
    # opened without a size, a store reads the collection's
    reader = fake_store(client=client, passage_tokens=None)
    reader.count()
    assert reader.passage_tokens == 64


def test_passage_size_bounds():
    for bad in (0, 15, 1025, True, 3.5):
        with pytest.raises(InvalidInputError, match="passage_tokens must be between 16 and 1024"):
            fake_store(passage_tokens=bad)


class FailingEncoder(CountingChunkEncoder):
    """Fails on its ``fail_at``-th call, as a killed process stops."""

    fail_at = 2

    def encode_passages(self, token_id_lists, **kw):
        if self.calls + 1 == self.fail_at:
            self.calls += 1
            raise KeyboardInterrupt("killed")
        return super().encode_passages(token_id_lists, **kw)


def test_run_killed_mid_way_keeps_the_old_passages_and_resumes_exactly(client, folder):
    d, files = folder
    store = fake_store(client=client)
    store.add_files([d], cleanup="incremental")
    for p in files:
        p.write_text(p.read_text().replace("topic", "theme") + " Edited.")
    tok = tiny_tokenizer()
    killed = fake_store(client=client, tokenizer=tok, chunk_encoder=FailingEncoder(tok, k=4))
    with pytest.raises(KeyboardInterrupt):
        killed.add_files([d], cleanup="incremental", batch_size=4)
    sources = {s for s, _ in _passages(store)}
    assert sources == {str(p.resolve()) for p in files}  # no source left with nothing
    report = fake_store(client=client).add_files([d], cleanup="incremental", batch_size=4)
    assert report.skipped == 4 and report.deleted > 0  # the batch written before the kill
    assert Counter(_passages(store)) == _expected(store, files)


def test_delete_source_and_sources(client, folder, monkeypatch):
    d, files = folder
    store = fake_store(client=client)
    store.add_files([d])
    store.add_texts(["A note without a file."], [{"source": "note-1"}])
    counts = store.sources()
    assert (
        set(counts) == {str(p.resolve()) for p in files} | {"note-1"}
        and sum(counts.values()) == store.count()
    )
    monkeypatch.chdir(d)
    assert store.delete_source("a.md") == counts[str((d / "a.md").resolve())]  # a relative path works
    assert store.delete_source("note-1") == 1 and store.delete_source("note-1") == 0
    assert set(store.sources()) == {str((d / n).resolve()) for n in ("b.txt", "c.rst")}


def test_binary_files_are_skipped_and_counted(client, tmp_path):
    (tmp_path / "text.md").write_text("Plain text about rivers.")
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" * 50)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "cut.txt").write_bytes(("é" * 5000).encode())  # a character cut at 8 KB: text
    store = fake_store(client=client)
    report = store.add_files([tmp_path, tmp_path / "image.txt"])
    assert sorted(os.path.basename(f) for f, _ in report.skipped_files) == [
        "image.txt",
        "image.txt",
        "latin1.txt",
    ]
    assert {os.path.basename(s) for s in store.sources()} == {"text.md", "cut.txt"}


def test_jsonl_errors_name_file_and_line(client, tmp_path):
    store = fake_store(client=client)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n\n{"text": oops}\n')
    with pytest.raises(InvalidInputError, match=r"bad\.jsonl, line 3: not valid JSON"):
        store.add_files([tmp_path / "bad.jsonl"])
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n"just a string"\n')
    with pytest.raises(InvalidInputError, match=r"bad\.jsonl, line 2: a JSON str where an object"):
        store.add_files([tmp_path / "bad.jsonl"])
    with pytest.raises(InvalidInputError, match="no such file or folder"):
        store.add_files([tmp_path / "nothing-here"])
    assert not store.exists()  # refused before anything was created


def test_incremental_needs_sources_and_cleanup_mode_is_checked(client):
    store = fake_store(client=client)
    with pytest.raises(InvalidInputError, match="needs a source for every document"):
        store.add_texts(["no source here"], cleanup="incremental")
    with pytest.raises(InvalidInputError, match="cleanup must be"):
        store.add_texts(["x"], [{"source": "s"}], cleanup="sometimes")
    store.add_texts(["one", "two"], [{"source": "s"}, {"source": "t"}], cleanup="full")
    assert store.add_texts(["three"], cleanup="full").deleted == 2 and store.count() == 1


def test_langchain_indexing_api_over_refrag_vector_store(client):
    from langchain_core.documents import Document
    from langchain_core.indexing import InMemoryRecordManager, index

    from refrag_rasd_integrations.langchain import RefragVectorStore

    tok = tiny_tokenizer()
    vs = RefragVectorStore(
        fake_store(
            client=client,
            tokenizer=tok,
            chunk_encoder=CountingChunkEncoder(tok, k=4),
            embedder=BagOfWordsEmbedder(),
        )
    )
    rm = InMemoryRecordManager("refrag/lc-index")
    rm.create_schema()
    docs = [
        Document("Paris is in France.", metadata={"source": "fr"}),
        Document("Lyon is in France too.", metadata={"source": "fr"}),
        Document("Rome is in Italy.", metadata={"source": "it"}),
    ]
    kw = {"cleanup": "incremental", "source_id_key": "source", "key_encoder": "sha256"}
    assert index(docs, rm, vs, **kw) == {"num_added": 3, "num_updated": 0, "num_skipped": 0, "num_deleted": 0}
    assert index(docs, rm, vs, **kw)["num_skipped"] == 3
    changed = [Document("Paris is the capital of France.", metadata={"source": "fr"})]
    out = index(changed, rm, vs, **kw)
    assert out["num_added"] == 1 and out["num_deleted"] == 2
    texts = sorted(d.page_content for d in vs.get_by_ids(vs.store.ids()))
    assert texts == ["Paris is the capital of France.", "Rome is in Italy."]
    out = index(changed, rm, vs, cleanup="full", source_id_key="source", key_encoder="sha256")
    assert out["num_deleted"] == 1 and vs.store.count() == 1


def test_a_dropped_collection_leaves_no_metadata_behind(client):
    """Chroma 1.5.9 alone: after ``delete_collection`` a new record picks up a dropped one's list metadata."""
    old = fake_store("old", client=client)
    old.add_texts(["0"], [{"source": "a.txt", "title": ["p"]}])
    old.delete_collection()
    new = fake_store("new", client=client)
    new.add_texts(["0"], [{"source": "a.txt"}])
    ((p, _),) = new.search("0", k=1)
    assert "title" not in p.metadata


def test_put_texts_replaces_the_whole_record(client):
    """Chroma 1.5.9's upsert merges metadata; the frameworks' contract is that an id's record is replaced."""
    store = fake_store(client=client)
    store.put_texts(["Old text."], [{"tags": ["a"], "page": 3}], ["doc-1"])
    store.put_texts(["New text."], [{"page": 4}], ["doc-1"])
    (p,) = store.get_passages(["doc-1"])
    assert p.text == "New text." and p.metadata["page"] == 4 and "tags" not in p.metadata
