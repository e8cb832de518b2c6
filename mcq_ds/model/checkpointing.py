"""Activation checkpointing, one block at a time.

`torch.utils.checkpoint` with `use_reentrant=False` is exact even when a block's input does not require grad
(DeepSpeed's own `checkpointing.checkpoint` silently drops those gradients, measured with DeepSpeed 0.19).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint


def maybe_checkpoint(enabled: bool, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
    if enabled:
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)
