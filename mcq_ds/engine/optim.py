"""The optimizer of every stage, built in one place: the original's AdamW (betas 0.9/0.999, no weight decay; ε is the
run's `adam_eps`, set again before every step by `set_adam_eps`), whichever implementation runs it.

* `torch` (the default): PyTorch's AdamW handed to DeepSpeed as the client optimizer, `fused=True` (one kernel
  for all parameters, on the GPU or, with ZeRO-Offload, on the CPU). It ships compiled with PyTorch, so
  `deepspeed.initialize` compiles nothing.
* `deepspeed`: DeepSpeed's own ops, through an `optimizer` section added to the DeepSpeed JSON: `FusedAdam` on the
  GPU, `DeepSpeedCPUAdam` with ZeRO-Offload. Both are C++/CUDA extensions that DeepSpeed compiles with the machine's
  compilers at `deepspeed.initialize` unless they were prebuilt (`DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 pip
  install deepspeed`); a failing compile ends the run at start-up.

A DeepSpeed JSON that has its own `optimizer` section is the user's explicit choice and is used as written.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

from .schedule import adam_eps

IMPLEMENTATIONS = ("torch", "deepspeed")

# The original's AdamW (torch.optim.AdamW with these settings, and ε).
ADAMW = {"betas": (0.9, 0.999), "weight_decay": 0.0}


def torch_adamw(params: Iterable[torch.nn.Parameter], lr: float, eps: float) -> torch.optim.AdamW:
    """PyTorch's fused AdamW. DeepSpeed replaces the parameters with its own (fp32 master) partitions, on the GPU
    or on the CPU with offload; the fused kernel exists for both."""
    return torch.optim.AdamW(params, lr=lr, eps=eps, fused=True, **ADAMW)


def deepspeed_section(lr: float, eps: float) -> dict:
    """The DeepSpeed JSON `optimizer` section that makes DeepSpeed build its own AdamW with the same settings."""
    params = {name: list(value) if isinstance(value, tuple) else value for name, value in ADAMW.items()}
    return {"type": "AdamW", "params": {**params, "eps": eps, "lr": lr}}


def set_adam_eps(optimizer: torch.optim.Optimizer, eps: float, style: str, step: int) -> float:
    """Sets ε for optimizer step `step` (1-based) on every param group (see `schedule.adam_eps`); returns it."""
    for group in optimizer.param_groups:
        group["eps"] = adam_eps(eps, step, group["betas"][1], style)
    return group["eps"]
