"""``manifest.json``: what a shard directory holds, for loaders and for ``mcq-shards verify``.

Loaders call :func:`read_manifest` to get the shard paths and sample counts (the epoch length) instead
of globbing; the manifest also records how the shards were made (source, converter version, options)
and the size and SHA-256 of every shard.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

FORMAT = "mcq-shards/1"
MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"


@dataclass(frozen=True)
class Shard:
    path: Path  # the .tar
    index: Path  # its DALI .idx
    samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    directory: Path
    source: str
    converter_version: str
    options: dict
    shards: list[Shard]
    total: int  # samples in all shards
    rejects: int  # input rows in rejects.jsonl
    raw: dict  # the whole file, for fields not modelled here

    @property
    def paths(self) -> list[str]:
        """Shard paths as strings, e.g. for ``webdataset.WebDataset`` or DALI's ``paths``."""
        return [str(s.path) for s in self.shards]

    @property
    def index_paths(self) -> list[str]:
        return [str(s.index) for s in self.shards]


def read_manifest(directory: str | os.PathLike) -> Manifest:
    """The manifest of a finished conversion; raises ``ValueError`` naming what is missing or wrong."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ValueError(f"{path} not found: not a shard directory, or its conversion has not finished")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format") != FORMAT:
            raise ValueError(f"format is {raw.get('format')!r}, expected {FORMAT!r}")
        shards = [Shard(directory / s["path"], directory / s["index"], s["samples"], s["bytes"], s["sha256"])
                  for s in raw["shards"]]
        return Manifest(directory, raw["source"], raw["converter_version"], raw["options"], shards,
                        raw["samples"], raw["rejects"], raw)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: malformed manifest: {err}") from None


def write_json_atomic(path: Path, value) -> None:
    """Write a JSON file so that a kill leaves either the old file or the new one, never half of it."""
    text = json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    write_text_atomic(path, text)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:  # a failed write (full disk, text that cannot be encoded) leaves nothing behind
        tmp.unlink(missing_ok=True)
        raise
