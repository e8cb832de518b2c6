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
from typing import NamedTuple

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
    source: str  # "cc3m", "webvid", "msrvtt", "wds" or "csv"
    id: str
    caption: str
    media: str | Member | None
    kind: str | None  # "image", "video", or None when the media type is unknown
    where: str  # "file:line" (or "shard.tar:member"), for rejects
    extra: dict = field(default_factory=dict)  # source-specific JSON fields (MSR-VTT split, captions)
    reject: str | None = None
    phrases: dict | None = None  # nouns and verbs as caption spans, when a --phrases-file gave them


def make_key(source: str, raw_id: str) -> str:
    """``<source>-<id>`` with every character outside ``[A-Za-z0-9_-]`` replaced by ``_``.

    WebDataset and DALI split member names at the first dot, so a key must not contain one; the
    converter rejects any two rows that end up with the same key.
    """
    return f"{source}-{_NOT_KEY.sub('_', raw_id)}"


def escapes(relative: str) -> str | None:
    """Why a path taken from a table may not be read below its data folder, or None when it may: an absolute path,
    or one whose `..` parts climb out of the folder (the check is on the text; links inside the folder are followed,
    as data sets are often folders of links). A table from elsewhere could otherwise pull any file into the shards."""
    normal = os.path.normpath(relative)
    if os.path.isabs(relative) or normal == ".." or normal.startswith(".." + os.sep):
        return (f"path outside the data folder: {relative!r} is absolute or climbs out with '..' "
                "(--allow-outside-paths reads it)")
    return None
