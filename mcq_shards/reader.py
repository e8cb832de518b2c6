"""The reading side of the shard contract: which shards, where each sample lies, and one sample's stored frames.

Every reader of mcq-shards output (the reference loader, the DALI host step, evaluation and ``mcq-shards verify``)
goes through this module, so a damaged shard is understood the same way everywhere:

* :func:`resolve_shards`: a shard folder (its ``manifest.json``), a brace pattern or a list of either → shards with
  their sample counts and a usable index;
* :func:`sample_entries`: where every sample's members lie in its tar, from the shard's ``.idx`` after checking that
  it belongs to the tar, else from the tar's own headers with a warning; a tar that breaks off (truncated, or a header
  that declares more bytes than the file holds) gives the samples before the break and says how many are lost;
* :func:`stored_sample`: a sample's members → its metadata and stored JPEG frames, every structural promise of the
  format checked; :func:`check_jpeg` checks one frame's markers and size without decoding it.

A sample that breaks a promise raises :class:`SampleError` with one :class:`Reason`; readers that may skip turn it into
a :class:`Skip` and count it under that reason.
"""
from __future__ import annotations

import enum
import json
import logging
import os
import tarfile
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
from braceexpand import braceexpand

from mcq_shards.manifest import MANIFEST, read_manifest
from mcq_shards.tario import INDEX_VERSION, split_name

log = logging.getLogger(__name__)

BLOCK = 512  # bytes in a tar header block


class Reason(str, enum.Enum):
    """Why a sample cannot be used. Loaders, evaluation and verify count skips under these names."""

    UNREADABLE_TAR = "unreadable-tar"  # the tar breaks off before this sample (truncated, or a damaged header)
    MISSING_MEMBER = "missing-member"  # no json, no media (jpg, or jpgs + offsets)
    BAD_JSON = "bad-json"  # not JSON, not an object, or a field of the wrong kind (key, caption, sizes)
    BAD_OFFSETS = "bad-offsets"  # the offsets do not cut the jpgs member into the frames the json states
    BAD_FRAME = "bad-frame"  # a stored frame is not a whole JPEG of the stated size, or does not decode


class SampleError(ValueError):
    """A sample that breaks the shard format, with one reason."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Skip:
    """A sample that could not be used; it still takes its position in a stream."""

    shard: str
    key: str
    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.shard}: {self.key}: {self.reason.value}: {self.detail}"

    def to_dict(self) -> dict[str, str]:
        return {"shard": self.shard, "key": self.key, "reason": self.reason.value, "detail": self.detail}


def tally(skips: Iterable[Skip]) -> dict[str, int]:
    """Skips counted by reason, as every report of skips gives them: `{"bad-json": 2, ...}`."""
    return dict(sorted(Counter(s.reason.value for s in skips).items()))


class TooManySkips(RuntimeError):
    """A reader's share of the data is mostly unreadable: the shards are damaged or not mcq-shards shards."""


def skip_check_after(limit: int, share: int) -> int:
    """After how many reads a reader's skips are judged: `limit`, or its whole share of an epoch when that is
    smaller (a share that is all unreadable must stop it before refills from other shares dilute the count), but
    not fewer than 64 (a tiny share is not judged on a handful of samples)."""
    return min(limit, max(share, 64))


