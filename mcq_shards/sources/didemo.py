"""DiDeMo (Hendricks et al. 2017) in the LocalizingMoments release that CLIP4Clip and Frozen-in-Time users have:
``train_data.json`` / ``val_data.json`` / ``test_data.json`` (a list of moments: ``video`` file name,
``description``, ``times``, ...), optionally ``train_list.txt`` / ``val_list.txt`` / ``test_list.txt`` (the video
names to keep, CLIP4Clip's layout), and the videos under the video folder by their file name (or the same name
with another extension, for transcoded copies).

Retrieval on DiDeMo is paragraph-to-video: the descriptions of a video's moments, in file order, are joined with
spaces into one query, and the video is read over its first 30 seconds, the span its moments were annotated on
(longer videos were cut to 30 s for annotation). The individual sentences are kept as ``sentences``.

There is no single published test-set size: the test annotation names more videos than can still be downloaded
(papers evaluate about 1,000 of them, "1k"), so completeness is checked against the split files themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from mcq_shards.sources import Row, VideoFolder, make_key
from mcq_shards.sources.msrvtt import find
from mcq_shards.tables import InputError, read_json, read_lines

SPLITS = ("test", "train", "val")
TEST_SIZE = None
ANNOTATED_SECONDS = 30.0


def read(root: Path, split: str, annotations: Path | None = None, split_list: Path | None = None,
         videos: Path | None = None) -> Iterator[Row]:
    annotations = annotations or find(root, f"{split}_data.json", "annotations")
    if split_list is None and any((d / f"{split}_list.txt").is_file() for d in (root, root / "annotations")):
        split_list = find(root, f"{split}_list.txt", "annotations")
    folder = VideoFolder(videos or root)
    paragraphs = read_moments(annotations)
    wanted = list(paragraphs) if split_list is None else read_lines(split_list)
    where_of = {name: f"{annotations}[{position}]" for name, (position, _) in paragraphs.items()}
    for line, name in enumerate(wanted, start=1):
        if name not in paragraphs:
            raise InputError(split_list, line, 1, f"{name} has no moment in {annotations}")
        where = f"{split_list}:{line}" if split_list else where_of[name]
        sentences = paragraphs[name][1]
        media = folder.find(name, where)
        yield Row(source="didemo", key=make_key("didemo", name), id=name, caption=" ".join(sentences), media=media,
                  kind="video", where=where, extra={"split": split, "sentences": sentences},
                  reject=None if media else folder.missing(name))


def read_moments(path: Path) -> dict[str, tuple[int, list[str]]]:
    """Video name -> (its first moment's position in the file, the descriptions of its moments in file order)."""
    data = read_json(path)
    if not isinstance(data, list):
        raise InputError(path, 1, 1, "expected a JSON list of moments with 'video' and 'description'")
    videos: dict[str, tuple[int, list[str]]] = {}
    for n, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("video"), str) \
                or not isinstance(item.get("description"), str):
            raise InputError(path, None, None, f"moment [{n}] lacks a 'video' or 'description' string: "
                             f"{item!r:.200}")
        text = item["description"].strip()
        entry = videos.setdefault(item["video"], (n, []))
        if text:
            entry[1].append(text)
    return videos
