"""Learning-rate schedules counted in optimizer steps, as multipliers of the base learning rate."""
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
