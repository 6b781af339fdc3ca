#!/usr/bin/env bash
# The three suites at default sizes on this machine (CPU): ~13 minutes on the 2-core box. Run it on a quiet
# machine (torch on 2 threads slows down badly when anything else uses the CPU).
#   bash benchmarks/run_all.sh [LIMIT_DECODE] [LIMIT_PREFILL] [LIMIT_RAG]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
DATA=${DATA:-../shared/data/spec_bench_dev.jsonl}
[ -f "$DATA" ] || { echo "$(basename "$0"): no Spec-Bench file at $DATA: set DATA=/path/to/spec_bench_dev.jsonl (the project ships no third-party data)" >&2; exit 2; }
# --out auto: benchmarks/results/<suite>/<date>-<machine>-<variant>.json (benchmarks/results/README.md)
CLI=.venv/bin/refrag-rasd
$CLI bench --suite decode --data "$DATA" --limit "${1:-2}" --out auto --variant all
$CLI bench --suite prefill --data "$DATA" --limit "${2:-2}" --out auto --variant default
$CLI bench --suite rag --data "$DATA" --limit "${3:-3}" --out auto --variant default
.venv/bin/python -m refrag_rasd_integrations.cli.bench.report
