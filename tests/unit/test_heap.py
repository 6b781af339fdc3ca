"""Process memory: oneDNN's kernel caches are bounded unless the user set them, freed memory is handed back
after each served request."""

from __future__ import annotations

import ctypes
import os
import platform

import pytest

from refrag_rasd_core import heap
from refrag_rasd_integrations.serve import gate as gate_module


def test_importing_the_engine_bounds_the_kernel_caches():
    import refrag_rasd_core  # noqa: F401  (imported: the bound is set)

    for name in ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY"):
        assert int(os.environ[name]) > 0


def test_a_users_own_setting_is_kept(monkeypatch):
    monkeypatch.delenv("LRU_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "7")
    heap.bound_kernel_caches()
    assert os.environ["LRU_CACHE_CAPACITY"] == str(heap.KERNEL_CACHE_CAPACITY)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "7"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_hands_freed_heap_memory_back():
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(64 << 10) for _ in range(512)]  # 32 MB of heap (below the mmap threshold)
    for b in blocks:
        libc.free(b)
    assert heap.trim() is True  # there was free memory to hand back
    assert heap.trim() in (True, False)


def test_the_server_trims_after_each_request(monkeypatch):
    calls = []
    monkeypatch.setattr(gate_module, "trim", lambda: calls.append(1) or True)
    g, budget = gate_module.EngineGate(slots=1), gate_module.Budget(5)
    for _ in range(3):
        g.acquire(budget)
        g.release()
    assert len(calls) == 3 and not g.busy
