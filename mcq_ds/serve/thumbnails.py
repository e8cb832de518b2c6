"""Thumbnails of the frames the model saw: for each video, the frames `mcq-ds extract` embedded (the same frame
choice and crop, `mcq_ds.eval.data`) side by side in one JPEG, rendered the first time a page asks for it and kept in
a cache folder under a key of the file's path, size and modification time (a changed video gets a new picture)."""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path

from PIL import Image

from ..eval.data import ClipSpec, seen_frames, video_file_clip

GAP = 2  # white pixels between frames


class Thumbnails:
    def __init__(self, cache: Path, spec: ClipSpec, height: int = 112, renders_at_once: int = 2):
        self.cache, self.spec, self.height = Path(cache), spec, height
        self.cache.mkdir(parents=True, exist_ok=True)
        # decoding is CPU-bound: a page asking for many at once must not starve the searches
        self._slots = threading.Semaphore(renders_at_once)

    def get(self, video: Path) -> Path:
        """The JPEG of `video`'s seen frames. Raises FileNotFoundError for a missing file and
        `shards.media.MediaError` for one that cannot be decoded."""
        stat = video.stat()
        key = hashlib.sha256(f"{video.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{self.spec}\0{self.height}"
                             .encode()).hexdigest()[:32]
        out = self.cache / f"{key}.jpg"
        if out.is_file():
            return out
        with self._slots:
            clip, _ = video_file_clip(video, self.spec)
            frames = [Image.fromarray(f).resize((self.height, self.height), Image.Resampling.BILINEAR)
                      for f in seen_frames(clip[0], self.spec.normalisation)]
            strip = Image.new("RGB", (len(frames) * (self.height + GAP) - GAP, self.height), (255, 255, 255))
            for n, frame in enumerate(frames):
                strip.paste(frame, (n * (self.height + GAP), 0))
            handle, tmp = tempfile.mkstemp(dir=self.cache, suffix=".tmp")
            with os.fdopen(handle, "wb") as f:
                strip.save(f, format="JPEG", quality=85)
            os.replace(tmp, out)
        return out
