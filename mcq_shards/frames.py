"""Which stored frames a loader takes from a clip: the one function every loader calls.

MCQ splits a clip into ``num_frames`` equal segments and takes one frame from each: a random one in
training ("rand"), the middle one in evaluation ("uniform"), as the original. The reference (PyAV) loader
and the DALI pipeline must agree exactly, so both call :func:`segment_frames`, and the DALI graph is
tested against it.

The segment bounds are ``floor(k * n / num_frames)``, the same integers as the original's
``np.linspace(0, n, num_frames + 1).astype(int)`` (the tests check this), written with integer
arithmetic so that a DALI graph can compute them too.
"""

from __future__ import annotations

import bisect
import random
from typing import Literal, NamedTuple, Sequence


def segment_bounds(num_stored: int, num_frames: int) -> list[int]:
    """The ``min(num_frames, num_stored) + 1`` segment boundaries over ``num_stored`` frames."""
    if num_stored < 1:
        raise ValueError(f"a clip needs at least one stored frame, got {num_stored}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    n = min(num_frames, num_stored)
    return [k * num_stored // n for k in range(n + 1)]


def segment_frames(num_stored: int, num_frames: int, mode: Literal["rand", "uniform"],
                   rng: random.Random | None = None) -> list[int]:
    """Stored-frame indices, one per segment, exactly as the original MCQ loader picks them.

    Returns ``min(num_frames, num_stored)`` indices; like the original, a caller that needs a fixed
    count pads the missing frames itself.

    * ``"uniform"``: the segment midpoint ``(lo + hi - 1) // 2`` for the segment ``[lo, hi)``.
    * ``"rand"``: uniform in ``[lo, hi - 2]``, as the original's ``random.choice(range(lo, hi - 1))``,
      which never takes a segment's last frame. **Fix:** for a one-frame segment that range is
      empty and the original raises (and then trains on a black frame); here the single frame is
      taken. Segments of two or more frames are sampled exactly as before.

    ``rng`` is a :class:`random.Random` (required for ``"rand"``), so that loaders control seeding.
    """
    bounds = segment_bounds(num_stored, num_frames)
    segments = list(zip(bounds[:-1], bounds[1:]))
    if mode == "uniform":
        return [(lo + hi - 1) // 2 for lo, hi in segments]
    if mode == "rand":
        if not isinstance(rng, random.Random):
            raise TypeError("mode 'rand' needs rng=random.Random(...)")
        return [rng.randint(lo, max(lo, hi - 2)) for lo, hi in segments]
    raise ValueError(f"mode must be 'rand' or 'uniform', got {mode!r}")


def stored_frame_count(duration: float, fps: float, min_frames: int, max_frames: int,
                       available: int) -> int:
    """How many frames the converter keeps from a clip of ``duration`` seconds.

    ``fps`` frames per second of the original, at least ``min_frames`` (so a short clip still fills
    every segment) and at most ``max_frames`` (so a long clip does not blow up the shard), and never
    more than the ``available`` frames of the clip.
    """
    wanted = max(min_frames, min(max_frames, round(duration * fps)))
    return max(1, min(wanted, available))


def stored_frame_times(start: float, duration: float, count: int) -> list[float]:
    """The instants the stored frames show: the midpoints of ``count`` equal slices of the clip.

    Sampling by time, not by frame number, keeps the stored frames evenly spread in time for
    variable-frame-rate clips too.
    """
    return [start + (k + 0.5) * duration / count for k in range(count)]


class ClipClock(NamedTuple):
    """When a video's stored frames were shown in the original clip: what time-based sampling needs (the ``json``
    member's ``frame_times``, ``duration`` and ``fps``)."""

    frame_times: Sequence[float]
    duration: float
    fps: float

    @classmethod
    def from_meta(cls, meta: dict) -> "ClipClock | None":
        """The clock of a video sample; None for an image or a sample without the fields."""
        times, duration, fps = meta.get("frame_times"), meta.get("duration"), meta.get("fps")
        if not times or not duration or not fps:
            return None
        return cls(times, float(duration), float(fps))


def original_times(clock: ClipClock, num_frames: int, rng: random.Random) -> list[float]:
    """Seconds into the clip of the frames the original trainer would read: its ``"rand"`` rule over the source
    frames (``[lo, hi - 2]`` of each of ``num_frames`` equal segments), and its OpenCV seek that reads frame
    ``index - 1``."""
    source_frames = max(1, round(clock.duration * clock.fps))
    bounds = segment_bounds(source_frames, num_frames)
    return [max(rng.randint(lo, max(lo, hi - 2)) - 1, 0) / clock.fps for lo, hi in zip(bounds[:-1], bounds[1:])]


def nearest_stored(frame_times: Sequence[float], time: float) -> int:
    """The stored frame shown closest to ``time`` (the earlier one on a tie)."""
    right = bisect.bisect_left(frame_times, time)
    if right == 0:
        return 0
    if right == len(frame_times):
        return len(frame_times) - 1
    return right if frame_times[right] - time < time - frame_times[right - 1] else right - 1


def time_frames(clock: ClipClock, num_frames: int, rng: random.Random) -> list[int]:
    """Training frames sampled in time as the original sampled them: the original's instants
    (:func:`original_times`), each taken from the nearest stored frame.

    On the 2 fps grid, :func:`segment_frames`' ``"rand"`` rule picks among about seven stored frames per segment
    and never the segment's last one, so the last 12-14 % of every segment is never seen; sampling the original's
    instants and rounding to the grid keeps the original's distribution up to a quarter of the grid step
    (``python -m mcq_shards.bench_frames`` measures both).
    """
    return [nearest_stored(clock.frame_times, t) for t in original_times(clock, num_frames, rng)]
