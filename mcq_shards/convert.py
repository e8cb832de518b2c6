"""The conversion engine: input rows -> shard jobs -> parallel workers -> GNU tar shards.

How it keeps its promises (every row in exactly one shard or in ``rejects.jsonl``; resumable after a
kill -9; same inputs and options, same bytes):

* Rows are put in their conversion order first: the input order, or with ``shuffle_seed`` a permutation
  that depends only on the seed and each row's key. Position ``i`` of that order belongs to shard
  ``i // shard_size``, decided before anything runs.
* Workers convert small batches of rows; the main process alone writes, taking results in input
  order, so the shards do not depend on ``--workers`` or on timing.
* A shard is written as ``.part`` files and renamed when complete; then a record of it
  (``.progress/<shard>.json``: samples, bytes, SHA-256, and the rows it rejected) is written, which
  marks it done. A rerun skips shards with a record and redoes the rest from their first row.
* ``manifest.json`` and ``rejects.jsonl`` are rebuilt from the records at the end of every run.
* The first run stores its plan (source, options, converter and parser versions, a fingerprint of
  the input rows); a rerun with anything different stops instead of mixing two conversions.
* With ``part=(i, n)`` (``--part i/N``: one machine of N, e.g. a SLURM array task) every machine reads the whole
  table and computes the same order, then writes only the ``i``-th of ``n`` contiguous runs of shards, under
  their one-machine names; ``mcq_shards.parts.merge`` joins the parts into the one-machine shard set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import threading
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

from mcq_shards import __version__
from mcq_shards.manifest import FORMAT, MANIFEST, REJECTS, write_json_atomic, write_text_atomic
from mcq_shards.media import MediaError, normalize_image, normalize_video
from mcq_shards.phrase_table import read_phrase_table
from mcq_shards.phrases import DEFAULT_MODEL, SOURCES, PhraseParser, describe_source, locate_all, parser_versions
from mcq_shards.sources import Member, Row
from mcq_shards.tables import is_utf8
from mcq_shards.tario import ShardWriter, index_text, sha256_file

PROGRESS = ".progress"
_OUTPUT_NAME = re.compile(rf"(.+-\d{{5}}\.(tar|idx)(\.part)?|{re.escape(MANIFEST)}|{re.escape(REJECTS)})")
BATCH = 8  # rows per worker task: small enough for a smooth progress bar and little buffering


class ConvertError(Exception):
    """The output directory cannot be used for this conversion."""


@dataclass(frozen=True)
class Options:
    """Everything that changes the bytes of the output (``--workers`` does not)."""

    shard_size: int = 1000
    image_size: int = 256
    jpeg_quality: int = 80
    fps: float = 2.0
    min_frames: int = 8
    max_frames: int = 32
    require_nouns: bool = True
    spacy_model: str = DEFAULT_MODEL
    shuffle_seed: int | None = None  # None: keep the input order
    phrases: str = "textblob"  # noun phrases: "textblob" (the original's) or "spacy" (noun chunks)
    phrases_file: str | None = None  # a user's phrases per sample instead of any parser
    max_seconds: float | None = None  # keep only each video's first seconds (DiDeMo: the annotated 30 s)

    def __post_init__(self):
        if self.shard_size < 1 or self.image_size < 1 or not 1 <= self.jpeg_quality <= 100:
            raise ValueError("shard size and image size must be positive, JPEG quality in 1..100")
        if self.fps <= 0 or not 1 <= self.min_frames <= self.max_frames:
            raise ValueError("fps must be positive and 1 <= min frames <= max frames")
        if self.phrases not in SOURCES:
            raise ValueError(f"phrases must be one of {', '.join(SOURCES)}, got {self.phrases!r}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError("max seconds must be positive")


def convert(rows: Iterable[Row], out: Path, source: str, options: Options, workers: int | None = None,
            prefix: str | None = None, progress: bool = True, part: tuple[int, int] | None = None) -> dict:
    """Convert ``rows`` into shards in ``out``; returns the manifest. Safe to rerun after a crash. ``part=(i, n)``:
    only part ``i`` (from 0) of ``n``, for ``mcq_shards.parts.merge`` to join with the others."""
    rows = list(rows)  # reads the whole input table first: a malformed one stops before any work
    _check_rows(rows)
    fingerprint = _fingerprint(rows)
    phrases = {**describe_source(options.phrases), **parser_versions(options.spacy_model)}
    if options.phrases_file:
        phrases = {"source": "file", "file": _attach_phrases(rows, Path(options.phrases_file))}
    order = conversion_order([row.key for row in rows], options.shuffle_seed)
    rows = [rows[i] for i in order]
    prefix = prefix or source
    out.mkdir(parents=True, exist_ok=True)
    (out / PROGRESS).mkdir(exist_ok=True)
    plan = {
        "format": FORMAT, "source": source, "prefix": prefix, "converter_version": __version__,
        "options": dataclasses.asdict(options), "phrases": phrases,
        "input": {"rows": len(rows), "fingerprint": fingerprint},
    }
    size = options.shard_size
    num_shards = (len(rows) + size - 1) // size
    shard_ids = range(num_shards)
    if part is not None:
        shard_ids = part_shards(num_shards, *part)
        plan["part"] = {"index": part[0], "of": part[1], "shards": [shard_ids.start, shard_ids.stop]}
    _claim(out, plan)

    jobs = [(j, rows[j * size:(j + 1) * size]) for j in shard_ids]
    pending = [(j, chunk) for j, chunk in jobs if not _finished(out, prefix, j)]
    if progress and len(pending) < len(jobs):
        tqdm.write(f"{len(jobs) - len(pending)} of {len(jobs)} shards already done in {out}; resuming")
    batches = [(j, chunk[b:b + BATCH], b + BATCH >= len(chunk)) for j, chunk in pending
               for b in range(0, len(chunk), BATCH)]
    bar = tqdm(total=sum(len(c) for _, c in pending), unit="row", desc=f"{source} -> {out.name}",
               disable=not progress, smoothing=0.05)
    shard = None
    with bar:
        for (j, batch, last), results in _ordered_map(convert_batch, batches, workers or os.cpu_count() or 1,
                                                      init_worker, (options,)):
            if shard is None:
                shard = _ShardJob(out, prefix, j, first_row=j * size, input_rows=order)
            shard.add(batch, results)
            bar.update(len(batch))
            if last:
                shard.finish()
                shard = None
    return write_manifest(out, plan, shard_ids, sum(len(chunk) for _, chunk in jobs))


def part_shards(num_shards: int, index: int, parts: int) -> range:
    """The shards part `index` of `parts` writes: the index-th of `parts` contiguous, near-equal runs."""
    if not 0 <= index < parts:
        raise ValueError(f"part {index}/{parts}: the part is counted from 0 and must be below {parts}")
    if parts > num_shards:
        raise ValueError(f"{parts} parts for {num_shards} shards would leave parts with nothing to do: use at most "
                         f"{num_shards} parts, or a smaller --shard-size")
    return range(index * num_shards // parts, (index + 1) * num_shards // parts)


def conversion_order(keys: list[str], seed: int | None) -> list[int]:
    """Input row indices in the order they are converted: the input order, or with a seed a global shuffle.

    Published tables are grouped (WebVid's CSV by ``page_dir``, a page of 50 related clips), and a loader that reads
    shards in order draws every batch from a few thousand neighbouring rows, so a batch's negatives would be near
    duplicates. Shuffling once here makes every shard a uniform sample of the whole set. A row's place depends only
    on the seed and its key (a keyed hash, ties kept in input order), not on a library's random stream, so it is
    the same on every machine and version, and any part of the conversion can be computed on its own.
    """
    if seed is None:
        return list(range(len(keys)))

    def rank(i: int) -> tuple[bytes, int]:
        return hashlib.blake2b(f"{seed}:{keys[i]}".encode("utf-8", "surrogateescape"), digest_size=8).digest(), i
    return sorted(range(len(keys)), key=rank)


def _attach_phrases(rows: list[Row], path: Path) -> dict:
    """Gives every usable row its phrases from a ``--phrases-file`` as caption spans; a row the file does not list
    is rejected. Returns what the manifest records about the file."""
    table = read_phrase_table(path)
    unlocated = 0
    for row in rows:
        if row.reject:
            continue
        found = table.lookup(row.id, row.caption)
        if found is None:
            row.reject = f"no phrases: {path.name} lists no {table.by} {row.id if table.by == 'id' else row.caption!r}"
            continue
        (nouns, missing_nouns), (verbs, missing_verbs) = (locate_all(row.caption, texts) for texts in found)
        unlocated += missing_nouns + missing_verbs
        row.phrases = {"nouns": nouns, "verbs": verbs}
    return {**table.summary(), "phrases_not_in_caption": unlocated}


def _check_rows(rows: list[Row]) -> None:
    """Reject, up front, rows no worker could convert or store: duplicate keys, empty captions, text that is not
    UTF-8 (the sample's JSON must be; a file name from an old download often is not) or holds a NUL byte."""
    first: dict[str, str] = {}
    for row in rows:
        row.caption = (row.caption or "").strip()
        if row.reject:
            continue
        if row.key in first:
            row.reject = f"duplicate key: {row.key} is also {first[row.key]}"
        elif not is_utf8(row.caption):
            row.reject = "caption not UTF-8: the caption bytes are not valid UTF-8"
        elif not is_utf8(row.id) or not is_utf8(json.dumps(row.extra, ensure_ascii=False)):
            row.reject = f"id not UTF-8: {printable(row.id)} (or a field beside it) is not valid UTF-8"
        elif "\0" in row.caption:
            row.reject = "caption has a NUL byte: the text is probably corrupt"
        elif isinstance(row.media, str) and "\0" in row.media:
            row.reject = f"path has a NUL byte: {printable(row.media)!r} cannot name a file"
        elif not row.caption:
            row.reject = "empty caption: nothing to train on"
        else:
            first[row.key] = row.where


def printable(text: str) -> str:
    """`text` with the bytes that were not UTF-8 written as `\\xNN`, so that it can go into a JSON record."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _fingerprint(rows: list[Row]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        fields = (row.key, row.id, row.caption, str(row.media), row.reject or "", json.dumps(row.extra, sort_keys=True))
        digest.update("\x1f".join(fields).encode("utf-8", "surrogateescape") + b"\x1e")
    return digest.hexdigest()


def _claim(out: Path, plan: dict) -> None:
    path = out / PROGRESS / "plan.json"
    if (out / MANIFEST).exists() and not path.exists():
        raise ConvertError(f"{out} holds shards made elsewhere; use another --out directory")
    theirs = sorted(p.name for p in out.iterdir() if _OUTPUT_NAME.fullmatch(p.name)) if not path.exists() else []
    if theirs:
        raise ConvertError(f"{out} already holds {', '.join(theirs[:3])}{' ...' if len(theirs) > 3 else ''}, which "
                           "this conversion did not write and would overwrite; use another --out directory, or move "
                           "those files away")
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != plan:
            differ = sorted(k for k in plan.keys() | old.keys() if plan.get(k) != old.get(k))
            raise ConvertError(f"{out} holds a conversion with a different {', '.join(differ)}; "
                               "use another --out directory, or delete this one to start over")
    else:
        write_json_atomic(path, plan)


def _shard_name(prefix: str, j: int) -> str:
    return f"{prefix}-{j:05d}"


def _record_path(out: Path, prefix: str, j: int) -> Path:
    return out / PROGRESS / f"{_shard_name(prefix, j)}.json"


def _finished(out: Path, prefix: str, j: int) -> bool:
    """A shard is done when its record exists and its files are there with the recorded size."""
    try:
        record = json.loads(_record_path(out, prefix, j).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if record["samples"] == 0:
        return True
    tar = out / record["path"]
    return tar.is_file() and tar.stat().st_size == record["bytes"] and (out / record["index"]).is_file()


class _ShardJob:
    """One shard being written: samples go to ``.part`` files until :meth:`finish` renames them."""

    def __init__(self, out: Path, prefix: str, j: int, first_row: int, input_rows: list[int]):
        self.out, self.prefix, self.j, self.row = out, prefix, j, first_row
        self.input_rows = input_rows  # conversion position -> input row
        self.name = _shard_name(prefix, j)
        self.tar = out / f"{self.name}.tar"
        self.part = out / f"{self.name}.tar.part"
        self.writer = ShardWriter(self.part)
        self.rejects: list[dict] = []
        self.first_row = first_row

    def add(self, rows: list[Row], results: list[tuple[dict | None, str | None]]) -> None:
        for row, (members, reason) in zip(rows, results, strict=True):
            if members is not None:
                self.writer.write(row.key, members)
            else:
                self.rejects.append({"row": self.input_rows[self.row], "where": printable(row.where), "key": row.key,
                                     "id": printable(row.id), "reason": printable(reason)})
            self.row += 1

    def finish(self) -> None:
        self.writer.close()
        record = {"shard": self.j, "rows": [self.first_row, self.row], "samples": self.writer.samples,
                  "rejects": self.rejects}
        if self.writer.samples:
            index = self.out / f"{self.name}.idx"
            write_text_atomic(index, index_text(self.part))
            record.update(path=self.tar.name, index=index.name, bytes=self.part.stat().st_size,
                          sha256=sha256_file(self.part))
            os.replace(self.part, self.tar)
        else:  # every row rejected: no tar (DALI cannot index an empty one)
            self.part.unlink()
        write_json_atomic(_record_path(self.out, self.prefix, self.j), record)


def write_manifest(out: Path, plan: dict, shard_ids: range, rows: int) -> dict:
    """``manifest.json`` and ``rejects.jsonl`` from the records of the shards ``shard_ids`` (``rows`` input rows)."""
    records = [json.loads(_record_path(out, plan["prefix"], j).read_text(encoding="utf-8")) for j in shard_ids]
    # shards hold rows in a shuffled order; the rejects list is for people, so it follows the input's order
    rejects = sorted((r for record in records for r in record["rejects"]), key=lambda r: r["row"])
    shards = [{k: rec[k] for k in ("path", "index", "samples", "bytes", "sha256", "rows")}
              for rec in records if rec["samples"]]
    total = sum(s["samples"] for s in shards)
    if total + len(rejects) != rows:
        raise ConvertError(f"internal error: {total} samples + {len(rejects)} rejects != {rows} rows")
    manifest = {
        **plan,
        "samples": total,
        "rejects": len(rejects),
        "reject_reasons": dict(sorted(Counter(r["reason"].split(":")[0] for r in rejects).items())),
        "shards": shards,
    }
    write_text_atomic(out / REJECTS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def _ordered_map(fn: Callable, items: list, workers: int, init: Callable, initargs: tuple) -> Iterator[tuple]:
    """``(item, fn(item))`` in input order, with at most ``2 * workers`` items in flight."""
    if workers == 1:
        init(*initargs)
        for item in items:
            yield item, fn(item)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_start_child,
                             initargs=(os.getpid(), init, *initargs)) as pool:
        window: deque = deque()
        for item in items:
            window.append((item, pool.submit(fn, item)))
            if len(window) >= 2 * workers:
                done, future = window.popleft()
                yield done, future.result()
        while window:
            done, future = window.popleft()
            yield done, future.result()


# --- worker side -----------------------------------------------------------------------------------

def _start_child(parent: int, init: Callable, *initargs) -> None:
    """A pool worker's start: it must end when the converter (process `parent`) does. After a kill -9 no clean-up
    runs, and a worker waiting on its task queue would wait forever (it holds both ends of the queue's pipe), keeping
    the resource tracker alive with it. A thread ends the worker once its parent is gone, also when that happened
    before this worker got here."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
    init(*initargs)


_worker: tuple[Options, PhraseParser | None] | None = None


def init_worker(options: Options) -> None:
    """Load the phrase parser once per worker process (and once per parser in a single-process run); none when a
    phrases file gives every row its phrases."""
    global _worker
    if options.phrases_file:
        _worker = (options, None)
        return
    same = _worker and _worker[1] and (_worker[0].spacy_model, _worker[0].phrases) == (options.spacy_model,
                                                                                         options.phrases)
    _worker = (options, _worker[1] if same else PhraseParser(options.phrases, options.spacy_model))


def convert_batch(job: tuple[int, list[Row], bool]) -> list[tuple[dict | None, str | None]]:
    """``(members, None)`` for each converted row, ``(None, reason)`` for each rejected one."""
    options, parser = _worker
    _, rows, _ = job
    todo = [row for row in rows if not row.reject and row.phrases is None]
    phrases = dict(zip((id(r) for r in todo), parser.parse(r.caption for r in todo))) if todo else {}
    phrases.update((id(r), r.phrases) for r in rows if r.phrases is not None)
    results = []
    for row in rows:
        if row.reject:
            results.append((None, row.reject))
            continue
        try:
            results.append((sample_members(row, phrases[id(row)], options), None))
        except MediaError as err:
            results.append((None, str(err)))
        except OSError as err:  # e.g. an input shard that vanished or a read error on the disk
            results.append((None, f"unreadable media: {err}"))
    return results


def sample_members(row: Row, phrases: dict, options: Options) -> dict[str, bytes]:
    """The tar members of one sample: the media and its ``json``."""
    if options.require_nouns and not phrases["nouns"]:
        raise MediaError("no noun phrase: the caption has no noun (phrase), so no MCQ question")
    if row.kind is None:
        raise MediaError("unknown media type: no image or video file extension")
    media = _media_bytes(row.media)
    meta = {"key": row.key, "source": row.source, "id": row.id, "caption": row.caption, **phrases, "media": row.kind, **row.extra}
    if row.kind == "image":
        image = normalize_image(media, options.image_size, options.jpeg_quality)
        members = {"jpg": image.jpg}
        meta.update(width=image.width, height=image.height)
    else:
        clip = normalize_video(media, options.image_size, options.fps, options.min_frames, options.max_frames,
                               options.jpeg_quality, options.max_seconds)
        members = {"jpgs": clip.jpgs, "offsets": clip.offsets}
        meta.update(clip.meta)
    members["json"] = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")
    return members


def _media_bytes(media: str | Member) -> str | bytes:
    if isinstance(media, Member):
        with open(media.tar, "rb") as f:
            f.seek(media.offset)
            return f.read(media.size)
    return media
