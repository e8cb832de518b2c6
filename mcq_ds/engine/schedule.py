"""Learning-rate schedules counted in optimizer steps, as multipliers of the base learning rate, and the AdamW ε per
step."""
from __future__ import annotations

import math
from typing import Callable, Sequence


def step_decay(milestones: Sequence[int], gamma: float = 0.1) -> Callable[[int], float]:
    """The original's schedule: constant, ×gamma from each milestone step on, no warm-up."""
    return lambda step: gamma ** sum(step >= m for m in milestones)


def warmup_cosine(warmup: int, total: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """Linear warm-up over `warmup` steps, then a cosine down to `min_ratio` at `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def adam_eps(eps: float, step: int, beta2: float, style: str) -> float:
    """The ε to give a torch-style AdamW (ε added to the bias-corrected √v̂, as torch and DeepSpeed do) at optimizer
    step `step` (1-based).

    `"transformers"` reproduces transformers.AdamW, the original's optimizer, which adds ε to √v before the bias
    correction: its step lr·√(1−β2ᵗ)/(1−β1ᵗ)·m/(√v + ε) is exactly torch's lr/(1−β1ᵗ)·m/(√v/√(1−β2ᵗ) + ε') with
    ε' = ε/√(1−β2ᵗ). The two differ most at the start (31.6× at step 1 with β2 = 0.999) and agree after a few
    thousand steps. `"torch"` keeps ε as given.
    """
    if style == "torch":
        return eps
    if style != "transformers":
        raise ValueError(f"unknown AdamW ε style {style!r}; expected 'transformers' or 'torch'")
    return eps / math.sqrt(1 - beta2 ** step)
