"""Every random decision a loader makes about one sample, in one place.

The reference loader and the DALI pipeline must pick the same frames, crop and flip for the same sample, and a
resumed run must repeat an uninterrupted one exactly. So the decisions do not come from a stateful generator that
depends on how many samples a worker has seen: they come from `random.Random(sample_seed(seed, epoch, key))`,
drawn in the order of `SampleDraws`.
"""
from __future__ import annotations

import hashlib
import math
import random
from typing import NamedTuple

from mcq_shards.frames import ClipClock, segment_frames, time_frames

# RandomResizedCrop(scale=(0.5, 1.0)) with torchvision's default aspect ratios, the original's training crop.
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def sample_seed(seed: int, epoch: int, key: str) -> int:
    digest = hashlib.blake2b(f"{seed}:{epoch}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class CropBox(NamedTuple):
    top: int
    left: int
    height: int
    width: int


def random_resized_crop_box(rng: random.Random, height: int, width: int, scale: tuple[float, float] = CROP_SCALE,
                            ratio: tuple[float, float] = CROP_RATIO) -> CropBox:
    """torchvision's RandomResizedCrop window rule, drawn from `rng`: up to 10 tries of an area in `scale` and a
    log-uniform aspect in `ratio`, else the largest centred window with a clamped aspect."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return CropBox(rng.randint(0, height - h), rng.randint(0, width - w), h, w)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w)


class SampleDraws(NamedTuple):
    """What a loader does to one sample: stored-frame indices, crop window (in stored-frame pixels), flip."""

    frames: list[int]
    crop: CropBox
    flip: bool
    rng: random.Random  # the same stream, positioned after these draws: the question builder continues from it


def draw(seed: int, epoch: int, key: str, num_stored: int, num_frames: int, height: int, width: int,
         hflip: bool = True, clock: ClipClock | None = None) -> SampleDraws:
    """The training decisions for one sample: one random frame per segment, a random resized crop and a coin
    flip. Same arguments, same draws. `hflip=False` turns the flip off (captions that say "left" or "right", like
    the demo data's, become wrong when flipped); the coin is still drawn so the question builder sees the same stream either way. With a video's `clock`, training
    frames are the original's sampled instants taken from the nearest stored frames (`mcq_shards.frames.time_frames`);
    without, the original's index rule over the stored frames (`segment_frames`)."""
    rng = random.Random(sample_seed(seed, epoch, key))
    frames = time_frames(clock, num_frames, rng) if clock else segment_frames(num_stored, num_frames, "rand", rng)
    crop = random_resized_crop_box(rng, height, width)
    flip = rng.random() < 0.5
    return SampleDraws(frames, crop, flip and hflip, rng)
