"""Forward + backward speed and peak memory of one MCQ training step (model only, synthetic inputs).

    python -m mcq_ds.bench.model --preset base --frames 4 --batch 8 --dtype bf16 --checkpointing

Prints samples/s, the FLOPs of the step as PyTorch counts them, achieved TFLOP/s, MFU against --peak-tflops, and
peak memory: on GPU the allocator's peak, on CPU the growth of the process's peak resident memory over what the
model and its inputs took before the first step (run one configuration per process for that reason).
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..model.presets import PRESETS, preset
from ..model import MCQ, Tokens

# Dense bf16 tensor-core peaks from NVIDIA's data sheets (no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}

# Typical lengths in tokens of WebVid/CC3M captions: caption and question ~24, answer ~8.
CAPTION_TOKENS, ANSWER_TOKENS = 24, 8


def synthetic_batch(cfg, batch: int, frames: int, device: torch.device, dtype: torch.dtype):
    size = cfg.video.img_size
    video = torch.randn(batch, frames, 3, size, size, device=device, dtype=dtype)

    def tokens(length: int) -> Tokens:
        ids = torch.randint(1000, 30000, (batch, length), device=device)
        ids[:, 0], ids[:, -1] = 101, 102
        return Tokens(ids, torch.ones_like(ids))

    return video, tokens(CAPTION_TOKENS), tokens(CAPTION_TOKENS), tokens(ANSWER_TOKENS)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    cfg = preset(args.preset)
    cfg.video.num_frames = max(cfg.video.num_frames, args.frames)
    cfg.grad_checkpointing = args.checkpointing
    model = MCQ(cfg).to(device).train()
    inputs = synthetic_batch(cfg, args.batch, args.frames, device, dtype)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = model(*inputs)
        sum(e.float().pow(2).mean() for e in out).backward()
        model.zero_grad(set_to_none=False)

    rss_before = peak_rss_bytes()  # the model and inputs; the steps' growth over it is the step's memory
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        name = torch.cuda.get_device_name()
    else:
        peak = peak_rss_bytes() - rss_before
        name = "cpu"
    with FlopCounterMode(display=False) as counter:  # last: the counting mode holds on to memory of its own
        step()
    flops = counter.get_total_flops()
    peak_tflops = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    achieved = flops / seconds / 1e12
    return {
        "device": name, "preset": args.preset, "frames": args.frames, "batch": args.batch, "dtype": args.dtype,
        "checkpointing": args.checkpointing, "samples_per_s": round(args.batch / seconds, 2),
        "step_s": round(seconds, 4), "gflop_per_sample": round(flops / args.batch / 1e9, 1),
        "achieved_tflops": round(achieved, 3), "mfu": round(achieved / peak_tflops, 3) if peak_tflops else None,
        "peak_memory_gib": round(peak / 2 ** 30, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast")
    parser.add_argument("--checkpointing", action="store_true", help="per-block activation checkpointing")
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known for H100/H200/A100)")
    print(json.dumps(run(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
