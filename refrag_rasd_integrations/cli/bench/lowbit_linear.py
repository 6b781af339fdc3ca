"""What low-bit weights would buy the lean forward here: the default model's decoder linears at M rows, fp32 vs
the 4-bit kernels this torch build has.

The default target's decoder linears are Q4_1 in its GGUF file (32-value blocks, ``w = d * q + m``, q in 0..15),
so they are exactly representable as torch's groupwise int4 layout (group 32, ``w = (q - 8) * s + z`` with
``s = d``, ``z = m + 8 d``): the same weights in an eighth of the bytes. This measures, on the real weights of
all 30 layers (q/k/v/o, gate/up/down), one forward's worth of linears at M = 1 / 4 / 16 rows:

- ``fp32``: ``F.linear`` (what transformers runs);
- ``fp32_onednn``: the weights prepacked for oneDNN (one of the lean forward's backends);
- ``int4_fp32``: ``torch.ops.aten._weight_int4pack_mm_for_cpu`` with fp32 activations and scales (exact weights);
- ``int4_bf16``: the same kernel with bf16 activations, scales and output (weights' scales rounded to bf16);
- ``bf16``: ``F.linear`` on bf16 copies of the weights and activations.

It also reports how far each variant's outputs are from fp32's (max relative error over the layers), and
checks that the weights really are 4-bit groupwise. Nothing here runs in the engine yet: it is the
measurement behind the next step (see docs/benchmarks-notes.md).

Usage (from the repository root, ~1 minute on 2 cores):
    .venv/bin/python -m refrag_rasd_integrations.cli.bench.lowbit_linear [--threads 2] [--out PATH]
(default --out: benchmarks/results/lowbit-linear/<date>-<machine>-default.json)
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from refrag_rasd_integrations.cli.bench.machine import local_slug
from refrag_rasd_integrations.cli.bench.results import results_path, write_results

GROUP = 32


def int4_groupwise(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(q int32 [N, K] in 0..15, scales_and_zeros fp32 [K / 32, N, 2], max relative reconstruction error)``."""
    n, k = w.shape
    g = w.view(n, k // GROUP, GROUP)
    lo, hi = g.min(-1).values, g.max(-1).values
    d = (hi - lo) / 15
    safe = torch.where(d > 0, d, torch.ones_like(d))
    q = ((g - lo[..., None]) / safe[..., None]).round().clamp(0, 15)
    rec = q * d[..., None] + lo[..., None]
    err = float(((rec - g).abs().max() / g.abs().max()).item())
    sz = torch.stack([d, lo + 8 * d], -1).transpose(0, 1).contiguous()
    return q.view(n, k).to(torch.int32), sz, err


def timed(fn, repeats: int) -> float:
    fn()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(runs), 3)


@torch.inference_mode()
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--machine", default=local_slug(), help="machine slug for the file name (default: this one's)")
    ap.add_argument("--variant", default="default", help="the default --out's last part")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from refrag_rasd_core.models import load_target

    lm = load_target(None, device="cpu", dtype="float32")
    weights = [m.weight for name, m in lm.model.model.layers.named_modules() if isinstance(m, torch.nn.Linear)]
    quant = [int4_groupwise(w) for w in weights]
    worst = max(e for _, _, e in quant)
    packed = [torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1) for q, _, _ in quant]
    sz32 = [s for _, s, _ in quant]
    sz16 = [s.bfloat16() for s in sz32]
    w16 = [w.bfloat16() for w in weights]
    dnn = [w.to_mkldnn() for w in weights]
    res: dict = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "machine": args.machine,
                 "threads": args.threads, "torch": torch.__version__, "matrices": len(weights),
                 "params_m": round(sum(w.numel() for w in weights) / 1e6, 1),
                 "int4_reconstruction_max_rel_error": worst, "ms_per_forward_of_linears": {}, "max_rel_error": {}}
    for m in (1, 4, 16):
        xs = [torch.randn(m, w.shape[1]) for w in weights]
        xb = [x.bfloat16() for x in xs]
        variants = {
            "fp32": lambda xs=xs: [F.linear(x, w) for x, w in zip(xs, weights, strict=True)],
            "fp32_onednn": lambda xs=xs: [torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
                                          for x, w in zip(xs, dnn, strict=True)],
            "int4_bf16": lambda xb=xb: [torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, GROUP, s)
                                        for x, p, s in zip(xb, packed, sz16, strict=True)],
            "bf16": lambda xb=xb: [F.linear(x, w) for x, w in zip(xb, w16, strict=True)],
        }
        if m == 1:  # the fp32-activation int4 kernel is scalar on this build: one size is enough to show it
            variants["int4_fp32"] = lambda xs=xs: [torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, GROUP, s)
                                                   for x, p, s in zip(xs, packed, sz32, strict=True)]
        ref = variants["fp32"]()
        row = {}
        for name, fn in variants.items():
            row[name] = timed(fn, args.repeats if name != "int4_fp32" else 2)
            out = fn()
            res["max_rel_error"].setdefault(name, 0.0)
            res["max_rel_error"][name] = max(res["max_rel_error"][name], max(
                float(((o.float() - r).abs().max() / r.abs().max()).item()) for o, r in zip(out, ref, strict=True)))
        res["ms_per_forward_of_linears"][m] = row
        print(f"M={m}: " + ", ".join(f"{k} {v} ms" for k, v in row.items()), flush=True)
    print(f"int4 reconstruction max relative error {worst:.2e}; output errors vs fp32: {res['max_rel_error']}")
    out = Path(args.out) if args.out else results_path("lowbit-linear", args.variant, args.machine)
    write_results(res, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
