"""The chunk encoder: one vector per k-token chunk of a passage (REFRAG's compressed representation).

Passages are cut into k-token chunks of the DECODER's tokenizer (:mod:`.chunking`); the encoder (any
Hugging Face / sentence-transformers encoder; the offline default is all-MiniLM-L6-v2) re-tokenizes each
chunk's text and pools its last hidden states. The vectors, before projection, are what a store keeps
(float16): the projector (:mod:`.projector`) maps them into the decoder's embedding space at query time,
which costs microseconds, so no encoder runs for a query whose passages come from a store.

Example:
    >>> tok = engine.tokenizer                                                 # doctest: +REAL_MODEL
    >>> enc = ChunkEncoder.load(tokenizer=tok, k=16)                           # doctest: +REAL_MODEL
    >>> vecs = enc.encode_passages([tok("Paris is the capital of France.")["input_ids"]])  # doctest: +REAL_MODEL
    >>> vecs[0].shape, vecs[0].dtype                                           # doctest: +REAL_MODEL
    ((1, 384), dtype('float16'))
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInputError, ModelNotFoundError
from .chunking import check_k, chunk_texts, num_chunks

POOLINGS = ("mean", "cls", "max")
# measured (docs/training-refrag.md): after the same short reconstruction run, CLS pooling of
# all-MiniLM-L6-v2 reconstructs held-out chunks better than mean pooling (NLL 4.99 vs 5.20)
DEFAULT_POOLING = "cls"
STORE_DTYPE = "float16"
LAYOUT_VERSION = 1

__all__ = ["DEFAULT_POOLING", "ChunkEncoder", "POOLINGS", "tokenizer_fingerprint"]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short stable id of a tokenizer's vocabulary (two tokenizers with equal ids map text alike)."""
    cached = getattr(tokenizer, "_refrag_rasd_fingerprint", None)
    if cached:
        return cached
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]
    fp = f"{len(vocab)}-{digest}"
    with contextlib.suppress(AttributeError):  # exotic tokenizer objects: no caching
        tokenizer._refrag_rasd_fingerprint = fp
    return fp


class ChunkEncoder(nn.Module):
    """Encodes decoder-token chunks with a Hugging Face encoder and a pooling (``mean``, ``cls`` or ``max``).

    ``forward(texts)`` is differentiable (for training); :meth:`encode_passages` is the batched inference
    path that returns what a store keeps.
    """

    def __init__(self, model: Any, encoder_tokenizer: Any, decoder_tokenizer: Any, *, k: int = 16,
                 pooling: str = DEFAULT_POOLING, name: str = "custom", max_length: int = 128) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise InvalidInputError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        self.model = model
        self.encoder_tokenizer = encoder_tokenizer
        self.decoder_tokenizer = decoder_tokenizer
        self.k = check_k(k)
        self.pooling = pooling
        self.name = name
        self.max_length = max_length
        self.dim = int(model.config.hidden_size)

    @classmethod
    def load(cls, encoder: str | None = None, *, tokenizer: Any, k: int = 16, pooling: str = DEFAULT_POOLING,
             device: str | torch.device = "cpu") -> ChunkEncoder:
        """Load ``encoder`` (``None`` = the offline default all-MiniLM-L6-v2; else a local folder or, when
        the hub is allowed, an id) for chunks of ``tokenizer`` (the decoder's)."""
        from transformers import AutoModel, AutoTokenizer

        from ..models import DEFAULT_ENCODER_NAME, default_encoder_path, is_offline

        if encoder is None or str(encoder) in {"default", DEFAULT_ENCODER_NAME}:
            source, name = str(default_encoder_path()), DEFAULT_ENCODER_NAME
        else:
            path = Path(encoder).expanduser()
            if not path.exists() and is_offline():
                raise ModelNotFoundError(f"encoder {encoder!r} is not a local folder, and HF_HUB_OFFLINE is set")
            source, name = (str(path) if path.exists() else str(encoder)), str(encoder)
        local = Path(source).exists()
        try:
            model = AutoModel.from_pretrained(source, local_files_only=local, use_safetensors=True)
            enc_tok = AutoTokenizer.from_pretrained(source, local_files_only=local)
        except OSError as exc:
            raise ModelNotFoundError(f"could not load encoder {encoder!r}: {exc}") from exc
        model.to(device).eval()
        return cls(model, enc_tok, tokenizer, k=k, pooling=pooling, name=name)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def signature(self) -> dict[str, Any]:
        """What a store of these vectors must match: encoder, its width, pooling, k, decoder tokenizer."""
        return {"encoder": self.name, "encoder_dim": self.dim, "pooling": self.pooling, "k": self.k,
                "tokenizer": tokenizer_fingerprint(self.decoder_tokenizer), "dtype": STORE_DTYPE,
                "layout": LAYOUT_VERSION}

    def forward(self, texts: Sequence[str], *, pooling: str | None = None,
                max_length: int | None = None) -> torch.Tensor:
        """Pooled vectors ``[len(texts), dim]`` (float32, differentiable); ``pooling`` / ``max_length``
        override the chunk settings (e.g. mean-pooled whole passages for retrieval)."""
        batch = self.encoder_tokenizer(list(texts), padding=True, truncation=True,
                                       max_length=max_length or self.max_length, return_tensors="pt").to(self.device)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooling = pooling or self.pooling
        if pooling == "cls":
            return hidden[:, 0].float()
        if pooling == "max":
            return hidden.masked_fill(mask == 0, float("-inf")).amax(1).float()
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)).float()

    @torch.inference_mode()
    def encode_question(self, question: str) -> torch.Tensor:
        """The question's vector ``[dim]`` in the chunks' space (same model and pooling; what a
        question-aware expansion policy compares the chunks with)."""
        return self([question or " "])[0].cpu()

    @torch.inference_mode()
    def encode_chunks(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """Vectors of chunk texts, batched (sorted by length to pad little), in the input order."""
        if not texts:
            return torch.empty(0, self.dim)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.dim)
        starts = range(0, len(order), batch_size)
        if progress and len(order) > batch_size:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="encoding chunks", unit="batch")
        for s in starts:
            idx = order[s:s + batch_size]
            out[idx] = self([texts[i] or " " for i in idx]).cpu()
        return out

    def encode_passages(self, token_id_lists: Sequence[Sequence[int]], *, batch_size: int = 64,
                        progress: bool = False) -> list[np.ndarray]:
        """One float16 array ``[ceil(len / k), dim]`` per passage (an empty passage gives ``[0, dim]``)."""
        texts: list[str] = []
        counts: list[int] = []
        for ids in token_id_lists:
            t = chunk_texts(self.decoder_tokenizer, ids, self.k)
            texts.extend(t)
            counts.append(len(t))
        vecs = self.encode_chunks(texts, batch_size=batch_size, progress=progress).numpy().astype(np.float16)
        out, pos = [], 0
        for n in counts:
            out.append(vecs[pos:pos + n])
            pos += n
        return out

    def check_vectors(self, token_ids: Sequence[int], vectors: np.ndarray) -> None:
        """Raise :class:`InvalidInputError` unless ``vectors`` fit a passage of ``token_ids`` at this k/width."""
        want = num_chunks(len(token_ids), self.k)
        shape = tuple(getattr(vectors, "shape", ()))
        if shape != (want, self.dim):
            raise InvalidInputError(
                f"chunk embeddings of shape {shape} do not fit a {len(token_ids)}-token passage at k={self.k} "
                f"with a {self.dim}-wide encoder (want {(want, self.dim)}): the store was built with another "
                "encoder or chunk size; re-index it"
            )
