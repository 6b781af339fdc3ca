"""EAGLE-style draft head for RASD: the head and its checkpoints (runtime; its training is
:mod:`refrag_rasd_core.training.eagle`).

Example:
    >>> from refrag_rasd_core.eagle import load_default_draft_head
    >>> head = load_default_draft_head(engine.model)                    # doctest: +REAL_MODEL
    >>> head.uses_target_hidden, head.config.draft_vocab_size           # doctest: +REAL_MODEL
    (True, 8192)
"""

from .checkpoint import (
    DEFAULT_CHECKPOINT,
    load_default_draft_head,
    load_draft_head,
    load_eagle_checkpoint,
    map_eagle_state_dict,
    save_draft_head,
)
from .head import DraftHead
from .layers import DraftHeadConfig

__all__ = [
    "DEFAULT_CHECKPOINT",
    "DraftHead",
    "DraftHeadConfig",
    "load_default_draft_head",
    "load_draft_head",
    "load_eagle_checkpoint",
    "map_eagle_state_dict",
    "save_draft_head",
]
