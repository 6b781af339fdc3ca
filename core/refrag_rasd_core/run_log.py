"""A training run's log: each line timestamped, printed and appended to ``<folder>/train.log``.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> log = run_logger(d)
    >>> log("step 1 loss 2.0")                                 # doctest: +ELLIPSIS
    [...] step 1 loss 2.0
    >>> "loss 2.0" in (d / "train.log").read_text()
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def run_logger(folder: str | Path) -> Callable[[str], None]:
    """A ``log(message)`` function for a run whose outputs live in ``folder`` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with open(folder / "train.log", "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    return log
