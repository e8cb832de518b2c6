"""MSVD (YouTube2Text) in the layout CLIP4Clip and collaborative-experts publish: ``raw-captions.pkl`` (video id ->
its captions, each a list of words), ``train_list.txt`` / ``val_list.txt`` / ``test_list.txt`` (1,200 / 100 / 670
video ids), and the clips as ``YouTubeClips/<id>.avi`` (found by id anywhere under the video folder, by default
the root).

Every split keeps all of a video's captions (about 40 each): the test protocol makes every caption its own query
("sentence-to-video" over the 670 videos), and fine-tuning draws one caption per video per step.
The caption pickle is read by the unpickler that builds only plain data (a JSON file with the same mapping is also
accepted).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Iterator

from mcq_shards.sources import Row, VideoFolder, make_key
from mcq_shards.sources.msrvtt import DataOnlyUnpickler, find
from mcq_shards.tables import InputError, read_json, read_lines

SPLITS = ("test", "train", "val")
TEST_SIZE = 670  # the standard test split (Venugopalan et al. 2015)


def read(root: Path, split: str, captions: Path | None = None, split_list: Path | None = None,
         videos: Path | None = None) -> Iterator[Row]:
    captions = captions or find(root, "raw-captions.pkl", "structured-symlinks")
    split_list = split_list or find(root, f"{split}_list.txt", "structured-symlinks")
    folder = VideoFolder(videos or root)
    by_video = read_captions(captions)
    for line, video_id in enumerate(read_lines(split_list), start=1):
        where = f"{split_list}:{line}"
        texts = by_video.get(video_id)
        if not texts:
            raise InputError(split_list, line, 1, f"{video_id} has no caption in {captions}")
        media = folder.find(video_id, where)
        yield Row(source="msvd", key=make_key("msvd", video_id), id=video_id, caption=texts[0], media=media,
                  kind="video", where=where, extra={"split": split, "captions": texts},
                  reject=None if media else folder.missing(video_id))


def read_captions(path: Path) -> dict[str, list[str]]:
    """Video id -> captions as text. A caption given as a list of words (collaborative-experts' pickle) is joined
    with spaces."""
    if path.suffix.lower() == ".json":
        value = read_json(path)
    else:
        try:
            value = DataOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as err:
            raise InputError(path, None, None, f"cannot read the captions: {err}") from None
    if not isinstance(value, dict):
        raise InputError(path, None, None, "expected a mapping of video id to its list of captions")
    out = {}
    for video_id, texts in value.items():
        if not isinstance(video_id, str) or not isinstance(texts, list):
            raise InputError(path, None, None, f"entry {video_id!r}: expected a video id and a list of captions")
        joined = []
        for n, text in enumerate(texts):
            if isinstance(text, list) and all(isinstance(w, str) for w in text):
                text = " ".join(text)
            if not isinstance(text, str):
                raise InputError(path, None, None, f"{video_id} caption {n}: expected text or a list of words, got "
                                 f"{text!r:.80}")
            if text.strip():  # an empty caption is no query
                joined.append(text.strip())
        out[video_id] = joined
    return out
