"""Where this process runs: the device of this rank, chosen once, before anything touches CUDA.

A launcher (`deepspeed`, `torchrun`, SLURM) starts one process per GPU and tells each its place on the machine in
`LOCAL_RANK`. Nothing else sets the CUDA device for us: `deepspeed.init_distributed` does not, and a loader, a
DALI pipeline or a tensor made on "cuda" before `torch.cuda.set_device` lands on GPU 0 — with 8 ranks, eight CUDA
contexts and eight DALI pools on one GPU and copies between GPUs for the other seven. So every entry point calls
`use_local_device()` first and hands the device it returns to everything it builds.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch


def local_device(environ: Mapping[str, str] | None = None, cuda_devices: int | None = None) -> torch.device:
    """This rank's device: GPU `LOCAL_RANK` when there are GPUs, the only GPU when the launcher gave each process
    one (`CUDA_VISIBLE_DEVICES` per task, as SLURM's `--gpus-per-task=1` does), else the CPU.

    `environ` and `cuda_devices` default to the process's environment and `torch.cuda.device_count()`.
    """
    environ = os.environ if environ is None else environ
    cuda_devices = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    if cuda_devices == 0:
        return torch.device("cpu")
    local_rank = int(environ.get("LOCAL_RANK", 0))
    if cuda_devices == 1:
        return torch.device("cuda", 0)
    if not 0 <= local_rank < cuda_devices:
        raise RuntimeError(f"LOCAL_RANK={local_rank} but this process sees {cuda_devices} GPUs: start at most "
                           f"{cuda_devices} ranks per machine (e.g. `deepspeed --num_gpus {cuda_devices}`), or give "
                           "each rank its own GPU through CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", local_rank)


def use_local_device(environ: Mapping[str, str] | None = None) -> torch.device:
    """`local_device()`, made the current CUDA device of this process (before any CUDA context exists)."""
    device = local_device(environ)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device
