#!/usr/bin/env bash
# The README's main command: on a fresh machine, set up .venv, render the embedded demo data, convert it to
# shards, train the whole MCQ curriculum with the tiny model (1-frame noun → 4-frame noun → 4-frame verb), then
# evaluate zero-shot retrieval on the held-out test splits of the four benchmark layouts, fine-tune on the
# MSR-VTT-layout training split, extract embeddings and draw an attention map.
# Everything lands in demo_out/ (or $1); MLflow's local store is demo_out/runs/*/mlflow.db.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-demo_out}")
bash launch/setup_env.sh
export HF_HUB_OFFLINE=1 PATH="$(realpath "${MCQ_VENV:-.venv}")/bin:$PATH"
start=$(date +%s)

if [ ! -f "$OUT/raw/synth.json" ]; then mcq-shards synth "$OUT/raw" --msrvtt-train-videos 100 --benchmark-train-videos 0; fi
mcq-shards webvid "$OUT/raw/webvid/results_train.csv" --videos "$OUT/raw/webvid/videos" -o "$OUT/shards/webvid" --quiet
mcq-shards cc3m "$OUT/raw/cc3m/Train_GCC-training.tsv" --images "$OUT/raw/cc3m/images" -o "$OUT/shards/cc3m" --quiet
mcq-shards msrvtt "$OUT/raw/msrvtt" --test-size 100 -o "$OUT/shards/msrvtt-test" --quiet  # the demo's test split
mcq-shards msrvtt "$OUT/raw/msrvtt" --split train -o "$OUT/shards/msrvtt-train" --quiet
for SET in msvd lsmdc didemo; do
  mcq-shards $SET "$OUT/raw/$SET" --test-size 20 -o "$OUT/shards/$SET-test" --quiet
done

# both pre-trained towers keep their lower layers as they came: they are most of a step's compute, and the demo's
# few hundred clips would wear their features away (fine-tuning with them trainable fell from R@1 72 to 57)
FROZEN="--frozen-text-layers 4 --frozen-video-blocks 4"
TRAIN="--no-hflip $FROZEN --workers 1 --log-every 6 --mlflow-uri sqlite:///$OUT/mlflow.db --experiment mcq-ds-demo"
mcq-ds train --stage demo-1f-noun --data cc3m="$OUT/shards/cc3m" --data webvid="$OUT/shards/webvid" \
  --out "$OUT/runs/1f-noun" $TRAIN
mcq-ds train --stage demo-4f-noun --data webvid="$OUT/shards/webvid" --init "$OUT/runs/1f-noun/model" \
  --out "$OUT/runs/4f-noun" $TRAIN
mcq-ds train --stage demo-4f-verb --data webvid="$OUT/shards/webvid" --init "$OUT/runs/4f-noun/model" \
  --out "$OUT/runs/4f-verb" $TRAIN
MODEL="$OUT/runs/4f-verb/model"
TRACK="--mlflow-uri sqlite:///$OUT/mlflow.db --experiment mcq-ds-demo"
EVAL="--workers 1 $TRACK"  # one decoding worker: more only contend for this machine's 2 cores
mcq-ds eval "$MODEL" msrvtt="$OUT/shards/msrvtt-test" msvd="$OUT/shards/msvd-test" lsmdc="$OUT/shards/lsmdc-test" \
  didemo="$OUT/shards/didemo-test" $EVAL
# the 1-frame model on the same test set: its motion probe is the baseline for what the 4-frame stages learned
mcq-ds eval "$OUT/runs/1f-noun/model" msrvtt="$OUT/shards/msrvtt-test" $EVAL
mcq-ds train --stage demo-ft-msrvtt --init "$MODEL" --data msrvtt="$OUT/shards/msrvtt-train" \
  --eval-data "$OUT/shards/msrvtt-test" --out "$OUT/runs/ft-msrvtt" --no-hflip $FROZEN --workers 1 --log-every 6 $TRACK
python - "$OUT/runs/ft-msrvtt/model/finetuned.json" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
start, best = run["history"][0], next(h for h in run["history"] if h["step"] == run["step"])
print(f"fine-tuning on the MSR-VTT-layout training split: held-out test text->video R@1 {start['metrics']['t2v']['R@1']:.1f} "
      f"before, {best['metrics']['t2v']['R@1']:.1f} after (epoch {best['epoch']}, best R@1+R@5+R@10)")
PY
sed "s|.*|$OUT/raw/msrvtt/videos/all/&.mp4|" "$OUT/raw/msrvtt/high-quality/structured-symlinks/val_list_jsfusion.txt" \
  > "$OUT/test-videos.txt"  # the held-out test videos
mcq-ds extract "$MODEL" --list "$OUT/test-videos.txt" -o "$OUT/features" --workers 1 --quiet
mcq-ds search "$OUT/features" "a blue triangle is orbiting" --model "$MODEL" -k 5
# the attention map of the first held-out test video, asked about its own caption's shape and motion
mapfile -t ASK < <(python - "$OUT/raw/msrvtt" <<'PY'
import json, re, sys
from pathlib import Path
from mcq_shards.synth import COLOURS, MOTIONS, SHAPES
root = Path(sys.argv[1])
video = (root / "high-quality/structured-symlinks/val_list_jsfusion.txt").read_text().split()[0]
caption, verb = next((a["caption"], verb) for a in json.loads((root / "annotation/MSR_VTT.json").read_text())["annotations"]
                     if a["image_id"] == video for verb in MOTIONS.values() if verb in a["caption"])
colour = next(c for c in COLOURS if re.search(rf"\b{c}\b", caption))
shape = next(s for s in SHAPES if re.search(rf"\b{s}\b", caption))
print(root / "videos/all" / f"{video}.mp4", caption, f"{colour} {shape}", verb, sep="\n")
PY
)
mcq-ds visualize "$MODEL" "${ASK[0]}" "${ASK[1]}" --noun "${ASK[2]}" --verb "${ASK[3]}" -o "$OUT/attention.png"
echo "demo finished in $(( $(date +%s) - start )) s; MLflow: mlflow ui --backend-store-uri sqlite:///$OUT/mlflow.db"
echo "search the test videos in a web page: mcq-ds serve $OUT/features --model $MODEL  (then open http://127.0.0.1:8000/)"
