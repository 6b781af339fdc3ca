"""REFRAG's side of an engine: :class:`RefragRuntime` holds a target's REFRAG checkpoint (or none) and what it
builds on demand: the chunk encoder for passages that come without chunk vectors, the decoder adapters a
compressed request runs with, and the operating point ``context="auto"`` stands for.

Example:
    >>> rt = RefragRuntime(None, model=None, tokenizer=None, target_name="tiny")
    >>> rt.auto_context(passage_tokens=3000), rt.has_chunk_encoder
    ({'context': 'text'}, False)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import CheckpointError, InvalidInputError
from .refrag_model import RefragModel

__all__ = ["RefragRuntime"]

POINT_KEYS = ("history", "expand", "expand_tokens", "policy")
PAST_WINDOW_POINT: dict[str, Any] = {"context": "compressed", "expand_tokens": 1024, "policy": "auto"}
"""``context="auto"`` past the window, when the checkpoint records no ``auto.window`` point: every chunk
compressed except a budget of raw tokens (capped to what the window leaves), chosen by ``policy`` (``auto``: the
checkpoint's trained policy). With the shipped QA checkpoint, on long PEPs (dev documents), the trained policy
summarized better than the document's beginning (``rank``; ROUGE-L 0.14 against 0.12) and 2,048 raw tokens were
no better than 1,024 (docs/long_documents.md)."""


class RefragRuntime:
    """A target's REFRAG parts: ``refrag`` (a :class:`RefragModel` or ``None``), the target ``model`` and
    ``tokenizer``, and an optional chunk ``encoder`` given instead of the checkpoint's."""

    def __init__(self, refrag: RefragModel | None, *, model: Any, tokenizer: Any, target_name: str,
                 encoder: Any = None, encoder_from: Callable[[], Any] | None = None) -> None:
        self.model_parts = refrag
        self.model = model
        self.tokenizer = tokenizer
        self.target_name = target_name
        self._encoder = encoder
        self._encoder_from = encoder_from  # a sibling's encoder (one encoder serves both checkpoints)
        self._adapted: Any = None  # the adapted sibling of the engine's runner, built on first need
        self._row_lora: Any = None

    @property
    def has_chunk_encoder(self) -> bool:
        """Whether :meth:`encoder` has an encoder to give (a REFRAG checkpoint, or one given)."""
        return self.model_parts is not None or self._encoder is not None

    def require(self) -> RefragModel:
        """The checkpoint; raises a clear error when the target has none."""
        if self.model_parts is None:
            raise InvalidInputError(
                f"context='compressed' needs a REFRAG checkpoint for {self.target_name}: train one with "
                "`refrag-rasd train-refrag` and pass Engine(..., refrag=PATH), or use context='text'"
            )
        return self.model_parts

    def encoder(self) -> Any:
        """The :class:`~refrag_rasd_core.refrag.ChunkEncoder` matching the checkpoint (loaded on first use;
        only passages WITHOUT stored chunk embeddings need it)."""
        if self._encoder is None:
            self._encoder = (self._encoder_from() if self._encoder_from is not None
                             else self.require().load_encoder(self.tokenizer))
        return self._encoder

    def sibling(self, refrag: RefragModel) -> RefragRuntime:
        """A runtime for a second checkpoint of this target (e.g. the one for documents past the window) that
        reads the same chunk embeddings: same encoder, pooling, width and k, else :class:`CheckpointError`; the
        chunk encoder is shared."""
        mine = self.require()
        if mine.signature(self.tokenizer) != refrag.signature(self.tokenizer):
            raise CheckpointError(
                f"the long-document REFRAG checkpoint reads chunk embeddings of {refrag.encoder_id} "
                f"({refrag.pooling}, k={refrag.k}) but the engine's checkpoint reads {mine.encoder_id} "
                f"({mine.pooling}, k={mine.k}): both must read what a store holds; train it from the same encoder")
        return RefragRuntime(refrag, model=self.model, tokenizer=self.tokenizer, target_name=self.target_name,
                             encoder_from=self.encoder)

    def signature(self) -> dict[str, Any]:
        """What a store's chunk embeddings must match to be read (encoder, k, tokenizer...)."""
        return self.require().signature(self.tokenizer)

    def auto_context(self, passage_tokens: int | None = None) -> dict[str, Any]:
        """The operating point ``context="auto"`` stands for when passages come with a request: the one
        recorded in the checkpoint (its sidecar's ``"auto"``: chosen on the qa suite as the fastest setting
        that keeps at least 95% of plain RAG's right answers), else plain RAG, ``{"context": "text"}``. A point
        may carry a ``"long"`` one that applies when the passages hold at least its ``min_passage_tokens``."""
        rm = self.model_parts
        point = dict((rm.meta.get("auto") or {}) if rm is not None else {})
        long = point.get("long") or {}
        if (passage_tokens is not None and long.get("context") == "compressed"
                and passage_tokens >= int(long.get("min_passage_tokens", 0))):
            point = long
        if point.get("context") != "compressed":
            return {"context": "text"}
        return _compressed(point)

    def window_point(self) -> dict[str, Any] | None:
        """The setting ``context="auto"`` takes when a request's passages do not fit the window as text:
        the checkpoint's recorded ``auto.window`` point, else :data:`PAST_WINDOW_POINT`; ``None`` without a
        REFRAG checkpoint (the request is refused as too long)."""
        rm = self.model_parts
        if rm is None:
            return None
        return _compressed((rm.meta.get("auto") or {}).get("window") or PAST_WINDOW_POINT)

    def runner_for(self, runner: Any, compressed: bool) -> Any:
        """The decoder a request runs on: for a compressed request, when the checkpoint has decoder adapters
        for every position (``lora.scope: "all"``), a sibling of ``runner`` over the adapted weights (built
        once); else ``runner`` itself."""
        rm = self.model_parts
        if not compressed or rm is None or not rm.lora or rm.lora_scope == "chunks":
            return runner
        if self._adapted is None:
            from .lora import adapted_copy

            self._adapted = runner.sibling(adapted_copy(self.model, rm.lora, rm.lora_scaling))
        return self._adapted

    def prefill_adapter(self, compressed: bool) -> Any:
        """The row-scoped decoder adapters a compressed request's prefill adds at its chunk positions
        (:class:`~refrag_rasd_core.refrag.scoped_lora.RowScopedLora`), or ``None`` (no such checkpoint)."""
        rm = self.model_parts
        if not compressed or rm is None or not rm.lora or rm.lora_scope != "chunks":
            return None
        if self._row_lora is None:
            from .scoped_lora import RowScopedLora

            self._row_lora = RowScopedLora(rm.lora, rm.lora_scaling)
        return self._row_lora

    def compress(self, layout: Any, passages: list[Any], question: str, *, expand: float | None,
                 expand_tokens: int | None, policy: str, seed: int | None, raw_passages: Sequence[int] = ()) -> Any:
        """The mixed (compressed + expanded) prefill input of a laid-out request
        (:func:`~refrag_rasd_core.refrag.compress.mixed_input`); the ``raw_passages`` (layout order) keep all
        their chunks as raw tokens (a conversation's passages read as text)."""
        from .compress import mixed_input

        return mixed_input(self.require(), self.model, layout, passages, expand=expand,
                           expand_tokens=expand_tokens, policy=policy, seed=seed, encoder=self.encoder,
                           question=question, raw_passages=raw_passages)


def _compressed(point: dict[str, Any]) -> dict[str, Any]:
    """A recorded compressed operating point as ``GenerationConfig`` settings (its :data:`POINT_KEYS` only)."""
    return {"context": "compressed", **{k: point[k] for k in POINT_KEYS if k in point}}
