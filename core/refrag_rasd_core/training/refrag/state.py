"""A REFRAG run's resumable state: the trainable tensors, the optimizer state and the position (phase, step) in
``state.safetensors`` + ``state.json`` (no pickle), written every ``ckpt_every`` steps and at the end of each
phase; :meth:`TrainerState.load_state` continues at the exact phase and step.

:class:`TrainerState` is a mixin of :class:`~refrag_rasd_core.training.refrag.trainer.RefragTrainer` (it reads
the trainer's ``cfg``, ``out``, ``named_trainables()``, ``phase_index``, ``step``, ``history``).

Example:
    >>> from refrag_rasd_core.training.refrag.config import STATE_FILE
    >>> STATE_FILE                     # one safetensors file per run folder: weights, optimizer, step
    'state.safetensors'
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import torch

from .config import STATE_FILE

__all__ = ["TrainerState"]


class TrainerState:
    """Saving and restoring a run's state (see the module docstring)."""

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
