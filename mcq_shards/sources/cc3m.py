"""Conceptual Captions: the TSV (``caption<TAB>url``, no header) with the downloaded images.

Download tools name the images in one of two ways, both read here:

* img2dataset's ``files`` output: row ``i`` is ``<images>/<i // 10000:05d>/<i // 10000:05d><i % 10000:04d>.jpg``;
* the CC3M download script used by Frozen-in-Time: ``<images>/<crc32(url)>``, with or without an
  extension.

(img2dataset's ``webdataset`` output is read by :mod:`mcq_shards.sources.wds` instead.) The key is the row
number, ``cc3m-%09d``, which is also img2dataset's key, so both layouts give the same keys.
"""

from __future__ import annotations

import csv
import json
import os
import zlib
from pathlib import Path

from mcq_shards.sources import Row
from mcq_shards.tables import ENCODING, InputError, read_table

PER_FOLDER = 10_000  # img2dataset's default number_sample_per_shard


def img2dataset_name(row: int) -> str:
    shard = row // PER_FOLDER
    return f"{shard:05d}/{shard:05d}{row % PER_FOLDER:04d}.jpg"


def crc32_name(url: str) -> str:
    return str(zlib.crc32(url.encode("utf-8")) & 0xFFFFFFFF)


def detect_naming(images: Path) -> str:
    """``"img2dataset"`` when the folder holds 5-digit sub-folders, else ``"crc32"``."""
    if not images.is_dir():
        raise InputError(images, None, None, "image folder not found")
    with os.scandir(images) as entries:
        folders = any(e.is_dir() and len(e.name) == 5 and e.name.isdigit() for e in entries)
    return "img2dataset" if folders else "crc32"


def read(tsv: Path, images: Path, naming: str = "auto") -> list[Row]:
    naming = detect_naming(images) if naming == "auto" else naming
    by_stem = _stems(images) if naming == "crc32" else {}
    header = _has_header(tsv)  # the published file has none; some copies add "caption<TAB>url"
    rows = []
    for index, (line, r) in enumerate(read_table(tsv, ["caption", "url"], delimiter="\t", header=header,
                                                 quoting=csv.QUOTE_NONE)):
        url = r["url"].strip()
        if naming == "img2dataset":
            path = images / img2dataset_name(index)
        else:
            name = crc32_name(url)
            path = images / by_stem.get(name, name)
        rows.append(Row(source="cc3m", key=f"cc3m-{index:09d}", id=url, caption=r["caption"], media=str(path),
                        kind="image", where=f"{tsv}:{line}"))
    if naming == "img2dataset":
        check_alignment(rows)
    return rows


def check_alignment(rows: list[Row], probes: int = 16) -> None:
    """Stops when the TSV and an img2dataset folder are out of step. img2dataset names each file by its row and
    writes the row's url beside it (`<key>.json`); a line lost or gained (a header taken for data, a truncated copy)
    shifts every later caption onto the wrong image while the counts still balance. A few evenly spaced rows with
    such a record are compared (cheap: one small file each)."""
    picks = sorted({round(k * (len(rows) - 1) / max(1, probes - 1)) for k in range(probes)}) if rows else []
    for row in (rows[i] for i in picks):
        try:
            stored = json.loads(Path(row.media).with_suffix(".json").read_text(encoding=ENCODING))
        except (OSError, ValueError):
            continue  # no record (a failed download, or a copy without them): nothing to compare
        if isinstance(stored, dict) and stored.get("url") not in (None, row.id):
            path, line = row.where.rsplit(":", 1)
            raise InputError(path, int(line), 2, f"url {row.id} but img2dataset stored {stored['url']} for "
                             f"{row.media}: the table and the image folder are out of step (a line lost or added?); "
                             "give the TSV img2dataset downloaded from")


def _has_header(tsv: Path) -> bool:
    if not tsv.is_file():
        raise InputError(tsv, None, None, "file not found")
    with open(tsv, encoding=ENCODING, errors="surrogateescape") as f:
        return f.readline().rstrip("\r\n") == "caption\turl"


def _stems(images: Path) -> dict[str, str]:
    """File name by name-without-extension, so ``123456`` finds ``123456.jpg`` too."""
    with os.scandir(images) as entries:
        return {e.name.split(".", 1)[0]: e.name for e in entries if e.is_file()}
