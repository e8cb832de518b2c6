"""Users' own data: any CSV of (media path, caption), images and videos mixed, told apart by extension."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from mcq_shards.media import media_kind
from mcq_shards.sources import Row, escapes, make_key
from mcq_shards.tables import read_table


def read(csv_path: Path, root: Path, path_column: str = "path", caption_column: str = "caption",
         id_column: str | None = None, delimiter: str = ",", outside_paths: bool = False) -> Iterator[Row]:
    """Paths are taken from ``root``; keys are ``csv-<row number>``, or ``csv-<id>`` with an id column. A path
    that leads out of ``root`` (absolute, or climbing with ``..``) is rejected unless ``outside_paths``."""
    columns = [path_column, caption_column] + ([id_column] if id_column else [])
    for number, (line, r) in enumerate(read_table(csv_path, columns, delimiter=delimiter)):
        media = r[path_column].strip()
        raw_id = r[id_column].strip() if id_column else f"{number:09d}"
        row = Row(source="csv", key=make_key("csv", raw_id), id=raw_id if id_column else media, caption=r[caption_column],
                  media=str(root / media), kind=media_kind(media), where=f"{csv_path}:{line}")
        if not media:
            row.reject = "missing media: the path column is empty"
        elif row.kind is None:
            row.reject = f"unknown media type: {media!r} has no image or video file extension"
        elif not outside_paths:
            row.reject = escapes(media)
        yield row
