"""The shard format works with NVIDIA DALI: index files as wds2idx writes them, and a DALI pipeline that
picks each sample's frames *before* decoding (one frame per segment, SPEC §3.3).

The pipeline here is the prototype for mcq_ds's real one: it reads the ``jpgs`` and ``offsets``
members, computes the segment frames with DALI arithmetic (the same integer formula as
``mcq_shards.frames.segment_frames``, which this test checks), slices those frames' bytes and decodes
only them. It runs on the CPU (``device_id=None``); the same graph with ``device="mixed"`` decodes
with nvJPEG on a GPU and is run when one is present.
"""

import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mcq_shards.convert import Options, convert
from mcq_shards.frames import segment_frames
from mcq_shards.manifest import read_manifest
from mcq_shards.sources import webvid
from shards_fixtures import encode_video, write_webvid

dali = pytest.importorskip("nvidia.dali")
from nvidia.dali import fn, pipeline_def, types  # noqa: E402
from nvidia.dali import math as dmath  # noqa: E402
from nvidia.dali.backend import GetCUDADeviceCount  # noqa: E402

F = 4
SECONDS = [2, 3, 5, 8]  # at 2 fps with min 4 frames: 4, 6, 10, 16 stored frames


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dali")
    csv = write_webvid(root / "raw", [(str(i), f"A white square number {i} crosses a gradient", "missing")
                                      for i in range(len(SECONDS))])
    for i, seconds in enumerate(SECONDS):
        encode_video(root / "raw" / "videos" / "000001_000050" / f"{i}.mp4", "h264", seconds=seconds, fps=10)
    convert(webvid.read(csv, root / "raw" / "videos"), root / "out", "webvid", Options(min_frames=4),
            workers=1, progress=False)
    return root / "out"


def test_index_is_what_wds2idx_writes(shard_dir, tmp_path):
    wds2idx = pytest.importorskip("wds2idx")
    shard = read_manifest(shard_dir).shards[0]
    with wds2idx.IndexCreator(str(shard.path), str(tmp_path / "ref.idx"), verbose=False) as creator:
        creator.create_index()
    assert shard.index.read_text() == (tmp_path / "ref.idx").read_text()


def frame_pipeline(manifest, mode: str, device: str, seed: int = 1):
    """DALI: per-sample segment frames from the offsets member, sliced and decoded alone."""

    @pipeline_def(batch_size=len(SECONDS), num_threads=1, device_id=None if device == "cpu" else 0, seed=seed)
    def pipe():
        jpgs, offsets = fn.readers.webdataset(paths=manifest.paths, index_paths=manifest.index_paths,
                                              ext=["jpgs", "offsets"], random_shuffle=False, name="reader")
        offsets = fn.reinterpret(offsets, dtype=types.INT32)
        n = offsets.shape(dtype=types.INT32)[0] - 1
        picks, frames = [], []
        for k in range(F):  # with n >= F, as the converter's --min-frames guarantees
            lo, hi = (n * k) // F, (n * (k + 1)) // F
            if mode == "uniform":
                pick = (lo + hi - 1) // 2
            else:  # uniform in [lo, hi - 2], or lo for a one-frame segment, as segment_frames
                width = fn.cast(dmath.max(hi - lo - 1, 1), dtype=types.FLOAT)
                pick = lo + fn.cast(dmath.floor(fn.random.uniform(range=[0.0, 1.0]) * width), dtype=types.INT32)
            encoded = fn.slice(jpgs, start=fn.stack(offsets[pick]), end=fn.stack(offsets[pick + 1]), axes=[0])
            picks.append(pick)
            frames.append(fn.decoders.image(encoded, device=device, output_type=types.RGB))
        return fn.stack(*picks), fn.stack(*frames), n

    return pipe()


def stored_frames(shard_path: Path) -> list[list[np.ndarray]]:
    import tarfile

    clips = {}
    with tarfile.open(shard_path) as tar:
        for m in tar:
            key, ext = m.name.split(".", 1)
            clips.setdefault(key, {})[ext] = tar.extractfile(m).read()
    result = []
    for members in clips.values():
        offsets = np.frombuffer(members["offsets"], "<i4")
        result.append([np.asarray(Image.open(io.BytesIO(members["jpgs"][a:b])).convert("RGB"))
                       for a, b in zip(offsets[:-1], offsets[1:])])
    return result


@pytest.mark.parametrize("device", ["cpu", pytest.param("mixed", marks=pytest.mark.skipif(
    GetCUDADeviceCount() == 0, reason="no GPU here; run on a GPU machine to check nvJPEG"))])
def test_uniform_frames_chosen_before_decoding(shard_dir, device):
    manifest = read_manifest(shard_dir)
    pipe = frame_pipeline(manifest, "uniform", device)
    pipe.build()
    picks, frames, counts = pipe.run()
    if device == "mixed":
        frames = frames.as_cpu()
    reference = stored_frames(manifest.shards[0].path)
    for i, clip in enumerate(reference):
        n = int(np.array(counts[i]))
        assert n == len(clip)
        assert np.array(picks[i]).tolist() == segment_frames(n, F, "uniform")
        decoded = np.array(frames[i])
        assert decoded.shape == (F, 48, 64, 3)
        for got, index in zip(decoded, segment_frames(n, F, "uniform")):
            assert np.abs(got.astype(int) - clip[index]).mean() < 2  # same JPEG, two libjpeg builds


def test_random_frames_vary_per_sample_within_segments(shard_dir):
    manifest = read_manifest(shard_dir)
    pipe = frame_pipeline(manifest, "rand", "cpu", seed=3)
    pipe.build()
    seen = {}
    for _ in range(30):
        picks, _, counts = pipe.run()
        for i in range(len(SECONDS)):
            n = int(np.array(counts[i]))
            seen.setdefault(n, set()).add(tuple(np.array(picks[i]).tolist()))
    for n, choices in seen.items():
        # the support is exactly what segment_frames(rand) can return
        support = {tuple(segment_frames(n, F, "rand", random.Random(s))) for s in range(3000)}
        assert choices <= support
        assert len(choices) > 1 or len(support) == 1
    assert len(seen[16]) > 5
