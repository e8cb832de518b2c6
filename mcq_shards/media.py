"""Media normalised for fast decoding: images as one JPEG, videos as a stack of JPEG frames.

Why a JPEG stack for video (measured with ``python -m mcq_shards.bench_formats``, table in the README):
DALI decodes JPEG on the CPU and with nvJPEG on the GPU, any frame decodes on its own, so a loader
picks its frames before decoding by byte range, and on the CPU it decoded 3-7x more frames per
second than VP9 clips and 2-4x more than MJPEG clips of the same frames at equal quality. The price
is size: about 1.7x a VP9 clip of equal PSNR. MJPEG is no smaller at equal quality.

A clip is stored as two members: ``jpgs``, the JPEG frames concatenated, and ``offsets``, the
``num_frames + 1`` byte offsets of the frames in ``jpgs`` as little-endian int32, so frame ``i`` is
``jpgs[offsets[i]:offsets[i + 1]]``.

Every failure raises :class:`MediaError` with a reason a person can act on; the converter records it
in ``rejects.jsonl``.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from PIL import Image

from mcq_shards.frames import stored_frame_count, stored_frame_times

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"})
VIDEO_EXTENSIONS = frozenset({"mp4", "webm", "avi", "mkv", "mov", "m4v", "mpg", "mpeg", "flv", "wmv", "ogv"})

# A clip whose frames end this much short of the length its container declares was cut off.
TRUNCATION_TOLERANCE = 0.9


class MediaError(Exception):
    """The media of one input row cannot be converted.

    The message is the reject reason, ``"<category>: <detail>"``; the manifest counts rejects by category.
    """


def media_kind(name: str) -> str | None:
    """``"image"``, ``"video"`` or None, from a file name or a WebDataset member extension."""
    ext = name.rsplit(".", 1)[-1].lower()
    return "image" if ext in IMAGE_EXTENSIONS else "video" if ext in VIDEO_EXTENSIONS else None


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Size with the short side brought down to ``short_side``; never upscaled."""
    scale = min(1.0, short_side / min(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _source(media: str | bytes) -> str | io.BytesIO:
    if isinstance(media, bytes):
        if not media:
            raise MediaError("empty file: the media member has 0 bytes")
        return io.BytesIO(media)
    if not os.path.exists(media):
        raise MediaError(f"file not found: {media}")
    if os.path.getsize(media) == 0:
        raise MediaError(f"empty file: {media} has 0 bytes")
    return media


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


@dataclass
class NormalImage:
    jpg: bytes
    width: int
    height: int


def normalize_image(media: str | bytes, short_side: int = 256, quality: int = 80) -> NormalImage:
    """Decode any image PIL reads, convert to RGB, shrink the short side to ``short_side``, JPEG it."""
    try:
        with Image.open(_source(media)) as image:
            width, height = scaled_size(*image.size, short_side)
            image.draft("RGB", (width, height))  # JPEG: let libjpeg decode at a reduced scale
            image = image.convert("RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BICUBIC)
    except MediaError:
        raise
    except Exception as err:  # PIL raises many types for bad files; all mean "not convertible"
        raise MediaError(f"undecodable image: {type(err).__name__}: {err}") from None
    return NormalImage(_jpeg(image, quality), width, height)


@dataclass
class NormalClip:
    jpgs: bytes
    offsets: bytes
    meta: dict  # duration, fps, num_frames, frame_times, width, height


def normalize_video(media: str | bytes, short_side: int = 256, fps: float = 2.0, min_frames: int = 8,
                    max_frames: int = 32, quality: int = 80, max_seconds: float | None = None) -> NormalClip:
    """Keep ``fps`` frames per second of the clip (within ``[min_frames, max_frames]``) as JPEGs; with
    ``max_seconds``, of its first ``max_seconds`` seconds only (DiDeMo's annotated span).

    Two passes over the file: demuxing (no decoding) finds the clip's real time span, which the
    container header may misstate (truncated or variable-frame-rate files); decoding then keeps,
    for each target instant, the frame on screen at that instant. Only one decoded frame is held at a
    time, so memory does not grow with the clip's length.
    """
    import av

    source = _source(media)
    try:
        start, span, packets, declared = _time_span(av, source)
        if max_seconds is not None:  # only the first max_seconds count, for the truncation check too
            packets = max(1, round(packets * min(1.0, max_seconds / span)))  # about the kept span's frames
            span, declared = min(span, max_seconds), declared and min(declared, max_seconds)
        count = stored_frame_count(span, fps, min_frames, max_frames, packets)
        targets = stored_frame_times(start, span, count)
        if isinstance(source, io.BytesIO):
            source.seek(0)
        end = start + span if max_seconds is not None else None
        frames, times, decoded, size = _pick_frames(av, source, targets, short_side, quality, end)
    except MediaError:
        raise
    except Exception as err:  # PyAV/FFmpeg errors: corrupt, truncated or unsupported streams
        raise MediaError(f"undecodable video: {type(err).__name__}: {err}") from None
    if decoded < min_frames:
        raise MediaError(f"video too short: {decoded} frames, fewer than --min-frames {min_frames}")
    if declared and span < TRUNCATION_TOLERANCE * declared:
        raise MediaError(f"video truncated: frames cover {span:.2f} s of the {declared:.2f} s its container declares")
    offsets = np.cumsum([0] + [len(f) for f in frames], dtype=np.int64)
    if offsets[-1] >= 2**31:
        raise MediaError("clip too large: its JPEG frames exceed 2 GiB")
    meta = {
        "duration": round(span, 6),
        "fps": round(decoded / span, 6),
        "num_frames": len(frames),
        "frame_times": [round(t - start, 6) for t in times],
        "width": size[0],
        "height": size[1],
    }
    return NormalClip(b"".join(frames), offsets.astype("<i4").tobytes(), meta)


def _time_span(av, source) -> tuple[float, float, int, float | None]:
    """(first frame time, span in seconds, packet count, duration the container declares) by demuxing."""
    with av.open(source) as container:
        if not container.streams.video:
            raise MediaError("undecodable video: the file has no video stream")
        stream = container.streams.video[0]
        base = stream.time_base
        times, last_duration = [], 0
        for packet in container.demux(stream):
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None or packet.size == 0:
                continue
            times.append(stamp)
            last_duration = packet.duration or 0
        if not times:
            raise MediaError("undecodable video: the video stream has no frames")
        times.sort()
        if not last_duration:
            last_duration = int(np.median(np.diff(times))) if len(times) > 1 else 0
        if not last_duration and stream.average_rate:
            last_duration = int(1 / (stream.average_rate * base))
        start, end = float(times[0] * base), float((times[-1] + last_duration) * base)
        declared = float(stream.duration * base) if stream.duration else None
        if declared is None and container.duration:
            declared = container.duration / 1_000_000
    if end <= start:
        raise MediaError("undecodable video: no measurable duration")
    return start, end - start, len(times), declared


def _pick_frames(av, source, targets: list[float], short_side: int, quality: int,
                 end: float | None = None) -> tuple[list[bytes], list[float], int, tuple[int, int]]:
    """Decode once (up to ``end`` seconds when given), and JPEG the frame on screen at each target time.

    Returns the JPEGs, their times, the number of frames decoded and the stored size.
    """
    jpegs: list[bytes] = []
    times: list[float] = []
    decoded, size = 0, None
    shown = shown_time = None
    cached: tuple[object, bytes] | None = None

    def take(frame, time: float) -> None:
        nonlocal cached, size
        if cached is None or cached[0] is not frame:
            if size is None:
                size = scaled_size(frame.width, frame.height, short_side)
            image = frame.to_image(width=size[0], height=size[1], interpolation="AREA")
            cached = (frame, _jpeg(image, quality))
        jpegs.append(cached[1])
        times.append(time)

    with av.open(source) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1  # one worker per core already; codec threads would oversubscribe
        rate = stream.average_rate or Fraction(25)
        for frame in container.decode(stream):
            time = float(frame.time) if frame.time is not None else decoded / float(rate)
            if end is not None and time >= end:  # past the kept span
                break
            decoded += 1
            while len(jpegs) < len(targets) and time > targets[len(jpegs)]:
                if shown is None:
                    take(frame, time)
                else:
                    take(shown, shown_time)
            shown, shown_time = frame, time
        while shown is not None and len(jpegs) < len(targets):
            take(shown, shown_time)
    if not jpegs:
        raise MediaError("undecodable video: no frame could be decoded")
    return jpegs, times, decoded, size
