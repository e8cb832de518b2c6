"""Forward + backward speed, model FLOPs utilisation and peak memory of one MCQ training step (model only, synthetic
inputs), in the configuration `mcq-ds train` runs on this machine by default:

    python -m mcq_ds.bench.model                  # base model, 4 frames, 2 samples, the training default's dtype
    python -m mcq_ds.bench.model --preset base --frames 4 --batch 20 --dtype bf16   # the paper's GPU step

`--dtype auto` (the default) is what training picks without `--ds-config`: bf16 on a GPU and on a CPU with bf16 units
(AVX512-BF16 or AMX), fp32 on other CPUs. `bf16` is what the bf16 DeepSpeed configs train: bf16 weights and inputs
(DeepSpeed casts the model; there is no autocast), the fp32 master copy living in the optimizer. `fp32` runs fp32
weights; on a GPU its matmuls use TF32 unless `--no-tf32`.

With MCQ_ORIGINAL_REPO naming a checkout of TencentARC/MCQ, the original implementation's fp32 step on the same inputs
is timed in the same run (interleaved with ours, step by step, so both see the same machine) and the speed-up printed.

MFU = model FLOPs of the step / step time / the device's dense peak for the math the matmuls run in. Model FLOPs are
forward + backward without recompute, counted once on the meta device (`model.probe.train_flops`): under
`--checkpointing` the GPU also recomputes every block's forward, which is work the hardware does, not work the model
needs. On a GPU the peak comes from the table below, by `torch.cuda.get_device_name()` and the SM count (an H100 PCIe
has 114 SMs, an SXM 132), for bf16 tensor cores, TF32 tensor cores or plain FP32. A CPU has no datasheet peak we could
look up, so there the peak is measured in the same run: the best of a few 2048 × 2048 matrix products in the step's
dtype, on the same threads (`achieved / measured peak`). `--peak-tflops` overrides either.

Peak memory: on GPU the allocator's peak, on CPU the growth of the process's peak resident memory over what the
model and its inputs took before the first step (run one configuration per process for that reason; with the
original beside it, its memory is left out).
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import time
from typing import NamedTuple

import torch

from ..model import create_model
from ..model.presets import CLIP_PRESETS, PRESETS, preset
from ..model.probe import example_inputs, train_flops
from ..runtime import cpu_has_native_bf16
from .original import checkout, original_step


class Peak(NamedTuple):
    """Dense tensor-core peaks in TFLOP/s (NVIDIA's datasheets quote bf16 and TF32 with 2:4 sparsity, twice these)."""

    card: str
    bf16: float
    tf32: float
    fp32: float


# First match on the device name wins (GH200 before H200, L40S before L4).
PEAKS = (
    (r"GH200", Peak("GH200", 989.4, 494.7, 66.9)),
    (r"H200 NVL", Peak("H200 NVL", 835.5, 417.5, 60.0)),
    (r"H200", Peak("H200 SXM", 989.4, 494.7, 66.9)),
    (r"H100 NVL", Peak("H100 NVL", 835.5, 417.5, 60.0)),
    (r"H100 PCIe", Peak("H100 PCIe", 756.5, 378.0, 51.2)),
    (r"H100", Peak("H100 SXM", 989.4, 494.7, 66.9)),
    (r"A100", Peak("A100", 312.0, 156.0, 19.5)),  # SXM4 and PCIe, 40 and 80 GB: the same peaks
    (r"L40S", Peak("L40S", 362.05, 183.0, 91.6)),
    (r"\bL4\b", Peak("L4", 121.0, 60.0, 30.3)),
    (r"\bA40\b", Peak("A40", 149.7, 74.8, 37.4)),
    (r"\bA10\b", Peak("A10", 125.0, 62.5, 31.2)),
)
H100_PCIE_SMS = 114


def card_peak(name: str, sm_count: int | None = None) -> Peak | None:
    """The peaks of the card `torch.cuda.get_device_name()` calls `name` (None for a card not in the table). An H100
    whose name does not say PCIe but has a PCIe card's 114 SMs is one."""
    for pattern, peak in PEAKS:
        if re.search(pattern, name):
            if peak.card == "H100 SXM" and sm_count == H100_PCIE_SMS:
                return next(p for pat, p in PEAKS if p.card == "H100 PCIe")
            return peak
    return None


def matmul_math(dtype: torch.dtype, tf32: bool) -> str:
    """The math the step's matrix products run in: bf16 weights → bf16 tensor cores; fp32 → TF32 when allowed."""
    if dtype == torch.bfloat16:
        return "bf16"
    return "tf32" if tf32 else "fp32"


def mfu(flops: float, seconds: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: the model's FLOPs per second over the device's peak FLOPs per second."""
    return flops / seconds / (peak_tflops * 1e12)


def default_dtype(device: torch.device) -> str:
    """The dtype `mcq-ds train` trains in on `device` without --ds-config (engine.config.default_ds_config)."""
    return "bf16" if device.type == "cuda" or cpu_has_native_bf16() else "fp32"


def measured_matmul_tflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """This CPU's matrix-product rate in `dtype` on the current threads: the best of `repeats` size² products."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # oneDNN picks and packs its kernel on the first call
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e12


def timed(steps: list, warmup: int, repeats: int, sync) -> list[float]:
    """Seconds per call of each of `steps`, run in turn `repeats` times after `warmup` rounds, so that load from
    elsewhere falls on all of them alike."""
    for _ in range(warmup):
        for step in steps:
            step()
    totals = [0.0] * len(steps)
    for _ in range(repeats):
        for k, step in enumerate(steps):
            sync()
            start = time.perf_counter()
            step()
            sync()
            totals[k] += time.perf_counter() - start
    return [t / repeats for t in totals]


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(args: argparse.Namespace) -> list[dict]:
    """One record for our step, and one for the original's (with our speed-up over it) when MCQ_ORIGINAL_REPO is
    set."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype_name = default_dtype(device) if args.dtype == "auto" else args.dtype
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high" if args.tf32 else "highest")
    torch.manual_seed(0)
    cfg = preset(args.preset)
    cfg.video.num_frames = max(cfg.video.num_frames, args.frames)
    cfg.grad_checkpointing = args.checkpointing
    model = create_model(cfg).to(device, dtype).train()
    model.set_grad_checkpointing(args.checkpointing)
    inputs = example_inputs(cfg, args.batch, args.frames, device, dtype)
    flops = train_flops(model, inputs, dtype)

    def step():
        out = model(*inputs)
        sum(e.float().pow(2).mean() for e in out if e is not None).backward()
        model.zero_grad(set_to_none=False)

    steps = [step]
    repo = checkout()
    if repo is not None:
        if args.preset in CLIP_PRESETS:
            raise SystemExit("the original implementation is the BridgeFormer (DistilBERT) model: use --preset base")
        steps.append(original_step(repo, cfg, example_inputs(cfg, args.batch, args.frames, device, torch.float32)))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    rss_before = peak_rss_bytes()  # the model and inputs; the steps' growth over it is the step's memory
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(steps, args.warmup, args.steps, sync)
    math = matmul_math(dtype, args.tf32 and device.type == "cuda")
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated()
        name = torch.cuda.get_device_name(device)
        peak = card_peak(name, torch.cuda.get_device_properties(device).multi_processor_count)
        peak_tflops, peak_source = (getattr(peak, math), f"{peak.card} datasheet") if peak else (None, None)
    else:
        memory, name, peak = peak_rss_bytes() - rss_before, "cpu", None
        peak_tflops = round(measured_matmul_tflops(dtype), 3)
        peak_source = f"measured: 2048² {dtype_name} matmul, {torch.get_num_threads()} threads"
    if args.peak_tflops:
        peak_tflops, peak_source = args.peak_tflops, "--peak-tflops"
    ours = {
        "implementation": "mcq-ds", "device": name, "card": peak.card if peak else None, "preset": args.preset,
        "frames": args.frames, "batch": args.batch, "dtype": dtype_name, "matmul_math": math,
        "checkpointing": args.checkpointing,
        "samples_per_s": round(args.batch / seconds[0], 3), "step_s": round(seconds[0], 4),
        "model_gflop_per_sample": round(flops / args.batch / 1e9, 1),
        "achieved_tflops": round(flops / seconds[0] / 1e12, 3), "peak_tflops": peak_tflops,
        "peak_source": peak_source,
        "mfu": round(mfu(flops, seconds[0], peak_tflops), 3) if peak_tflops else None,
        "peak_memory_gib": round(memory / 2 ** 30, 3) if repo is None else None,
    }
    records = [ours]
    if repo is not None:
        ours["speedup_vs_original_fp32"] = round(seconds[1] / seconds[0], 2)
        records.append({"implementation": f"original ({repo})", "device": name, "preset": args.preset,
                        "frames": args.frames, "batch": args.batch, "dtype": "fp32",
                        "samples_per_s": round(args.batch / seconds[1], 3), "step_s": round(seconds[1], 4)})
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS + CLIP_PRESETS, default="base", help="default %(default)s")
    parser.add_argument("--frames", type=int, default=4, help="default %(default)s")
    parser.add_argument("--batch", type=int, default=2, help="samples per step (default %(default)s)")
    parser.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                        help="weight and input dtype, as the DeepSpeed config trains (default auto: what `mcq-ds "
                        "train` picks here, bf16 on a GPU or a CPU with AVX512-BF16/AMX, else fp32)")
    parser.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                        help="let fp32 matmuls use TF32 tensor cores on a GPU (default on)")
    parser.add_argument("--checkpointing", action="store_true", help="per-block activation checkpointing")
    parser.add_argument("--steps", type=int, default=2, help="timed steps (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default %(default)s)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak for MFU (default: from the card table "
                        "for the matmul math on a GPU, measured on a CPU)")
    for record in run(parser.parse_args(argv)):
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