class SkipLog:
    """A reader's skips: counted by reason, warned about with their shard and key (the first ten, then at most one a
    minute), and checked against a limit. When more than `max_share` of the samples read so far were skipped, once at
    least `check_after` were read, it raises `TooManySkips` naming the last skipped sample's shard: a reader given
    damaged or foreign shards stops with that error instead of skipping forever."""

    def __init__(self, source: str, max_share: float = 0.5, check_after: int = 2000, burst: int = 10,
                 interval: float = 60.0) -> None:
        self.source, self.max_share, self.check_after = source, max_share, check_after
        self.burst, self.interval = burst, interval
        self.read, self.skipped, self.last = 0, Counter(), float("-inf")

    def good(self) -> None:
        self.read += 1

    def __call__(self, skip: Skip) -> None:
        self.read += 1
        self.skipped[skip.reason.value] += 1
        count = sum(self.skipped.values())
        now = time.monotonic()
        if count <= self.burst or now - self.last >= self.interval:
            self.last = now
            log.warning("%s: skipped %s (%d of %d samples skipped by this reader so far)", self.source, skip, count,
                        self.read)
        if self.read >= self.check_after and count > self.max_share * self.read:
            raise TooManySkips(
                f"{self.source}: {count} of the {self.read} samples read could not be used "
                f"({', '.join(f'{n} {r}' for r, n in sorted(self.skipped.items()))}); the last: {skip}. The shards "
                "are damaged or were not written by mcq-shards: check them with `mcq-shards verify DIR`")


# --- where the samples lie --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SampleEntry:
    """One sample's place in its tar: the offset of its first header and (data offset, size) of each member."""

    key: str
    header: int
    members: dict[str, tuple[int, int]]


@dataclass
class ShardEntries:
    """The readable samples of one shard, and what is wrong with the shard when something is."""

    path: str
    entries: list[SampleEntry]
    listed: int  # samples the manifest (or the index) says the shard holds
    damage: str | None = None  # why the samples after `entries` cannot be read
    rebuilt: bool = False  # the positions come from the tar headers: the shard's index was missing or wrong

    @property
    def lost(self) -> int:
        return max(0, self.listed - len(self.entries))


