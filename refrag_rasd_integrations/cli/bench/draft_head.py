"""Benchmark the EAGLE draft head: cost per drafted depth vs one target step, and acceptance.

Cost: the target (SmolLM2-135M-Instruct fp32 by default) decodes one token with a KV cache at a
512-token context; the head, synced on the same 512 tokens, scores m = 1 / 4 / 8 / 16 tree nodes in one
``expand`` (one drafted depth), plus the per-step ``sync`` of 3 newly committed tokens. Rounds are
interleaved so both see the same machine load; medians are reported.

Acceptance (greedy, held-apart text): the target's own greedy answers (128 tokens) to Spec-Bench dev
prompts with an ODD index within their category (never trained on; by default indices 5 and 7 of each
category, so also apart from the 1 and 3 used for evaluation during training). From each root position
in the answers, with the target's true features up to the root:

- ``chain``: the head's greedy chain of depth 5; accepted while it equals the target's greedy tokens.
- ``top-k tree``: a depth is accepted if the target's token is among the head's top k (a full k-ary tree:
  an upper bound for budgeted trees).
- ``dynamic tree`` (EAGLE-2 style, through the ``Drafter`` API: sync / expand_root / expand): each depth
  keeps the ``beam`` best nodes by cumulative log-prob among the children (top ``k`` each) of the previous
  depth; accepted = the longest path matching the target's greedy tokens.

A second held-out set, of the requests the engine serves most (``--rag-qa``): the target's greedy answers to
plain-RAG requests for the first ``--rag-n`` questions of NQ-open / SQuAD files (inside the 300 that draft and
REFRAG training hold out), each over its 4 retrieved passages. ``--compare CKPT`` measures a second head (e.g.
the previous one) on the same sets.

Usage (from the repository root, ~5-8 minutes on a 2-core CPU):
    PYTHONPATH=core:. python -m refrag_rasd_integrations.cli.bench.draft_head [--spec-bench PATH] [--checkpoint PATH]
        [--threads 2] [--rag-qa NQ.jsonl SQUAD.jsonl] [--compare CKPT] [--vocab-sizes 8192,16384] [--machine NAME]
        [--out PATH]
(``--spec-bench`` / ``--rag-qa`` default to ``../shared/data/`` files when they exist.)
Writes benchmarks/results/draft-head/<date>-<machine>-<variant>.json and prints a summary.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from refrag_rasd_core.eagle.checkpoint import load_default_draft_head, load_draft_head
from refrag_rasd_core.training.eagle.corpus import format_prompt
from refrag_rasd_core.training.eagle.features import (
    FeatureStore,
    extract_features,
    generate_self_distill,
    read_generations,
)
from refrag_rasd_core.training.eagle.train import evaluate
from refrag_rasd_core.training.spec_bench import spec_bench_path, spec_bench_prompts
from refrag_rasd_integrations.cli.bench.machine import local_slug
from refrag_rasd_integrations.cli.bench.results import results_path


def _median_ms(xs: list[float]) -> float:
    return round(1000 * statistics.median(xs), 3)


@torch.inference_mode()
def time_costs(model, head, ctx_ids: torch.Tensor, rounds: int = 15) -> dict:
    """Median ms of a target decode step vs the head's sync and expand at the same context."""
    from transformers import DynamicCache

    n = len(ctx_ids)
    hidden = model.model(input_ids=ctx_ids[None]).last_hidden_state[0]
    cache = DynamicCache()
    model(input_ids=ctx_ids[None, :-1], cache=cache, use_cache=True)
    tgt: list[float] = []
    exp: dict[int, list[float]] = {1: [], 4: [], 8: [], 16: []}
    sync3: list[float] = []
    root: list[float] = []
    tok = ctx_ids[-1:]
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = model(input_ids=tok[None], cache=cache, use_cache=True)
        tgt.append(time.perf_counter() - t0)
        cache.crop(-1)
        del out
        head.reset()
        head.sync(ctx_ids[: n - 3], hidden[: n - 4])
        t0 = time.perf_counter()
        head.sync(ctx_ids, hidden[n - 4 : n - 1])
        sync3.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, ids = head.expand_root(16)
        root.append(time.perf_counter() - t0)
        for m in exp:
            head.sync(ctx_ids, None)  # drop the speculative nodes
            t0 = time.perf_counter()
            head.expand(ids[:m], torch.full((m,), -1), 8)
            exp[m].append(time.perf_counter() - t0)
    step = _median_ms(tgt)
    res = {"context_tokens": n, "target_step_ms": step, "head_sync_3_tokens_ms": _median_ms(sync3),
           "head_expand_root_ms": _median_ms(root)}
    for m, xs in exp.items():
        res[f"head_expand_{m}_nodes_ms"] = _median_ms(xs)
        res[f"head_expand_{m}_nodes_vs_target_step"] = round(_median_ms(xs) / step, 4)
    return res


