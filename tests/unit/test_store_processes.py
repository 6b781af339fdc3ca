"""Indexing killed mid-way and resumed leaves the collection complete with no duplicates; the store against a
real ``chroma run`` server on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from integration_fakes import CORPUS, fake_store

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent

INDEXER = r"""
import sys, time
from integration_fakes import CountingChunkEncoder, fake_store
from tiny import tiny_tokenizer

class SlowEncoder(CountingChunkEncoder):
    def encode_passages(self, ids, **kw):
        time.sleep(0.3)
        return super().encode_passages(ids, **kw)

docs = [(f"Document number {i} talks about topic {i % 7} in some detail. " * 3, {"source": f"d{i}"})
        for i in range(40)]
store = fake_store(path=sys.argv[1], chunk_encoder=SlowEncoder(tiny_tokenizer(), k=4))
store.add_texts([t for t, _ in docs], [m for _, m in docs], batch_size=4,
                on_batch=lambda done, total: print(f"BATCH {done} {total}", flush=True))
print("DONE", flush=True)
"""


def _docs():
    return [(f"Document number {i} talks about topic {i % 7} in some detail. " * 3, {"source": f"d{i}"})
            for i in range(40)]


def test_killed_indexing_resumes_without_gaps_or_duplicates(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", INDEXER, str(tmp_path / "db")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    batches = 0
    try:
        for line in proc.stdout:
            if line.startswith("BATCH"):
                batches += 1
                total = int(line.split()[2])
                if batches == 3:
                    time.sleep(0.15)  # land the kill inside the next batch's encoding
                    proc.send_signal(signal.SIGKILL)
                    break
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert batches == 3, proc.stderr.read()
    assert proc.returncode == -signal.SIGKILL

    store = fake_store(path=tmp_path / "db")
    partial = store.count()
    assert 12 <= partial < total
    docs = _docs()
    report = store.add_texts([t for t, _ in docs], [m for _, m in docs], batch_size=4)
    assert report.skipped == partial and report.added == total - partial
    ids = store.collection().get(include=[])["ids"]
    assert len(ids) == len(set(ids)) == total == store.count()
    assert sorted(ids) == sorted(report.ids)


def test_server_mode_end_to_end(chroma_server):
    import numpy as np

    store = fake_store("served-docs", url=chroma_server.url)
    report = store.add_texts([t for t, _ in CORPUS], [m for _, m in CORPUS], batch_size=2)
    assert report.added == store.count() > 0
    (p, score), = store.search("Eiffel Tower Paris", k=1)
    assert "Paris" in p.text or "Eiffel" in p.text
    assert p.token_ids == store.tokenizer(p.text, add_special_tokens=False)["input_ids"]
    assert p.chunk_embeddings.dtype == np.float16
    again = fake_store("served-docs", url=chroma_server.url)
    assert again.add_texts([t for t, _ in CORPUS], [m for _, m in CORPUS]).added == 0
    with pytest.raises(Exception, match="k: stored 4"):
        fake_store("served-docs", url=chroma_server.url, k=8).count()
    retriever = store.as_retriever(k=2)
    docs = retriever.invoke("capital of Germany Berlin")
    assert len(docs) == 2 and retriever.passages(docs)[0].chunk_embeddings is not None
