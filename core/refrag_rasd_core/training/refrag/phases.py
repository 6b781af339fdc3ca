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
* ``long``   long-document summarization in the engine's layout (:mod:`.long_rows`, ``--long-data``): a whole
  training document's passages compressed, its first 512 / 1,024 / 2,048 tokens expanded (``rank``), the
  instruction, and the document's reference summary as the target.
* ``select`` supervised warm start of the expansion policy on QA data: the chunks holding a gold answer
  are the ones to expand first (listwise cross-entropy).
* ``policy`` the expansion policy, by PPO with a group baseline and an entropy bonus (:mod:`.rl`); with QA
  data the reward is the answer's likelihood given the mixed prompt, else the next paragraph's.

Every ``ckpt_every`` steps and at the end of each phase the trainable tensors, the optimizer state and the
position (phase, step) go to ``state.safetensors`` + ``state.json`` (no pickle), and the usable model to
``refrag.safetensors`` (:func:`~refrag_rasd_core.refrag.save_refrag_checkpoint`); ``resume`` continues at the
exact phase and step, with the same samples (each step's randomness is seeded by (seed, phase, step)) and the
same kernels (every module's train / eval mode is set at each step, never inherited from the step before:
:meth:`~refrag_rasd_core.training.refrag.trainer.RefragTrainer._set_modes`), so a resumed run computes bit for
bit what an uninterrupted one does.

:class:`PhaseLoop` (the loop) is a mixin of :class:`~refrag_rasd_core.training.refrag.trainer.RefragTrainer`;
the configuration is :mod:`.config`, the state files :mod:`.state`, the sft data :mod:`.sft`.

Example:
    >>> from refrag_rasd_core.training.refrag.config import PHASES
    >>> PHASES.index("recon") < PHASES.index("select") < PHASES.index("policy")   # the order phases run in
    True
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from .config import LOG_FILE
from .rl import policy_step, select_step

__all__ = ["PhaseLoop"]


class PhaseLoop:
    """The resumable loop over ``cfg.phases`` (see the module docstring)."""

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