@torch.inference_mode()
def dynamic_tree(head, seqs, depth: int = 5, beam: int = 4, k: int = 4, stride: int = 2, max_len: int = 1024) -> dict:
    """EAGLE-2-style tree drafted through the Drafter API; mean accepted length vs the target's greedy."""
    lm_full = head._lm_full.float()
    total = 0
    n_roots = 0
    for t, h, g in seqs:
        t, h, g = t[:max_len], h[:max_len].float(), g[:max_len]
        greedy = (h @ lm_full.T).argmax(-1)  # greedy[p]: the target's token after position p
        head.reset()
        seen = 0
        T = len(t)
        for r in range(1, T - depth, stride):
            if not bool(g[r]):
                continue
            head.sync(t[: r + 1], h[seen:r])
            seen = r
            # the text continues with the target's greedy tokens? (else the path is not real)
            want = []
            for s in range(1, depth + 1):
                if int(t[r + s]) != int(greedy[r + s - 1]):
                    break
                want.append(int(greedy[r + s - 1]))
            lp, ids = head.expand_root(k)
            # frontier: list of (cum_logprob, token, parent_node_index, matched_so_far)
            cand = [(float(lp[j]), int(ids[j]), -1) for j in range(len(ids))]
            matched_parent = -1  # node index of the matched path's end (-1 = root)
            acc = 0
            offset = 0
            for s in range(1, depth + 1):
                cand.sort(key=lambda c: -c[0])
                sel = cand[:beam]
                hit = [i for i, c in enumerate(sel) if c[2] == matched_parent and s <= len(want)
                       and c[1] == want[s - 1]]
                if hit and acc == s - 1:
                    acc = s
                    matched_parent = offset + hit[0]
                if s == depth or acc < s:
                    break
                lp2, ids2 = head.expand(torch.tensor([c[1] for c in sel]), torch.tensor([c[2] for c in sel]), k)
                cand = [(sel[i][0] + float(lp2[i, j]), int(ids2[i, j]), offset + i)
                        for i in range(len(sel)) for j in range(ids2.shape[1])]
                offset += len(sel)
            total += acc
            n_roots += 1
    return {"depth": depth, "beam": beam, "top_k": k, "mean_accepted": total / max(n_roots, 1),
            "tokens_per_step": 1 + total / max(n_roots, 1), "roots": n_roots}


