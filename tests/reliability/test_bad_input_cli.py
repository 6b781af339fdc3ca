"""Every option of the ``refrag-rasd`` commands that read or write a collection or load a model, given a bad
value: exit status 2, one ``refrag-rasd: error:`` line (or argparse's usage error), no traceback, and no model
loaded (``Engine.load`` and ``get_engine`` fail the test if called). A test also checks that the table of bad
values names every option of every command, so a new option without a check fails here."""

from __future__ import annotations

import argparse

import pytest
from integration_fakes import fake_store

from refrag_rasd_integrations.cli import build_parser, main

COMMANDS = ("index", "ask", "chat", "delete", "collections", "generate", "bench", "demo", "summarize")

# options whose every value is acceptable (nothing to check), with the reason
FREE = {
    ("generate", "--system"): "any text is a system message",
    ("generate", "--stop"): "any text is a stop string",
    ("ask", "--stop"): "any text is a stop string",
    ("summarize", "--stop"): "any text is a stop string",
    ("bench", "--variant"): "checked (empty), but any other name is fine",
    ("chat", "--stop"): "any text is a stop string",
    ("chat", "--system"): "any text is a system message",
}


def _bad_values(d: dict[str, str]) -> dict[str, list[list[str]]]:
    """command -> argument lists, each with one bad value (paths from ``d``)."""
    model = [
        ["--model", "/no/such/model.gguf"],
        ["--device", "banana"],
        ["--device", "cuda:x"],
        ["--dtype", "int3"],
    ]
    store = [
        ["--collection", "x"],
        ["--collection", "bad name!"],
        ["--chroma-dir", d["file"]],
        ["--chroma-url", "ftp://host/path"],
        ["--port", "0"],
        ["--port", "many"],
        ["--host", "127.0.0.1", "--port", "1"],
    ]
    gen = [
        ["--max-tokens", "0"],
        ["--max-tokens", "x"],
        ["--temperature", "-1"],
        ["--top-p", "2"],
        ["--top-k", "-3"],
        ["--seed", "x"],
        ["--method", "bogus"],
    ]
    data = ["--data", d["jsonl"]]
    return {
        "index": [
            [d["missing"]],
            [d["binary"]],
            [d["bad_jsonl"]],
            [d["list_jsonl"]],
            [d["empty_dir"]],
            [d["text"], "--batch-size", "0"],
            [d["text"], "--passage-tokens", "0"],
            [d["text"], "--passage-tokens", "8"],
            [d["text"], "--passage-tokens", "100000"],
            [d["text"], "--passage-tokens", "x"],
            [d["text"], "--collection", "docs", "--passage-tokens", "64"],
            [d["text"], "--cleanup", "sometimes"],
            [d["text"], "--rebuild=yes"],
            [d["text"], "--no-progress=1"],
            [d["empty_dir"], "--code"],
            [d["missing"], "--code"],
            [d["text"], "--code=yes"],
            [d["text"], "--datastore=1"],
            *[[d["text"], *a] for a in store + model],
        ],
        "ask": [
            [""],
            ["q", "-k", "0"],
            ["q", "--filter", "{source: a}"],
            ["q", "--filter", "[1, 2]"],
            ["q", "--context", "bogus"],
            ["q", "--compare=1"],
            ["q", "--json=1"],
            ["q", "--collection", "never-made"],
            ["q", "--whole-document=1"],
            ["q", "--source", "it"],
            ["q", "--file", d["text"]],
            ["q", "--strategy", "bogus"],
            ["q", "--piece-tokens", "0"],
            ["q", "--whole-document", "--strategy", "sideways"],
            ["q", "--whole-document", "--piece-tokens", "8"],
            ["q", "--whole-document", "--collection", "docs", "--source", "never-indexed"],
            ["q", "--whole-document", "--collection", "never-made"],
            ["q", "--whole-document", "--file", d["missing"]],
            ["q", "--whole-document", "--file", d["binary"]],
            ["q", "--whole-document", "--file", d["text"], "--source", "it"],
            ["q", "--whole-document", "--compare"],
            ["q", "--whole-document", "--filter", "[1]"],
            ["", "--whole-document", "--file", d["text"]],
            *[["q", *a] for a in store + model + gen],
            *[["q", "--whole-document", *a] for a in store + model + gen],
        ],
        "summarize": [
            [],
            [d["missing"]],
            [d["binary"]],
            [d["empty_dir"]],
            [d["bad_jsonl"]],
            [d["text"], "--strategy", "bogus"],
            [d["text"], "--piece-tokens", "0"],
            [d["text"], "--piece-tokens", "x"],
            [d["text"], "--context", "bogus"],
            [d["text"], "--json=1"],
            ["it", "--collection", "never-made"],
            ["never-indexed", "--collection", "docs"],
            *[["it", "--collection", "docs", *a] for a in store],
            *[[d["text"], *a] for a in model + gen],
        ],
        "chat": [
            ["-k", "0"],
            ["--context", "bogus"],
            ["--history", "sometimes"],
            ["--collection", "never-made"],
            *[list(a) for a in store + model + gen],
        ],
        "delete": [
            [],
            ["--collection", "docs", "--source", d["missing"]],
            ["--collection", "never-made", "--source", "a"],
            *[["--source", "a", *a] for a in store],
        ],
        "collections": [
            ["--show", "never-made"],
            ["--drop", "never-made"],
            ["--show", "docs", "--drop", "docs"],
            ["--show", "x"],
            ["--chroma-dir", d["file"]],
            ["--chroma-url", "ftp://host/path"],
            ["--port", "0"],
            ["--host", "127.0.0.1", "--port", "1"],
        ],
        "generate": [[], ["hi", "--raw=1"], ["hi", "--weights", "int8"], *[["hi", *a] for a in model + gen]],
        "bench": [
            [],
            ["--suite", "code"],
            ["--suite", "code", "--source", d["empty_dir"], "--holdout-fraction", "0"],
            ["--suite", "code", "--source", d["empty_dir"]],
            ["--data", d["missing"]],
            ["--data", d["bad_jsonl"]],
            ["--data", d["list_jsonl"]],
            *[
                [*data, *a]
                for a in [
                    ["--suite", "bogus"],
                    ["--category", "nope"],
                    ["--limit", "0"],
                    ["--methods", "vanilla,bogus"],
                    ["--max-new-tokens", "0"],
                    ["--temperature", "-1"],
                    ["--include-train=1"],
                    ["--repeats", "0"],
                    ["--no-calibrate=1"],
                    ["--spec", "{draft: 1}"],
                    ["--spec", '"a string"'],
                    ["--out", d["dir"]],
                    ["--variant", " "],
                    ["--draft-model", "/no/such/draft"],
                    ["--weights", "int8"],
                    ["--k", "0"],
                    ["--expand", "2"],
                    ["--expand", "x"],
                    ["--policy", "bogus"],
                    ["--contexts", "x"],
                    ["--contexts", "0"],
                    ["--suite", "code", "--source", d["missing"]],
                    ["--suite", "code", "--source", d["empty_dir"]],
                    ["--suite", "code", "--source", d["dir"]],
                    ["--holdout-fraction", "1.5"],
                    ["--holdout-fraction", "x"],
                    ["--corpus-source", d["file"]],
                    ["--execute=1"],
                    ["--refrag", "/no/such/refrag.safetensors"],
                    ["--store-dir", d["file"]],
                    ["--top-k", "0"],
                    ["--peers", "bogus"],
                    ["--corpus", d["missing"]],
                    ["--datastore-corpus", d["missing"]],
                    ["--datastore-corpus", d["bad_jsonl"]],
                    ["--datastore-corpus", " , "],
                    ["--datastore-corpus", "store"],
                    ["--suite", "qa", "--datastore-corpus", d["text"]],
                    ["--methods", "vanilla,rasd-corpus"],
                    ["--suite", "qa", "--settings", "bogus"],
                    ["--suite", "chat", "--settings", "cold"],
                    ["--turns", "0"],
                    ["--suite", "long", "--settings", "compressed:3:nope"],
                    ["--min-document-tokens", "-1"],
                    ["--max-document-tokens", "0"],
                    ["--questions-per-document", "0"],
                    ["--method", "bogus"],
                    ["--lengths", "x"],
                    ["--lengths", "8"],
                    ["--map-reduce-up-to", "0"],
                    *model,
                ]
            ],
        ],
        "demo": [
            ["--questions", "0"],
            ["--max-tokens", "0"],
            ["--llamaindex=1"],
            ["--collection", "x"],
            ["--chroma-dir", d["file"]],
            *model,
        ],
    }


