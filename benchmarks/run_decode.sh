#!/usr/bin/env bash
# The decode-suite runs reported in docs/benchmarks.md: every method, rag and summarization, held-out
# questions, 128 greedy tokens, one process per category; the llama.cpp peers when llama-cpp-python is
# installed (skipped otherwise). Usage: bash benchmarks/run_decode.sh [LIMIT]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
LIMIT=${1:-5}
DATA=${DATA:-../shared/data/spec_bench_dev.jsonl}
[ -f "$DATA" ] || { echo "$(basename "$0"): no Spec-Bench file at $DATA: set DATA=/path/to/spec_bench_dev.jsonl (the project ships no third-party data)" >&2; exit 2; }
for CAT in rag summarization; do
  .venv/bin/refrag-rasd bench --suite decode --data "$DATA" --category "$CAT" --limit "$LIMIT" \
    --methods vanilla,hf,hf-pld,pld,rest,draft,rasd,llamacpp,llamacpp-pld --max-new-tokens 128 \
    --out auto --variant "$CAT"     # benchmarks/results/decode/<date>-<machine>-<category>.json
done
.venv/bin/python -m refrag_rasd_integrations.cli.bench.report