def scan_tar(path: str) -> tuple[list[SampleEntry], str | None]:
    """Every sample found by walking the tar's headers, up to the first damage (truncation, a broken header, a member
    whose declared size runs past the end of the file), and a description of that damage (None: the tar is whole)."""
    size = os.path.getsize(path)
    entries: list[SampleEntry] = []
    key, header, members = None, 0, {}
    damage = None
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                k, ext = split_name(info.name)
                if members and k != key:
                    entries.append(SampleEntry(key, header, members))
                    members = {}
                if info.offset_data + info.size > size:
                    damage = (f"member {info.name} declares {info.size} bytes at byte {info.offset_data}, past the "
                              f"end of the {size}-byte file")
                    break
                if not members:
                    key, header = k, info.offset
                members[ext] = (info.offset_data, info.size)
            else:
                if members:
                    entries.append(SampleEntry(key, header, members))
                members = {}
                end = max((o + n for e in entries[-1:] for o, n in e.members.values()), default=0)
                with open(path, "rb") as f:
                    f.seek(-(-end // BLOCK) * BLOCK)
                    if f.read(BLOCK) != bytes(BLOCK):
                        damage = "the tar ends without its end-of-archive blocks (truncated at a member boundary)"
    except (tarfile.TarError, OSError, UnicodeDecodeError, EOFError) as err:
        damage = f"unreadable tar after {len(entries)} samples: {type(err).__name__}: {err}"
    return entries, damage


class IndexProblem(ValueError):
    """An `.idx` that does not describe its tar."""


def read_index(index: str, tar: str) -> list[SampleEntry]:
    """The samples a DALI index lists, after checking that it describes `tar`: its header, every line, offsets inside
    the file and in order, a tar header with the listed name before the first and the last sample's members, and
    the end of the archive right after the last sample."""
    size = os.path.getsize(tar)
    try:
        with open(index, encoding="utf-8") as f:
            head = f.readline().split()
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise IndexProblem(f"{index}: unreadable: {err}") from None
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
        raise IndexProblem(f"{index}: first line {' '.join(head)!r} is not '{INDEX_VERSION} <samples>'")
    if int(head[1]) != len(lines):
        raise IndexProblem(f"{index}: says {head[1]} samples but lists {len(lines)}")
    entries, end = [], 0
    for number, line in enumerate(lines, start=2):
        fields = line.split(" ")
        if not fields or len(fields) % 4:
            raise IndexProblem(f"{index}:{number}: not '<ext> <offset> <size> <name>' per member")
        members, names = {}, []
        for i in range(0, len(fields), 4):
            ext, offset, length, name = fields[i:i + 4]
            if not (offset.isdigit() and length.isdigit()) or int(offset) < end or int(offset) + int(length) > size:
                raise IndexProblem(f"{index}:{number}: member {name} at {offset}+{length} is not inside the "
                                   f"{size}-byte tar in order")
            members[ext] = (int(offset), int(length))
            names.append(name)
            end = int(offset) + int(length)
        key = split_name(names[0])[0]
        entries.append(SampleEntry(key, _header_offset(members[split_name(names[0])[1]][0], names[0]), members))
    if not entries:
        raise IndexProblem(f"{index}: lists no sample")
    with open(tar, "rb") as f:
        for entry in (entries[0], entries[-1]):
            name = _name_at(f, entry.header)
            if name is None or split_name(name)[0] != entry.key:
                raise IndexProblem(f"{index}: no tar header for {entry.key} at byte {entry.header} of {tar} "
                                   f"(found {name!r}): the index belongs to another tar")
        f.seek(-(-end // BLOCK) * BLOCK)
        rest = f.read(BLOCK)
        if rest.strip(b"\0"):
            raise IndexProblem(f"{index}: the tar goes on after the last sample it lists: the index is short")
    return entries


def _header_offset(data_offset: int, name: str) -> int:
    """Where a member's first header block starts: 512 bytes before its data, plus a GNU long-name record (a header
    block and the name's blocks) for names over 100 bytes."""
    length = len(name.encode())
    extra = BLOCK + -(-(length + 1) // BLOCK) * BLOCK if length > tarfile.LENGTH_NAME else 0
    return data_offset - BLOCK - extra


def _name_at(f: BinaryIO, offset: int) -> str | None:
    """The member name of the tar header at `offset` (following a GNU long-name record), or None if none is there."""
    if offset < 0:
        return None
    f.seek(offset)
    try:
        info = tarfile.TarInfo.frombuf(f.read(BLOCK), "utf-8", "surrogateescape")
        if info.type == tarfile.GNUTYPE_LONGNAME:
            name = f.read(-(-info.size // BLOCK) * BLOCK)[:info.size].rstrip(b"\0").decode("utf-8", "surrogateescape")
            tarfile.TarInfo.frombuf(f.read(BLOCK), "utf-8", "surrogateescape")
            return name
    except (tarfile.HeaderError, EOFError):
        return None
    return info.name


def sample_entries(path: str, index: str | None, listed: int | None = None) -> ShardEntries:
    """Where the samples of the tar at `path` lie: from `index` when it checks out, else from the tar's headers, with a
    warning saying what is wrong with the index (none when no index was given: reading the headers is just slower).
    `listed` is the manifest's count, when there is one."""
    if index is not None:
        try:
            if not os.path.isfile(index):
                raise IndexProblem(f"{index}: missing")
            entries = read_index(index, path)
            if listed is None or len(entries) == listed:
                return ShardEntries(path, entries, len(entries))
            raise IndexProblem(f"{index}: lists {len(entries)} samples, the manifest {listed}")
        except IndexProblem as problem:
            warnings.warn(f"{problem}; reading the sample positions from the tar headers instead (rebuild the index "
                          f"with `wds2idx {path} {index}`)", RuntimeWarning, stacklevel=2)
    entries, damage = scan_tar(path)
    return ShardEntries(path, entries, max(len(entries), listed or 0), damage, rebuilt=True)


def index_lines(entries: Sequence[SampleEntry]) -> str:
    """A DALI index (the `wds2idx` text format) for these samples: for a shard whose own index was missing or wrong,
    or that breaks off, so DALI reads only the samples that are there."""
    lines = [" ".join(f"{ext} {offset} {size} {entry.key}.{ext}" for ext, (offset, size) in entry.members.items())
             for entry in entries]
    return f"{INDEX_VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines)


# --- which shards -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardInfo:
    path: str
    samples: int  # samples listed for it (manifest or index or tar headers)
    index: str | None  # its DALI .idx, when there is one


@dataclass
class ShardSet:
    """The shards a user named, and what their manifest says about the set (empty for bare tar lists)."""

    shards: list[ShardInfo]
    about: dict[str, Any] = field(default_factory=dict)
    empty: list[str] = field(default_factory=list)  # tars with no sample, left out

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)


def resolve_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> ShardSet:
    """A shard folder (its manifest lists the shards, their counts and indexes), a brace-expanded pattern
    (`'webvid-{00000..00009}.tar'`), or a list of either. A tar without a manifest entry is counted from its `.idx`
    beside it or its headers. Empty tars are left out with a warning: there is nothing to read, and DALI cannot
    index them."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    manifests: dict[str, dict[str, Any]] = {}
    found, about = [], {}
    for item in map(os.fspath, items):
        if os.path.isdir(item):
            manifest = read_manifest(item)
            about = about or {k: manifest.raw.get(k) for k in ("source", "converter_version", "options", "samples",
                                                                "rejects")}
            found += [ShardInfo(str(s.path), s.samples, str(s.index)) for s in manifest.shards]
            continue
        for path in braceexpand(item):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"shard not found: {path} (from {item!r}); give a folder written by "
                                        "mcq-shards, tar files, or a brace pattern of them")
            listed = _manifest_entry(path, manifests)
            if listed is not None:
                found.append(ShardInfo(path, listed.samples, str(listed.index)))
                continue
            index = os.path.splitext(path)[0] + ".idx"
            index = index if os.path.isfile(index) else None
            found.append(ShardInfo(path, len(sample_entries(path, index).entries), index))
    shards = [s for s in found if s.samples]
    empty = [s.path for s in found if not s.samples]
    if empty:
        warnings.warn(f"{len(empty)} shards hold no sample and are left out, e.g. {empty[0]}", RuntimeWarning,
                      stacklevel=2)
    if not shards:
        raise ValueError(f"no samples in {spec!r}")
    return ShardSet(shards, about, empty)


def _manifest_entry(path: str, cache: dict[str, Any]):
    directory = os.path.dirname(os.path.abspath(path))
    if directory not in cache:
        has = os.path.isfile(os.path.join(directory, MANIFEST))
        cache[directory] = {os.path.basename(s.path): s for s in read_manifest(directory).shards} if has else {}
    return cache[directory].get(os.path.basename(path))


# --- one sample -------------------------------------------------------------------------------------------------

def read_members(f: BinaryIO, entry: SampleEntry) -> dict[str, bytes]:
    """The members of one sample, read by offset from the open tar `f`."""
    out = {}
    for ext, (offset, size) in entry.members.items():
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise SampleError(Reason.UNREADABLE_TAR, f"member {ext} ends after {len(data)} of its {size} bytes")
        out[ext] = data
    return out


@dataclass(frozen=True)
class StoredSample:
    """A sample whose structure checks out: its metadata and the byte range of each stored JPEG frame in `media`."""

    key: str
    meta: dict[str, Any]
    media: Any  # bytes, or a uint8 numpy array (DALI)
    bounds: np.ndarray  # frame i = media[bounds[i]:bounds[i + 1]]
    width: int
    height: int

    @property
    def num_stored(self) -> int:
        return len(self.bounds) - 1

    def frame(self, i: int):
        return self.media[self.bounds[i]:self.bounds[i + 1]]


def stored_sample(key: str | None, meta_bytes: bytes | None, media, offsets: bytes | None) -> StoredSample:
    """The checked metadata and frame ranges of one sample from its `json` member, its media (`jpgs`, or `jpg` for an
    image) and its `offsets` member (None or empty for an image). `key` is the member names' key (None when the reader
    does not know it: the json's key is taken). Raises :class:`SampleError`."""
    if meta_bytes is None or len(meta_bytes) == 0:
        raise SampleError(Reason.MISSING_MEMBER, "no json member")
    try:
        meta = json.loads(bytes(meta_bytes))
    except (ValueError, UnicodeDecodeError) as err:
        raise SampleError(Reason.BAD_JSON, f"the json member is not JSON: {err}") from None
    if not isinstance(meta, dict):
        raise SampleError(Reason.BAD_JSON, f"the json member is a {type(meta).__name__}, not an object")
    stated = meta.get("key", key)
    if not isinstance(stated, str) or (key is not None and stated != key):
        raise SampleError(Reason.BAD_JSON, f"the json says key {stated!r}" + (f", the member names {key!r}"
                                                                             if key is not None else ""))
    for name in ("width", "height"):
        if not isinstance(meta.get(name), int) or isinstance(meta.get(name), bool) or meta[name] < 1:
            raise SampleError(Reason.BAD_JSON, f"json field {name!r} is {meta.get(name)!r}, not a positive integer")
    if not isinstance(meta.get("caption"), str):
        raise SampleError(Reason.BAD_JSON, f"json field 'caption' is {meta.get('caption')!r}, not a string")
    if media is None or len(media) == 0:
        raise SampleError(Reason.MISSING_MEMBER, "no media member (jpg, or jpgs + offsets)")
    if offsets is not None and len(offsets):
        if len(offsets) % 4:
            raise SampleError(Reason.BAD_OFFSETS, f"the offsets member has {len(offsets)} bytes, not int32 values")
        bounds = np.frombuffer(bytes(offsets), dtype="<i4").astype(np.int64)
    else:
        bounds = np.array([0, len(media)], np.int64)
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != len(media) or np.any(np.diff(bounds) <= 0):
        raise SampleError(Reason.BAD_OFFSETS, f"the offsets do not cut the {len(media)}-byte media member into frames")
    stored = len(bounds) - 1
    frames = meta.get("num_frames", stored)
    if frames != stored:
        raise SampleError(Reason.BAD_OFFSETS, f"the json says {frames!r} frames, the offsets hold {stored}")
    return StoredSample(stated, meta, media, bounds, meta["width"], meta["height"])


def members_sample(key: str, members: dict[str, bytes]) -> StoredSample:
    """:func:`stored_sample` from the members of a tar sample (`{extension: bytes}`)."""
    if "jpgs" in members:
        if "offsets" not in members:
            raise SampleError(Reason.MISSING_MEMBER, "a jpgs member without its offsets member")
        return stored_sample(key, members.get("json"), members["jpgs"], members["offsets"])
    if "jpg" not in members:
        if "json" not in members:
            raise SampleError(Reason.MISSING_MEMBER, f"no json and no media member; members: {sorted(members)}")
        raise SampleError(Reason.MISSING_MEMBER, f"no media member (jpg, or jpgs + offsets); members: "
                          f"{sorted(members)}")
    return stored_sample(key, members.get("json"), members["jpg"], None)


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, or None when the bytes are not one whole JPEG (no start or end
    marker, or no frame header). Reads the marker segments only, not the image data."""
    raw = memoryview(data)
    if len(raw) < 4 or raw[0] != 0xFF or raw[1] != 0xD8 or raw[-2] != 0xFF or raw[-1] != 0xD9:
        return None
    at = 2
    while at + 9 <= len(raw):
        if raw[at] != 0xFF:
            return None
        marker = raw[at + 1]
        if marker in _SOF:
            return int.from_bytes(raw[at + 7:at + 9], "big"), int.from_bytes(raw[at + 5:at + 7], "big")
        at += 2 + int.from_bytes(raw[at + 2:at + 4], "big")  # the segment's length field counts itself
    return None


def check_jpeg(sample: StoredSample, i: int):
    """Stored frame `i` of `sample` after checking that it is one whole JPEG of the sample's size (a GPU decoder stops
    its pipeline for good on anything else)."""
    frame = sample.frame(i)
    if jpeg_size(frame) != (sample.width, sample.height):
        raise SampleError(Reason.BAD_FRAME, f"stored frame {i} is not a whole {sample.width}x{sample.height} JPEG")
    return frame
