"""Which pooling of the encoder's hidden states reconstructs better: the same short reconstruction run
(1-chunk samples, same seed, same documents, decoder frozen, no LoRA) for each pooling, scored on held-out
chunks (teacher-forced NLL and token accuracy of the reconstruction)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ...refrag.encoder import ChunkEncoder
from .config import RefragTrainConfig
from .corpus import ChunkCorpus, Document
from .evaluate import evaluate_reconstruction
from .trainer import RefragTrainer

__all__ = ["compare_pooling"]


def compare_pooling(decoder: Any, tokenizer: Any, documents: Sequence[Document], heldout: Sequence[Document],
                    out_dir: str | Path, *, encoder: str | None = None, k: int = 16, steps: int = 40,
                    batch_tokens: int = 272, poolings: Sequence[str] = ("mean", "cls"), seed: int = 0,
                    device: str = "cpu", log: Callable[[str], None] = print,
                    make_encoder: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Train a fresh projector for ``steps`` reconstruction steps per pooling; returns the scores and ``best``
    (lowest held-out reconstruction NLL), and writes them to ``out_dir/pooling.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    need = steps * max(1, batch_tokens // (k + 2)) + 64
    scores: dict[str, Any] = {}
    for pool in poolings:
        t0 = time.time()
        enc = make_encoder(pool) if make_encoder else ChunkEncoder.load(encoder, tokenizer=tokenizer, k=k,
                                                                          pooling=pool, device=device)
        corpus = ChunkCorpus.cached(out / f"pooling-{pool}-train.safetensors", documents, tokenizer, k, encoder=enc,
                                    max_chunks=need)
        held = ChunkCorpus.cached(out / f"pooling-{pool}-heldout.safetensors", heldout, tokenizer, k, encoder=enc,
                                  max_chunks=256)
        cfg = RefragTrainConfig(phases=["recon"], k=k, steps_recon=steps, recon_max_chunks=1, lora_rank=0, seed=seed,
                          batch_tokens=batch_tokens, ckpt_every=10**9, device=device, pooling=pool)
        tr = RefragTrainer(decoder, tokenizer, enc, corpus, cfg, out / f"pooling-{pool}", log=log, progress=False)
        hist = tr.run(resume=False)
        rec = evaluate_reconstruction(tr, held, chunks=(1,), samples=64)["1_chunk"]
        first, last = hist["recon"]["first"], hist["recon"]["last"]
        scores[pool] = {"heldout_nll": rec["nll"], "heldout_token_accuracy": rec["token_accuracy"],
                        "train_loss_first5": round(sum(first[:5]) / len(first[:5]), 4),
                        "train_loss_last5": round(sum(last[-5:]) / len(last[-5:]), 4),
                        "wall_s": round(time.time() - t0, 1)}
        log(f"pooling {pool}: {scores[pool]}")
    best = min(scores, key=lambda p: scores[p]["heldout_nll"])
    result = {"steps": steps, "batch_tokens": batch_tokens, "k": k, "scores": scores, "best": best}
    (out / "pooling.json").write_text(json.dumps(result, indent=1))
    return result
