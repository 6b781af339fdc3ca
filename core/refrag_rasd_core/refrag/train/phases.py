"""REFRAG's training phases: their losses, the resumable loop, the checkpoints.

Phases, in the paper's order (any subset, in this order):

* ``recon``  reconstruction: the decoder (frozen) must rebuild a sample's tokens from its chunk vectors;
  the projector learns (the encoder too with ``train_encoder``); curriculum from 1 to ``recon_max_chunks``.
* ``cpt``    continual pre-training on next-paragraph prediction: ``n`` compressed chunks, then the next
  ``continuation`` tokens are the target; projector + decoder LoRA learn; curriculum 1 -> ``cpt_max_chunks``.
* ``mixed``  the same with ``mixed_fraction`` (10%) of the chunks left uncompressed, expanded IN PLACE.
* ``sft``    instruction tuning on RAG prompts in the engine's layout (:func:`.qa_rows.rag_row`): with QA data
  (``qa_examples``, :mod:`.qa_rows`) each training question with its retrieved passages, else the Spec-Bench
  training split's passages + question; the chunks are compressed, a random share (0, 10% or 25%) of them
  expanded in place; the targets are the UNADAPTED decoder's greedy answers with the full text
  (self-distillation: the compressed model learns to answer as plain RAG does), made once and cached.
* ``select`` supervised warm start of the expansion policy on QA data: the chunks holding a gold answer
  are the ones to expand first (listwise cross-entropy).
* ``policy`` the expansion policy, by PPO with a group baseline and an entropy bonus (:mod:`.rl`); with QA
  data the reward is the answer's likelihood given the mixed prompt, else the next paragraph's.

Every ``ckpt_every`` steps and at the end of each phase the trainable tensors, the optimizer state and the
position (phase, step) go to ``state.safetensors`` + ``state.json`` (no pickle), and the usable model to
``refrag.safetensors`` (:func:`~refrag_rasd_core.refrag.save_refrag_checkpoint`); ``resume`` continues at the
exact phase and step, with the same samples (each step's randomness is seeded by (seed, phase, step)) and the
same kernels (every module's train / eval mode is set at each step, never inherited from the step before:
:meth:`RefragTrainer._set_modes`), so a resumed run computes bit for bit what an uninterrupted one does.

Example:
    >>> RefragTrainConfig().steps_for("recon")
    600
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...errors import InvalidInputError
from ..checkpoint import decoder_info, save_refrag_checkpoint
from ..encoder import DEFAULT_POOLING
from ..policy import ExpansionPolicy
from ..projector import ChunkProjector
from ..refrag_model import LORA_SCOPES, RefragModel
from .batches import Batch, Row, WindowSampler, assemble, curriculum_chunks, expansion_sample
from .corpus import ChunkCorpus
from .lora_export import peft_lora_state, unwrap_peft

PHASES = ("recon", "cpt", "mixed", "sft", "select", "policy")
STATE_FILE = "state.safetensors"
EXPORT_FILE = "refrag.safetensors"
LOG_FILE = "train_log.jsonl"

__all__ = ["PHASES", "RefragTrainer", "RefragTrainConfig"]


@dataclass
class RefragTrainConfig:
    """Hyper-parameters of every phase (all recorded in the checkpoint's recipe)."""

    phases: list[str] = field(default_factory=lambda: ["recon", "cpt", "mixed", "policy"])
    k: int = 16
    steps_recon: int = 600
    steps_cpt: int = 600
    steps_mixed: int = 300
    steps_sft: int = 0
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


def step_rng(seed: int, phase: str, step: int) -> random.Random:
    """The random source of one training step (a resumed run draws what an uninterrupted one would)."""
    return random.Random(f"{seed}:{phase}:{step}")


def step_seed(seed: int, phase: str, step: int) -> int:
    """A torch generator seed for one training step (see :func:`step_rng`)."""
    return int(hashlib.sha256(f"{seed}:{phase}:{step}".encode()).hexdigest()[:12], 16)


class RefragTrainer:
    """Holds the decoder (LoRA-wrapped with peft when ``lora_rank > 0``), the chunk encoder, the projector and
    the policy, and runs the phases of ``cfg.phases`` over ``corpus`` (a :class:`ChunkCorpus` of the encoder's
    vectors), writing to ``out_dir``."""

    def __init__(self, decoder: Any, tokenizer: Any, encoder: Any, corpus: ChunkCorpus, cfg: RefragTrainConfig,
                 out_dir: str | os.PathLike, *, log: Callable[[str], None] = print, progress: bool = True,
                 sft_records: list[dict] | None = None, recipe: dict | None = None,
                 qa_examples: list[Any] | None = None) -> None:
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
        elif phase in ("cpt", "mixed", "sft"):
            groups = [("projector", proj, cfg.lr_projector), ("lora", lora, cfg.lr_lora), ("encoder", enc, cfg.lr_encoder)]
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
        from ..checkpoint import load_refrag_checkpoint
        from ..lora import PREFIX

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

    # ------------------------------------------------------------------ state
    def save_state(self, opt: torch.optim.Optimizer | None) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.named_trainables().items()}
        if opt is not None:
            for group in opt.param_groups:
                for n, p in zip(group["names"], group["params"], strict=True):
                    for key, val in opt.state.get(p, {}).items():
                        if torch.is_tensor(val):
                            tensors[f"opt.{n}.{key}"] = val.detach().cpu().reshape(val.shape).contiguous()
        path = self.out / STATE_FILE
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        meta = {"phase_index": self.phase_index, "phase": self._phase_name(), "step": self.step,
                "config": asdict(self.cfg), "history": self.history, "recipe": self.recipe,
                "policy_from_init": self.policy_from_init}
        jtmp = path.with_suffix(".json.tmp")
        jtmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, path)
        os.replace(jtmp, path.with_suffix(".json"))

    def load_state(self) -> bool:
        """Restore from ``out_dir/state.*``; returns whether there was one."""
        from safetensors.torch import load_file

        path = self.out / STATE_FILE
        if not (path.exists() and path.with_suffix(".json").exists()):
            return False
        meta = json.loads(path.with_suffix(".json").read_text())
        tensors = load_file(str(path))
        with torch.no_grad():
            for n, p in self.named_trainables().items():
                if n in tensors:
                    p.copy_(tensors[n].to(p.device, p.dtype))
        self.phase_index, self.step = int(meta["phase_index"]), int(meta["step"])
        self.history = meta.get("history", {})
        self.policy_from_init = bool(meta.get("policy_from_init", False))
        self._pending_opt = {k[4:]: v for k, v in tensors.items() if k.startswith("opt.")}
        return True

    def _restore_opt(self, opt: torch.optim.Optimizer) -> None:
        pending = getattr(self, "_pending_opt", None) or {}
        for group in opt.param_groups:
            for n, p in zip(group["names"], group["params"], strict=True):
                st = {key: pending[f"{n}.{key}"].to(p.device) for key in ("step", "exp_avg", "exp_avg_sq")
                      if f"{n}.{key}" in pending}
                if st:
                    opt.state[p] = st
        self._pending_opt = {}

    def _phase_name(self) -> str | None:
        return self.cfg.phases[self.phase_index] if self.phase_index < len(self.cfg.phases) else None

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
        if self.cfg.lora_scope == "chunks":
            self._scope_mask = inp["vector_mask"][..., None]
        try:
            with ctx:
                h = self.body(inputs_embeds=inp["inputs_embeds"], attention_mask=attn).last_hidden_state
                logits = self.head(h[inp["pred_rows"], inp["pred_pos"]])
        finally:
            self._scope_mask = None
        logits = logits.float()
        nll = F.cross_entropy(logits, inp["labels"], reduction="none")
        return nll, inp["pred_rows"], (logits.argmax(-1) == inp["labels"])

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

    # ------------------------------------------------------------------ SFT data
    def sft_rows(self) -> list[tuple[Row, torch.Tensor]]:
        """RAG rows in the engine's layout (QA examples, else the Spec-Bench training records), with their
        chunk vectors; the targets are the unadapted decoder's full-text answers (made once, cached)."""
        if self._sft_rows is not None:
            return self._sft_rows
        from .corpus import record_passages
        from .qa_rows import rag_row

        k = self.cfg.k
        todo: list[tuple[str, str, list[list[int]], torch.Tensor]] = []
        for ex in self.qa_examples:
            todo.append((ex.qid, ex.question, ex.passages, ex.vectors))
        if not self.qa_examples:
            recs = []
            for rec in self.sft_records:
                got = record_passages(rec)
                if got is not None:
                    ids = self.tokenizer(got[0], add_special_tokens=False)["input_ids"]
                    if ids:
                        recs.append((str(rec.get("question_id")), got[1] or "Summarize the text above.", [ids]))
            vecs = self.encoder.encode_passages([r[2][0] for r in recs]) if recs else []
            todo = [(q, qu, p, torch.from_numpy(v.astype("float32"))) for (q, qu, p), v in zip(recs, vecs, strict=True)]
        answers = self.teacher_answers([(qid, rag_row(self.tokenizer, q, p, k, []).prompt_ids(k))
                                        for qid, q, p, _ in todo])
        eos = self.tokenizer.eos_token_id
        rows = []
        for qid, q, p, v in todo:
            ans, ended = answers[qid]
            rows.append((rag_row(self.tokenizer, q, p, k, list(ans) + ([eos] if ended and eos is not None else [])), v))
        self._sft_rows = rows
        return rows

    def teacher_answers(self, prompts: list[tuple[str, list[int]]], batch: int = 8
                        ) -> dict[str, tuple[list[int], bool]]:
        """The unadapted decoder's greedy answers (and whether they ended with EOS) to full-text prompts,
        cached in ``out_dir/sft_answers.jsonl`` (appended as they come, so an interrupted run keeps them)."""
        cache = self.out / "sft_answers.jsonl"
        got: dict[str, tuple[list[int], bool]] = {}
        if cache.exists():
            for line in cache.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    got[str(r["id"])] = (r["answer"], bool(r.get("ended", True)))
        missing = [(i, p) for i, p in prompts if i not in got]
        if missing:
            self.log(f"sft: the unadapted decoder answers {len(missing)} prompts with the full text (teacher)")
            bar = None
            if self.progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(missing), desc="teacher answers", unit="q", mininterval=10.0)
            missing.sort(key=lambda x: len(x[1]))  # similar lengths per batch: little padding
            with cache.open("a", encoding="utf-8") as fh:
                for s in range(0, len(missing), batch):
                    part = missing[s:s + batch]
                    for (qid, _), ans in zip(part, self._greedy_answers([p for _, p in part]), strict=True):
                        got[qid] = ans
                        fh.write(json.dumps({"id": qid, "answer": ans[0], "ended": ans[1]}) + "\n")
                    fh.flush()
                    if bar:
                        bar.update(len(part))
            if bar:
                bar.close()
        return got

    @torch.no_grad()
    def _greedy_answers(self, prompts: list[list[int]]) -> list[tuple[list[int], bool]]:
        """Greedy answers of the unadapted decoder to a batch of prompts (left-padded)."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), int(pad), dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, width - len(p):] = torch.tensor(p)
            mask[b, width - len(p):] = 1
        ctx = self.decoder.disable_adapter() if self.lora_params else _null()
        with ctx:
            out = self.lm.generate(ids.to(self.device), attention_mask=mask.to(self.device),
                                   max_new_tokens=self.cfg.sft_answer_tokens, do_sample=False, pad_token_id=int(pad))
        eos = self.tokenizer.eos_token_id
        res = []
        for b in range(len(prompts)):
            ans = out[b, width:].tolist()
            ended = eos in ans
            res.append((ans[:ans.index(eos)] if ended else ans, ended))
        return res

    def sft_batch(self, step: int) -> Batch:
        rng = step_rng(self.cfg.seed, "sft", step)
        data = self.sft_rows()
        if not data:
            raise InvalidInputError("the sft phase needs RAG training data (--qa-data or the Spec-Bench records)")
        picks = [data[rng.randrange(len(data))] for _ in range(self.cfg.sft_batch)]
        rows = []
        for r, _ in picks:
            frac = rng.choice(list(self.cfg.sft_fractions)) if self.qa_examples else self.cfg.mixed_fraction
            e = expansion_sample(r.n_chunks, frac, rng)
            rows.append(replace(r, expanded=sorted(rng.sample(range(r.n_chunks), e)) if e else []))
        return Batch(rows=rows, vectors=torch.cat([v for _, v in picks], 0))

    # ------------------------------------------------------------------ the loop
    def _log_step(self, rec: dict[str, Any]) -> None:
        with open(self.out / LOG_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")

    def run(self, *, resume: bool = True, stop_after: int | None = None) -> dict[str, Any]:
        """Run the remaining phases; ``stop_after`` ends this call after that many steps (a checkpoint is
        written), as an interruption would. Returns the history (per phase: steps, first / last losses)."""
        if resume and self.load_state():
            self.log(f"resumed at phase {self._phase_name()!r} step {self.step}")
        done_here = 0
        while self.phase_index < len(self.cfg.phases):
            phase = self._phase_name()
            assert phase is not None
            total = self.cfg.steps_for(phase)
            self._set_trainable(phase)
            opt = self.make_optimizer(phase)
            self._restore_opt(opt)
            hist = self.history.setdefault(phase, {"steps": 0, "first": [], "last": []})
            t_phase = time.time()
            bar = None
            if self.progress and self.step < total:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, initial=self.step, desc=phase, unit="step", mininterval=5.0)
            if phase in ("policy", "select"):
                from .rl import policy_step, select_step
            while self.step < total:
                if stop_after is not None and done_here >= stop_after:
                    self.save_state(opt)
                    if bar:
                        bar.close()
                    return self.history
                for g in opt.param_groups:
                    g["lr"] = g["peak_lr"] * self.lr_factor(phase, self.step)
                t0 = time.time()
                self._set_modes()
                if phase == "policy":
                    stats = policy_step(self, opt, self.step)
                elif phase == "select":
                    stats = select_step(self, opt, self.step)
                else:
                    batch = self.sft_batch(self.step) if phase == "sft" else self.make_batch(phase, self.step)
                    loss, stats = self.batch_loss(batch)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    params = [p for g in opt.param_groups for p in g["params"]]
                    stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip))
                    opt.step()
                self.step += 1
                done_here += 1
                rec = {"phase": phase, "step": self.step, "lr": opt.param_groups[0]["lr"],
                       "time_s": round(time.time() - t0, 3), **stats}
                self._log_step(rec)
                if len(hist["first"]) < 20:
                    hist["first"].append(stats["loss"])
                hist["last"] = (hist["last"] + [stats["loss"]])[-20:]
                hist["steps"] = self.step
                if bar:
                    bar.update(1)
                    bar.set_postfix(loss=f"{stats['loss']:.3f}")
                if self.step % 25 == 0 or self.step == 1:
                    self.log(f"{phase} step {self.step}/{total} " + " ".join(
                        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()))
                if self.step % self.cfg.ckpt_every == 0 and self.step < total:
                    self.save_state(opt)
                    self.export()
            if bar:
                bar.close()
            hist["wall_s"] = round(hist.get("wall_s", 0.0) + time.time() - t_phase, 1)
            self.phase_index += 1
            self.step = 0
            self.save_state(None)
            self.export()
            self.log(f"phase {phase} done: loss {_mean(hist['first'][:5]):.4f} -> {_mean(hist['last'][-5:]):.4f}")
        self._set_trainable(None)
        return self.history


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None
