"""Evaluation clips: which frames, which pixels, and how a data set is split across ranks.

Every evaluation path (shards in `mcq-ds eval`, video files in `mcq-ds extract` and `mcq-ds visualize`) goes
through `clip_tensor`, so a video gives the same input whichever command reads it:

* frames: the midpoint of each of F equal segments of the clip's stored frames (`shards.frames.segment_frames`,
  SPEC §3.3), or with a sliding-window stride s every offset 0, s, 2s, … below the segment length added to each
  segment's start, all windows averaged later (SPEC §5.3, bounded by the segment length instead of the original's
  `len(x − 1)` off-by-one);
* pixels: the original test transform, Resize(short side 256) → CenterCrop(256) → Resize(224) on float tensors
  with bilinear interpolation and **no antialiasing**, as torchvision 0.8.2 did (newer torchvision antialiases
  tensors, one suspect for the 4-point gap of MCQ#11); sizes scale with the model's input size;
* clips with fewer stored frames than F are padded with zero frames after normalisation, as the original pads.

A video file is first normalised exactly as the shard converter stores it (`shards.media.normalize_video`: frames
at 2 fps, 8–32 of them, short side 256), so `extract` on a raw file sees what `eval` sees on its shard.

This reads shards itself (every sample's members found from the tar headers, then read by offset, in as many
loader workers as asked) because the evaluation needs random access by sample, several windows per video and
several captions per video; it yields the `Batch` of `mcq_ds.data.batch`, so a loader that yields one window and one
caption per sample (the reference loader's evaluation mode) can take its place.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from shards.frames import segment_bounds, segment_frames
from shards.manifest import read_manifest
from shards.media import normalize_video
from shards.tario import samples as tar_samples

from ..data.batch import NORMALISATION, Batch, Tokens

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
    `shards.media.MediaError` with a reason a person can act on."""
    clip = normalize_video(str(path))
    return clip_tensor(clip.jpgs, read_offsets(clip.offsets), spec)


# ---------------------------------------------------------------------------------------------------------------
# Shards


@dataclass(frozen=True)
class ShardSample:
    """Where one sample's members lie: (offset, size) of each extension in its tar."""

    tar: str
    key: str
    members: dict[str, tuple[int, int]]


def shard_paths(shards: str) -> tuple[list[Path], dict]:
    """Tar paths from a converted folder (its manifest, in order) or a brace-expanded list; and the manifest's
    description of the set (empty for a bare list)."""
    from braceexpand import braceexpand

    folder = Path(shards)
    if folder.is_dir():
        manifest = read_manifest(folder)
        about = {k: manifest.raw.get(k) for k in ("source", "converter_version", "options", "samples", "rejects")}
        return [s.path for s in manifest.shards], about
    paths = [Path(p) for p in braceexpand(shards)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"shard not found: {missing[0]} (give a folder written by mcq-shards, or tar files)")
    return paths, {}


def index_shards(paths: list[Path]) -> list[ShardSample]:
    """Every sample of the shards, in order, from the tar headers (no member data is read)."""
    found = []
    for path in paths:
        for key, members in tar_samples(path):
            found.append(ShardSample(str(path), key, {m.name[len(key) + 1:]: (m.offset_data, m.size)
                                                      for m in members}))
    return found


def rank_share(count: int, rank: int, world: int) -> range:
    """Rank `rank`'s contiguous share of `count` items: every item on exactly one rank, shares differing by at
    most one, in rank order (so concatenating the shares restores the order)."""
    return range(rank * count // world, (rank + 1) * count // world)


class ShardClips(Dataset):
    """Map-style dataset over shard samples: item i is (position, meta, clips (W, F, 3, S, S), padded frames)."""

    def __init__(self, samples: list[ShardSample], positions: range, spec: ClipSpec):
        self.samples, self.positions, self.spec = samples, positions, spec

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[int, dict, torch.Tensor, int]:
        position = self.positions[i]
        sample = self.samples[position]
        with open(sample.tar, "rb") as f:
            def member(ext: str) -> bytes:
                offset, size = sample.members[ext]
                f.seek(offset)
                return f.read(size)

            meta = json.loads(member("json"))
            if "jpgs" in sample.members:
                clips, padded = clip_tensor(member("jpgs"), read_offsets(member("offsets")), self.spec)
            elif "jpg" in sample.members:
                image = member("jpg")
                clips, padded = clip_tensor(image, np.array([0, len(image)]), self.spec)
            else:
                raise ValueError(f"{sample.tar}: sample {sample.key} has no jpgs/jpg member: not an mcq-shards shard")
        return position, meta, clips, padded


class CollateEval:
    """Builds the evaluation `Batch` in the loader workers: the videos' windows flattened into `video`
    (sum of W, F, 3, S, S) and every query caption tokenised into `text`. `extra` says what belongs to what:
    `positions` (each sample's place in the whole set), `ids`, `captions`, `window_owner` and `caption_owner`
    (the batch sample of each window and caption) and `padded` (zero frames added). A loader whose `Batch` has one
    window and one caption per sample needs none of the owners."""

    def __init__(self, tokenizer, max_length: int, all_captions: bool = False, source: str = "eval"):
        self.tokenizer, self.max_length, self.all_captions, self.source = tokenizer, max_length, all_captions, source

    def captions(self, meta: dict) -> list[str]:
        if self.all_captions and meta.get("captions"):
            return list(meta["captions"])
        return [meta["caption"]]

    def __call__(self, items: list[tuple[int, dict, torch.Tensor, int]]) -> Batch:
        captions = [self.captions(meta) for _, meta, _, _ in items]
        flat = [c for group in captions for c in group]
        tokens = self.tokenizer(flat, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        extra = {
            "positions": [p for p, _, _, _ in items],
            "ids": [str(meta.get("id", meta.get("key"))) for _, meta, _, _ in items],
            "captions": flat,
            "window_owner": torch.cat([torch.full((len(c),), n) for n, (_, _, c, _) in enumerate(items)]),
            "caption_owner": torch.cat([torch.full((len(g),), n) for n, g in enumerate(captions)]),
            "padded": sum(p for *_, p in items),
        }
        return Batch(video=torch.cat([c for _, _, c, _ in items]),
                     text=Tokens(tokens["input_ids"], tokens["attention_mask"]), question=None, answer=None,
                     keys=[meta.get("key", "") for _, meta, _, _ in items], kinds=["none"] * len(items),
                     source=self.source, extra=extra)
