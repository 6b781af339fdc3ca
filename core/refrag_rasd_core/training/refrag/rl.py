"""The expansion policy's training steps: PPO's clipped objective with a GRPO-style group baseline, and
a supervised warm start on QA data.

**PPO** (:func:`policy_step`). For each of ``policy_contexts`` contexts the current policy samples
``policy_group`` selections of ``m = max(1, floor(p * n))`` of its ``n`` chunks (``p`` drawn from
``policy_fractions``), one chunk after another with the chosen ones masked
(:meth:`ExpansionPolicy.select`). A context is, with QA data (``trainer.qa_examples``), a training question
with its retrieved passages in the engine's layout and the reward is the log-likelihood of the answer the
unadapted decoder gives with the full text (the sft targets); without QA data, ``policy_chunks`` chunks of a
document and the reward is the log-likelihood of its next ``continuation`` tokens. Rewards come from the
trained decoder given the mixed input (the selected chunks expanded in place, the rest compressed), without
gradient. The advantage is the reward minus its group's mean, divided by the group's standard deviation;
the policy then takes ``ppo_epochs`` steps on ``-min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) -
entropy_coef * H`` with ``ratio`` the new over the sampling-time probability of the whole ordered selection
(:meth:`ExpansionPolicy.log_prob`) and ``H`` the entropy of the first choice (the bonus that keeps the policy
from collapsing onto a position rule).

One random selection per context is scored too (not trained on): the logged ``gain_vs_random`` (random's
NLL minus the policy samples' NLL) says whether the policy is learning something random choice does not.
The policy's query is the question's encoder vector for a question-aware policy, else the mean decoder
embedding of the question turn (QA) or of the context's tokens (a next-paragraph sample has no question).

**Supervised warm start** (:func:`select_step`, the ``select`` phase): on QA examples whose passages hold a
gold answer, the listwise cross-entropy ``logsumexp(all logits) - logsumexp(logits of answer chunks)``:
the probability that the first chunk chosen holds the answer. A share ``select_shuffle`` of the rows shows
the chunks in a random order: the first-ranked passage holds the answer most often, so in rank order alone
the policy can learn "expand the first chunks" and never read them; shuffled rows pay only for content.

The sampling-time logits are computed with the policy in TRAINING mode (without gradient), the same code path
as the PPO epochs' forward: in eval mode without gradient ``nn.TransformerEncoder`` takes PyTorch's fused
inference fast path, whose rounding differs, so the step's numbers would depend on the mode the policy was left
in (a resumed run's fresh policy vs an uninterrupted run's) and the first epoch's ratio would not be exactly 1.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ...errors import InvalidInputError
from ...refrag.policy import ExpansionPolicy
from ..seeds import step_rng, step_seed
from .batches import Row
from .qa_rows import rag_row
from .trainer_view import TrainerView

__all__ = ["policy_step", "select_step", "selection_nll"]


@torch.no_grad()
def selection_nll(tr: TrainerView, rows: list[Row], projected_rows: torch.Tensor) -> torch.Tensor:
    """Mean target NLL of each row (no gradient)."""
    nll, owner, _ = tr.row_nll(rows, projected_rows)
    total = torch.zeros(len(rows), device=nll.device).index_add_(0, owner, nll)
    count = torch.zeros(len(rows), device=nll.device).index_add_(0, owner, torch.ones_like(nll))
    return (total / count.clamp(min=1)).cpu()


def _query(tr: TrainerView, row: Row | None, question_vector: torch.Tensor | None) -> torch.Tensor:
    """What the policy reads as the query of a context (see the module docstring); ``row`` may be None
    for a question-aware policy, which reads only the question's vector."""
    if tr.policy.reads_question_vector:
        if question_vector is None:
            raise InvalidInputError("a question-aware policy trains on QA data (--qa-data); none was given")
        return question_vector.to(tr.device)
    assert row is not None
    toks = row.between if row.between else row.context
    return tr.embed(torch.tensor(toks, device=tr.device)).float().mean(0)


def _contexts(tr: TrainerView, rng: Any, count: int) -> list[tuple[Row, torch.Tensor, torch.Tensor]]:
    """``count`` (row, its chunk vectors in encoder space, the policy's query) to choose expansions in."""
    if tr.qa_examples:
        data = tr.sft_rows()  # rows in qa_examples' order, targets = the teacher's answers
        out = []
        for _ in range(count):
            i = rng.randrange(len(data))
            row, vecs = data[i]
            out.append((row, vecs.to(tr.device).float(), _query(tr, row, tr.qa_examples[i].question_vector)))
        return out
    o = tr.cfg.continuation
    n = max(1, min(tr.cfg.policy_chunks, tr.sampler.max_chunks(o)))
    batch = tr.sampler.rows(rng, count, n, continuation=o, prefix=tr.start_ids)
    vecs = tr.chunk_vectors(batch).float()
    return [(row, vecs[c * n:(c + 1) * n], _query(tr, row, None)) for c, row in enumerate(batch.rows)]


