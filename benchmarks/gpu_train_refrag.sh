#!/usr/bin/env bash
# REFRAG training end to end on ONE CUDA GPU, with bigger step counts than the 2-core CPU run
# (docs/training-refrag.md): pooling comparison, reconstruction curriculum (1 -> 16 chunks), CPT
# (1 -> 32 chunks, projector + decoder LoRA), mixed (10% expanded), SFT on the training split's RAG
# prompts (self-distilled answers), the PPO expansion policy, then the held-out evaluation and the export.
#
# Budget: < 10 minutes on an H100/H200-class GPU (the whole run is wrapped in `timeout`; checkpoints every
# 250 steps, so a cut run resumes with the same command). Usage, from the repository root:
#     bash benchmarks/gpu_train_refrag.sh                    # OUT=runs/refrag-gpu
#     OUT=/tmp/r STEPS_SCALE=0.5 bash benchmarks/gpu_train_refrag.sh --pooling mean
# Extra arguments go to `python -m refrag_rasd_core.training.refrag` (later flags win).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/refrag-gpu}
DATA=${DATA:-../shared/data/spec_bench_dev.jsonl}
[ -f "$DATA" ] || { echo "$(basename "$0"): no Spec-Bench file at $DATA: set DATA=/path/to/spec_bench_dev.jsonl (the project ships no third-party data)" >&2; exit 2; }
SCALE=${STEPS_SCALE:-1}
LIMIT_S=${LIMIT_S:-570}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
steps() { $PY -c "print(max(1, int($1 * $SCALE)))"; }

$PY - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_train_refrag.sh needs a CUDA GPU (torch.cuda.is_available() is False)")
print("GPU:", torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())
PY

start=$(date +%s)
timeout "$LIMIT_S" $PY -m refrag_rasd_core.training.refrag \
    --out "$OUT" --device cuda --dtype bfloat16 --threads 8 --no-progress \
    --spec-bench "$DATA" --heldout "$DATA" --pooling auto --pooling-steps "$(steps 150)" \
    --phases recon,cpt,mixed,sft,policy \
    --steps-recon "$(steps 1500)" --steps-cpt "$(steps 1200)" --steps-mixed "$(steps 500)" \
    --steps-sft "$(steps 100)" --steps-policy "$(steps 300)" \
    --batch-tokens 2048 --recon-max-chunks 16 --cpt-max-chunks 32 --max-corpus-chunks 40000 \
    --policy-contexts 8 --policy-chunks 16 --ckpt-every 250 \
    --eval-samples 80 --eval-chunks 16 \
    --quality-out "benchmarks/results/refrag-quality/$(date +%Y-%m-%d)-gpu-k16.json" "$@"
echo "done in $(( $(date +%s) - start )) s; checkpoint: $OUT/refrag.safetensors (copy it to" \
     "core/refrag_rasd_core/checkpoints/smollm2-135m-instruct-refrag-k16.safetensors + .json to ship it)"
