"""Code indexing: Python files split at function and class boundaries by LangChain's splitter, path / symbol /
lines in the metadata, on a file of Python's own standard library; ``store.add_code`` and ``refrag-rasd index
--code --datastore`` end to end on the fake store (a real embedded Chroma)."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
from integration_fakes import fake_store

from refrag_rasd_core.errors import InvalidInputError
from refrag_rasd_integrations.cli import main
from refrag_rasd_integrations.store.code_documents import python_symbols, split_code

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SAMPLE = '''"""A module."""
import os


@decorated
def top(a, b):
    """Add."""
    return a + b


class Box:
    size = 3

    def open(self):
        return os.getcwd()

    async def close(self):
        return None
'''


def test_symbols_and_lines_of_a_small_module():
    assert python_symbols(SAMPLE) == [(5, 8, "top"), (11, 18, "Box"), (14, 15, "Box.open"), (17, 18, "Box.close")]
    chunks = split_code(SAMPLE, "python", len, 60)
    assert [(c.start_line, c.symbol) for c in chunks][:2] == [(1, ""), (6, "top")]  # after "\ndef "
    assert any(c.symbol == "Box.close" and c.text.lstrip().startswith("async def close") for c in chunks)
    for c in chunks:  # the lines recorded are the lines the text comes from
        assert c.text == "\n".join(SAMPLE.splitlines()[c.start_line - 1:c.end_line])
    with pytest.raises(InvalidInputError, match="unknown code language"):
        split_code(SAMPLE, "cobolt", len, 60)
    assert python_symbols("def broken(:\n") == []


def test_a_stdlib_file_loses_no_code_and_keeps_the_bound():
    text = (STDLIB / "json" / "decoder.py").read_text()
    count = lambda t: len(t.split())  # noqa: E731 - a stand-in tokenizer: words
    chunks = split_code(text, "python", count, 120)
    assert len(chunks) > 5
    kept = [ln for c in chunks for ln in c.text.splitlines() if ln.strip()]
    assert kept == [ln for ln in text.splitlines() if ln.strip()]  # every code line, in order, once
    assert all(count(c.text) <= 120 or "\n" not in c.text.strip() for c in chunks)
    names = {c.symbol for c in chunks}
    assert {"py_scanstring", "JSONDecoder.decode"} <= names or "JSONDecoder" in names
    by_start = {c.start_line: c.symbol for c in chunks}
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith("def py_scanstring"))
    assert by_start.get(line) == "py_scanstring"


def test_store_add_code_and_cli_index_code_with_datastore(tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text(SAMPLE)
    (src / "README.md").write_text("Not code.")
    (src / ".hidden").mkdir()
    (src / ".hidden" / "skip.py").write_text("x = 1\n")
    store = fake_store("code", path=tmp_path / "db", passage_tokens=32)
    report = store.add_code([src])
    assert report.added >= 3
    metas = store.collection().get(include=["metadatas"])["metadatas"]
    assert {m["path"] for m in metas} == {"pkg/mod.py"} and {m["language"] for m in metas} == {"python"}
    assert {"top", "Box.open"} <= {m["symbol"] for m in metas}
    assert all(m["source"] == str((src / "pkg" / "mod.py").resolve()) and m["start_line"] >= 1 for m in metas)

    monkeypatch.setattr("refrag_rasd_integrations.engines.get_engine", lambda *a, **k: None)
    monkeypatch.setattr("refrag_rasd_integrations.cli.store_commands.open_store",
                        lambda args, engine=None: fake_store(args.collection, path=tmp_path / "cli-db",
                                                             passage_tokens=32))
    assert main(["index", str(src), "--collection", "code", "--code", "--datastore", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "corpus datastore" in err and "bytes/token" in err
    manifest = tmp_path / "cli-db" / "refrag-datastores" / "code" / "manifest.json"
    assert len(json.loads(manifest.read_text())["segments"]) == 1
