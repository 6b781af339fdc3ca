"""Process memory that stays flat across requests: bounded kernel caches and freed memory handed back.

Two things made a serving process's RSS grow with the number of requests it had answered (measured with
``python -m refrag_rasd_integrations.cli.bench.chat_load``, docs/scaling.md), neither of them the engine's
own caches:

* **oneDNN keeps a compiled kernel per input shape**, in two LRU caches of 1,024 entries each (ideep's,
  ``LRU_CACHE_CAPACITY``, and oneDNN's, ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``). Every prompt length is a new
  shape for the prefill's linears, so a server fills them with kernels it never uses again (hundreds of MB).
  :func:`bound_kernel_caches` sets both to :data:`KERNEL_CACHE_CAPACITY` unless the user set them: enough for
  every decoding step's shape (a few row buckets per linear), measured no slower. It runs when
  ``refrag_rasd_core`` is imported and takes effect when no oneDNN kernel ran before in the process.
* **glibc keeps freed memory** of mid-sized allocations (a request's activations and KV) in its arenas;
  :func:`trim` hands it back (``malloc_trim``; a few ms), which the server does after each request.

Example:
    >>> import os
    >>> int(os.environ["LRU_CACHE_CAPACITY"]) > 0 and trim() in (True, False)
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from typing import Any

__all__ = ["KERNEL_CACHE_CAPACITY", "bound_kernel_caches", "trim"]

KERNEL_CACHE_CAPACITY = 64
"""Kernels kept per oneDNN cache (the libraries' default: 1,024)."""

_CACHE_VARIABLES = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")


def bound_kernel_caches(capacity: int = KERNEL_CACHE_CAPACITY) -> None:
    """Bound oneDNN's kernel caches to ``capacity`` entries, unless the environment already sets them."""
    for name in _CACHE_VARIABLES:
        os.environ.setdefault(name, str(int(capacity)))


@functools.cache
def _malloc_trim() -> Any:
    try:
        name = ctypes.util.find_library("c")
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def trim() -> bool:
    """Hand the C heap's free memory back to the system (glibc's ``malloc_trim``); ``False`` where there is
    no glibc."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
