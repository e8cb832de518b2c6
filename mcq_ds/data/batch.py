"""The batch contract: what every loader (the reference loader, the DALI pipeline) hands the engine."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch

# Normalisation statistics: ImageNet for the original MCQ, CLIP's for the CLIP-initialised model.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
NORMALISATION = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD)}


class Tokens(NamedTuple):
    """A tokenised text batch: ids and attention mask, both (B, L)."""

    ids: torch.Tensor
    mask: torch.Tensor


@dataclass
class Batch:
    """One batch. `video` is (B, F, 3, H, W) float, normalised; `kinds` says per sample which phrase the question
    masks ("noun", "verb", or "none" when the caption had no phrase); `skipped` counts the samples this batch's
    worker dropped as undecodable while filling it. `question`/`answer` are None for retrieval-only loaders."""

    video: torch.Tensor
    text: Tokens
    question: Tokens | None
    answer: Tokens | None
    keys: list[str]
    kinds: list[str]
    source: str
    skipped: int = 0
    extra: dict = field(default_factory=dict)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Batch":
        def move(t: Tokens | None) -> Tokens | None:
            return None if t is None else Tokens(t.ids.to(device, non_blocking=True),
                                                 t.mask.to(device, non_blocking=True))

        return replace(self, video=self.video.to(device, dtype, non_blocking=True), text=move(self.text),
                       question=move(self.question), answer=move(self.answer))

    def __len__(self) -> int:
        return len(self.keys)