@torch.inference_mode()
def e2e_chain(model, head, prompt_ids: torch.Tensor, max_new: int = 64, depth: int = 4) -> dict:
    """Real greedy speculative decoding with a chain draft: the reference call order of the head.

    Per step: draft a chain with expand_root / expand, verify it in one target forward, keep the
    accepted prefix + the target's bonus token, crop the target's KV cache, then ``sync`` the head with
    the target's features of the root and the accepted drafts (the verify forward's last hidden states).
    """
    from transformers import DynamicCache

    eos = model.config.eos_token_id
    cache = DynamicCache()
    t0 = time.perf_counter()
    out = model(input_ids=prompt_ids[None], cache=cache, use_cache=True, output_hidden_states=True)
    committed = torch.cat((prompt_ids, out.logits[0, -1:].argmax(-1)))
    head.reset()
    head.sync(committed, out.hidden_states[-1][0])
    n_new, steps, accepted = 1, 0, 0
    while n_new < max_new and int(committed[-1]) != eos:
        drafts = []
        _, ids = head.expand_root(1)
        drafts.append(ids[0])
        for d in range(1, depth):
            _, ids = head.expand(drafts[-1][None], torch.tensor([d - 2]) if d > 1 else torch.tensor([-1]), 1)
            drafts.append(ids[0, 0])
        x = torch.cat((committed[-1:], torch.stack(drafts)))
        out = model(input_ids=x[None], cache=cache, use_cache=True, output_hidden_states=True)
        greedy = out.logits[0].argmax(-1)
        a = 0
        while a < depth and int(drafts[a]) == int(greedy[a]):
            a += 1
        new = torch.cat((x[1 : 1 + a], greedy[a : a + 1]))
        if depth - a > 0:
            cache.crop(-(depth - a))
        committed = torch.cat((committed, new))
        head.sync(committed, out.hidden_states[-1][0, : 1 + a])
        n_new += len(new)
        steps += 1
        accepted += a
    spec_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = model.generate(input_ids=prompt_ids[None], attention_mask=torch.ones_like(prompt_ids)[None],
                         max_new_tokens=n_new, do_sample=False)[0, len(prompt_ids):]
    plain_s = time.perf_counter() - t0
    got = committed[len(prompt_ids):]
    m = min(len(ref), len(got))
    return {"new_tokens": int(n_new), "verify_steps": steps, "mean_accepted": accepted / max(steps, 1),
            "tokens_per_verify": (n_new - 1) / max(steps, 1), "equal_to_greedy": bool(torch.equal(ref[:m], got[:m])),
            "spec_s": round(spec_s, 2), "plain_generate_s": round(plain_s, 2)}


@torch.inference_mode()
def builder_tree(head, seqs, depth: int = 5, top_k: int = 4, total_tokens: int = 16, stride: int = 2,
                 max_len: int = 1024) -> dict:
    """The package's EAGLE-2 tree builder (``rasd.draft_tree.build_draft_tree``) over this head."""
    from refrag_rasd_core.rasd.draft_tree import build_draft_tree

    lm_full = head._lm_full.float()
    total, n_roots = 0, 0
    for t, h, g in seqs:
        t, h, g = t[:max_len], h[:max_len].float(), g[:max_len]
        greedy = (h @ lm_full.T).argmax(-1)
        head.reset()
        seen = 0
        for r in range(1, len(t) - depth, stride):
            if not bool(g[r]):
                continue
            head.sync(t[: r + 1], h[seen:r])
            seen = r
            tree = build_draft_tree(head, int(t[r]), depth=depth, top_k=top_k, total_tokens=total_tokens)
            node, acc = 0, 0
            for s in range(1, depth + 1):
                if int(t[r + s]) != int(greedy[r + s - 1]):
                    break
                want = int(greedy[r + s - 1])
                kids = [i for i, p in enumerate(tree.parents) if p == node and i > 0 and tree.tokens[i] == want]
                if not kids:
                    break
                node, acc = kids[0], acc + 1
            total += acc
            n_roots += 1
    return {"builder": "build_draft_tree", "depth": depth, "top_k": top_k, "total_tokens": total_tokens,
            "mean_accepted": total / max(n_roots, 1), "tokens_per_step": 1 + total / max(n_roots, 1),
            "roots": n_roots}


def eval_features(model, tok, work: Path, indices: tuple[int, ...], path: str) -> list:
    ev = [r for r in spec_bench_prompts(path, parity=1) if r["index_in_category"] in indices]
    prompts = sorted((format_prompt(r["turns"][0], tok) for r in ev), key=len)
    generate_self_distill(model, tok, prompts, work / "gen.jsonl", max_new_tokens=128, batch_size=5)
    extract_features(model, read_generations(work / "gen.jsonl"), work / "feat", show_progress=False)
    return list(FeatureStore(work / "feat").iter_sequences())


def rag_eval_features(model, tok, work: Path, files: list[str], per_file: int) -> list:
    """The target's greedy answers (128 tokens) to held-out plain-RAG requests: the first ``per_file`` questions
    of each NQ-open / SQuAD file (inside the 300 that training holds out), each over its 4 passages retrieved
    from the whole file, laid out as the engine lays out the request."""
    from refrag_rasd_core.refrag.encoder import ChunkEncoder
    from refrag_rasd_core.training.eagle.rag_prompts import rag_training_prompts

    encoder = ChunkEncoder.load(None, tokenizer=tok)
    prompts = sorted(rag_training_prompts(tok, files, encoder, holdout=0, top_k=4, limit=per_file), key=len)
    generate_self_distill(model, tok, prompts, work / "gen_rag.jsonl", max_new_tokens=128, batch_size=8)
    extract_features(model, read_generations(work / "gen_rag.jsonl"), work / "feat_rag", show_progress=False)
    return list(FeatureStore(work / "feat_rag").iter_sequences())


