"""EAGLE draft-head training (``refrag-rasd train-draft``): the target's features, the resumable training
loop, the command. The head itself and its checkpoints are runtime code: :mod:`refrag_rasd_core.eagle`.

* :mod:`.corpus`       offline prompt / text corpora (Spec-Bench training half, pydoc, docstrings, files);
* :mod:`.rag_prompts`  plain-RAG requests over QA files' retrieved passages, as training prompts;
* :mod:`.features`     self-distillation text and the target's hidden states, stored as safetensors;
* :mod:`.train`        :class:`DraftTrainConfig`, the loss, the evaluation and :func:`train_draft`;
* :mod:`.cli`          the command (``python -m refrag_rasd_core.training.eagle --help``).

See ``docs/training-draft-head.md`` for the recipe and the measured numbers.

Example:
    >>> from refrag_rasd_core.training.eagle import build_parser
    >>> build_parser().parse_args(["--out", "runs/eagle"]).draft_vocab
    8192
"""

from __future__ import annotations

from .cli import build_parser, main
from .train import DraftTrainConfig, train_draft

__all__ = ["DraftTrainConfig", "build_parser", "main", "train_draft"]
