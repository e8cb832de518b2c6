"""Pixels of one sample: the stored JPEG frames a draw chose, turned into the model's input frames.

`sampling.draw` decides which stored frames, which crop window and whether to flip; this module only applies
those decisions, so the reference loader and the DALI pipeline (which runs the same steps on its own operators)
can be compared frame by frame: decode each chosen JPEG once, cut the one crop window shared by every frame of
the clip, resize it to `size` × `size` (bilinear, antialiased, as torchvision's RandomResizedCrop on PIL images),
flip, and pad a clip shorter than `num_frames`.

Decoding uses `torchvision.io.decode_jpeg` (libjpeg-turbo) and resizing `torch.nn.functional.interpolate` on
channels-last uint8: measured here on 455×256 frames, that is about 1.7× PIL's decode + resize per frame, with
pixels within 1/255 of PIL's. torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec; the
notice is silenced because TorchCodec's CPU wheels do not load next to a CPU torch yet
(torchcodec 0.x). When torchvision drops `decode_jpeg`, `decode_jpeg` here is the one function to
change.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode
from torchvision.io import decode_jpeg as _tv_decode_jpeg

from .sampling import CropBox


def pad_frames(frames: Sequence[int], num_frames: int) -> list[int]:
    """The stored frame shown in each of the `num_frames` output frames: the chosen frames, then the last one
    repeated.

    A clip stores fewer frames than asked for when it is an image (one frame) or a very short video. The
    original appended zero (mean-grey after normalisation) frames; the VideoFormer's [CLS] attends to every
    frame, so those fake frames were part of the video embedding, and how much depended on the clip's length.
    Repeating a real frame keeps the input made of the clip's own content: an image becomes a still video,
    which is what it shows. Every sample of a batch then has exactly `num_frames` frames, so batches of images
    and videos mix without a frame mask.
    """
    if not frames:
        raise ValueError("a clip needs at least one chosen frame")
    return list(frames) + [frames[-1]] * (num_frames - len(frames))


def decode_jpeg(data: bytes | bytearray) -> torch.Tensor:
    """One JPEG as a (H, W, 3) uint8 tensor. Raises on data libjpeg cannot decode (truncated, not a JPEG)."""
    with warnings.catch_warnings():  # the deprecation notice, once per call (see the module docstring)
        warnings.simplefilter("ignore", DeprecationWarning)
        image = _tv_decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    return image.permute(1, 2, 0)  # decode_jpeg's (3, H, W) is a view of an (H, W, 3) buffer: no copy


def render_clip(jpegs: Mapping[int, bytes], plan: Sequence[int], crop: CropBox, flip: bool, size: int,
                height: int, width: int, antialias: bool = True) -> torch.Tensor:
    """The output frames of one clip, (len(plan), 3, size, size) uint8.

    `jpegs` maps each stored-frame index in `plan` to its JPEG; `plan` gives the stored frame of each output
    frame (`pad_frames`); `crop` is in stored pixels, and every frame must be `width` × `height` (as the sample's
    json says: the crop was drawn for that size). Each distinct frame is decoded and resized once. `antialias=False`
    resizes as the original's torchvision 0.8.2 tensor transforms did (plain bilinear, which aliases when it
    shrinks).
    """
    distinct = sorted(set(plan))
    crops = []
    for index in distinct:
        frame = decode_jpeg(jpegs[index])
        if frame.shape[:2] != (height, width):
            raise ValueError(f"stored frame {index} is {frame.shape[1]}x{frame.shape[0]}, the sample's json says "
                             f"{width}x{height}")
        crops.append(frame[crop.top:crop.top + crop.height, crop.left:crop.left + crop.width])
    # (n, h, w, 3) permuted to (n, 3, h, w) is channels-last: interpolate's fast uint8 antialias path.
    stack = torch.stack(crops).permute(0, 3, 1, 2)
    resized = F.interpolate(stack, size=(size, size), mode="bilinear", antialias=antialias, align_corners=False)
    if flip:
        resized = resized.flip(-1)
    if len(distinct) == len(plan) and distinct == list(plan):
        return resized
    return resized[[distinct.index(i) for i in plan]]
