"""Save / load REFRAG checkpoints (safetensors + json sidecar with a sha256; never pickle).

A checkpoint holds ``projector.*``, optionally ``policy.*`` (the RL expansion policy), ``lora.*`` (decoder
adapters, merged into the target at load) and ``encoder.*`` (a fine-tuned encoder). The sidecar records
the format version, k, the encoder (name, width, pooling), the decoder (type, hidden size, vocabulary,
tokenizer fingerprint), the recipe and the metrics. Loading for another decoder, tokenizer, k or a
newer format is a :class:`~refrag_rasd_core.errors.CheckpointError` that says what differs.

Example:
    >>> import tempfile, torch
    >>> from refrag_rasd_core.refrag import ChunkProjector, RefragModel
    >>> rm = RefragModel(ChunkProjector(8, 12), k=4, encoder="e", encoder_dim=8)
    >>> meta = {"decoder": {"hidden_size": 12}}
    >>> p = save_refrag_checkpoint(rm, tempfile.mkdtemp() + "/r.safetensors", decoder_info=meta["decoder"])
    >>> load_refrag_checkpoint(p).k
    4
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..safetensors_io import read_sidecar, read_weights, write_checkpoint
from .encoder import tokenizer_fingerprint
from .policy import ExpansionPolicy
from .projector import ChunkProjector
from .refrag_model import RefragModel

FORMAT = "refrag-rasd-refrag"
FORMAT_VERSION = 1
CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
DEFAULT_REFRAG_CHECKPOINT = CHECKPOINT_DIR / "smollm2-135m-instruct-refrag-k16.safetensors"
DEFAULT_LONG_REFRAG_CHECKPOINT = CHECKPOINT_DIR / "smollm2-135m-instruct-refrag-k16-long.safetensors"
"""The shipped checkpoint for documents past the window (when it exists): the same encoder and k as
:data:`DEFAULT_REFRAG_CHECKPOINT`, trained to summarize whole long documents."""
WHAT = "REFRAG checkpoint"

__all__ = ["DEFAULT_LONG_REFRAG_CHECKPOINT", "DEFAULT_REFRAG_CHECKPOINT", "decoder_info", "save_refrag_checkpoint",
           "load_refrag_checkpoint"]


def decoder_info(model: Any, tokenizer: Any | None = None) -> dict[str, Any]:
    """What a checkpoint records about its decoder (checked again at load time)."""
    cfg = model.config
    info = {"model_type": getattr(cfg, "model_type", None), "hidden_size": int(cfg.hidden_size),
            "vocab_size": int(cfg.vocab_size), "num_hidden_layers": getattr(cfg, "num_hidden_layers", None)}
    if tokenizer is not None:
        info["tokenizer"] = tokenizer_fingerprint(tokenizer)
    return info


def save_refrag_checkpoint(model: RefragModel, path: str | os.PathLike, *, decoder_info: dict[str, Any],
                           recipe: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                           dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model`` to ``path`` (.safetensors) and its sidecar, atomically."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / "refrag.safetensors"
    state = {f"projector.{k}": v.to(dtype) for k, v in model.projector.state_dict().items()}
    if model.policy is not None:
        state.update({f"policy.{k}": v.float() for k, v in model.policy.state_dict().items()})
    state.update({k: v.to(dtype) for k, v in model.lora.items()})
    state.update({f"encoder.{k}": v.to(dtype) for k, v in model.encoder_state.items()})
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "k": model.k,
        "encoder": {"name": model.encoder_name, "dim": model.encoder_dim, "pooling": model.pooling,
                    "tag": model.encoder_tag, "fine_tuned": bool(model.encoder_state)},
        "projector": {"encoder_dim": model.projector.encoder_dim, "decoder_dim": model.projector.decoder_dim},
        "policy": model.policy.config if model.policy is not None else None,
        "lora": ({"scaling": model.lora_scaling, "modules": len(model.lora) // 2, "scope": model.lora_scope}
                 if model.lora else None),
        "decoder": decoder_info, "recipe": recipe or {}, "metrics": metrics or {},
    }
    return write_checkpoint(state, path, meta)


def read_refrag_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of a REFRAG checkpoint (format and version checked)."""
    meta = read_sidecar(path, FORMAT, WHAT)
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{WHAT} {path} has format version {meta.get('version')}; this package reads "
                              f"up to {FORMAT_VERSION}: upgrade refrag-rasd-core")
    return meta


def _check_decoder(meta: dict[str, Any], path: Path, decoder: Any, tokenizer: Any) -> None:
    want = meta.get("decoder", {})
    have = decoder_info(decoder, tokenizer if "tokenizer" in want and tokenizer is not None else None)
    for key in ("hidden_size", "vocab_size", "model_type", "tokenizer"):
        if key in want and key in have and want[key] is not None and want[key] != have[key]:
            raise CheckpointError(
                f"{WHAT} {path} was trained for a decoder with {key}={want[key]!r}, this one has {have[key]!r}: "
                "train one for this model with `refrag-rasd train-refrag`"
            )


def load_refrag_checkpoint(path: str | os.PathLike, decoder: Any = None, tokenizer: Any = None, *,
                           device: str | torch.device = "cpu", verify_hash: bool = True,
                           expect_k: int | None = None) -> RefragModel:
    """Load a checkpoint; with ``decoder`` (and ``tokenizer``) given, check it was made for them."""
    path = Path(path)
    meta = read_refrag_meta(path)
    if expect_k is not None and int(meta["k"]) != int(expect_k):
        raise CheckpointError(f"{WHAT} {path} compresses k={meta['k']} tokens per chunk, k={expect_k} was asked")
    if decoder is not None:
        _check_decoder(meta, path, decoder, tokenizer)
    state = read_weights(path, meta.get("sha256") if verify_hash else None, WHAT)
    groups: dict[str, dict[str, torch.Tensor]] = {"projector": {}, "policy": {}, "encoder": {}, "lora": {}}
    for key, val in state.items():
        head, _, rest = key.partition(".")
        if head not in groups:
            raise CheckpointError(f"{WHAT} {path} has an unexpected tensor {key!r}")
        groups[head][rest if head != "lora" else key] = val
    try:
        pj = meta["projector"]
        projector = ChunkProjector(int(pj["encoder_dim"]), int(pj["decoder_dim"]))
        projector.load_state_dict({k: v.float() for k, v in groups["projector"].items()}, strict=True)
        policy = None
        if meta.get("policy"):
            policy = ExpansionPolicy(**meta["policy"])
            policy.load_state_dict(groups["policy"], strict=True)
        enc = meta["encoder"]
        model = RefragModel(projector, k=int(meta["k"]), encoder=enc["name"], encoder_dim=int(enc["dim"]),
                            pooling=enc.get("pooling", "mean"), policy=policy, lora=groups["lora"],
                            lora_scaling=float((meta.get("lora") or {}).get("scaling", 1.0)),
                            lora_scope=str((meta.get("lora") or {}).get("scope", "all")),
                            encoder_state={k: v.float() for k, v in groups["encoder"].items()},
                            encoder_tag=enc.get("tag"), meta=meta)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # RuntimeError: load_state_dict shapes
        raise CheckpointError(f"{WHAT} {path} does not match its description: {e}") from e
    if decoder is not None and model.projector.decoder_dim != int(decoder.config.hidden_size):
        raise CheckpointError(f"{WHAT} {path} projects to width {model.projector.decoder_dim}, the decoder's "
                              f"hidden size is {decoder.config.hidden_size}")
    return model.to(device).eval()
