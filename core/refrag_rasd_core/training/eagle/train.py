"""Train an EAGLE draft head on the target's stored features (CPU or GPU), resumable.

Loss per unroll step s (EAGLE, plus EAGLE-3 / HASS "training-time test" unrolling): smooth-L1 between the
predicted and the true next feature, plus ``ce_weight`` x cross-entropy against the target's next-token
distribution restricted to the draft vocabulary (teacher = target LM head over the true next feature).
Evaluation on held-apart features: top-1 agreement with the target's greedy token and the mean accepted
length of a greedy chain of depth ``eval_depth`` (and of a top-k-per-depth tree).

The ``refrag-rasd train-draft`` command around it (features, then :func:`train_draft`) is :mod:`.cli`.

Example:
    >>> DraftTrainConfig().steps, DraftTrainConfig(unroll=2).unroll
    (3000, 2)
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ...eagle.checkpoint import save_draft_head
from ...eagle.head import DraftHead, param_count
from ...errors import InvalidInputError
from .features import FeatureStore

__all__ = ["DraftTrainConfig", "FeatureData", "choose_vocab", "evaluate", "head_loss", "train_draft"]


@dataclass
class DraftTrainConfig:
    """Hyper-parameters of :func:`train_draft` (all recorded in the checkpoint's recipe)."""

    steps: int = 3000
    seq_len: int = 256
    batch_size: int = 8
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 0.5
    unroll: int = 3
    unroll_decay: float = 0.8
    ce_weight: float = 0.1
    noise: float = 0.1
    draft_vocab_size: int = 8192
    gen_weight: float = 4.0
    eval_every: int = 250
    eval_depth: int = 5
    ckpt_every_s: float = 300.0
    time_budget_s: float | None = None
    seed: int = 0
    device: str = "cpu"
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- data
class FeatureData:
    """All training sequences in memory: tokens (long), hidden (fp16), gen mask; sampled by length."""

    def __init__(self, dirs: list[str | os.PathLike], min_len: int = 16):
        self.seqs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for d in dirs:
            for t, h, g in FeatureStore(d).iter_sequences():
                if len(t) >= min_len:
                    self.seqs.append((t, h, g))
        self.n_tokens = sum(len(s[0]) for s in self.seqs)

    def weights(self, gen_weight: float) -> list[float]:
        return [len(t) + (gen_weight - 1.0) * float(g.sum()) for t, _, g in self.seqs]

    def token_counts(self, vocab: int, gen_weight: float) -> torch.Tensor:
        c = torch.zeros(vocab, dtype=torch.float64)
        for t, _, g in self.seqs:
            w = 1.0 + (gen_weight - 1.0) * g.double()
            c.index_add_(0, t, w)
        return c

    def batch(self, rng: random.Random, weights: list[float], bsz: int, seq_len: int):
        """Random windows, right-padded to one length -> tokens, hidden, gen mask, valid mask [B, T]."""
        picks = rng.choices(range(len(self.seqs)), weights=weights, k=bsz)
        L = min(seq_len, max(len(self.seqs[i][0]) for i in picks))
        H = self.seqs[picks[0]][1].shape[1]
        toks = torch.zeros(bsz, L, dtype=torch.long)
        hids = torch.zeros(bsz, L, H, dtype=torch.float16)
        gens = torch.zeros(bsz, L, dtype=torch.bool)
        valid = torch.zeros(bsz, L, dtype=torch.bool)
        for b, i in enumerate(picks):
            t, h, g = self.seqs[i]
            n = min(L, len(t))
            s = rng.randint(0, len(t) - n)
            toks[b, :n], hids[b, :n], gens[b, :n], valid[b, :n] = t[s : s + n], h[s : s + n], g[s : s + n], True
        return toks, hids, gens, valid


def choose_vocab(data: FeatureData, target_vocab: int, size: int, gen_weight: float,
                 always: list[int] | None = None, prior_weight: float = 2.0) -> torch.Tensor:
    """The draft vocabulary: the ``size`` target ids with the highest smoothed frequency.

    Score = relative frequency in the training features (generated tokens weighted ``gen_weight``) +
    ``prior_weight`` x a Zipf prior over the id (BPE ids roughly follow merge order, so low ids are
    frequent): a small corpus misses many common tokens, and the prior fills them in (on held-apart
    answers, 8192 ids cover ~89% of the target's tokens this way vs ~85% from counts alone).
    """
    counts = data.token_counts(target_vocab, gen_weight)
    ids = torch.arange(target_vocab, dtype=torch.float64)
    prior = 1.0 / (ids + 100.0)
    score = counts / counts.sum().clamp(min=1.0) + prior_weight * prior / prior.sum()
    for i in always or []:
        score[i] = float("inf")
    size = min(size, target_vocab)
    return score.topk(size).indices.sort().values


# ---------------------------------------------------------------------------------------------- loss
def head_loss(head: DraftHead, tokens: torch.Tensor, hidden: torch.Tensor, cfg: DraftTrainConfig,
              gen: torch.Tensor | None = None, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """EAGLE loss summed over unroll steps (weights ``unroll_decay ** (s-1)``); returns (loss, stats)."""
    hidden = hidden.float()
    outs = head.forward_train(tokens, hidden, unroll=cfg.unroll, noise=cfg.noise)
    target = hidden[:, 1:]
    with torch.no_grad():
        teacher = torch.softmax(head.draft_logits(target), dim=-1)
    total = hidden.new_zeros(())
    stats: dict[str, float] = {}
    T = target.shape[1]
    for s, pred in enumerate(outs, start=1):
        in_range = torch.arange(T, device=hidden.device) >= s - 1
        w_pos = in_range.float()[None].expand(tokens.shape[0], T)
        if gen is not None:
            w_pos = w_pos * (1.0 + (cfg.gen_weight - 1.0) * gen[:, 1:].float())
        if valid is not None:  # right padding: pair i is real if position i+1 is
            w_pos = w_pos * valid[:, 1:].float()
        norm = w_pos.sum().clamp(min=1.0)
        reg = F.smooth_l1_loss(pred, target, reduction="none").mean(-1)
        logp = torch.log_softmax(head.draft_logits(pred), dim=-1)
        ce = -(teacher * logp).sum(-1)
        step_loss = ((reg + cfg.ce_weight * ce) * w_pos).sum() / norm
        total = total + cfg.unroll_decay ** (s - 1) * step_loss
        with torch.no_grad():
            acc = ((logp.argmax(-1) == teacher.argmax(-1)).float() * w_pos).sum() / norm
            stats[f"reg{s}"] = float((reg * w_pos).sum() / norm)
            stats[f"ce{s}"] = float((ce * w_pos).sum() / norm)
            stats[f"acc{s}"] = float(acc)
    return total, stats


# ---------------------------------------------------------------------------------------------- eval
@torch.no_grad()
def evaluate(head: DraftHead, seqs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], depth: int = 5,
             tree_k: tuple[int, ...] = (1, 2, 4), gen_only: bool = True, max_len: int = 1024,
             cache: dict | None = None) -> dict:
    """Top-1 agreement and mean accepted length on held-apart features (teacher-forced, greedy).

    At a root position r the drafted chain is accepted while its token at depth s equals the target's
    greedy token g_{r+s} (argmax of the FULL LM head over the true feature) and the text continues with
    that token. ``tau_k`` is the same with a top-k tree (a depth is accepted if g is among the top k).
    """
    head.eval()
    dev = head.fc.weight.device
    full_lm = head._lm_full.to(dev).float()
    n_root = 0
    top1_hit = 0
    top1_n = 0
    acc_len = {k: 0.0 for k in tree_k}
    in_vocab = 0
    for n_seq, (t, h, g) in enumerate(seqs):
        t, h, g = t[:max_len].to(dev), h[:max_len].to(dev).float(), g[:max_len].to(dev)
        T = len(t)
        if depth + 3 > T:
            continue
        outs = head.forward_train(t[None], h[None], unroll=depth)
        # greedy target token at position p (predicted from h_{p-1}); textual token matches it?
        if cache is not None and n_seq in cache:
            greedy = cache[n_seq]
        else:
            greedy = (h @ full_lm.T).argmax(-1)  # greedy[p] = target's next token after position p
            if cache is not None:
                cache[n_seq] = greedy
        ok_text = torch.zeros(T + 1, dtype=torch.bool, device=dev)
        ok_text[1:T] = t[1:] == greedy[:-1]
        # step s at pair index i predicts t_{i+2}; draft ranks
        ranks = []
        for pred in outs:
            logits = head.draft_logits(pred[0])  # [T-1, Vd]
            tgt = greedy[1:]  # greedy token for position i+2, for i in 0..T-2
            hit_cols = (head.vocab_ids[None] == tgt[:, None])
            tgt_logit = torch.where(hit_cols.any(-1), (logits * hit_cols).sum(-1), torch.full_like(tgt, -1e30,
                                                                                                    dtype=logits.dtype))
            rank = (logits > tgt_logit[:, None]).sum(-1)
            rank = torch.where(hit_cols.any(-1), rank, torch.full_like(rank, 10**9))
            ranks.append(rank)
        # roots r in 1..T-1-depth: step s uses pair index r+s-2 and target position r+s
        rk = [x.tolist() for x in ranks]
        okl = ok_text.tolist()
        gl = g.tolist()
        for r in range(1, T - depth):
            if gen_only and not gl[r]:
                continue
            n_root += 1
            for k in tree_k:
                L = 0
                for s in range(1, depth + 1):
                    i = r + s - 2
                    if rk[s - 1][i] < k and okl[r + s]:
                        L += 1
                    else:
                        break
                acc_len[k] += L
        mask = g[2:].bool() if gen_only else torch.ones(T - 2, dtype=torch.bool, device=dev)
        r1 = ranks[0][:-1]  # pair i predicts t_{i+2}, i = 0..T-3
        top1_hit += int(((r1 == 0) & mask).sum())
        top1_n += int(mask.sum())
        in_vocab += int(((ranks[0][:-1] < 10**9) & mask).sum())
    n_root = max(n_root, 1)
    res = {
        "top1_agreement": top1_hit / max(top1_n, 1),
        "greedy_in_draft_vocab": in_vocab / max(top1_n, 1),
        "eval_positions": top1_n,
        "depth": depth,
    }
    for k in tree_k:
        key = "mean_accepted_chain" if k == 1 else f"mean_accepted_top{k}_tree"
        res[key] = acc_len[k] / n_root
    res["tokens_per_step_chain"] = 1.0 + res["mean_accepted_chain"]
    return res


# ---------------------------------------------------------------------------------------------- state
def _save_state(path: Path, head: DraftHead, opt: torch.optim.Optimizer, step: int, extra: dict) -> None:
    from safetensors.torch import save_file

    tensors = {f"param.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    names = {id(p): n for n, p in head.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    tensors[f"opt.{names[id(p)]}.{key}"] = st[key].detach().cpu().contiguous()
            if "step" in st:
                extra.setdefault("opt_step", float(st["step"]))
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    meta = dict(extra, step=step)
    jt = path.with_suffix(".json.tmp")
    jt.write_text(json.dumps(meta, indent=1))
    os.replace(jt, path.with_suffix(".json"))


def _load_state(path: Path, head: DraftHead, opt: torch.optim.Optimizer) -> dict:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    meta = json.loads(path.with_suffix(".json").read_text())
    head.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("param.")})
    for n, p in head.named_parameters():
        a, b = tensors.get(f"opt.{n}.exp_avg"), tensors.get(f"opt.{n}.exp_avg_sq")
        if a is not None and b is not None:
            opt.state[p] = {"step": torch.tensor(meta.get("opt_step", meta["step"])), "exp_avg": a.to(p.device),
                            "exp_avg_sq": b.to(p.device)}
    return meta


