"""Checkpoint files: safetensors weights (never pickle) with a json sidecar carrying a sha256.

Shared by the EAGLE draft head and the REFRAG checkpoints. Writes are atomic (temp file + rename), so an
interrupted save never leaves a half-written checkpoint under the real name; reads check the hash and
turn every failure (missing, truncated, replaced, not safetensors, bad json) into a
:class:`~refrag_rasd_core.errors.CheckpointError` that names the file.

Example:
    >>> import tempfile, torch
    >>> p = tempfile.mkdtemp() + "/w.safetensors"
    >>> _ = write_checkpoint({"x": torch.ones(2)}, p, {"format": "demo"})
    >>> meta = read_sidecar(p, "demo", "demo checkpoint")
    >>> read_weights(p, meta["sha256"], "demo checkpoint")["x"].tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checkpoint(state: dict[str, torch.Tensor], path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write ``path`` (.safetensors) and ``path.json`` (``meta`` plus the file's sha256), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp),
              metadata={"format": str(meta.get("format", ""))})
    meta = {**meta, "sha256": sha256_file(tmp)}
    os.replace(tmp, path)
    jtmp = path.with_suffix(".json.tmp")
    jtmp.write_text(json.dumps(meta, indent=2))
    os.replace(jtmp, path.with_suffix(".json"))
    return path


def read_sidecar(path: str | os.PathLike, fmt: str, what: str) -> dict[str, Any]:
    """The json beside ``path``; it must say ``"format": fmt``."""
    jpath = Path(path).with_suffix(".json")
    if not jpath.exists():
        raise CheckpointError(f"{what} {path} has no json sidecar {jpath.name}")
    try:
        meta = json.loads(jpath.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{what} json {jpath} is not valid json: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise CheckpointError(f"{jpath} is not a {fmt} checkpoint description")
    return meta


def read_weights(path: str | os.PathLike, expected_sha: str | None, what: str) -> dict[str, torch.Tensor]:
    """Load safetensors weights after checking the sha256 recorded in the sidecar."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} not found: {path}")
    if expected_sha is not None:
        got = sha256_file(path)
        if got != expected_sha:
            raise CheckpointError(
                f"{what} {path} has sha256 {got[:16]}..., its json says {expected_sha[:16]}...: "
                "the file is corrupt or was replaced; re-download or re-train it"
            )
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated / malformed files
        raise CheckpointError(f"{what} {path} cannot be read as safetensors ({e}); it is truncated or corrupt") from e
