"""The retrieval embedder the store uses by default: one sentence-transformers model per name, shared by the
process, loaded offline on first use.

Example:
    >>> from refrag_rasd_integrations.store.embedder import default_embedder
    >>> emb = default_embedder()                                        # doctest: +REAL_MODEL
    >>> emb.encode(["Paris"], normalize_embeddings=True).shape          # doctest: +REAL_MODEL
    (1, 384)
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["DEFAULT_EMBEDDER", "default_embedder"]

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
"""The name of the default retrieval embedder (recorded in a collection's metadata)."""

_EMBEDDERS: dict[str, Any] = {}
_EMBEDDER_LOCK = threading.Lock()


def default_embedder(name: str | None = None) -> Any:
    """The shared sentence-transformers retrieval embedder (``None`` = all-MiniLM-L6-v2, offline)."""
    from refrag_rasd_core.models import load_encoder

    key = name or DEFAULT_EMBEDDER
    with _EMBEDDER_LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = load_encoder(name, device="cpu")
        return _EMBEDDERS[key]
