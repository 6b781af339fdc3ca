"""EAGLE-style draft head for RASD: the head, its features, trainer and checkpoints.

Example:
    >>> from refrag_rasd_core.models import load_target                # doctest: +SKIP
    >>> from refrag_rasd_core.eagle import load_default_draft_head      # doctest: +SKIP
    >>> lm = load_target()                                              # doctest: +SKIP
    >>> head = load_default_draft_head(lm.model)                        # doctest: +SKIP
    >>> head.sync(ids, hidden); head.expand_root(8)                     # doctest: +SKIP
"""

from .checkpoint import (
    DEFAULT_CHECKPOINT,
    load_default_draft_head,
    load_draft_head,
    load_eagle_checkpoint,
    map_eagle_state_dict,
    save_draft_head,
)
from .head import DraftHead, DraftHeadConfig

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
