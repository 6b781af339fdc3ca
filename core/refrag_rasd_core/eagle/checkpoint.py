"""Save / load draft-head checkpoints (safetensors only), with a sha256 and shape checks.

A checkpoint is a folder (or a ``.safetensors`` file with its ``.json`` beside it):

- ``<name>.safetensors``: ``fc.*``, ``layers.0.*`` and ``vocab_ids`` (target ids of the draft vocabulary);
  the target's embedding and LM head are NOT stored (borrowed from the target at load time).
- ``<name>.json``: ``{"format": "refrag-rasd-eagle", "config": {...DraftHeadConfig}, "sha256": "...",
  "target": {...}, "recipe": {...}, "metrics": {...}}``.

Published EAGLE / EAGLE-2 checkpoints (a folder with ``config.json`` + ``model.safetensors``, weight names
``fc.weight``, ``layers.0.self_attn.q_proj.weight``, ..., maybe ``embed_tokens.weight``) load with
:func:`load_eagle_checkpoint`; a ``pytorch_model.bin`` is refused (convert it to safetensors first).

Example:
    >>> import tempfile, torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    ...                   num_attention_heads=4, num_key_value_heads=2)
    >>> target = LlamaForCausalLM(cfg).eval()
    >>> head = DraftHead.for_target(target, draft_vocab_size=16)
    >>> d = tempfile.mkdtemp()
    >>> path = save_draft_head(head, d + "/head.safetensors")
    >>> head2 = load_draft_head(path, target)
    >>> bool(torch.equal(head2.vocab_ids, head.vocab_ids))
    True
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..safetensors_io import read_sidecar, read_weights, write_checkpoint
from .head import DraftHead
from .layers import DraftHeadConfig

FORMAT = "refrag-rasd-eagle"
CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
DEFAULT_CHECKPOINT = CHECKPOINT_DIR / "smollm2-135m-instruct-eagle.safetensors"


def _target_info(target) -> dict[str, Any]:
    cfg = target.config
    return {
        "model_type": getattr(cfg, "model_type", None),
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
        "name_or_path": getattr(cfg, "_name_or_path", "") or "",
    }


def save_draft_head(
    head: DraftHead,
    path: str | os.PathLike,
    dtype: torch.dtype = torch.float16,
    target=None,
    recipe: dict | None = None,
    metrics: dict | None = None,
) -> Path:
    """Write ``path`` (.safetensors) and its json sidecar (config, sha256, recipe, metrics); atomic."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / "draft_head.safetensors"
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in head.state_dict().items()}
    meta = {
        "format": FORMAT,
        "config": head.config.to_dict(),
        "dtype": str(dtype).replace("torch.", ""),
        "target": _target_info(target) if target is not None else {},
        "recipe": recipe or {},
        "metrics": metrics or {},
    }
    return write_checkpoint(state, path, meta)


def _read_safetensors(path: Path, expected_sha: str | None) -> dict[str, torch.Tensor]:
    return read_weights(path, expected_sha, "draft-head checkpoint")


