"""Benchmark and training data sets, read at run time from where they are kept (never shipped in the package).

The Spec-Bench, NQ-open and SQuAD files come from other public repositories, so the project does not copy
them. Scripts take the file's path as an argument; without one they look for ``../shared/data/<file>``
(relative to the working directory, then to the repository checkout) and, when it is not there, stop with a
message that says what to pass.

Example:
    >>> from refrag_rasd_core.shared_data import resolve_data_path
    >>> resolve_data_path(None, "no-such-file.jsonl", what="Spec-Bench questions")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    refrag_rasd_core.errors.InvalidInputError: no Spec-Bench questions file given, and the default
    ../shared/data/no-such-file.jsonl is not on this machine: ...
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import InvalidInputError

__all__ = ["SPEC_BENCH_DEV", "default_data_path", "file_sha256", "resolve_data_path"]

SPEC_BENCH_DEV = "spec_bench_dev.jsonl"
SHARED_DATA = Path("..") / "shared" / "data"
_REPO = Path(__file__).resolve().parents[2]  # core/refrag_rasd_core/ -> the repository, in a checkout


def default_data_path(name: str) -> Path | None:
    """``../shared/data/<name>`` from the working directory, or beside the repository checkout, if it exists."""
    for base in (SHARED_DATA, _REPO.parent / "shared" / "data"):
        if (base / name).is_file():
            return base / name
    return None


def resolve_data_path(path: str | Path | None, name: str, *, what: str = "data", flag: str = "--data") -> Path:
    """``path`` (which must exist) or, when it is ``None``, the default ``../shared/data/<name>``; raises
    :class:`InvalidInputError` with what to pass when neither is there."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InvalidInputError(f"{what} file not found: {p}")
        return p
    found = default_data_path(name)
    if found is None:
        raise InvalidInputError(
            f"no {what} file given, and the default {SHARED_DATA / name} is not on this machine: pass {flag} PATH "
            f"(a {name} file). The project ships no third-party data sets; they are read from where you keep them.")
    return found


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (recorded with a checkpoint to name the exact data it was trained on)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
