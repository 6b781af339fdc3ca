"""Checks of command-line values that run before any model loads: a bad value is one
``refrag-rasd: error: ...`` line (exit status 2) at once, not a traceback after 10-25 s of loading.

Each check raises :class:`~refrag_rasd_core.errors.InvalidInputError` naming the option and the value;
:func:`~refrag_rasd_integrations.cli.main` prints it as one line.

Example:
    >>> json_option('{"source": "a.txt"}', "--filter")
    {'source': 'a.txt'}
    >>> json_option("[1, 2]", "--filter")
    Traceback (most recent call last):
    ...
    refrag_rasd_core.errors.InvalidInputError: --filter must be a JSON object ({...}), got a JSON list: ...
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from refrag_rasd_core.errors import InvalidInputError

__all__ = ["at_least", "check_model_args", "check_store_args", "existing_file", "json_option", "jsonl_file",
           "number_list"]

_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]$")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_DTYPES = ("auto", "float32", "fp32", "float16", "fp16", "bfloat16", "bf16")


def json_option(value: str | None, option: str) -> dict[str, Any] | None:
    """The JSON object an option holds (``None`` when not given); not JSON, or not an object, is an error."""
    if value is None:
        return None
    try:
        out = json.loads(value)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{option} is not valid JSON ({exc.msg}, column {exc.colno}): {value!r}"
                                ) from exc
    if not isinstance(out, dict):
        raise InvalidInputError(f"{option} must be a JSON object ({{...}}), got a JSON {type(out).__name__}: "
                                f"{value!r}")
    return out


def at_least(value: int | float | None, option: str, low: int | float) -> None:
    """``value`` (when given) must be >= ``low``."""
    if value is not None and value < low:
        raise InvalidInputError(f"{option} must be at least {low}, got {value}")


def existing_file(path: str | None, option: str) -> Path | None:
    """``path`` (when given) must be a readable file."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.exists():
        raise InvalidInputError(f"{option}: file not found: {path}")
    if not p.is_file():
        raise InvalidInputError(f"{option}: not a file: {path}")
    try:
        with p.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise InvalidInputError(f"{option}: cannot read {path}: {exc.strerror or exc}") from exc
    return p


def jsonl_file(path: str | None, option: str) -> None:
    """``path`` (when given) must be a readable ``.jsonl`` file whose every line is a JSON object (the error
    names the file and the line)."""
    from ..store import jsonl_objects

    found = existing_file(path, option)
    if found is not None:
        for _ in jsonl_objects(found):
            pass


def number_list(value: str, option: str, kind: type = int, low: float = 0, high: float | None = None
                ) -> list[Any]:
    """A comma-separated list of numbers, each in [``low``, ``high``]."""
    out = []
    for part in (x.strip() for x in value.split(",")):
        if not part:
            continue
        try:
            x = kind(part)
        except ValueError as exc:
            raise InvalidInputError(f"{option}: {part!r} is not a {kind.__name__} (in {value!r})") from exc
        if x < low or (high is not None and x > high):
            top = "inf" if high is None else high
            raise InvalidInputError(f"{option}: {part} is out of range [{low}, {top}]")
        out.append(x)
    if not out:
        raise InvalidInputError(f"{option} is empty")
    return out


def check_model_args(args: argparse.Namespace, model_option: str = "--model") -> None:
    """``--model`` (a local path must exist; a hub id is checked when it loads), ``--device``, ``--dtype``."""
    model = str(getattr(args, "model", None) or "")
    local = model.startswith(("/", ".", "~")) or model.endswith(".gguf")
    if local and not Path(model).expanduser().exists():
        raise InvalidInputError(f"{model_option}: no such file or folder: {model}")
    device = getattr(args, "device", None)
    if device is not None and not _DEVICE.match(str(device)):
        raise InvalidInputError(f"--device must be auto, cpu, mps, cuda or cuda:N, got {device!r}")
    if device is not None and device.startswith("cuda"):
        from refrag_rasd_core.models import resolve_device

        resolve_device(device)  # CUDA missing: said now, not after loading
    dtype = getattr(args, "dtype", None)
    if dtype is not None and dtype not in _DTYPES:
        raise InvalidInputError(f"--dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")


def check_store_args(args: argparse.Namespace, collection_option: str = "--collection") -> None:
    """``--collection`` (Chroma's names: 3-512 of letters, digits, ``.``, ``_``, ``-``, starting and ending
    with a letter or digit), ``--chroma-dir`` (a folder, or nothing yet), ``--chroma-url``, ``--port``."""
    from ..store import parse_chroma_url

    name = getattr(args, "collection", None)
    if name is not None and not _COLLECTION_NAME.match(name):
        raise InvalidInputError(f"{collection_option} {name!r} is not a valid Chroma collection name "
                                "(3-512 letters, digits, '.', '_' or '-', starting and ending with a "
                                "letter or digit)")
    folder = getattr(args, "chroma_dir", None)
    if folder is not None and Path(folder).expanduser().exists() and not Path(folder).expanduser().is_dir():
        raise InvalidInputError(f"--chroma-dir: not a folder: {folder}")
    if getattr(args, "chroma_url", None):
        parse_chroma_url(args.chroma_url)
    port = getattr(args, "port", None)
    if port is not None and not 1 <= port <= 65535:
        raise InvalidInputError(f"--port must be between 1 and 65535, got {port}")
