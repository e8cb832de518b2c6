#!/usr/bin/env bash
# The whole MCQ curriculum across nodes with the DeepSpeed launcher (pdsh + passwordless ssh from this node):
# 1-frame noun questions on CC3M + WebVid, then 4-frame noun, then 4-frame verb, each stage starting from the
# previous stage's exported weights. Every stage resumes by itself (--resume latest) when rerun after a crash.
#
#   launch/curriculum.sh HOSTFILE OUT CC3M_SHARDS WEBVID_SHARDS INIT_MODEL [more `mcq-ds train` flags]
#
# INIT_MODEL is the folder `mcq-ds init` writes (timm ViT-B/16 + distilbert-base-uncased + a fresh bridge).
# Without pdsh/ssh (e.g. SLURM), run launch/node.sh once on every node instead.
set -euo pipefail
if [ $# -lt 5 ]; then sed -n '2,10p' "$0"; exit 2; fi
HOSTFILE=$1 OUT=$2 CC3M=$3 WEBVID=$4 INIT=$5
shift 5
MASTER_ADDR=${MASTER_ADDR:-$(grep -v '^#' "$HOSTFILE" | head -n1 | awk '{print $1}')}
run() { deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --module mcq_ds.cli train "$@"; }
run --stage 1f-noun --data cc3m="$CC3M" --data webvid="$WEBVID" --init "$INIT" --out "$OUT/1f-noun" "$@"
run --stage 4f-noun --data webvid="$WEBVID" --init "$OUT/1f-noun/model" --out "$OUT/4f-noun" "$@"
run --stage 4f-verb --data webvid="$WEBVID" --init "$OUT/4f-noun/model" --out "$OUT/4f-verb" "$@"
