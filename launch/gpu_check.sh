#!/usr/bin/env bash
# The one GPU check (mcq_ds/bench/gpu_check.py): GPU-only tests and every benchmark into OUT/gpu_check.json and
# OUT/gpu_check.md, with the card and the date. On a fresh GPU machine this also sets up .venv first.
#   bash launch/gpu_check.sh [OUT]          (default gpu_check/)
#   bash launch/gpu_check.sh --cpu [OUT]    toy sizes on the CPU, what CI runs
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=()
if [ "${1:-}" = "--cpu" ]; then MODE=(--cpu); shift; fi
OUT=$(realpath -m "${1:-gpu_check}")
if [ -z "${MCQ_PYTHON:-}" ]; then
  bash launch/setup_env.sh
  MCQ_PYTHON="$PWD/${MCQ_VENV:-.venv}/bin/python"
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
HF_HUB_OFFLINE=1 exec "$MCQ_PYTHON" -m mcq_ds.bench.gpu_check -o "$OUT" "${MODE[@]}"
