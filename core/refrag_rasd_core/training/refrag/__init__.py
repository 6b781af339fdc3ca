"""REFRAG training (``refrag-rasd train-refrag``): reconstruction with a curriculum, continual pre-training
on next-paragraph prediction (projector + decoder LoRA), a mixed phase with 10% of the chunks uncompressed,
optional RAG instruction tuning, and the expansion policy by PPO with a group baseline.

* :mod:`.corpus`      offline corpora, held-out passages, the encoder's chunk vectors cached per corpus;
* :mod:`.batches`     samples (:class:`Row`) and the mixed decoder input, the curriculum;
* :mod:`.config`      :class:`RefragTrainConfig` (every phase's hyper-parameters), the phase names;
* :mod:`.trainer`     :class:`RefragTrainer` (the models, losses, samples, export), with the mixins
  :mod:`.phases` (the resumable loop), :mod:`.state` (state files) and :mod:`.sft` (sft rows, teacher answers);
* :mod:`.qa_rows`     QA questions with retrieved passages as rows in the engine's layout;
* :mod:`.rl`          the policy's PPO step and supervised warm start (typed by :mod:`.trainer_view`);
* :mod:`.evaluate`    held-out log-perplexity per context mode, reconstruction accuracy;
* :mod:`.pooling`     mean vs cls pooling, measured;
* :mod:`.lora_export` peft adapters -> the checkpoint's ``lora.<module>.A/B``;
* :mod:`.cli`         the command (``python -m refrag_rasd_core.training.refrag --help``).

See ``docs/training-refrag.md`` for the recipe and the measured numbers.

Example:
    >>> from refrag_rasd_core.training.refrag import PHASES
    >>> PHASES[:3]
    ('recon', 'cpt', 'mixed')
"""

from __future__ import annotations

from .cli import build_parser, main
from .config import PHASES, RefragTrainConfig
from .trainer import RefragTrainer

__all__ = ["PHASES", "RefragTrainer", "RefragTrainConfig", "build_parser", "main"]
