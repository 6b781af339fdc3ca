"""Every documented default is the code's: the settings table in docs/engine.md against
:class:`GenerationConfig`, and every layer that takes settings (the framework classes, the server, the CLI)
against the same config, so a default lives in one place."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from refrag_rasd_core.generation_config import FIELDS, GenerationConfig
from refrag_rasd_core.rasd.spec_options import SpecOptions
from refrag_rasd_integrations.cli import build_parser
from refrag_rasd_integrations.serve.chat_service import ServeConfig
from refrag_rasd_integrations.settings import GENERATION_FIELDS, ModelSettings

ROOT = Path(__file__).resolve().parents[2]


def _settings_table() -> dict[str, str]:
    text = (ROOT / "docs" / "engine.md").read_text()
    section = text[text.index("## Settings (`GenerationConfig`)"):]
    rows = {}
    for line in section.splitlines()[1:]:
        if line.startswith("## "):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in ("field", "---"):
            continue
        name = re.match(r"`(\w+)`", cells[0])
        if name:
            rows[name.group(1)] = cells[1]
    return rows


def _value(cell: str) -> object:
    cell = cell.strip("`")
    if cell == "SpecOptions()":
        return SpecOptions()
    return ast.literal_eval(cell)


def test_the_engine_settings_table_is_the_configs_defaults():
    rows = _settings_table()
    assert set(rows) == set(FIELDS), f"documented {sorted(rows)} vs the config's {sorted(FIELDS)}"
    default = GenerationConfig()
    for name, cell in rows.items():
        assert _value(cell) == getattr(default, name), f"docs/engine.md says {name} = {cell}"


def test_every_layer_defaults_to_the_config():
    assert ModelSettings().generation_config() == GenerationConfig()  # the framework classes
    assert all(getattr(ModelSettings(), f) is None for f in GENERATION_FIELDS)  # None: "the config's default"
    serve = ServeConfig()
    assert (serve.method, serve.context, serve.max_tokens) == (
        GenerationConfig().method, GenerationConfig().context, GenerationConfig().max_tokens)
    for command in ("generate", "ask"):
        args = build_parser().parse_args([command, "a question"])
        assert all(getattr(args, f, None) is None for f in ("max_tokens", "method", "temperature", "top_p",
                                                             "top_k", "context")), command


def test_the_readme_and_docstrings_say_auto_is_plain_rag_by_default():
    """``context="auto"`` is plain RAG with the shipped checkpoint: no page may say it compresses."""
    from refrag_rasd_integrations.langchain import ChatRefragRasd

    doc = ChatRefragRasd.__doc__ or ""
    assert "plain RAG" in doc and "compressed`` when passages come along" not in doc
    cli = (ROOT / "docs" / "cli.md").read_text()
    assert "`--context auto` compresses" not in cli
    cookbook = (ROOT / "cookbook" / "README.md").read_text()
    assert "Until the REFRAG checkpoint for the default model ships" not in cookbook
