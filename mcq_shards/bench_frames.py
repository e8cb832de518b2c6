"""How far the training frames' times are from the original's: ``python -m mcq_shards.bench_frames``.

The original read each clip with OpenCV at its own frame rate and took, in each of F equal segments of its frames, a
uniform index in ``[lo, hi - 2]`` (then read index - 1). mcq-shards stores a grid of frames (``--fps``, within
``[--min-frames, --max-frames]``); a loader picks from it either by the same rule over the stored frames (the
``stored`` rule, mcq-ds before) or at the original's instants rounded to the nearest stored frame (the ``time``
rule, :func:`mcq_shards.frames.time_frames`). For clip lengths 5-30 s this prints, per rule and storage grid, the
Wasserstein-1 distance between the distribution of sampled times and the original's (exact, every index
enumerated; mean over segments, in seconds and in % of a segment), the share at the end of each segment that is
never shown, and the stored frames and bytes per clip (at the JPEG q80 size per 256-px frame the format benchmark
measured, 18.4 KiB).
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from mcq_shards.frames import nearest_stored, segment_bounds, stored_frame_count, stored_frame_times

KIB_PER_FRAME = 18.4  # JPEG q80, short side 256 (python -m mcq_shards.bench_formats)


def stored_grid(duration: float, source_fps: float, fps: float, min_frames: int, max_frames: int) -> list[float]:
    """The start times of the frames the converter keeps: the source frame on screen at each slice midpoint."""
    source_frames = round(duration * source_fps)
    count = stored_frame_count(duration, fps, min_frames, max_frames, source_frames)
    return [min(math.floor(t * source_fps), source_frames - 1) / source_fps
            for t in stored_frame_times(0.0, duration, count)]


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """W1 between two uniform discrete distributions on the line (values with repeats)."""
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid[:-1], side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid[:-1], side="right") / len(b)
    return float(np.sum(np.abs(cdf_a - cdf_b) * np.diff(grid)))


def segment_times(duration: float, source_fps: float, frames: int, grid: list[float]):
    """Per segment: (the original's sampled times, the stored rule's, the time rule's, segment start and end)."""
    source_frames = round(duration * source_fps)
    src = segment_bounds(source_frames, frames)
    stored = segment_bounds(len(grid), frames)
    out = []
    for k in range(len(src) - 1):
        original = np.array([max(i - 1, 0) / source_fps for i in range(src[k], max(src[k], src[k + 1] - 2) + 1)])
        old = np.array([grid[j] for j in range(stored[k], max(stored[k], stored[k + 1] - 2) + 1)])
        new = np.array([grid[nearest_stored(grid, t)] for t in original])
        out.append((original, old, new, src[k] / source_fps, src[k + 1] / source_fps))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source-fps", type=float, default=25.0, help="frame rate of the clips (default %(default)s)")
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 1], help="frames per clip (default 4 1)")
    args = parser.parse_args(argv)
    lengths = [5.0, 7.5, 10.0, 15.0, 20.0, 25.0, 30.0]
    grids = [(2.0, 8, 32), (4.0, 8, 64), (8.0, 8, 128)]
    print(f"source {args.source_fps:g} fps; clip lengths {', '.join(f'{d:g}' for d in lengths)} s (mean over them)")
    print(f"{'frames':>6s} {'stored grid':>20s} {'rule':>7s} {'W1 s':>7s} {'W1 % seg':>9s} {'unseen end %':>13s} "
          f"{'frames/clip':>12s} {'KiB/clip':>9s}")
    for frames in args.frames:
        for fps, lo, hi in grids:
            rows = {"stored": [], "time": [], "original": []}
            counts = []
            for duration in lengths:
                grid = stored_grid(duration, args.source_fps, fps, lo, hi)
                counts.append(len(grid))
                for original, old, new, start, end in segment_times(duration, args.source_fps, frames, grid):
                    length = end - start
                    for name, times in (("stored", old), ("time", new), ("original", original)):
                        # the end of the segment after the last frame this rule can show (held until the next one)
                        last = times.max()
                        shown_until = min([g for g in grid if g > last] or [end]) if name != "original" else \
                            last + 1 / args.source_fps
                        rows[name].append((wasserstein(times, original), wasserstein(times, original) / length,
                                           max(0.0, end - shown_until) / length))
            for name in ("stored", "time") if fps == 2.0 else ("time",):
                w, share, unseen = np.mean(rows[name], axis=0)
                print(f"{frames:6d} {f'{fps:g} fps, {lo}-{hi}':>20s} {name:>7s} {w:7.3f} {100 * share:9.2f} "
                      f"{100 * unseen:13.2f} {np.mean(counts):12.1f} {np.mean(counts) * KIB_PER_FRAME:9.0f}")
        unseen = np.mean([r[2] for r in rows["original"]])
        print(f"{frames:6d} {'original (OpenCV)':>20s} {'':>7s} {0:7.3f} {0:9.2f} {100 * unseen:13.2f}")


if __name__ == "__main__":
    main()
