"""WebVid: the CSV (``videoid, contentUrl, duration, page_dir, name``), videos at ``<videos>/<page_dir>/<videoid>.mp4``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from mcq_shards.sources import Row, escapes, make_key
from mcq_shards.tables import read_table


def read(csv_path: Path, videos: Path, outside_paths: bool = False) -> Iterator[Row]:
    """`outside_paths` reads `page_dir`/`videoid` values that lead out of `videos` instead of rejecting them."""
    for line, r in read_table(csv_path, ["videoid", "page_dir", "name"]):
        video_id = r["videoid"].strip()
        relative = os.path.join(r["page_dir"].strip(), f"{video_id}.mp4")
        row = Row(source="webvid", key=make_key("webvid", video_id), id=video_id, caption=r["name"],
                  media=str(videos / relative), kind="video", where=f"{csv_path}:{line}")
        if not video_id:
            row.reject = "missing media: the videoid column is empty"
        elif not outside_paths:
            row.reject = escapes(relative)
        yield row
