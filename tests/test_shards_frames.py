"""segment_frames is the one frame sampler every loader calls: parity with the original MCQ code."""

import random

import numpy as np
import pytest

from mcq_shards.frames import segment_bounds, segment_frames, stored_frame_count, stored_frame_times


def original_bounds(num_stored: int, num_frames: int) -> list[int]:
    """MCQ's base_dataset.sample_frames boundaries, written out with numpy as it does."""
    n = min(num_frames, num_stored)
    return np.linspace(start=0, stop=num_stored, num=n + 1).astype(int).tolist()


def test_bounds_equal_the_original_linspace_for_every_small_case():
    for num_stored in range(1, 400):
        for num_frames in (1, 2, 3, 4, 5, 7, 8, 12, 16, 32):
            assert segment_bounds(num_stored, num_frames) == original_bounds(num_stored, num_frames)


def test_uniform_is_the_original_segment_midpoint():
    for num_stored in range(1, 200):
        bounds = original_bounds(num_stored, 4)
        expected = [(lo + (hi - 1)) // 2 for lo, hi in zip(bounds[:-1], bounds[1:])]
        assert segment_frames(num_stored, 4, "uniform") == expected
    assert segment_frames(32, 4, "uniform") == [3, 11, 19, 27]
    assert segment_frames(2, 4, "uniform") == [0, 1]  # fewer stored frames than asked: caller pads


def test_rand_stays_in_the_original_range_and_covers_it():
    rng = random.Random(0)
    seen = [set() for _ in range(4)]
    for _ in range(2000):
        for k, index in enumerate(segment_frames(32, 4, "rand", rng)):
            seen[k].add(index)
    # segments of 8 frames; the original draws from range(lo, hi - 1): lo..lo+6
    assert seen == [set(range(lo, lo + 7)) for lo in (0, 8, 16, 24)]


def test_rand_takes_the_single_frame_of_a_one_frame_segment():
    # the original raises here (random.choice of an empty range) and falls back to a black frame
    with pytest.raises(IndexError):
        random.choice(range(0, 0))
    assert segment_frames(4, 4, "rand", random.Random(1)) == [0, 1, 2, 3]
    assert segment_frames(5, 4, "rand", random.Random(1))[0] == 0


def test_rand_is_reproducible_from_the_rng():
    assert segment_frames(100, 8, "rand", random.Random(7)) == segment_frames(100, 8, "rand", random.Random(7))


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        segment_frames(0, 4, "uniform")
    with pytest.raises(ValueError):
        segment_frames(10, 4, "middle")
    with pytest.raises(TypeError):
        segment_frames(10, 4, "rand", np.random.default_rng(0))


def test_stored_frame_count_and_times():
    assert stored_frame_count(18.0, 2.0, 8, 32, 450) == 32  # 36 wanted, capped at max_frames
    assert stored_frame_count(10.0, 2.0, 8, 32, 250) == 20
    assert stored_frame_count(1.0, 2.0, 8, 32, 25) == 8  # short clip: at least min_frames
    assert stored_frame_count(1.0, 2.0, 8, 32, 5) == 5  # never more than the clip has
    assert stored_frame_times(0.0, 4.0, 4) == [0.5, 1.5, 2.5, 3.5]


def test_time_rule_samples_the_originals_instants_from_the_stored_grid():
    """The original read a 10 s, 25 fps clip with OpenCV: in each of 4 segments of its 250 frames a uniform index in
    [lo, hi - 2], then frame index - 1. The time rule draws exactly those instants and takes the nearest of the 20
    stored frames, so every stored frame of a segment can be shown (the stored-index rule never shows a segment's
    last one) and the sampled times stay within a quarter of the 0.5 s grid step of the original's, on average."""
    from mcq_shards.bench_frames import segment_times, stored_grid, wasserstein
    from mcq_shards.frames import ClipClock, original_times, time_frames

    grid = stored_grid(10.0, 25.0, 2.0, 8, 32)
    clock = ClipClock(grid, 10.0, 25.0)
    rng = random.Random(0)
    picks = [time_frames(clock, 4, rng) for _ in range(4000)]
    assert {f for p in picks for f in p} == set(range(20))
    # an instant at the start of a segment may be nearest to the previous segment's last stored frame
    assert all(5 * k - 1 <= p[k] <= 5 * k + 4 for p in picks for k in range(4))
    times = original_times(clock, 4, random.Random(1))
    assert all(0 <= t < 10 for t in times) and times == sorted(times)
    for original, stored_rule, time_rule, start, end in segment_times(10.0, 25.0, 4, grid):
        assert wasserstein(time_rule, original) <= 0.5 / 4 + 0.01
        assert wasserstein(stored_rule, original) > 1.5 * wasserstein(time_rule, original)
    assert ClipClock.from_meta({"media": "image", "width": 4, "height": 4}) is None


def test_time_rule_on_a_short_grid_and_one_frame():
    from mcq_shards.frames import ClipClock, time_frames

    clock = ClipClock([0.0, 0.04], 0.08, 25.0)  # two source frames, both stored
    assert time_frames(clock, 4, random.Random(0)) == [0, 0]  # min(frames, source frames) picks, like the original
    one = ClipClock([0.25 * k for k in range(8)], 2.0, 25.0)
    assert len(time_frames(one, 1, random.Random(0))) == 1
