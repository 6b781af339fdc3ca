"""Small deterministic stand-ins for the integrations' unit tests: a chunk encoder that counts its calls, a
bag-of-words retrieval embedder, and a store built on them over the tiny byte-level tokenizer (no model
loads, no hub)."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np

from tiny import tiny_tokenizer


class CountingChunkEncoder:
    """Chunk vectors from a hash of each k-token chunk; ``calls`` counts :meth:`encode_passages` calls."""

    def __init__(self, tokenizer: Any, k: int = 4, dim: int = 8) -> None:
        self.decoder_tokenizer = tokenizer
        self.k = k
        self.dim = dim
        self.calls = 0
        self.encoded_passages = 0

    @property
    def signature(self) -> dict[str, Any]:
        return {"encoder": "fake-hash", "encoder_dim": self.dim, "pooling": "mean", "k": self.k,
                "tokenizer": f"tiny-{len(self.decoder_tokenizer)}", "dtype": "float16", "layout": 1}

    def encode_passages(self, token_id_lists, *, batch_size: int = 64, progress: bool = False):
        self.calls += 1
        self.encoded_passages += len(token_id_lists)
        out = []
        for ids in token_id_lists:
            rows = []
            for s in range(0, len(ids), self.k):
                seed = int(hashlib.sha256(str(ids[s:s + self.k]).encode()).hexdigest()[:8], 16)
                rows.append(np.random.default_rng(seed).standard_normal(self.dim))
            out.append(np.asarray(rows, dtype=np.float16).reshape(len(rows), self.dim))
        return out


class BagOfWordsEmbedder:
    """Hashed bag-of-words vectors (normalized): texts sharing words are close."""

    name = "fake-bow"

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.calls = 0

    def encode(self, texts, normalize_embeddings: bool = True, **_: Any) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"\w+", t.lower()):
                out[i, int(hashlib.md5(w.encode()).hexdigest()[:6], 16) % self.dim] += 1.0
            out[i, 0] += 1e-3
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def fake_store(collection: str = "fake-docs", *, path: Any = None, client: Any = None, k: int = 4,
               passage_tokens: int = 48, **kwargs: Any):
    from refrag_rasd_integrations.store import RefragChromaStore

    tok = kwargs.pop("tokenizer", None) or tiny_tokenizer()
    kwargs.setdefault("chunk_encoder", CountingChunkEncoder(tok, k=k))
    kwargs.setdefault("embedder", BagOfWordsEmbedder())
    return RefragChromaStore(collection, path=path, client=client, tokenizer=tok, passage_tokens=passage_tokens,
                             **kwargs)


CORPUS = [
    ("Paris is the capital of France. It is known for the Eiffel Tower and the Louvre museum.", {"source": "fr"}),
    ("Berlin is the capital of Germany. The Brandenburg Gate stands in its centre.", {"source": "de"}),
    ("Madrid is the capital of Spain. The Prado museum holds paintings by Velazquez.", {"source": "es"}),
    ("Rome is the capital of Italy. The Colosseum is an ancient amphitheatre there.", {"source": "it"}),
    ("Photosynthesis turns light, water and carbon dioxide into sugar and oxygen in plants.",
     {"source": "bio", "topic": "science"}),
]