def _check_and_load(head: DraftHead, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = head.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"draft-head checkpoint {path} does not match the head's layout: missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}"
        )
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"draft-head checkpoint {path}: {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)} "
                "(made for another model, or a wrong config)"
            )
    head.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The json sidecar of a checkpoint written by :func:`save_draft_head`."""
    return read_sidecar(path, FORMAT, "draft-head checkpoint")


def load_draft_head(path: str | os.PathLike, target_model, device=None, dtype=torch.float32,
                    verify_hash: bool = True) -> DraftHead:
    """Load a head saved by :func:`save_draft_head` (or a published EAGLE folder) for ``target_model``.

    Raises :class:`CheckpointError` if the file is missing, truncated, has a wrong hash or shapes, or
    was made for a target of another hidden size / vocabulary.
    """
    path = Path(path)
    if path.is_dir():
        ours = sorted(p for p in path.glob("*.safetensors") if p.with_suffix(".json").exists())
        if not ours and (path / "config.json").exists():
            return load_eagle_checkpoint(path, target_model, device=device, dtype=dtype)
        if not ours:
            raise CheckpointError(f"no draft-head checkpoint (.safetensors + .json, or EAGLE config.json) in {path}")
        path = ours[0]
    if not path.exists():
        raise CheckpointError(f"draft-head checkpoint not found: {path}")
    meta = read_meta(path)
    try:
        cfg = DraftHeadConfig.from_dict(meta["config"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"draft-head json for {path} has a bad config: {e}") from e
    tcfg = target_model.config
    if cfg.hidden_size != tcfg.hidden_size or cfg.target_vocab_size != tcfg.vocab_size:
        raise CheckpointError(
            f"draft head {path} was made for a target with hidden {cfg.hidden_size} / vocab "
            f"{cfg.target_vocab_size}; this target has {tcfg.hidden_size} / {tcfg.vocab_size}"
        )
    state = _read_safetensors(path, meta.get("sha256") if verify_hash else None)
    if "vocab_ids" not in state:
        raise CheckpointError(f"draft-head checkpoint {path} lacks vocab_ids")
    head = DraftHead(cfg, state["vocab_ids"])
    _check_and_load(head, state, path)
    head.meta = meta
    return _finish_load(head, target_model, device, dtype)


def _finish_load(head: DraftHead, target_model, device, dtype) -> DraftHead:
    if device is None:
        device = target_model.get_input_embeddings().weight.device
    head = head.to(device=device, dtype=dtype).eval()
    for p in head.parameters():
        p.requires_grad_(False)
    head.attach_target(target_model)
    return head


def load_default_draft_head(target_model, device=None) -> DraftHead:
    """The shipped head for SmolLM2-135M-Instruct (``checkpoints/smollm2-135m-instruct-eagle``).

    Example:
        >>> head = load_default_draft_head(engine.model)                # doctest: +REAL_MODEL
        >>> head.uses_target_hidden                                     # doctest: +REAL_MODEL
        True
    """
    return load_draft_head(DEFAULT_CHECKPOINT, target_model, device=device)


# ------------------------------------------------------------------ published EAGLE / EAGLE-2 weights
EAGLE_IGNORED = ("embed_tokens.weight", "lm_head.weight", "norm.weight")


def map_eagle_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a published EAGLE-1/2 state dict to :class:`DraftHead` names (drop the copied embedding).

    EAGLE's names already match (``fc.weight``, ``fc.bias``, ``layers.0.self_attn.q_proj.weight``...);
    a ``model.`` prefix is stripped and the target copies (``embed_tokens``, ``lm_head``) are dropped.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        k2 = k[len("model."):] if k.startswith("model.") else k
        if k2 in EAGLE_IGNORED:
            continue
        out[k2] = v
    return out


def load_eagle_checkpoint(folder: str | os.PathLike, target_model, device=None, dtype=torch.float32) -> DraftHead:
    """Load a published EAGLE / EAGLE-2 draft (``config.json`` + ``*.safetensors``) for a LLaMA target.

    The draft vocabulary is the full target vocabulary. ``pytorch_model.bin`` files are refused.
    """
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{folder} has no config.json (not an EAGLE checkpoint folder)")
    st_files = sorted(folder.glob("*.safetensors"))
    if not st_files:
        if list(folder.glob("*.bin")) or list(folder.glob("*.pt")) or list(folder.glob("*.pth")):
            raise CheckpointError(
                f"{folder} holds a pickled PyTorch checkpoint (pytorch_model.bin); refrag-rasd loads safetensors "
                "only, since pickles can run code. Convert it once, in a trusted environment: python -c \"import "
                "torch; from safetensors.torch import save_file; sd = torch.load('pytorch_model.bin', "
                "weights_only=True); save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors')\""
            )
        raise CheckpointError(f"{folder} has no .safetensors weights")
    try:
        ecfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path} is not valid json: {e}") from e
    from transformers import LlamaConfig

    lcfg = LlamaConfig(**{k: v for k, v in ecfg.items() if k not in ("architectures", "model_type")})
    tcfg = target_model.config
    if lcfg.hidden_size != tcfg.hidden_size or lcfg.vocab_size != tcfg.vocab_size:
        raise CheckpointError(
            f"EAGLE draft {folder} is for hidden {lcfg.hidden_size} / vocab {lcfg.vocab_size}; the target has "
            f"{tcfg.hidden_size} / {tcfg.vocab_size}"
        )
    state: dict[str, torch.Tensor] = {}
    for f in st_files:
        state.update(_read_safetensors(f, None))
    state = map_eagle_state_dict(state)
    has_norm = "layers.0.input_layernorm.weight" in state
    cfg = DraftHeadConfig.from_target_config(
        lcfg, draft_vocab_size=lcfg.vocab_size, fc_bias="fc.bias" in state, input_norm=has_norm,
    )
    head = DraftHead(cfg)
    state["vocab_ids"] = head.vocab_ids
    _check_and_load(head, state, folder)
    head.meta = {"format": "eagle", "source": str(folder), "config": ecfg}
    return _finish_load(head, target_model, device, dtype)


__all__ = [
    "DEFAULT_CHECKPOINT",
    "load_default_draft_head",
    "load_draft_head",
    "load_eagle_checkpoint",
    "map_eagle_state_dict",
    "read_meta",
    "save_draft_head",
]