# ---------------------------------------------------------------------------------------------- train
def _initial_head(target, init: str | os.PathLike) -> DraftHead:
    """The head to fine-tune from: ``"default"`` (the shipped checkpoint) or a checkpoint path, on CPU, fp32."""
    from ...eagle.checkpoint import load_default_draft_head, load_draft_head

    head = load_default_draft_head(target, device="cpu") if str(init) == "default" else load_draft_head(
        init, target, device="cpu")
    return head.float()


def train_draft(
    target,
    feature_dirs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    eval_dirs: list[str | os.PathLike] | None = None,
    cfg: DraftTrainConfig | None = None,
    recipe: dict | None = None,
    resume: bool = True,
    log: Callable[[str], None] = print,
    init: str | os.PathLike | None = None,
) -> dict:
    """Train a draft head for ``target`` on stored features; returns the final metrics.

    ``init``: start from a draft-head checkpoint for the same target (``"default"``: the shipped one) instead of
    random weights; its draft vocabulary is kept (fine-tuning on new data). Writes
    ``out_dir/draft_head.safetensors`` (+ .json: config, sha256, recipe, metrics) at every checkpoint interval and
    at the end, and ``out_dir/train_state.safetensors`` (+ .json) to resume.
    """
    cfg = cfg or DraftTrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    data = FeatureData(feature_dirs)
    if not data.seqs:
        raise InvalidInputError(f"no features found in {feature_dirs}: run the feature extraction first")
    eval_seqs = [s for d in (eval_dirs or []) for s in FeatureStore(d).iter_sequences()]
    log(f"data: {len(data.seqs)} sequences, {data.n_tokens} tokens; eval: {len(eval_seqs)} sequences")
    state_path = out / "train_state.safetensors"
    vocab_path = out / "vocab_ids.json"
    start = _initial_head(target, init) if init is not None else None
    if resume and vocab_path.exists():
        vocab_ids = torch.tensor(json.loads(vocab_path.read_text()))
    elif start is not None:
        vocab_ids = start.vocab_ids.detach().cpu().long()
        vocab_path.write_text(json.dumps(vocab_ids.tolist()))
    else:
        always = [i for i in (getattr(target.config, "eos_token_id", None),) if isinstance(i, int)]
        vocab_ids = choose_vocab(data, target.config.vocab_size, cfg.draft_vocab_size, cfg.gen_weight, always)
        vocab_path.write_text(json.dumps(vocab_ids.tolist()))
    dev = torch.device(cfg.device)
    head = DraftHead.for_target(target, vocab_ids=vocab_ids).to(dev)
    if start is not None:
        if not torch.equal(start.vocab_ids.cpu(), vocab_ids):
            raise InvalidInputError(f"{out} holds a run with another draft vocabulary than {init}: use a new --out")
        head.load_state_dict(start.state_dict())
        log(f"initialised from {init}")
    head.attach_target(target)
    log(f"head: {param_count(head) / 1e6:.2f} M params, draft vocab {vocab_ids.numel()}")
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    step = 0
    history: list[dict] = []
    if resume and state_path.exists():
        meta = _load_state(state_path, head, opt)
        step = int(meta["step"])
        history = meta.get("history", [])
        rng.seed(cfg.seed * 1000003 + step)
        torch.manual_seed(cfg.seed * 1000003 + step)
        log(f"resumed at step {step}")
    weights = data.weights(cfg.gen_weight)

    def lr_at(s: int) -> float:
        if s < cfg.warmup:
            return cfg.lr * (s + 1) / cfg.warmup
        p = (s - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
        if cfg.time_budget_s:  # a time-limited run decays on whichever clock runs out first
            p = max(p, (time.time() - t_start) / cfg.time_budget_s)
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))

    def checkpoint(metrics: dict) -> None:
        _save_state(state_path, head, opt, step, {"history": history})
        rec = dict(recipe or {}, train=asdict(cfg), steps_done=step, train_tokens=data.n_tokens,
                   train_sequences=len(data.seqs), wall_s=round(time.time() - t_start, 1))
        save_draft_head(head, out / "draft_head.safetensors", target=target, recipe=rec, metrics=metrics)

    last_ckpt = time.time()
    eval_cache: dict = {}
    metrics: dict = history[-1] if history else {}
    smooth: dict[str, float] = {}
    t_log = time.time()
    while step < cfg.steps:
        if cfg.time_budget_s is not None and time.time() - t_start > cfg.time_budget_s:
            log(f"time budget reached at step {step}")
            break
        head.train()
        for gparam in opt.param_groups:
            gparam["lr"] = lr_at(step)
        toks, hid, gen, valid = data.batch(rng, weights, cfg.batch_size, cfg.seq_len)
        loss, stats = head_loss(head, toks.to(dev), hid.to(dev), cfg, gen.to(dev), valid.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        stats["loss"] = float(loss.detach())
        for k, v in stats.items():
            smooth[k] = v if k not in smooth else 0.95 * smooth[k] + 0.05 * v
        if step % 25 == 0 or step == 1:
            el = time.time() - t_log
            log(f"step {step} lr {lr_at(step):.2e} " + " ".join(f"{k} {v:.3f}" for k, v in smooth.items())
                + f" ({el:.1f}s)")
            t_log = time.time()
        if eval_seqs and (step % cfg.eval_every == 0 or step == cfg.steps):
            metrics = evaluate(head, eval_seqs, depth=cfg.eval_depth, cache=eval_cache)
            metrics.update(step=step, train_loss=smooth.get("loss"), wall_s=round(time.time() - t_start, 1))
            history.append(metrics)
            log("eval " + json.dumps(metrics))
        if time.time() - last_ckpt > cfg.ckpt_every_s:
            checkpoint(metrics)
            last_ckpt = time.time()
            log(f"checkpoint at step {step}")
    if eval_seqs and (not history or history[-1].get("step") != step):
        metrics = evaluate(head, eval_seqs, depth=cfg.eval_depth, cache=eval_cache)
        metrics.update(step=step, train_loss=smooth.get("loss"), wall_s=round(time.time() - t_start, 1))
        history.append(metrics)
        log("eval " + json.dumps(metrics))
    checkpoint(metrics)
    log(f"done: step {step}, {time.time() - t_start:.0f}s")
    return metrics