def policy_step(tr: TrainerView, opt: torch.optim.Optimizer, step: int) -> dict[str, Any]:
    """One PPO update of ``tr.policy``; returns the step's statistics (``loss`` = the samples' mean NLL)."""
    cfg = tr.cfg
    rng = step_rng(cfg.seed, "policy", step)
    gen = torch.Generator().manual_seed(step_seed(cfg.seed, "policy", step))
    frac = rng.choice(list(cfg.policy_fractions))
    G = cfg.policy_group
    tr.policy.train()  # sampling and PPO on one code path (see the module's docstring); no dropout in it
    contexts = []
    rows: list[Row] = []
    proj_rows = []
    with torch.no_grad():
        picked = _contexts(tr, rng, cfg.policy_contexts)
    for row, v, query in picked:
        n = v.shape[0]
        m = max(1, min(n, int(frac * n + 1e-9)))
        with torch.no_grad():
            projected = tr.projector(v)
            old_logits = tr.policy(v, query).float().cpu()  # sampling with a CPU generator
        sels = [ExpansionPolicy.select(old_logits, m, sample=True, generator=gen) for _ in range(G)]
        rand = torch.randperm(n, generator=gen)[:m].tolist()
        old_lp = torch.stack([ExpansionPolicy.log_prob(old_logits, s) for s in sels])
        contexts.append((v, query, sels, old_lp))
        for s in [*sels, rand]:
            rows.append(replace(row, expanded=sorted(s)))
            proj_rows.append(projected)
    nll = selection_nll(tr, rows, torch.cat(proj_rows, 0)).view(len(picked), G + 1)
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
            ent = ent + _entropy(logits)
        loss = total / (len(contexts) * G) - cfg.entropy_coef * ent / len(contexts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tr.cfg.grad_clip)
        opt.step()
        ppo = float(loss.detach())
    tr.policy.eval()
    sampled, random_nll = float(nll[:, :G].mean()), float(nll[:, G].mean())
    return {"loss": sampled, "random_nll": random_nll, "gain_vs_random": random_nll - sampled, "ppo": ppo,
            "fraction": frac, "entropy": float(ent.detach()) / len(contexts)}


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, -1)
    return -(p * torch.log(p.clamp(min=1e-12))).sum()


def select_step(tr: TrainerView, opt: torch.optim.Optimizer, step: int) -> dict[str, Any]:
    """One supervised update of ``tr.policy`` toward the chunks that hold a gold answer (QA data)."""
    cfg = tr.cfg
    pool = [i for i, ex in enumerate(tr.qa_examples) if 0 < len(ex.answer_chunks) < ex.n_chunks]
    if not pool:
        raise InvalidInputError("the select phase needs QA examples whose passages hold an answer (--qa-data)")
    rng = step_rng(cfg.seed, "select", step)
    tr.policy.train()
    loss = torch.zeros((), device=tr.device)
    hits, ent = 0, 0.0
    for _ in range(cfg.select_batch):
        i = pool[rng.randrange(len(pool))]
        ex = tr.qa_examples[i]
        row = None if tr.policy.reads_question_vector else rag_row(tr.tokenizer, ex.question, ex.passages, cfg.k, [])
        vectors, answer = ex.vectors, ex.answer_chunks
        if cfg.select_shuffle > 0 and rng.random() < cfg.select_shuffle:
            order = list(range(ex.n_chunks))
            rng.shuffle(order)
            vectors = vectors[order]
            answer = [j for j, o in enumerate(order) if o in set(ex.answer_chunks)]
        logits = tr.policy(vectors.to(tr.device), _query(tr, row, ex.question_vector))
        pos = torch.tensor(answer, device=logits.device)
        loss = loss + torch.logsumexp(logits, -1) - torch.logsumexp(logits[pos], -1)
        hits += int(int(logits.argmax()) in answer)
        ent += float(_entropy(logits.detach()))
    loss = loss / cfg.select_batch
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in opt.param_groups for p in g["params"]]
    grad = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
    opt.step()
    tr.policy.eval()
    return {"loss": float(loss.detach()), "top1_hit": hits / cfg.select_batch,
            "entropy": ent / cfg.select_batch, "grad_norm": grad}
