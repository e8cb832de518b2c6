"""LSMDC (the Large Scale Movie Description Challenge) in its published layout: tab-separated annotation files
``LSMDC16_annos_training.csv``, ``LSMDC16_annos_val.csv`` and the public test ``LSMDC16_challenge_1000_publictect.csv``,
six fields per line and no header (clip id, aligned start and end, extracted start and end, sentence), and the clips
as ``<movie>/<clip id>.avi`` anywhere under the video folder (default: the root).

The test split is the 1,000 clips of the public test file, one sentence each, as every retrieval paper since
LSMDC 2016 evaluates. In the training and validation files one clip id may carry several sentences; they become
one sample with all its sentences as ``captions`` (fine-tuning draws one per step).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

from mcq_shards.sources import Row, VideoFolder, make_key
from mcq_shards.sources.msrvtt import find
from mcq_shards.tables import read_table

SPLITS = ("test", "train", "val")
ANNOTATIONS = {"train": "LSMDC16_annos_training.csv", "val": "LSMDC16_annos_val.csv",
               "test": "LSMDC16_challenge_1000_publictect.csv"}
COLUMNS = ["clip_id", "start_aligned", "end_aligned", "start_extracted", "end_extracted", "sentence"]
TEST_SIZE = 1000


def read(root: Path, split: str, annotations: Path | None = None, videos: Path | None = None) -> Iterator[Row]:
    annotations = annotations or find(root, ANNOTATIONS[split], "annotations")
    folder = VideoFolder(videos or root)
    clips: dict[str, tuple[int, list[str]]] = {}  # clip id -> (first line, sentences), in file order
    for line, r in read_table(annotations, COLUMNS, delimiter="\t", header=False, quoting=csv.QUOTE_NONE):
        clip_id = r["clip_id"].strip()
        clips.setdefault(clip_id, (line, []))[1].append(r["sentence"].strip())
    for clip_id, (line, sentences) in clips.items():
        where = f"{annotations}:{line}"
        extra = {"split": split}
        if len(sentences) > 1:
            extra["captions"] = sentences
        media = folder.find(clip_id, where) if clip_id else None
        yield Row(source="lsmdc", key=make_key("lsmdc", clip_id), id=clip_id, caption=sentences[0], media=media,
                  kind="video", where=where, extra=extra, reject=None if media else
                  folder.missing(clip_id) if clip_id else "missing media: the clip id field is empty")
