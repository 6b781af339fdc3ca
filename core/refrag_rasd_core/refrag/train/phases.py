"""REFRAG's training phases: their losses, the resumable loop, the checkpoints.

Phases, in the paper's order (any subset, in this order):

* ``recon``  reconstruction: the decoder (frozen) must rebuild a sample's tokens from its chunk vectors;
  the projector learns (the encoder too with ``train_encoder``); curriculum from 1 to ``recon_max_chunks``.
* ``cpt``    continual pre-training on next-paragraph prediction: ``n`` compressed chunks, then the next
  ``continuation`` tokens are the target; projector + decoder LoRA learn; curriculum 1 -> ``cpt_max_chunks``.
* ``mixed``  the same with ``mixed_fraction`` (10%) of the chunks left uncompressed, expanded IN PLACE.
* ``sft``    instruction tuning on RAG prompts (the training split's passages + question in the engine's
  chat layout); the answers are the decoder's own greedy answers with the full text (self-distillation:
  the compressed model learns to answer as the full-context one does), made once and cached.
* ``policy`` the expansion policy, by PPO with a group baseline (:mod:`.rl`).

Every ``ckpt_every`` steps and at the end of each phase the trainable tensors, the optimizer state and the
position (phase, step) go to ``state.safetensors`` + ``state.json`` (no pickle), and the usable model to
``refrag.safetensors`` (:func:`~refrag_rasd_core.refrag.save_refrag_checkpoint`); ``resume`` continues at the
exact phase and step, with the same samples (each step's randomness is seeded by (seed, phase, step)) and the
same kernels (every module's train / eval mode is set at each step, never inherited from the step before:
:meth:`RefragTrainer._set_modes`), so a resumed run computes bit for bit what an uninterrupted one does.

Example:
    >>> TrainConfig().steps_for("recon")
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...errors import InvalidInputError
from ..checkpoint import decoder_info, save_refrag_checkpoint
from ..encoder import DEFAULT_POOLING
from ..policy import ExpansionPolicy
from ..projector import ChunkProjector
from ..refrag_model import RefragModel
from .batches import Batch, Row, WindowSampler, assemble, curriculum_chunks, expansion_sample
from .corpus import ChunkCorpus
from .lora_export import peft_lora_state, unwrap_peft

PHASES = ("recon", "cpt", "mixed", "sft", "policy")
STATE_FILE = "state.safetensors"
EXPORT_FILE = "refrag.safetensors"
LOG_FILE = "train_log.jsonl"

__all__ = ["PHASES", "RefragTrainer", "TrainConfig"]


@dataclass
class TrainConfig:
    """Hyper-parameters of every phase (all recorded in the checkpoint's recipe)."""

    phases: list[str] = field(default_factory=lambda: ["recon", "cpt", "mixed", "policy"])
    k: int = 16
    steps_recon: int = 600
    steps_cpt: int = 600
    steps_mixed: int = 300
    steps_sft: int = 0
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
    warmup: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lora_rank: int = 8
    lora_alpha: float = 16.0
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
    ppo_epochs: int = 2
    ppo_clip: float = 0.2
    entropy_coef: float = 0.0
    sft_answer_tokens: int = 48
    sft_batch: int = 2
    source_weights: dict[str, float] = field(default_factory=lambda: {"spec_bench": 4.0})
    ckpt_every: int = 50
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"           # autocast dtype of the decoder's forward (bfloat16 on a GPU)

    def steps_for(self, phase: str) -> int:
        return int(getattr(self, f"steps_{phase}"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


def _step_rng(seed: int, phase: str, step: int) -> random.Random:
    return random.Random(f"{seed}:{phase}:{step}")


def _step_seed(seed: int, phase: str, step: int) -> int:
    return int(hashlib.sha256(f"{seed}:{phase}:{step}".encode()).hexdigest()[:12], 16)


class RefragTrainer:
    """Holds the decoder (LoRA-wrapped with peft when ``lora_rank > 0``), the chunk encoder, the projector and
    the policy, and runs the phases of ``cfg.phases`` over ``corpus`` (a :class:`ChunkCorpus` of the encoder's
    vectors), writing to ``out_dir``."""

    def __init__(self, decoder: Any, tokenizer: Any, encoder: Any, corpus: ChunkCorpus, cfg: TrainConfig,
                 out_dir: str | os.PathLike, *, log: Callable[[str], None] = print, progress: bool = True,
                 sft_records: list[dict] | None = None, recipe: dict | None = None) -> None:
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
        self.policy = ExpansionPolicy(encoder.dim, H, width=cfg.policy_width,
                                      max_chunks=cfg.policy_max_chunks).to(self.device)
        self.encoder.to(self.device).eval()
        self.lora_params = {n: p for n, p in self.decoder.named_parameters() if "lora_" in n}
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
            groups = [("policy", [n for n in names if n.startswith("policy.")], cfg.lr_policy)]
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
                "config": asdict(self.cfg), "history": self.history, "recipe": self.recipe}
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
        policy = copy.deepcopy(self.policy).cpu().eval() if trained.get("policy") else None
        return RefragModel(copy.deepcopy(self.projector).cpu().eval(), k=self.cfg.k, encoder=self.encoder.name,
                           encoder_dim=self.encoder.dim, pooling=self.encoder.pooling, policy=policy,
                           lora=lora, lora_scaling=scaling, encoder_state=enc_state, encoder_tag=tag)

    def export(self, path: str | os.PathLike | None = None, *, metrics: dict | None = None,
               dtype: torch.dtype = torch.float16) -> Path:
        recipe = dict(self.recipe, train=asdict(self.cfg), phases_done=self.history,
                      corpus={k: v for k, v in self.corpus.meta.items() if k not in ("sources", "key")})
        return save_refrag_checkpoint(self.refrag_model(), path or self.out / EXPORT_FILE,
                                      decoder_info=self.base_info, recipe=recipe, metrics=metrics or {}, dtype=dtype)

    # ------------------------------------------------------------------ the decoder on rows
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
        with ctx:
            h = self.body(inputs_embeds=inp["inputs_embeds"], attention_mask=attn).last_hidden_state
            logits = self.head(h[inp["pred_rows"], inp["pred_pos"]])
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
        rng = _step_rng(cfg.seed, phase, step)
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
        """RAG rows of the training split (engine layout), answers self-distilled once (cached in out_dir)."""
        if self._sft_rows is not None:
            return self._sft_rows
        from ..context import layout_prompt
        from .corpus import record_passages

        cache = self.out / "sft_answers.jsonl"
        answers: dict[str, list[int]] = {}
        if cache.exists():
            for line in cache.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    answers[str(r["id"])] = r["answer"]
        k, rows = self.cfg.k, []
        todo = []
        for rec in self.sft_records:
            got = record_passages(rec)
            if got is None:
                continue
            passage, question = got
            question = question or "Summarize the text above."
            ids = self.tokenizer(passage, add_special_tokens=False)["input_ids"]
            ids = ids[:(len(ids) // k) * k]
            if not ids:
                continue
            lay = layout_prompt(self.tokenizer, question, [ids])
            todo.append((str(rec.get("question_id")), lay))
        missing = [(i, lay) for i, lay in todo if i not in answers]
        if missing:
            self.log(f"sft: self-distilling {len(missing)} answers with the full-text context")
            with cache.open("a", encoding="utf-8") as fh:
                for qid, lay in missing:
                    answers[qid] = self._greedy_answer(lay.full_ids())
                    fh.write(json.dumps({"id": qid, "answer": answers[qid]}) + "\n")
        eos = self.tokenizer.eos_token_id
        vec_in = [lay.passages[0] for _, lay in todo]
        vectors = self.encoder.encode_passages(vec_in) if vec_in else []
        for (qid, lay), v in zip(todo, vectors, strict=True):
            target = list(answers[qid]) + ([eos] if eos is not None else [])
            row = Row(prefix=lay.prefix, context=lay.passages[0], n_chunks=len(lay.passages[0]) // k,
                      target=target, between=lay.suffix)
            rows.append((row, torch.from_numpy(v.astype("float32"))))
        self._sft_rows = rows
        return rows

    @torch.no_grad()
    def _greedy_answer(self, prompt_ids: list[int]) -> list[int]:
        ctx = self.decoder.disable_adapter() if self.lora_params else _null()
        with ctx:
            out = self.lm.generate(torch.tensor([prompt_ids], device=self.device), max_new_tokens=self.cfg.sft_answer_tokens,
                                   do_sample=False, pad_token_id=self.tokenizer.eos_token_id)
        ans = out[0, len(prompt_ids):].tolist()
        eos = self.tokenizer.eos_token_id
        return ans[:ans.index(eos)] if eos in ans else ans

    def sft_batch(self, step: int) -> Batch:
        rng = _step_rng(self.cfg.seed, "sft", step)
        data = self.sft_rows()
        if not data:
            raise InvalidInputError("the sft phase needs RAG training records (none were given)")
        picks = [data[rng.randrange(len(data))] for _ in range(self.cfg.sft_batch)]
        rows = []
        for r, _ in picks:
            e = expansion_sample(r.n_chunks, self.cfg.mixed_fraction, rng)
            exp = sorted(rng.sample(range(r.n_chunks), e)) if e else []
            rows.append(Row(prefix=r.prefix, context=r.context, n_chunks=r.n_chunks, target=r.target,
                            expanded=exp, between=r.between))
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
            if phase == "policy":
                from .rl import policy_step
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
