"""WebDataset shards as img2dataset and video2dataset write them: ``<key>.<media>`` + ``.txt`` + ``.json``.

Only the tar headers and the small text members are read here; the media bytes are read by the
workers from the recorded offsets.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Iterable, Iterator

from mcq_shards.media import media_kind
from mcq_shards.sources import Member, Row, make_key
from mcq_shards.tables import ENCODING, InputError
from mcq_shards.tario import samples, split_name


def read(shards: Iterable[Path], source: str) -> Iterator[Row]:
    """Rows for every sample of every shard, keyed ``<source>-<original key>``."""
    for path in shards:
        if not path.is_file():
            raise InputError(path, None, None, "shard not found")
        try:
            with open(path, "rb") as raw:
                for key, group in samples(path):
                    yield _row(path, raw, key, group, source)
        except tarfile.TarError as err:
            raise InputError(path, None, None, f"not a readable tar: {err}") from None


def _row(path: Path, raw, key: str, group: list[tarfile.TarInfo], source: str) -> Row:
    by_ext = {split_name(m.name)[1].lower(): m for m in group}
    base = key.rsplit("/", 1)[-1]
    meta = _small_json(raw, by_ext.get("json"))
    caption = _text(raw, by_ext["txt"]) if "txt" in by_ext else meta.get("caption")
    media = next((m for ext, m in by_ext.items() if media_kind(ext)), None)
    row = Row(source=source, key=make_key(source, base), id=str(meta.get("url") or base), caption=caption or "",
              media=Member(str(path), media.offset_data, media.size, media.name) if media else None,
              kind=media_kind(media.name) if media else None, where=f"{path}:{key}")
    if media is None:
        row.reject = f"missing media: no image or video member, only {sorted(by_ext)}"
    elif caption is None:
        row.reject = "empty caption: no .txt member and no 'caption' in the .json"
    return row


def _text(raw, info: tarfile.TarInfo) -> str:
    raw.seek(info.offset_data)
    return raw.read(info.size).decode(ENCODING, errors="surrogateescape")


def _small_json(raw, info: tarfile.TarInfo | None) -> dict:
    if info is None:
        return {}
    try:
        value = json.loads(_text(raw, info))
    except (ValueError, UnicodeError):
        return {}
    return value if isinstance(value, dict) else {}
