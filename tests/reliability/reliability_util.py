"""Helpers shared by the reliability tests: resident memory of this process."""

from __future__ import annotations

import os


def rss_mb() -> float:
    """Resident set size of this process in MiB (psutil when installed, else /proc/self/statm)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
