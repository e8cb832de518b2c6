#!/usr/bin/env bash
# One node's share of a multi-node stage, for clusters without pdsh/ssh between nodes: run it on EVERY node
# (e.g. `srun --ntasks-per-node=1 launch/node.sh ...` under SLURM), each with its own NODE_RANK.
#
#   NODE_RANK=0 MASTER_ADDR=node001 launch/node.sh HOSTFILE [`mcq-ds train` flags]
#
# Under SLURM NODE_RANK defaults to $SLURM_NODEID. MASTER_ADDR must be the host of NODE_RANK 0, reachable by all.
set -euo pipefail
if [ $# -lt 1 ]; then sed -n '2,8p' "$0"; exit 2; fi
HOSTFILE=$1
shift
NODE_RANK=${NODE_RANK:-${SLURM_NODEID:?set NODE_RANK (0 on the master node)}}
: "${MASTER_ADDR:?set MASTER_ADDR to the host of node rank 0}"
exec deepspeed --hostfile "$HOSTFILE" --no_ssh --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" \
  --master_port "${MASTER_PORT:-29500}" --module mcq_ds.cli train "$@"