@pytest.fixture
def paths(tmp_path, monkeypatch):
    monkeypatch.setenv("REFRAG_RASD_CHROMA_DIR", str(tmp_path / "chroma"))
    monkeypatch.delenv("REFRAG_RASD_CHROMA_URL", raising=False)
    (tmp_path / "text.txt").write_text("Paris is the capital of France.\n")
    (tmp_path / "binary.txt").write_bytes(b"\x7fELF\x00\x01\x02" * 100)
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": "broken\n')
    (tmp_path / "list.jsonl").write_text('{"text": "fine"}\n[1, 2, 3]\n')
    (tmp_path / "data.jsonl").write_text('{"question_id": 1, "category": "rag", "turns": ["Why?"]}\n')
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    fake_store("docs", path=tmp_path / "chroma", passage_tokens=256).add_texts(
        ["Rome is in Italy."], [{"source": "it"}]
    )
    return {
        "missing": str(tmp_path / "missing.txt"),
        "binary": str(tmp_path / "binary.txt"),
        "bad_jsonl": str(tmp_path / "bad.jsonl"),
        "list_jsonl": str(tmp_path / "list.jsonl"),
        "jsonl": str(tmp_path / "data.jsonl"),
        "text": str(tmp_path / "text.txt"),
        "file": str(tmp_path / "a_file"),
        "dir": str(tmp_path),
        "empty_dir": str(tmp_path / "empty"),
    }


