"""GNU tar shards and their DALI index files.

DALI's WebDataset reader reads only GNU-format tar, and Python's ``tarfile`` writes PAX unless told
otherwise (DALI#3640), so every shard is written here with ``GNU_FORMAT`` and fixed owner, mode and
time: the same samples give byte-identical shards.

The index is the text format DALI's ``wds2idx`` writes (``v1.2 <samples>``, then per sample
``<ext> <data offset> <size> <member name>`` for each member). It is computed from the finished tar
itself, by the same function ``mcq-shards verify`` uses to check it.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import Iterator

GNU_MAGIC = b"ustar  \x00"
INDEX_VERSION = "v1.2"


def split_name(name: str) -> tuple[str, str]:
    """(key, extension) the way WebDataset and DALI split a member name: at the first dot of the base name."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    return (name, "") if dot < 0 else (name[:dot], name[dot + 1:])


class ShardWriter:
    """Appends samples (``key`` plus ``{extension: bytes}``) to one GNU tar."""

    def __init__(self, path: Path):
        self.path = path
        self._tar = tarfile.open(path, "w", format=tarfile.GNU_FORMAT)
        self.samples = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def close(self) -> None:
        self._tar.close()


def members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Regular-file members in order (directories and links are skipped, as DALI skips them)."""
    for info in tar:
        if info.isreg():
            yield info


def samples(path: Path) -> Iterator[tuple[str, list[tarfile.TarInfo]]]:
    """(key, members) per sample: consecutive members that share a key, as readers group them."""
    with tarfile.open(path, "r:") as tar:
        key, group = None, []
        for info in members(tar):
            k, _ = split_name(info.name)
            if group and k != key:
                yield key, group
                group = []
            key = k
            group.append(info)
        if group:
            yield key, group


def index_text(path: Path) -> str:
    """The DALI index of a tar, exactly as ``wds2idx`` writes it."""
    lines = []
    for _, group in samples(path):
        lines.append(" ".join(f"{split_name(m.name)[1]} {m.offset_data} {m.size} {m.name}" for m in group))
    if not lines:
        raise ValueError(f"{path}: no samples, DALI cannot index an empty shard")
    return f"{INDEX_VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines)


def non_gnu_headers(path: Path) -> list[str]:
    """Names of members whose header is not GNU format (DALI would misread them)."""
    bad = []
    with tarfile.open(path, "r:") as tar, open(path, "rb") as raw:
        for info in tar:
            raw.seek(info.offset + 257)
            if raw.read(8) != GNU_MAGIC:
                bad.append(info.name)
    return bad


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
