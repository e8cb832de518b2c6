#!/usr/bin/env bash
# The README's main command: on a fresh machine, set up .venv, render the embedded demo data, convert it to
# shards, train the whole MCQ curriculum with the tiny model (1-frame noun → 4-frame noun → 4-frame verb), then
# evaluate zero-shot retrieval on the held-out demo test split, extract embeddings and draw an attention map.
# Everything lands in demo_out/ (or $1); MLflow's local store is demo_out/runs/*/mlflow.db.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-demo_out}")
bash launch/setup_env.sh
export HF_HUB_OFFLINE=1 PATH="$PWD/${MCQ_VENV:-.venv}/bin:$PATH"
start=$(date +%s)

if [ ! -f "$OUT/raw/synth.json" ]; then mcq-shards synth "$OUT/raw"; fi
mcq-shards webvid "$OUT/raw/webvid/results_train.csv" --videos "$OUT/raw/webvid/videos" -o "$OUT/shards/webvid" --quiet
mcq-shards cc3m "$OUT/raw/cc3m/Train_GCC-training.tsv" --images "$OUT/raw/cc3m/images" -o "$OUT/shards/cc3m" --quiet
mcq-shards msrvtt "$OUT/raw/msrvtt" --test-size 100 -o "$OUT/shards/msrvtt-test" --quiet  # the demo's test split

TRAIN="--no-hflip --schedule cosine --warmup-steps 6 --workers 1 --log-every 6 --mlflow-uri sqlite:///$OUT/mlflow.db --experiment mcq-ds-demo"
mcq-ds train --stage demo-1f-noun --data cc3m="$OUT/shards/cc3m" --data webvid="$OUT/shards/webvid" \
  --out "$OUT/runs/1f-noun" $TRAIN
mcq-ds train --stage demo-4f-noun --data webvid="$OUT/shards/webvid" --init "$OUT/runs/1f-noun/model" \
  --out "$OUT/runs/4f-noun" $TRAIN
mcq-ds train --stage demo-4f-verb --data webvid="$OUT/shards/webvid" --init "$OUT/runs/4f-noun/model" \
  --out "$OUT/runs/4f-verb" $TRAIN
MODEL="$OUT/runs/4f-verb/model"
mcq-ds eval "$MODEL" "$OUT/shards/msrvtt-test" --mlflow-uri "sqlite:///$OUT/mlflow.db" --experiment mcq-ds-demo
mcq-ds extract "$MODEL" "$OUT/raw/msrvtt/videos/all" -o "$OUT/features" --workers 1 --quiet
mcq-ds search "$OUT/features" "a blue square is sinking" --model "$MODEL" -k 5
mcq-ds visualize "$MODEL" "$OUT/raw/msrvtt/videos/all/video1.mp4" "a blue square is sinking against dots" \
  --noun "blue square" --verb "is sinking" -o "$OUT/attention.png"
echo "demo finished in $(( $(date +%s) - start )) s; MLflow: mlflow ui --backend-store-uri sqlite:///$OUT/mlflow.db"
