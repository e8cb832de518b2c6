"""The original MCQ data path (OpenCV seek per sampled frame, PIL for images), kept only as the baseline of
``python -m mcq_ds.bench.dali``.

Per sample, as the original ``read_frames_cv2`` + transforms: open the mp4 with ``cv2.VideoCapture``, read its
frame count, pick one random frame per segment (``segment_frames``, the original's rule), seek to each with
``CAP_PROP_POS_FRAMES`` and read it (every seek decodes from the previous keyframe), BGR→RGB, stack to
(F, 3, H, W) float in [0, 1], then RandomResizedCrop(224, scale 0.5–1) → RandomHorizontalFlip → Normalize on the
whole clip. Images go through PIL at full size, as the original CC3M dataset did. Needs opencv-python-headless.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mcq_shards.frames import segment_frames

from ..data.batch import NORMALISATION


def original_transform(img_size: int, normalisation: str = "imagenet"):
    from torchvision import transforms

    mean, std = NORMALISATION[normalisation]
    return transforms.Compose([transforms.RandomResizedCrop(img_size, scale=(0.5, 1.0)),
                               transforms.RandomHorizontalFlip(), transforms.Normalize(mean, std)])


class OpenCVSeekClips(Dataset):
    """mp4 clips (``num_frames`` seeks each) or image files (one PIL decode each), as the original read them."""

    def __init__(self, paths: Sequence[str], num_frames: int, img_size: int = 224, seed: int = 0):
        self.paths, self.num_frames, self.seed = list(paths), num_frames, seed
        self.transform = original_transform(img_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.paths[i]
        if path.endswith((".jpg", ".jpeg", ".png")):
            from PIL import Image

            with Image.open(path) as image:
                pixels = np.array(image.convert("RGB"))
            frames = torch.from_numpy(pixels).permute(2, 0, 1)[None]
        else:
            frames = self._seek_frames(path, random.Random(f"{self.seed}:{i}"))
        return self.transform(frames.float() / 255)

    def _seek_frames(self, path: str, rng: random.Random) -> torch.Tensor:
        import cv2

        capture = cv2.VideoCapture(path)
        try:
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            frames = []
            for index in segment_frames(count, self.num_frames, "rand", rng):
                capture.set(cv2.CAP_PROP_POS_FRAMES, index)
                ok, frame = capture.read()
                if not ok:
                    raise RuntimeError(f"{path}: cannot read frame {index} of {count}")
                frames.append(torch.from_numpy(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)))
        finally:
            capture.release()
        return torch.stack(frames).permute(0, 3, 1, 2)
