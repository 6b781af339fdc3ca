"""``refrag-rasd index`` / ``delete`` / ``collections`` end to end on the fake store (a real embedded Chroma):
a folder indexed by a relative then an absolute path, a changed file, another ``--passage-tokens`` (refused
before the model loads, then ``--rebuild``), a binary file, deleting a source, listing, showing and dropping.
"""

from __future__ import annotations

from collections import Counter

import pytest
from integration_fakes import fake_store

from refrag_rasd_integrations.cli import main

LONG = " ".join(f"Line {i} of the manual explains setting number {i}." for i in range(30))


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """``main`` with the store commands on fake stores in ``tmp_path/chroma``; ``loads`` counts engines."""
    loads = []
    monkeypatch.setenv("REFRAG_RASD_CHROMA_DIR", str(tmp_path / "chroma"))
    monkeypatch.setattr("refrag_rasd_integrations.engines.get_engine", lambda *a, **k: loads.append(a))
    monkeypatch.setattr(
        "refrag_rasd_integrations.cli.store_commands.open_store",
        lambda args, engine=None: fake_store(
            args.collection, path=tmp_path / "chroma", passage_tokens=getattr(args, "passage_tokens", None)
        ),
    )
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "guide.md").write_text(LONG)
    (docs / "notes.txt").write_text("Short notes about the setup.")
    (docs / "logo.txt").write_bytes(b"GIF89a\x00\x01" * 40)
    monkeypatch.chdir(tmp_path)
    return main, loads, docs


def _passages(tmp_path):
    res = (
        fake_store("docs", path=tmp_path / "chroma", passage_tokens=None)
        .collection()
        .get(include=["documents", "metadatas"])
    )
    return Counter((m["source"], t) for t, m in zip(res["documents"], res["metadatas"], strict=True))


def test_index_reindex_resize_delete_collections(cli, tmp_path, capsys):
    run, loads, docs = cli
    assert run(["index", "docs", "--collection", "docs", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "logo.txt" in err and "1 binary files skipped" in err
    first = _passages(tmp_path)
    assert {s for s, _ in first} == {str((docs / n).resolve()) for n in ("guide.md", "notes.txt")}

    assert (
        run(["index", str(docs.resolve()), "--collection", "docs", "--no-progress"]) == 0
    )  # moved: one source
    assert "(0 added" in capsys.readouterr().err and _passages(tmp_path) == first

    (docs / "notes.txt").write_text("Rewritten notes.")
    assert run(["index", "docs", "--collection", "docs", "--no-progress"]) == 0
    assert "1 stale removed" in capsys.readouterr().err
    now = _passages(tmp_path)
    assert (str((docs / "notes.txt").resolve()), "Rewritten notes.") in now and sum(now.values()) == len(now)
    assert not [t for _, t in now if "Short notes" in t]

    n_loads = len(loads)
    assert run(["index", "docs", "--collection", "docs", "--passage-tokens", "64"]) == 2
    err = capsys.readouterr().err
    assert "passage_tokens: stored 256, asked 64" in err and "--rebuild" in err and len(loads) == n_loads
    assert (
        run(["index", "docs", "--collection", "docs", "--passage-tokens", "64", "--rebuild", "--no-progress"])
        == 0
    )
    capsys.readouterr()
    small = fake_store("docs", path=tmp_path / "chroma", passage_tokens=64)
    resized = _passages(tmp_path)
    assert resized == Counter(
        (str(p.resolve()), piece)
        for p in (docs / "guide.md", docs / "notes.txt")
        for piece in small.split(p.read_text())
    )
    assert all(len(small.tokenizer(t)["input_ids"]) <= 64 for _, t in resized)

    assert run(["collections"]) == 0
    out = capsys.readouterr().out
    assert f"docs: {sum(resized.values())} passages; passage tokens 64, k 4, encoder fake-hash" in out

    assert run(["delete", "--collection", "docs", "--source", "docs/guide.md"]) == 0
    capsys.readouterr()
    assert {s for s, _ in _passages(tmp_path)} == {str((docs / "notes.txt").resolve())}
    assert run(["collections", "--show", "docs"]) == 0
    out = capsys.readouterr().out
    assert "passage_tokens: 64" in out and str((docs / "notes.txt").resolve()) in out

    assert run(["delete", "--collection", "docs", "--source", "docs"]) == 0  # a folder: all under it
    capsys.readouterr()
    assert run(["collections", "--drop", "docs"]) == 0 and run(["collections"]) == 0
    assert "docs:" not in capsys.readouterr().out


def test_cleanup_full_drops_removed_files(cli, tmp_path, capsys):
    run, _, docs = cli
    assert run(["index", "docs", "--collection", "docs", "--no-progress"]) == 0
    (docs / "guide.md").unlink()
    assert run(["index", "docs", "--collection", "docs", "--no-progress", "--cleanup", "incremental"]) == 0
    assert len({s for s, _ in _passages(tmp_path)}) == 2  # incremental: a file not given stays
    assert run(["index", "docs", "--collection", "docs", "--no-progress", "--cleanup", "full"]) == 0
    assert {s for s, _ in _passages(tmp_path)} == {str((docs / "notes.txt").resolve())}
