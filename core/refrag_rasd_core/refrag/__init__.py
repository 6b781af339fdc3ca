"""REFRAG: retrieved passages enter the decoder as projected chunk embeddings (one position per k tokens).

* :mod:`.chunking`   k-token chunks of the decoder's tokens;
* :mod:`.encoder`    :class:`ChunkEncoder`, one vector per chunk (what a store keeps, float16);
* :mod:`.projector`  :class:`ChunkProjector`, encoder space -> decoder embedding space;
* :mod:`.policy`     which chunks stay raw tokens (none / random / similarity / perplexity / rl);
* :mod:`.context`    the prompt layout and the mixed (compressed + raw) prefill input;
* :mod:`.checkpoint` trained parts (:class:`RefragModel`) on disk;
The training pipeline (``refrag-rasd train-refrag``) is :mod:`refrag_rasd_core.training.refrag`.

The engine composes these: ``engine.generate(question, passages=..., context="compressed")``.

Example:
    >>> from refrag_rasd_core.refrag import Passage
    >>> Passage("Paris is the capital of France.").text
    'Paris is the capital of France.'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .checkpoint import DEFAULT_REFRAG_CHECKPOINT, load_refrag_checkpoint, save_refrag_checkpoint
from .chunking import answer_chunks, chunk_texts, chunk_token_ids, num_chunks
from .context import CONTEXT_MODES, CompressedInput, ContextLayout, build_compressed_input, layout_prompt
from .encoder import ChunkEncoder, tokenizer_fingerprint
from .policy import POLICIES, ExpansionPolicy, choose_expansions, expansion_count
from .projector import ChunkProjector
from .refrag_model import RefragModel


@dataclass
class Passage:
    """A retrieved passage as the engine takes it: its text and, from a store, its decoder token ids and
    REFRAG chunk embeddings (``[ceil(len(token_ids) / k), encoder_dim]``, float16)."""

    text: str
    token_ids: list[int] | None = None
    chunk_embeddings: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


__all__ = [
    "CONTEXT_MODES", "DEFAULT_REFRAG_CHECKPOINT", "POLICIES",
    "ChunkEncoder", "ChunkProjector", "CompressedInput", "ContextLayout", "ExpansionPolicy", "Passage",
    "RefragModel", "answer_chunks", "build_compressed_input", "choose_expansions", "chunk_texts", "chunk_token_ids",
    "expansion_count", "layout_prompt", "load_refrag_checkpoint", "num_chunks", "save_refrag_checkpoint",
    "tokenizer_fingerprint",
]
