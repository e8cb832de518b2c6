"""Training throughput: samples/s per rank and the share of step time spent waiting for data.

Runs `mcq-ds train` for a few steps (any of its flags pass through; tracking off, a fresh output folder) and prints
the steady-state numbers of the last logging window. One rank:

    python -m mcq_ds.bench.train --stage demo-4f-noun --data webvid=SHARDS --loader torch --steps 20

N ranks: `deepspeed --num_gpus N --module mcq_ds.bench.train ...` (on CPU, N gloo ranks).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch.distributed as dist

from ..engine.config import add_arguments, resolve
from ..engine.train import train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps; the last half is measured")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)
    add_arguments(parser)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        args.out = args.out or tmp
        args.max_steps, args.log_every = args.steps, max(1, args.steps // 2)
        args.save_every, args.mlflow_uri, args.resume = 10 ** 9, "none", "none"
        cfg = resolve(args)
        train(cfg)
        if dist.get_rank() == 0:
            events = [json.loads(line) for line in (Path(cfg.out) / "tracking.jsonl").read_text().splitlines()]
            last = [e for e in events if e["event"] == "metrics"][-1]["metrics"]
            print(json.dumps({
                "stage": cfg.stage, "loader": cfg.loader, "ranks": dist.get_world_size(), "frames": cfg.frames,
                "global_batch": cfg.global_batch, "samples_per_s_per_rank": round(last["samples_per_second_per_gpu"], 2),
                "data_wait_share": round(last["data_wait_share"], 3)}), file=sys.stdout)


if __name__ == "__main__":
    main()
