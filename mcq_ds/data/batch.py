"""The batch contract: what every loader (the reference loader, the DALI pipeline) hands the engine."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch

# Normalisation statistics: ImageNet for the original MCQ, CLIP's for the CLIP-initialised model.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
NORMALISATION = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD)}


def normalise(video: torch.Tensor, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 pixels (..., 3, H, W) in any memory layout → contiguous (x / 255 - mean) / std as `dtype`, on the
    pixels' device: computed in float32 (x · 1/(255 std) - mean/std) and rounded to `dtype` once."""
    if name not in NORMALISATION:
        raise ValueError(f"unknown normalisation {name!r}; choose one of {sorted(NORMALISATION)}")
    mean, std = (torch.tensor(v, dtype=torch.float32).view(3, 1, 1) for v in NORMALISATION[name])
    scale, shift = (1 / (255 * std)).to(video.device), (mean / std).to(video.device)
    out = torch.empty(video.shape, dtype=torch.float32, device=video.device)
    return out.copy_(video).mul_(scale).sub_(shift).to(dtype)


class Tokens(NamedTuple):
    """A tokenised text batch: ids and attention mask, both (B, L)."""

    ids: torch.Tensor
    mask: torch.Tensor


@dataclass
class Batch:
    """One batch. `video` is (B, F, 3, H, W): the training loaders hand over uint8 pixels and name their statistics in
    `normalisation`; `to(device, dtype)` copies them and normalises on the device (a quarter of the bytes of floats
    through worker IPC, pinning and PCIe, and no conversion on the host). With `normalisation` None, `video` is
    already normalised float (the evaluation reader). `kinds` says per sample which phrase the question masks
    ("noun", "verb", or "none" when the caption had no phrase); `skipped` counts the samples this batch's worker
    dropped as undecodable while filling it. `question`/`answer` are None for retrieval-only loaders."""

    video: torch.Tensor
    text: Tokens
    question: Tokens | None
    answer: Tokens | None
    keys: list[str]
    kinds: list[str]
    source: str
    skipped: int = 0
    extra: dict = field(default_factory=dict)
    normalisation: str | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Batch":
        """The batch on `device`, its video normalised there as `dtype` (default float32). The copy comes first and
        any conversion runs on the device: converting while copying would make PyTorch convert on the host, into an
        unpinned temporary, and copy that synchronously."""
        def move(t: Tokens | None) -> Tokens | None:
            return None if t is None else Tokens(t.ids.to(device, non_blocking=True),
                                                 t.mask.to(device, non_blocking=True))

        video = self.video.to(device, non_blocking=True)
        if self.normalisation is not None:
            video = normalise(video, self.normalisation, dtype or torch.float32)
        elif dtype is not None:
            video = video.to(dtype)
        return replace(self, video=video, text=move(self.text), question=move(self.question),
                       answer=move(self.answer), normalisation=None)

    def __len__(self) -> int:
        return len(self.keys)