@pytest.fixture
def no_model(monkeypatch):
    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded for a bad command line")

    monkeypatch.setattr("refrag_rasd_core.engine.Engine.load", loaded)
    monkeypatch.setattr("refrag_rasd_integrations.engines.get_engine", loaded)


def _cases() -> list[tuple[str, int]]:
    fake = {
        k: k
        for k in ("missing", "binary", "bad_jsonl", "list_jsonl", "jsonl", "text", "file", "dir", "empty_dir")
    }
    return [(name, i) for name, cases in _bad_values(fake).items() for i in range(len(cases))]


@pytest.mark.parametrize(("name", "i"), _cases())
def test_bad_value_is_one_line_error_before_any_model(name, i, paths, no_model, capsys):
    argv = [name, *_bad_values(paths)[name][i]]
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's usage error
        rc = exc.code
        err = capsys.readouterr().err
        assert "usage: refrag-rasd" in err and "error:" in err, (argv, err)
    else:
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("refrag-rasd: error: ")]
        assert len(errors) == 1, (argv, err)
        others = [line for line in err.splitlines() if not line.startswith(("refrag-rasd: ", "docs: "))]
        assert not others, (argv, err)  # only our one-line notes (a skipped file; what a delete did)
    assert rc == 2, (argv, err)
    assert "Traceback" not in err, (argv, err)


def _options(name: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[name]
    return {
        a.option_strings[-1] if a.option_strings[-1].startswith("--") else a.option_strings[0]
        for a in parser._actions
        if a.option_strings and a.dest != "help"
    }


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_a_bad_value_checked(name):
    fake = {
        k: k
        for k in ("missing", "binary", "bad_jsonl", "list_jsonl", "jsonl", "text", "file", "dir", "empty_dir")
    }
    given = {tok.split("=")[0] for argv in _bad_values(fake)[name] for tok in argv if tok.startswith("-")}
    aliases = {"--max-new-tokens": "--max-tokens", "--top-k-passages": "-k"}
    given |= {long for long, short in aliases.items() if short in given}
    missing = {o for o in _options(name) - given if (name, o) not in FREE}
    assert not missing, f"{name}: no bad value tried for {sorted(missing)}"
