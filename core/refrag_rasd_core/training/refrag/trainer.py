"""The REFRAG trainer: the decoder (LoRA-wrapped with peft), the chunk encoder, the projector and the expansion
policy; which tensors each phase trains and at what learning rate; the decoder's loss on rows of compressed
chunks; each step's samples; the export to a :class:`~refrag_rasd_core.refrag.RefragModel` checkpoint.

The phases and the loop are :mod:`.phases`, the state files :mod:`.state`, the sft data :mod:`.sft`.

Example:
    >>> [c.__name__ for c in RefragTrainer.__mro__[1:4]]
    ['TrainerState', 'SftData', 'PhaseLoop']
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...errors import InvalidInputError
from ...refrag.checkpoint import decoder_info, save_refrag_checkpoint
from ...refrag.policy import ExpansionPolicy
from ...refrag.projector import ChunkProjector
from ...refrag.refrag_model import LORA_SCOPES, RefragModel
from ..seeds import step_rng
from .batches import Batch, Row, WindowSampler, assemble, curriculum_chunks, expansion_sample
from .config import EXPORT_FILE, PHASES, RefragTrainConfig
from .corpus import ChunkCorpus
from .lora_export import peft_lora_state, unwrap_peft
from .phases import PhaseLoop
from .sft import SftData
from .state import TrainerState

__all__ = ["RefragTrainer"]


class RefragTrainer(TrainerState, SftData, PhaseLoop):
    """Holds the decoder (LoRA-wrapped with peft when ``lora_rank > 0``), the chunk encoder, the projector and
    the policy, and runs the phases of ``cfg.phases`` over ``corpus`` (a :class:`ChunkCorpus` of the encoder's
    vectors), writing to ``out_dir``."""

    def __init__(self, decoder: Any, tokenizer: Any, encoder: Any, corpus: ChunkCorpus, cfg: RefragTrainConfig,
                 out_dir: str | os.PathLike, *, log: Callable[[str], None] = print, progress: bool = True,
                 sft_records: list[dict] | None = None, recipe: dict | None = None,
                 qa_examples: list[Any] | None = None, long_examples: list[Any] | None = None) -> None:
        for p in cfg.phases:
            if p not in PHASES:
                raise InvalidInputError(f"unknown phase {p!r}; choose from {', '.join(PHASES)}")
        if corpus.k != cfg.k or encoder.k != cfg.k:
            raise InvalidInputError(f"corpus k={corpus.k} / encoder k={encoder.k} differ from k={cfg.k}")
        self.cfg, self.tokenizer, self.encoder, self.corpus = cfg, tokenizer, encoder, corpus
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log, self.progress = log, progress
        self.sft_records = sft_records or []
        self.qa_examples = list(qa_examples or [])
        self.long_examples = list(long_examples or [])
        if cfg.policy_query not in ("decoder", "question"):
            raise InvalidInputError(f"policy_query must be 'decoder' or 'question', got {cfg.policy_query!r}")
        self.recipe = dict(recipe or {})
        self.device = torch.device(cfg.device)
        self.sampler = WindowSampler(corpus, cfg.source_weights)
        torch.manual_seed(cfg.seed)
        decoder.requires_grad_(False)
        decoder.eval()
        self.base_info = decoder_info(decoder, tokenizer)
        if cfg.lora_rank > 0:
            from peft import LoraConfig, get_peft_model

            decoder = get_peft_model(decoder, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                         target_modules=list(cfg.lora_targets), bias="none"))
        self.decoder = decoder.to(self.device).eval()  # peft's new LoRA modules start in train mode
        self.lm = unwrap_peft(decoder)
        self.body = self.lm.get_decoder()
        self.head = self.lm.get_output_embeddings()
        self.embed = self.lm.get_input_embeddings()
        H = int(self.lm.config.hidden_size)
        norm = float(self.embed.weight.detach().float().norm(dim=-1).mean())
        self.projector = ChunkProjector(encoder.dim, H, embed_norm=norm).to(self.device)
        self.policy = ExpansionPolicy(encoder.dim, H, width=cfg.policy_width, max_chunks=cfg.policy_max_chunks,
                                      query_dim=encoder.dim if cfg.policy_query == "question" else None
                                      ).to(self.device)
        self.encoder.to(self.device).eval()
        self.lora_params = {n: p for n, p in self.decoder.named_parameters() if "lora_" in n}
        if cfg.lora_scope not in LORA_SCOPES:
            raise InvalidInputError(f"lora_scope must be one of {LORA_SCOPES}, got {cfg.lora_scope!r}")
        self.policy_from_init = False
        self._scope_mask: torch.Tensor | None = None  # [B, L, 1] during a forward when lora_scope == "chunks"
        if cfg.lora_scope == "chunks" and self.lora_params:
            for mod in self.decoder.modules():
                lora_b = getattr(mod, "lora_B", None)
                if isinstance(lora_b, torch.nn.ModuleDict) and "default" in lora_b:
                    lora_b["default"].register_forward_hook(self._scope_hook)
        for p in self.lora_params.values():
            p.requires_grad_(False)
        self.start_ids = [t for t in (tokenizer.bos_token_id if tokenizer.bos_token_id is not None
                                      else tokenizer.eos_token_id,) if t is not None]
        self.amp_dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]
        self.phase_index, self.step = 0, 0
        self.history: dict[str, dict[str, float]] = {}
        self._sft_rows: list[tuple[Row, torch.Tensor]] | None = None
        self.split_lead = True  # row_nll: the frozen leading positions' forward without gradient (_frozen_lead)

    # ------------------------------------------------------------------ parameters
    def named_trainables(self) -> dict[str, torch.nn.Parameter]:
        """Every tensor any phase trains, by a stable name (the state file's keys)."""
        out = {f"projector.{n}": p for n, p in self.projector.named_parameters()}
        out.update({f"policy.{n}": p for n, p in self.policy.named_parameters()})
        out.update({f"peft.{n}": p for n, p in self.lora_params.items()})
        if self.cfg.train_encoder:
            out.update({f"encoder.{n}": p for n, p in self.encoder.model.named_parameters()})
        return out

    def phase_groups(self, phase: str) -> list[tuple[str, list[str], float]]:
        """(group name, parameter names, peak lr) trained in ``phase``."""
        names = self.named_trainables()
        proj = [n for n in names if n.startswith("projector.")]
        enc = [n for n in names if n.startswith("encoder.")]
        lora = [n for n in names if n.startswith("peft.")]
        cfg = self.cfg
        if phase == "recon":
            groups = [("projector", proj, cfg.lr_recon), ("encoder", enc, cfg.lr_encoder)]
        elif phase in ("cpt", "mixed", "sft", "long"):
            groups = [("projector", proj, cfg.lr_projector), ("lora", lora, cfg.lr_lora),
                      ("encoder", enc, cfg.lr_encoder)]
        else:
            lr = cfg.lr_select if phase == "select" else cfg.lr_policy
            groups = [("policy", [n for n in names if n.startswith("policy.")], lr)]
        return [g for g in groups if g[1]]

    def _set_trainable(self, phase: str | None) -> None:
        names = self.named_trainables()
        for p in names.values():
            p.requires_grad_(False)
        if phase is not None:
            for _, group, _ in self.phase_groups(phase):
                for n in group:
                    names[n].requires_grad_(True)

    def _set_modes(self) -> None:
        """Every module in eval mode, at the start of every step, whatever ran before.

        No module here has dropout, but the mode still picks kernels: in eval mode without gradient the
        policy's ``nn.TransformerEncoder`` takes PyTorch's fused inference fast path, whose float rounding
        differs from the training-mode path. Freshly built modules are in train mode, a module after a step in
        whatever that step left, so a mode inherited from the previous step would make a resumed run (fresh
        modules) compute different numbers from an uninterrupted one. :func:`.rl.policy_step` then sets the
        policy's own mode explicitly."""
        for module in (self.decoder, self.encoder, self.projector, self.policy):
            module.train(False)

    def make_optimizer(self, phase: str) -> torch.optim.Optimizer:
        names = self.named_trainables()
        groups = [{"params": [names[n] for n in g], "lr": lr, "peak_lr": lr, "name": gname, "names": g}
                  for gname, g, lr in self.phase_groups(phase)]
        return torch.optim.AdamW(groups, lr=groups[0]["lr"], weight_decay=self.cfg.weight_decay, betas=(0.9, 0.98))

    def lr_factor(self, phase: str, step: int) -> float:
        total = self.cfg.steps_for(phase)
        warm = min(self.cfg.warmup, max(1, total // 10))
        if step < warm:
            return (step + 1) / warm
        p = (step - warm) / max(1, total - warm)
        r = self.cfg.min_lr_ratio
        return r + (1 - r) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))

    def init_from(self, path: str | os.PathLike) -> None:
        """Start from a REFRAG checkpoint's projector and decoder LoRA (its encoder, pooling, LoRA rank and
        scaling must be this run's); the policy starts fresh when its shape differs.

        The checkpoint may have another chunk size k: the projector (encoder vector -> decoder embedding) and the
        adapters do not depend on k, so a k = 16 checkpoint is a warm start for a k = 8 run (logged).
        """
        from ...refrag.checkpoint import load_refrag_checkpoint
        from ...refrag.lora import PREFIX

        rm = load_refrag_checkpoint(path, self.lm, self.tokenizer, device=self.device)
        want = (self.encoder.name, self.encoder.pooling)
        have = (rm.encoder_name, rm.pooling)
        if have != want:
            raise InvalidInputError(f"--init {path}: made for (encoder, pooling) = {have}, this run is {want}")
        if rm.k != self.cfg.k:
            self.log(f"--init {path}: made for k = {rm.k}; its projector and LoRA start this k = {self.cfg.k} run")
        with torch.no_grad():
            self.projector.load_state_dict(rm.projector.state_dict())
            if rm.policy is not None and rm.policy.config == self.policy.config:
                self.policy.load_state_dict(rm.policy.state_dict())
                self.policy_from_init = True  # exported even when this run trains no policy phase
            if rm.lora:
                if not self.lora_params:
                    raise InvalidInputError(f"--init {path} has decoder LoRA; this run has --lora-rank 0")
                mods = dict(self.decoder.named_modules())
                for key, val in rm.lora.items():
                    name, ab = key[len(PREFIX):].rsplit(".", 1)
                    mod = mods.get("base_model.model." + name)
                    if mod is None or "default" not in getattr(mod, "lora_A", {}):
                        raise InvalidInputError(f"--init {path}: LoRA of {name!r} has no adapter in this run")
                    if abs(float(mod.scaling["default"]) - rm.lora_scaling) > 1e-6:
                        raise InvalidInputError(f"--init {path}: LoRA scaling {rm.lora_scaling} differs from this "
                                                f"run's {mod.scaling['default']} (use its --lora-rank/--lora-alpha)")
                    target = (mod.lora_A if ab == "A" else mod.lora_B)["default"].weight
                    if target.shape != val.shape:
                        raise InvalidInputError(f"--init {path}: LoRA {key} is {tuple(val.shape)}, this run's is "
                                                f"{tuple(target.shape)} (use its --lora-rank)")
                    target.copy_(val.to(target.device, target.dtype))

    # ------------------------------------------------------------------ export
    def refrag_model(self) -> RefragModel:
        """The trained parts as the engine loads them (LoRA in :mod:`..lora` format)."""
        lora, scaling = peft_lora_state(self.decoder) if self.lora_params else ({}, 1.0)
        enc_state, tag = {}, None
        if self.cfg.train_encoder:
            enc_state = {k: v.detach().cpu().clone() for k, v in self.encoder.model.state_dict().items()}
            h = hashlib.sha256()
            for k in sorted(enc_state):
                h.update(enc_state[k].float().numpy().tobytes())
            tag = h.hexdigest()[:12]
        import copy

        trained = {p: self.history.get(p, {}).get("steps", 0) for p in self.cfg.phases}
        has_policy = trained.get("policy") or trained.get("select") or self.policy_from_init
        policy = copy.deepcopy(self.policy).cpu().eval() if has_policy else None
        return RefragModel(copy.deepcopy(self.projector).cpu().eval(), k=self.cfg.k, encoder=self.encoder.name,
                           encoder_dim=self.encoder.dim, pooling=self.encoder.pooling, policy=policy,
                           lora=lora, lora_scaling=scaling, lora_scope=self.cfg.lora_scope,
                           encoder_state=enc_state, encoder_tag=tag)

    def export(self, path: str | os.PathLike | None = None, *, metrics: dict | None = None,
               dtype: torch.dtype = torch.float16) -> Path:
        recipe = dict(self.recipe, train=asdict(self.cfg), phases_done=self.history,
                      corpus={k: v for k, v in self.corpus.meta.items() if k not in ("sources", "key")})
        return save_refrag_checkpoint(self.refrag_model(), path or self.out / EXPORT_FILE,
                                      decoder_info=self.base_info, recipe=recipe, metrics=metrics or {}, dtype=dtype)

    # ------------------------------------------------------------------ the decoder on rows
    def _scope_hook(self, module: torch.nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        """``lora_scope == "chunks"``: a LoRA branch's output counts at compressed-chunk positions only."""
        return out if self._scope_mask is None else out * self._scope_mask.to(out.dtype)

    def chunk_vectors(self, batch: Batch, grad: bool = False) -> torch.Tensor:
        """Encoder-space vectors of a batch's chunks (recomputed by the encoder when it trains)."""
        if self.cfg.train_encoder and batch.texts:
            with torch.set_grad_enabled(grad):
                return self.encoder(batch.texts)
        return batch.vectors.to(self.device)

    def row_nll(self, rows: list[Row], projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-target-token NLL, which row each belongs to, and whether the argmax was right."""
        inp = assemble(rows, projected, self.embed, self.cfg.k)
        mask = inp["attention_mask"]
        attn = None if bool(mask.all()) else mask
        ctx = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
               else torch.autocast(self.device.type, enabled=False))
        vm = inp["vector_mask"]
        lead = self._frozen_lead(vm, inp["pred_pos"])
        try:
            with ctx:
                emb, pos, cache = inp["inputs_embeds"], inp["pred_pos"], None
                if lead:  # no trainable tensor reaches these positions: one forward without gradient, then its cache
                    from transformers import DynamicCache

                    cache = DynamicCache(config=self.lm.config)
                    self._scope_mask = vm[:, :lead, None]
                    with torch.no_grad():
                        self.body(inputs_embeds=emb[:, :lead], attention_mask=None if attn is None else attn[:, :lead],
                                  cache=cache, use_cache=True)
                    emb, pos = emb[:, lead:], pos - lead
                if self.cfg.lora_scope == "chunks":
                    self._scope_mask = vm[:, lead:, None]
                h = self.body(inputs_embeds=emb, attention_mask=attn, cache=cache,
                              use_cache=cache is not None).last_hidden_state
                logits = self.head(h[inp["pred_rows"], pos])
        finally:
            self._scope_mask = None
        logits = logits.float()
        nll = F.cross_entropy(logits, inp["labels"], reduction="none")
        return nll, inp["pred_rows"], (logits.argmax(-1) == inp["labels"])

    def _frozen_lead(self, vector_mask: torch.Tensor, pred_pos: torch.Tensor) -> int:
        """How many leading positions of every row no trainable tensor reaches (0: none worth splitting off): with
        chunk-scoped adapters and a frozen encoder, the raw tokens before the first compressed chunk (a long
        row's prompt and expanded lead) read the stock decoder, so their keys and values need no gradient and
        :meth:`row_nll` computes them once without it (less memory and time; the same numbers)."""
        if not self.split_lead or self.cfg.lora_scope != "chunks" or self.cfg.train_encoder:
            return 0
        cols = vector_mask.any(0).nonzero()
        first = int(cols[0]) if len(cols) else vector_mask.shape[1]
        first = min(first, int(pred_pos.min()) if pred_pos.numel() else first)
        return first if first >= 64 else 0

    def batch_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        vecs = self.chunk_vectors(batch, grad=True)
        projected = self.projector(vecs)
        nll, _, hit = self.row_nll(batch.rows, projected)
        loss = nll.mean()
        return loss, {"loss": float(loss.detach()), "acc": float(hit.float().mean()),
                      "chunks": batch.rows[0].n_chunks, "rows": len(batch.rows)}

    # ------------------------------------------------------------------ samples per phase
    def make_batch(self, phase: str, step: int) -> Batch:
        cfg = self.cfg
        rng = step_rng(cfg.seed, phase, step)
        u = step / max(1, cfg.steps_for(phase))
        k, o, start = cfg.k, cfg.continuation, self.start_ids
        if phase == "long":
            if not self.long_examples:
                raise InvalidInputError("the long phase needs long-document training data (--long-data)")
            from .long_rows import long_batch

            return long_batch(self.long_examples, self.tokenizer, k, rng, rows=cfg.long_batch,
                              budgets=cfg.long_budgets, max_positions=cfg.long_max_positions)
        if phase == "recon":
            top = min(cfg.recon_max_chunks, self.sampler.max_chunks(0))
            n = curriculum_chunks(u, top, rng)
            count = max(1, cfg.batch_tokens // (len(start) + n * (k + 1)))
            return self.sampler.rows(rng, count, n, prefix=start, reconstruct=True)
        top = min(cfg.cpt_max_chunks, self.sampler.max_chunks(o))
        if top < 1:
            raise InvalidInputError(f"no training document has one chunk + {o} tokens")
        if phase == "cpt":
            n = curriculum_chunks(u, top, rng)
            e = 0
        else:  # mixed: mostly long contexts, mixed_fraction of the chunks uncompressed
            n = rng.randint(max(1, top // 2), top)
            e = expansion_sample(n, cfg.mixed_fraction, rng)
        count = max(1, cfg.batch_tokens // (len(start) + n - e + e * k + o))
        return self.sampler.rows(rng, count, n, continuation=o, prefix=start, n_expand=e)
