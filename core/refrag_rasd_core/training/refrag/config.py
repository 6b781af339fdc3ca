"""REFRAG training's hyper-parameters (:class:`RefragTrainConfig`, all recorded in the checkpoint's recipe), its
phases in order, and the names of the files a run writes.

Example:
    >>> RefragTrainConfig().steps_for("recon")
    600
    >>> PHASES
    ('recon', 'cpt', 'mixed', 'sft', 'long', 'select', 'policy')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...refrag.encoder import DEFAULT_POOLING

__all__ = ["EXPORT_FILE", "LOG_FILE", "PHASES", "STATE_FILE", "RefragTrainConfig"]

PHASES = ("recon", "cpt", "mixed", "sft", "long", "select", "policy")
STATE_FILE = "state.safetensors"
EXPORT_FILE = "refrag.safetensors"
LOG_FILE = "train_log.jsonl"

@dataclass
class RefragTrainConfig:
    """Hyper-parameters of every phase (all recorded in the checkpoint's recipe)."""

    phases: list[str] = field(default_factory=lambda: ["recon", "cpt", "mixed", "policy"])
    k: int = 16
    steps_recon: int = 600
    steps_cpt: int = 600
    steps_mixed: int = 300
    steps_sft: int = 0
    steps_long: int = 0
    steps_select: int = 0
    steps_policy: int = 200
    batch_tokens: int = 272          # decoder positions per step (sets the samples per step)
    recon_max_chunks: int = 4
    cpt_max_chunks: int = 16
    continuation: int = 32           # target tokens of a next-paragraph sample
    mixed_fraction: float = 0.1
    lr_recon: float = 1e-3
    lr_projector: float = 3e-4       # projector in cpt / mixed / sft
    lr_lora: float = 5e-4
    lr_encoder: float = 2e-5
    lr_policy: float = 1e-3
    lr_select: float = 1e-3
    warmup: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_scope: str = "all"          # "chunks": the adapters act on compressed-chunk positions only
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"])
    train_encoder: bool = False
    pooling: str = DEFAULT_POOLING
    policy_width: int = 128
    policy_max_chunks: int = 1024
    policy_contexts: int = 2         # contexts per policy step
    policy_group: int = 4            # sampled selections per context (the group baseline)
    policy_chunks: int = 16
    policy_fractions: list[float] = field(default_factory=lambda: [0.1, 0.25])
    policy_query: str = "decoder"    # "question": the policy reads the question's encoder vector (QA data)
    select_batch: int = 16           # questions per supervised policy step
    select_shuffle: float = 0.0      # share of select rows whose chunks are shown in a random order
    ppo_epochs: int = 2
    ppo_clip: float = 0.2
    entropy_coef: float = 0.0
    sft_answer_tokens: int = 48
    sft_batch: int = 2
    sft_fractions: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.25])  # expanded share, QA rows
    long_batch: int = 1              # long-document rows per step (the long phase)
    long_budgets: list[int] = field(default_factory=lambda: [512, 1024, 2048])  # expanded lead tokens (rank)
    long_max_positions: int = 3000   # a long row's prompt is cut (document tail) to this many decoder positions
    long_summary_tokens: int = 128   # the target summary's longest length (cut at a sentence end), then EOS
    long_max_doc_tokens: int = 24576 # document tokens kept per training document (before the position cut)
    source_weights: dict[str, float] = field(default_factory=lambda: {"spec_bench": 4.0})
    ckpt_every: int = 50
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"           # autocast dtype of the decoder's forward (bfloat16 on a GPU)

    def steps_for(self, phase: str) -> int:
        return int(getattr(self, f"steps_{phase}"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RefragTrainConfig:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})
