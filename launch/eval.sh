#!/usr/bin/env bash
# Zero-shot retrieval evaluation on every GPU of this machine (or several machines) with torchrun: each rank embeds
# its share of the shards, rank 0 gathers the embeddings and writes the metrics (JSON next to the checkpoint + MLflow).
#
#   launch/eval.sh MODEL SHARDS [`mcq-ds eval` flags]          e.g.  launch/eval.sh MCQ.pth shards/msrvtt_test
#
# MODEL: an exported model folder, a training run OUT (its newest checkpoint) or OUT/checkpoints/stepNNNNNNNN, or
# the original MCQ.pth. GPUS (default: all visible, 1 without a GPU) sets the ranks on this machine. Several
# machines: run it on each with NNODES, NODE_RANK and MASTER_ADDR (the host of node 0) set, as torchrun expects.
# Python: MCQ_PYTHON, else the project's environment (MCQ_VENV, default .venv in the repository), else python3.
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,10p' "$0"; exit 2; fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${MCQ_VENV:-$ROOT/.venv}
case "$VENV" in /*) ;; *) VENV=$ROOT/$VENV ;; esac
if [ -z "${MCQ_PYTHON:-}" ]; then
  if [ -x "$VENV/bin/python" ]; then MCQ_PYTHON=$VENV/bin/python; else MCQ_PYTHON=$(command -v python3); fi
fi
GPUS=${GPUS:-$("$MCQ_PYTHON" -c 'import torch; print(max(1, torch.cuda.device_count()))')}
exec "$MCQ_PYTHON" -m torch.distributed.run --nproc_per_node "$GPUS" --nnodes "${NNODES:-1}" \
  --node_rank "${NODE_RANK:-0}" --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29511}" \
  -m mcq_ds.cli eval "$@"
