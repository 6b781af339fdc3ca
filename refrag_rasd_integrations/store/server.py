"""Run Chroma's own server (``chroma run``, installed with the ``chromadb`` wheel) as a child process: for tests,
benchmarks and a one-machine setup that wants a shared store without starting it by hand.

Example:
    >>> from refrag_rasd_integrations.store import ChromaServer, RefragChromaStore
    >>> with ChromaServer("/tmp/chroma-data") as server:          # doctest: +SKIP
    ...     store = RefragChromaStore("docs", url=server.url)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from ..errors import StoreError


def chroma_executable() -> str | None:
    """The ``chroma`` command next to this Python (a virtual environment) or on ``PATH``."""
    exe = Path(sys.executable).parent / "chroma"
    return str(exe) if exe.exists() else shutil.which("chroma")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ChromaServer:
    """A ``chroma run --path PATH --host HOST --port PORT`` child process, up once :meth:`start` returns."""

    def __init__(self, path: str | os.PathLike, *, host: str = "127.0.0.1", port: int | None = None,
                 log: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.host = host
        self.port = port or free_port(host)
        self.log = Path(log) if log else None
        self.proc: subprocess.Popen | None = None
        self._log_fh: IO[Any] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> ChromaServer:
        """Start the server and wait until it accepts connections (raises :class:`StoreError` otherwise)."""
        exe = chroma_executable()
        if not exe:
            raise StoreError("the `chroma` server command is not installed (it comes with the chromadb wheel)")
        self.path.mkdir(parents=True, exist_ok=True)
        out: Any = subprocess.DEVNULL
        if self.log is not None:
            self._log_fh = out = self.log.open("w")
        self.proc = subprocess.Popen([exe, "run", "--path", str(self.path), "--host", self.host, "--port",
                                      str(self.port)], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    tail = self.log.read_text()[-2000:] if self.log else ""
                    self.stop()
                    raise StoreError(f"chroma run exited with status {self.proc.returncode}: {tail}") from None
                time.sleep(0.2)
        self.stop()
        raise StoreError(f"chroma run did not accept connections on {self.url} within {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def __enter__(self) -> ChromaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["ChromaServer", "chroma_executable", "free_port"]
