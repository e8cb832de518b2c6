"""Throughput of the reference loader on a shard directory, with nothing else running.

    python -m mcq_ds.bench.loader SHARD_DIR --frames 4 --workers 2 --batch 20 --batches 50

Prints one JSON line: samples/s and output frames/s of the whole loader (the main process plus its workers, as
a training rank sees it), JPEG frames decoded per second (distinct stored frames: padding repeats are decoded
once), the same per worker, and the time to the first batch (worker start-up and the first fill). Compare
`samples_per_s` with the model's (`python -m mcq_ds.bench.model`) to see whether a rank would wait for data.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from ..config import TextConfig
from ..data.loader import LoaderConfig, ShardLoader
from ..model import load_tokenizer


def run(args: argparse.Namespace) -> dict:
    tokenizer = load_tokenizer(TextConfig(tokenizer=args.tokenizer))
    loader = ShardLoader(LoaderConfig(
        shards=args.shards, source=args.source, tokenizer=tokenizer, num_frames=args.frames,
        img_size=args.img_size, batch_size=args.batch, workers=args.workers, rank=0, world_size=1,
        shuffle_block=args.shuffle_block))
    start = time.perf_counter()
    batches = iter(loader)
    next(batches)
    first = time.perf_counter() - start
    for _ in range(args.warmup):
        next(batches)
    samples = decoded = skipped = 0
    start = time.perf_counter()
    for _ in range(args.batches):
        batch = next(batches)
        samples += len(batch)
        decoded += sum(len(set(row)) for row in batch.extra["frames"].tolist())
        skipped += batch.skipped
    seconds = time.perf_counter() - start
    processes = max(1, args.workers)
    return {
        "shards": str(args.shards), "samples_in_shards": loader.num_samples,
        "frames": args.frames, "img_size": args.img_size, "batch": args.batch, "workers": args.workers,
        "cpus": os.cpu_count(), "samples_per_s": round(samples / seconds, 1),
        "frames_per_s": round(samples * args.frames / seconds, 1), "decoded_frames_per_s": round(decoded / seconds, 1),
        "samples_per_s_per_worker": round(samples / seconds / processes, 1),
        "decoded_frames_per_s_per_worker": round(decoded / seconds / processes, 1),
        "first_batch_s": round(first, 2), "skipped": skipped,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", help="a shard directory (manifest.json) or a brace-expanded tar pattern")
    parser.add_argument("--source", default="bench", help="source name carried by the batches")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=20, help="samples per batch")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (0: in this process)")
    parser.add_argument("--batches", type=int, default=50, help="timed batches")
    parser.add_argument("--warmup", type=int, default=5, help="batches after the first, not timed")
    parser.add_argument("--shuffle-block", type=int, default=256)
    parser.add_argument("--tokenizer", help="tokenizer folder or vocab.txt (default: the offline bert vocab)")
    print(json.dumps(run(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
