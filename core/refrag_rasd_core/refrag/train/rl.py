"""The expansion policy's RL step: PPO's clipped objective with a GRPO-style group baseline.

For each of ``policy_contexts`` contexts of ``policy_chunks`` chunks, the current policy samples
``policy_group`` selections of ``m = floor(p * n)`` chunks (``p`` drawn from ``policy_fractions``), one chunk
after another with the chosen ones masked (:meth:`ExpansionPolicy.select`). Each selection's reward is the
negative log-perplexity of the document's next ``continuation`` tokens given the mixed input (the selected
chunks expanded in place, the rest compressed), from the trained decoder, without gradient. The advantage
is the reward minus its group's mean, divided by the group's standard deviation; the policy then takes
``ppo_epochs`` steps on ``-min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)`` with ``ratio`` the new over
the sampling-time probability of the whole ordered selection (:meth:`ExpansionPolicy.log_prob`).

One random selection per context is scored too (not trained on): the logged ``gain_vs_random`` (random's
NLL minus the policy samples' NLL) says whether the policy is learning something random choice does not.
The policy's query is the mean decoder embedding of the context's tokens (a next-paragraph sample has no
question; the engine passes the question's embeddings).

The sampling-time logits are computed with the policy in TRAINING mode (without gradient), the same code path
as the PPO epochs' forward: in eval mode without gradient ``nn.TransformerEncoder`` takes PyTorch's fused
inference fast path, whose rounding differs, so the step's numbers would depend on the mode the policy was left
in (a resumed run's fresh policy vs an uninterrupted run's) and the first epoch's ratio would not be exactly 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..policy import ExpansionPolicy
from .batches import Row

if TYPE_CHECKING:  # pragma: no cover
    from .phases import RefragTrainer

__all__ = ["policy_step", "selection_nll"]


@torch.no_grad()
def selection_nll(tr: RefragTrainer, rows: list[Row], projected_rows: torch.Tensor) -> torch.Tensor:
    """Mean target NLL of each row (no gradient)."""
    nll, owner, _ = tr.row_nll(rows, projected_rows)
    total = torch.zeros(len(rows), device=nll.device).index_add_(0, owner, nll)
    count = torch.zeros(len(rows), device=nll.device).index_add_(0, owner, torch.ones_like(nll))
    return (total / count.clamp(min=1)).cpu()


def policy_step(tr: RefragTrainer, opt: torch.optim.Optimizer, step: int) -> dict[str, Any]:
    """One PPO update of ``tr.policy``; returns the step's statistics (``loss`` = the samples' mean NLL)."""
    from .phases import _step_rng, _step_seed

    cfg = tr.cfg
    rng = _step_rng(cfg.seed, "policy", step)
    gen = torch.Generator().manual_seed(_step_seed(cfg.seed, "policy", step))
    o = cfg.continuation
    n = max(1, min(cfg.policy_chunks, tr.sampler.max_chunks(o)))
    frac = rng.choice(list(cfg.policy_fractions))
    m = max(1, min(n, int(frac * n + 1e-9)))
    batch = tr.sampler.rows(rng, cfg.policy_contexts, n, continuation=o, prefix=tr.start_ids)
    with torch.no_grad():
        vecs = tr.chunk_vectors(batch).float()
        projected = tr.projector(vecs)
    G = cfg.policy_group
    tr.policy.train()  # sampling and PPO on one code path (see the module's docstring); no dropout in it
    contexts = []
    rows: list[Row] = []
    proj_rows = []
    for c, row in enumerate(batch.rows):
        v = vecs[c * n:(c + 1) * n]
        with torch.no_grad():
            query = tr.embed(torch.tensor(row.context, device=tr.device)).float().mean(0)
            old_logits = tr.policy(v, query).float().cpu()  # sampling with a CPU generator
        sels = [ExpansionPolicy.select(old_logits, m, sample=True, generator=gen) for _ in range(G)]
        rand = torch.randperm(n, generator=gen)[:m].tolist()
        old_lp = torch.stack([ExpansionPolicy.log_prob(old_logits, s) for s in sels])
        contexts.append((v, query, sels, old_lp))
        for s in [*sels, rand]:
            rows.append(Row(prefix=row.prefix, context=row.context, n_chunks=n, target=row.target,
                            expanded=sorted(s)))
            proj_rows.append(projected[c * n:(c + 1) * n])
    nll = selection_nll(tr, rows, torch.cat(proj_rows, 0)).view(len(batch.rows), G + 1)
    reward = -nll[:, :G]
    adv = (reward - reward.mean(1, keepdim=True)) / (reward.std(1, keepdim=True) + 1e-6)
    params = [p for g in opt.param_groups for p in g["params"]]
    ppo = 0.0
    for _ in range(cfg.ppo_epochs):
        total = torch.zeros((), device=tr.device)
        ent = torch.zeros((), device=tr.device)
        for c, (v, query, sels, old_lp) in enumerate(contexts):
            logits = tr.policy(v, query)
            for g, s in enumerate(sels):
                lp = ExpansionPolicy.log_prob(logits, s)
                ratio = torch.exp(lp - old_lp[g].to(lp.device))
                a = adv[c, g].to(ratio.device, ratio.dtype)
                total = total - torch.minimum(ratio * a, ratio.clamp(1 - cfg.ppo_clip, 1 + cfg.ppo_clip) * a)
            p = torch.softmax(logits, -1)
            ent = ent - (p * torch.log(p.clamp(min=1e-12))).sum()
        loss = total / (len(contexts) * G) - cfg.entropy_coef * ent / len(contexts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tr.cfg.grad_clip)
        opt.step()
        ppo = float(loss.detach())
    tr.policy.eval()
    sampled, random_nll = float(nll[:, :G].mean()), float(nll[:, G].mean())
    return {"loss": sampled, "random_nll": random_nll, "gain_vs_random": random_nll - sampled, "ppo": ppo,
            "fraction": frac, "expanded": m, "chunks": n, "entropy": float(ent.detach()) / len(contexts)}
