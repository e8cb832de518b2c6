"""Evaluation clips: which frames and which pixels, the same for shards and for video files.

Every evaluation path (shards in `mcq-ds eval`, video files in `mcq-ds extract` and `mcq-ds visualize`) goes
through `clip_tensor`, so a video gives the same input whichever command reads it:

* frames: the midpoint of each of F equal segments of the clip's stored frames
  (`mcq_shards.frames.segment_frames`, the original's test sampling), or with a sliding-window stride s every
  offset 0, s, 2s, … below the segment length added to each segment's start, all windows averaged later (the
  original's sliding-window test, bounded by the segment length instead of the original's
  `len(x − 1)` off-by-one);
* pixels: the original test transform, Resize(short side 256) → CenterCrop(256) → Resize(224) on float tensors
  with bilinear interpolation and **no antialiasing**, as torchvision 0.8.2 did (newer torchvision antialiases
  tensors, one suspect for the 4-point gap of MCQ#11); sizes scale with the model's input size;
* clips with fewer stored frames than F are padded with zero frames after normalisation, as the original pads.

A video file is first normalised exactly as the shard converter stores it (`mcq_shards.media.normalize_video`: frames
at 2 fps, 8–32 of them, short side 256), so `extract` on a raw file sees what `eval` sees on its shard.

Shards are read for evaluation by `mcq_ds.eval.reader` (through `mcq_shards.reader`, as the training loaders read
them); this module only makes clips.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mcq_shards.frames import segment_bounds, segment_frames
from mcq_shards.media import normalize_video

from ..data.batch import NORMALISATION

PARITY_RESIZE = 256 / 224  # the original's Resize(256) before CenterCrop(256) → Resize(224)


def window_frames(num_stored: int, num_frames: int, stride: int | None = None) -> list[list[int]]:
    """Stored-frame indices of each temporal window: one window of segment midpoints without a stride, else one
    window per offset 0, stride, 2·stride, … below the shortest segment, each index = segment start + offset."""
    if stride is None:
        return [segment_frames(num_stored, num_frames, "uniform")]
    if stride < 1:
        raise ValueError(f"the sliding-window stride must be at least 1 stored frame, got {stride}")
    starts = segment_bounds(num_stored, num_frames)[:-1]
    return [[s + offset for s in starts] for offset in range(0, num_stored // len(starts), stride)]


def eval_transform(frames: torch.Tensor, img_size: int, normalisation: str = "imagenet") -> torch.Tensor:
    """(n, 3, H, W) uint8 → (n, 3, img_size, img_size) float, normalised, by the original's test transform."""
    from torchvision.transforms.v2 import functional as TF

    mean, std = NORMALISATION[normalisation]
    outer = round(img_size * PARITY_RESIZE)
    x = frames.float() / 255
    x = TF.resize(x, [outer], interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
    x = TF.center_crop(x, [outer, outer])
    x = TF.resize(x, [img_size, img_size], interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
    return TF.normalize(x, list(mean), list(std))


def decode_jpegs(jpgs: bytes, offsets: np.ndarray, indices: list[int]) -> torch.Tensor:
    """The stored frames `indices` of a JPEG stack as one (n, 3, H, W) uint8 tensor (each frame decoded once)."""
    decoded = {}
    for i in dict.fromkeys(indices):
        with Image.open(io.BytesIO(jpgs[offsets[i]:offsets[i + 1]])) as image:
            decoded[i] = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
    return torch.stack([decoded[i] for i in indices])


@dataclass(frozen=True)
class ClipSpec:
    """How every clip of one evaluation is made."""

    num_frames: int = 4
    img_size: int = 224
    stride: int | None = None
    normalisation: str = "imagenet"

    @classmethod
    def of(cls, model, num_frames: int | None = None, stride: int | None = None) -> "ClipSpec":
        """The clips `model` takes: its input size and pixel statistics (ImageNet for MCQ, CLIP's for CLIP-MCQ),
        and by default its configured frame count (4 for MCQ, 8 for the released CLIP-MCQ evaluation)."""
        return cls(num_frames or model.cfg.video.num_frames, model.cfg.video.img_size, stride,
                   model.cfg.normalisation)


def clip_tensor(jpgs: bytes, offsets: np.ndarray, spec: ClipSpec) -> tuple[torch.Tensor, int]:
    """All windows of one clip, (W, F, 3, S, S), and how many zero frames padded each window."""
    windows = window_frames(len(offsets) - 1, spec.num_frames, spec.stride)
    flat = [i for w in windows for i in w]
    pixels = eval_transform(decode_jpegs(jpgs, offsets, flat), spec.img_size, spec.normalisation)
    clips = pixels.view(len(windows), len(windows[0]), *pixels.shape[1:])
    missing = spec.num_frames - clips.shape[1]
    if missing:
        clips = torch.cat([clips, clips.new_zeros(len(windows), missing, *clips.shape[2:])], dim=1)
    return clips, missing


def seen_frames(frames: torch.Tensor, normalisation: str) -> np.ndarray:
    """Normalised frames (F, 3, S, S), one window of a clip, back as (F, S, S, 3) uint8 pictures: what the model
    saw, for a person to look at."""
    mean, std = NORMALISATION[normalisation]
    pixels = frames * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (pixels.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def read_offsets(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<i4").astype(np.int64)


def video_file_clip(path: str | Path, spec: ClipSpec) -> tuple[torch.Tensor, int]:
    """A video file as `eval` would see it after `mcq-shards` conversion with default options. Raises
    `mcq_shards.media.MediaError` with a reason a person can act on."""
    clip = normalize_video(str(path))
    return clip_tensor(clip.jpgs, read_offsets(clip.offsets), spec)