def acceptance(head, sets: dict[str, list]) -> dict:
    """Teacher-forced acceptance and the package's tree builder at two budgets, per evaluation set."""
    return {name: {"teacher_forced": evaluate(head, seqs, depth=5, tree_k=(1, 2, 4)),
                   "build_draft_tree": [builder_tree(head, seqs, depth=5, top_k=4, total_tokens=16),
                                        builder_tree(head, seqs, depth=6, top_k=8, total_tokens=32)]}
            for name, seqs in sets.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None, help="draft head (default: the shipped one)")
    ap.add_argument("--target", default=None, help="target model (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spec-bench", default=None,
                    help="spec_bench_dev.jsonl (default: ../shared/data/spec_bench_dev.jsonl when it exists)")
    ap.add_argument("--indices", default="5,7", help="odd indices within each category to evaluate on")
    ap.add_argument("--eval-features", default=None, help="reuse a feature folder instead of generating")
    ap.add_argument("--e2e", type=int, default=3, help="prompts decoded end to end with a chain draft")
    ap.add_argument("--rag-qa", nargs="*", default=None,
                    help="NQ-open / SQuAD files for a held-out plain-RAG evaluation set (default: the shared "
                         "nq_open_dev.jsonl and squad_dev.jsonl when they exist; none given: skipped)")
    ap.add_argument("--rag-n", type=int, default=16, help="held-out RAG questions per --rag-qa file")
    ap.add_argument("--compare", default=None,
                    help="a second draft head (e.g. the previous one) measured on the same evaluation sets")
    ap.add_argument("--vocab-sizes", default="",
                    help="comma-separated draft vocabulary sizes to measure the same head with, extended without "
                         "retraining (DraftHead.with_vocab_size): cost per expand and acceptance per size")
    ap.add_argument("--machine", default=local_slug(), help="machine slug for the file name (default: this one's)")
    ap.add_argument("--variant", default="default", help="the default --out's last part")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    args.spec_bench = spec_bench_path(args.spec_bench)  # a clear error, before any model loads, without the file
    torch.set_num_threads(args.threads)
    from refrag_rasd_core.models import load_target

    lm = load_target(args.target, device="cpu", dtype="float32")
    model, tok = lm.model, lm.tokenizer
    head = load_draft_head(args.checkpoint, model) if args.checkpoint else load_default_draft_head(model)
    indices = tuple(int(i) for i in args.indices.split(","))
    if any(i % 2 == 0 for i in indices):
        raise SystemExit("evaluate on odd indices only: even ones are the training half")
    t0 = time.time()
    if args.eval_features:
        seqs = list(FeatureStore(args.eval_features).iter_sequences())
    else:
        with tempfile.TemporaryDirectory() as d:
            seqs = eval_features(model, tok, Path(d), indices, args.spec_bench)
    rag_files = args.rag_qa
    if rag_files is None:
        from refrag_rasd_core.shared_data import default_data_path

        rag_files = [str(p) for p in (default_data_path(n) for n in ("nq_open_dev.jsonl", "squad_dev.jsonl")) if p]
    rag_seqs: list = []
    if rag_files:
        with tempfile.TemporaryDirectory() as d:
            rag_seqs = rag_eval_features(model, tok, Path(d), rag_files, args.rag_n)
    sets = {"spec_bench_odd": seqs, **({"rag_qa_heldout": rag_seqs} if rag_seqs else {})}
    gen_s = time.time() - t0
    ctx = torch.cat([s[0] for s in seqs])[:512]
    costs = time_costs(model, head, ctx)
    acc = evaluate(head, seqs, depth=5, tree_k=(1, 2, 4))
    trees = [dynamic_tree(head, seqs, depth=5, beam=1, k=1), dynamic_tree(head, seqs, depth=5, beam=4, k=4),
             dynamic_tree(head, seqs, depth=6, beam=8, k=8)]
    trees += [builder_tree(head, seqs, depth=5, top_k=4, total_tokens=16),
              builder_tree(head, seqs, depth=6, top_k=8, total_tokens=32)]
    e2e = []
    if args.e2e:
        ev = [r for r in spec_bench_prompts(args.spec_bench, parity=1) if r["index_in_category"] in indices]
        for r in ev[: args.e2e]:
            ids = torch.tensor(tok(format_prompt(r["turns"][0], tok), add_special_tokens=False)["input_ids"][-1024:])
            e2e.append(dict(e2e_chain(model, head, ids, max_new=64, depth=4), category=r["category"]))
    res = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": args.machine,
        "threads": args.threads,
        "torch": torch.__version__,
        "checkpoint": str(args.checkpoint or "default"),
        "head_meta": {k: head.meta.get(k) for k in ("recipe", "metrics") if hasattr(head, "meta")},
        "eval": {"spec_bench_odd_indices": indices, "sequences": len(seqs),
                 "answer_tokens": int(sum(int(s[2].sum()) for s in seqs)), "generation_s": round(gen_s, 1)},
        "cost": costs,
        "acceptance_teacher_forced": acc,
        "acceptance_dynamic_tree": trees,
        "end_to_end_chain_depth4": e2e,
        "by_eval_set": acceptance(head, sets),
        "eval_sets": {name: {"sequences": len(v), "answer_tokens": int(sum(int(x[2].sum()) for x in v))}
                      for name, v in sets.items()},
    }
    if rag_files:
        res["eval_sets"]["rag_qa_heldout"]["files"] = [Path(f).name for f in rag_files]
    if args.compare:
        other = load_draft_head(args.compare, model) if args.compare != "default" else load_default_draft_head(model)
        res["compare"] = {"checkpoint": args.compare, "by_eval_set": acceptance(other, sets)}
    if args.vocab_sizes:
        res["vocab_sizes"] = {}
        for n in (int(x) for x in args.vocab_sizes.split(",")):
            twin = head.with_vocab_size(n)
            res["vocab_sizes"][str(n)] = {"cost": time_costs(model, twin, ctx), "by_eval_set": acceptance(twin, sets)}
    out = Path(args.out) if args.out else results_path("draft-head", args.variant, args.machine)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    c = costs
    print(f"target step {c['target_step_ms']} ms; head per depth: "
          + ", ".join(f"{m} nodes {c[f'head_expand_{m}_nodes_ms']} ms" for m in (1, 4, 8, 16))
          + f"; sync(3) {c['head_sync_3_tokens_ms']} ms")
    print(f"top-1 agreement {acc['top1_agreement']:.3f}; mean accepted chain(5) {acc['mean_accepted_chain']:.2f}, "
          f"top-4 tree {acc['mean_accepted_top4_tree']:.2f}; dynamic trees "
          + ", ".join(f"d{t['depth']}/b{t.get('beam', t.get('total_tokens'))}/k{t['top_k']}: {t['mean_accepted']:.2f}"
                      for t in trees))
    for e in e2e:
        print(f"e2e {e['category']}: {e['tokens_per_verify']:.2f} tokens/verify, equal {e['equal_to_greedy']}, "
              f"spec {e['spec_s']} s vs generate {e['plain_generate_s']} s")
    for who, by in [("head", res["by_eval_set"])] + ([("compare", res["compare"]["by_eval_set"])] if args.compare
                                                     else []):
        for name, r in by.items():
            tf, bt = r["teacher_forced"], r["build_draft_tree"]
            print(f"{who} on {name}: top-1 {tf['top1_agreement']:.3f}, chain(5) {tf['mean_accepted_chain']:.2f}, "
                  f"tree 16 nodes {bt[0]['tokens_per_step']:.2f} / 32 nodes {bt[1]['tokens_per_step']:.2f} "
                  "tokens per step")
    for n, r in res.get("vocab_sizes", {}).items():
        for name, e in r["by_eval_set"].items():
            tf, bt = e["teacher_forced"], e["build_draft_tree"]
            print(f"vocab {n} on {name}: top-1 {tf['top1_agreement']:.3f}, in vocab {tf['greedy_in_draft_vocab']:.3f}, "
                  f"tree 16 nodes {bt[0]['tokens_per_step']:.2f} tokens per step; expand 16 nodes "
                  f"{r['cost']['head_expand_16_nodes_ms']} ms")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
