"""The demo data's small MSVD, LSMDC and DiDeMo sets, in the layouts those benchmarks publish, plus MSR-VTT's
Training-7K list files, so that every benchmark converter runs on real encoded videos in the tests and the demo.

The clips are the demo data's (`mcq_shards.synth`): training splits show seen colour-shape-motion combinations,
test splits only held-out ones, so zero-shot retrieval on every set measures composition. What differs between the
sets is what their published layouts differ in: MSVD's caption pickle of word lists and AVI clips, LSMDC's
tab-separated annotation lines with clip ids that name their movie and time span (and training clips with two
sentences), DiDeMo's moment list whose descriptions make one paragraph per video and whose video names carry an
extension their transcoded files do not.
"""
from __future__ import annotations

import csv
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mcq_shards.synth import BACKGROUNDS, Clip, Combo, Scene, _any_background, _cycle, plan_clip

SETS = ("msvd", "lsmdc", "didemo")


@dataclass
class Layouts:
    """What the benchmark layouts need rendered, and the writer of their annotation files (run after rendering)."""

    jobs: list[tuple[Path, Scene, int]] = field(default_factory=list)
    writers: list[Callable[[], None]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def write(self) -> None:
        for writer in self.writers:
            writer()


def plan(out: Path, seed: int, held_out: list[Combo], seen: list[Combo], size: int, fps: int, test_videos: int,
         train_videos: int) -> Layouts:
    """Plan the three sets under out/msvd, out/lsmdc and out/didemo: `test_videos` test videos each (held-out
    combinations, each on every background in turn) and `train_videos` training plus two validation videos."""
    layouts = Layouts()
    backgrounds = list(BACKGROUNDS)
    for number, name in enumerate(SETS):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 15, number]))  # apart from synth's own streams
        splits = {
            "test": [plan_clip(rng, held_out[k % len(held_out)], backgrounds[k // len(held_out) % len(backgrounds)],
                               size, fps, int(rng.integers(2, 4))) for k in range(test_videos)],
            "train": [plan_clip(rng, c, _any_background(rng), size, fps, 3) for c in _cycle(rng, seen, train_videos)],
            "val": [plan_clip(rng, c, _any_background(rng), size, fps, 2) for c in _cycle(rng, seen, 2)],
        }
        layouts.counts.update({f"{name}_{split}": len(clips) for split, clips in splits.items()})
        {"msvd": _msvd, "lsmdc": _lsmdc, "didemo": _didemo}[name](out / name, splits, fps, layouts)
    return layouts


def _msvd(root: Path, splits: dict[str, list[Clip]], fps: int, layouts: Layouts) -> None:
    """raw-captions.pkl (id -> captions as lowercase word lists, collaborative-experts' form), *_list.txt,
    YouTubeClips/<id>.avi (YouTube id, start and end second)."""
    ids = {split: [f"synth{split[:2]}{n:03d}_{2 * n}_{2 * n + 4}" for n in range(len(clips))]
           for split, clips in splits.items()}
    for split, clips in splits.items():
        layouts.jobs += [(root / "YouTubeClips" / f"{vid}.avi", clip.scene, fps) for vid, clip in zip(ids[split], clips)]

    def write() -> None:
        captions = {vid: [c.lower().replace(",", "").split() for c in clip.captions]
                    for split, clips in splits.items() for vid, clip in zip(ids[split], clips)}
        with open(root / "raw-captions.pkl", "wb") as f:
            pickle.dump(captions, f, protocol=4)
        for split in splits:
            (root / f"{split}_list.txt").write_text("".join(f"{vid}\n" for vid in ids[split]))
    layouts.writers.append(write)


def _lsmdc(root: Path, splits: dict[str, list[Clip]], fps: int, layouts: Layouts) -> None:
    """LSMDC16_*.csv (six tab-separated fields, no header), <movie>/<clip id>.avi. A training clip carries two of its
    captions on two lines, as real LSMDC training clips with several sentences do."""
    movies = {"train": "0001_Synth_Shapes", "val": "0002_Synth_Shapes_Two", "test": "1001_Synth_Shapes_Test"}
    names = {"train": "LSMDC16_annos_training.csv", "val": "LSMDC16_annos_val.csv",
             "test": "LSMDC16_challenge_1000_publictect.csv"}
    clip_ids = {split: [f"{movies[split]}_00.{n // 10:02d}.{n % 10 * 5:02d}.000-00.{n // 10:02d}.{n % 10 * 5 + 4:02d}"
                        f".000" for n in range(len(clips))] for split, clips in splits.items()}
    for split, clips in splits.items():
        layouts.jobs += [(root / "videos" / movies[split] / f"{cid}.avi", clip.scene, fps)
                         for cid, clip in zip(clip_ids[split], clips)]

    def write() -> None:
        for split, clips in splits.items():
            with open(root / names[split], "w", newline="", encoding="utf-8") as f:
                lines = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE)
                for cid, clip in zip(clip_ids[split], clips):
                    times = cid.rsplit("_", 1)[1].split("-")
                    for caption in clip.captions[:1 if split == "test" else 2]:
                        lines.writerow([cid, *times, *times, caption])
    layouts.writers.append(write)


def _didemo(root: Path, splits: dict[str, list[Clip]], fps: int, layouts: Layouts) -> None:
    """*_data.json (one entry per moment: the video's name as Flickr gave it, with a .mov extension, one
    description, annotators' 5-second chunk times), test_list.txt (CLIP4Clip's), videos/<name stem>.mp4 (transcoded
    copies). The training split has no list file: every video of its annotation is taken."""
    names = {split: [f"{10_000_000 + 97 * n}@N0{n % 10}_{4_000_000_000 + n}_{n:010x}.mov" for n in range(len(clips))]
             for split, clips in splits.items()}
    for split, clips in splits.items():
        layouts.jobs += [(root / "videos" / f"{name[:-4]}.mp4", clip.scene, fps)
                         for name, clip in zip(names[split], clips)]

    def write() -> None:
        for split, clips in splits.items():
            moments = [{"video": name, "description": caption, "times": [[k, k]] * 4,
                        "annotation_id": 1000 * n + k, "dl_link": f"https://synth.invalid/didemo/{name}"}
                       for n, (name, clip) in enumerate(zip(names[split], clips)) for k, caption in
                       enumerate(clip.captions)]
            (root / f"{split}_data.json").write_text(json.dumps(moments, indent=1) + "\n")
        (root / "test_list.txt").write_text("".join(f"{name}\n" for name in names["test"]))
    layouts.writers.append(write)


def write_msrvtt_7k(splits: Path, train_ids: list[str]) -> None:
    """MSR-VTT's official train / validation lists (Training-7K = both): the first 70% / next 10% of the 9k training
    videos, as the official 7,010 are a part of JSFusion's 9,000."""
    cut, val = round(0.7 * len(train_ids)), round(0.8 * len(train_ids))
    for name, part in (("train_list_full.txt", train_ids[:cut]), ("val_list_full.txt", train_ids[cut:val])):
        (splits / name).write_text("".join(f"{vid}\n" for vid in part))
