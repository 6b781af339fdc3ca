"""REFRAG training (``refrag-rasd train-refrag``): reconstruction with a curriculum, continual pre-training
on next-paragraph prediction (projector + decoder LoRA), a mixed phase with 10% of the chunks uncompressed,
optional RAG instruction tuning, and the expansion policy by PPO with a group baseline.

* :mod:`.corpus`      offline corpora, held-out passages, the encoder's chunk vectors cached per corpus;
* :mod:`.batches`     samples (:class:`Row`) and the mixed decoder input, the curriculum;
* :mod:`.phases`      :class:`RefragTrainConfig`, :class:`RefragTrainer` (losses, resumable loop, checkpoints);
* :mod:`.rl`          the policy's PPO step;
* :mod:`.evaluate`    held-out log-perplexity per context mode, reconstruction accuracy;
* :mod:`.pooling`     mean vs cls pooling, measured;
* :mod:`.lora_export` peft adapters -> the checkpoint's ``lora.<module>.A/B``;
* :mod:`.cli`         the command (``python -m refrag_rasd_core.refrag.train --help``).

See ``docs/training-refrag.md`` for the recipe and the measured numbers.
"""

from __future__ import annotations

from .cli import build_parser, main
from .phases import PHASES, RefragTrainConfig, RefragTrainer

__all__ = ["PHASES", "RefragTrainer", "RefragTrainConfig", "build_parser", "main"]
