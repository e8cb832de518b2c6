"""Input readers: each turns one published data layout into :class:`Row` objects, in input order.

A reader only reads tables and names files; it never decodes media (the workers do). It reads its
whole table up front and stops with an :class:`~mcq_shards.tables.InputError` on a structural problem,
before anything is converted. A row that is readable but unusable (say, a WebDataset sample without
a caption) still becomes a :class:`Row` with ``reject`` set, so that it lands in ``rejects.jsonl``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from mcq_shards.media import VIDEO_EXTENSIONS
from mcq_shards.tables import InputError

_NOT_KEY = re.compile(r"[^A-Za-z0-9_-]")


class Member(NamedTuple):
    """Media stored inside a tar (WebDataset input): where its bytes are."""

    tar: str
    offset: int
    size: int
    name: str


@dataclass
class Row:
    key: str
    source: str  # "cc3m", "webvid", "msrvtt", "msvd", "lsmdc", "didemo", "wds" or "csv"
    id: str
    caption: str
    media: str | Member | None
    kind: str | None  # "image", "video", or None when the media type is unknown
    where: str  # "file:line" (or "shard.tar:member"), for rejects
    extra: dict = field(default_factory=dict)  # source-specific JSON fields (a benchmark's split, captions)
    reject: str | None = None
    phrases: dict | None = None  # nouns and verbs as caption spans, when a --phrases-file gave them


def make_key(source: str, raw_id: str) -> str:
    """``<source>-<id>`` with every character outside ``[A-Za-z0-9_-]`` replaced by ``_``.

    WebDataset and DALI split member names at the first dot, so a key must not contain one; the
    converter rejects any two rows that end up with the same key.
    """
    return f"{source}-{_NOT_KEY.sub('_', raw_id)}"


class VideoFolder:
    """The video files under a folder, found by name the way the benchmark layouts name them: by their file name, or
    by their name without its extension (MSVD's ``YouTubeClips/<id>.avi``, LSMDC's ``<movie>/<clip id>.avi``, DiDeMo
    files transcoded to another container). The folder is walked once, on the first lookup. A name is only ever
    matched against files found below the folder, so an annotation cannot lead a conversion out of it."""

    def __init__(self, root: Path):
        self.root = root
        self._by_name: dict[str, str] | None = None
        self._by_stem: dict[str, list[str]] = {}

    def _walk(self) -> None:
        self._by_name = {}
        for folder, _, files in os.walk(self.root):
            for name in sorted(files):
                stem, _, ext = name.rpartition(".")
                if stem and ext.lower() in VIDEO_EXTENSIONS:
                    path = os.path.join(folder, name)
                    self._by_name.setdefault(name, path)
                    self._by_stem.setdefault(stem, []).append(path)

    def find(self, name: str, where: str) -> str | None:
        """The path of video ``name`` (a file name or an id), None when no file below the folder has that name; two
        files for one id are an error naming both (``where`` is the annotation line asking for it)."""
        if self._by_name is None:
            self._walk()
        if name in self._by_name:
            return self._by_name[name]
        stem = name.rpartition(".")[0] if name.rpartition(".")[2].lower() in VIDEO_EXTENSIONS else name
        found = self._by_stem.get(stem, [])
        if len(found) > 1:
            raise InputError(where, None, None, f"video {name!r} matches several files ({', '.join(found[:3])}); "
                             f"keep one per video under {self.root}")
        return found[0] if found else None

    def missing(self, name: str) -> str:
        """The reject reason of a video that is not there."""
        return f"file not found: no video named {name!r} under {self.root}"


def escapes(relative: str) -> str | None:
    """Why a path taken from a table may not be read below its data folder, or None when it may: an absolute path,
    or one whose `..` parts climb out of the folder (the check is on the text; links inside the folder are followed,
    as data sets are often folders of links). A table from elsewhere could otherwise pull any file into the shards."""
    normal = os.path.normpath(relative)
    if os.path.isabs(relative) or normal == ".." or normal.startswith(".." + os.sep):
        return (f"path outside the data folder: {relative!r} is absolute or climbs out with '..' "
                "(--allow-outside-paths reads it)")
    return None
