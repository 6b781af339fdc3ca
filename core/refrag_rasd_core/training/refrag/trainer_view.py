"""What the policy steps (:mod:`.rl`) and the evaluation (:mod:`.evaluate`) read of a trainer: a structural
type (:class:`TrainerView`) that :class:`~refrag_rasd_core.training.refrag.trainer.RefragTrainer` satisfies, so
those modules need not import the trainer (which imports them: no import circle).

Example:
    >>> {"row_nll", "sft_rows", "chunk_vectors"} <= set(dir(TrainerView))
    True
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ...refrag.policy import ExpansionPolicy
from ...refrag.projector import ChunkProjector
from .batches import Batch, Row, WindowSampler
from .config import RefragTrainConfig

__all__ = ["TrainerView"]


class TrainerView(Protocol):
    """The trainer's parts and methods a phase step or an evaluation uses."""

    cfg: RefragTrainConfig
    tokenizer: Any
    device: torch.device
    decoder: Any                      # peft-wrapped when the run has LoRA adapters
    lm: Any                           # the causal LM under peft
    embed: torch.nn.Module            # the decoder's input embedding
    projector: ChunkProjector
    policy: ExpansionPolicy
    lora_params: dict[str, torch.nn.Parameter]
    qa_examples: list[Any]
    sampler: WindowSampler
    start_ids: list[int]
    history: dict[str, dict[str, Any]]

    def sft_rows(self) -> list[tuple[Row, torch.Tensor]]:
        """RAG rows with their chunk vectors (the sft phase's data)."""
        ...

    def row_nll(self, rows: list[Row], projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-target-token NLL, the row of each, and whether the argmax was right."""
        ...

    def chunk_vectors(self, batch: Batch, grad: bool = False) -> torch.Tensor:
        """Encoder-space vectors of a batch's chunks."""
        ...
