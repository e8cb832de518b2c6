"""The reference loader: the converter's WebDataset shards → `Batch`es, with exact mid-epoch resume.

It defines the batch contract the DALI pipeline also meets, and it is what `mcq-ds train --loader torch` trains
from. The worker side is a chain of stages, each turning a failure into a counted `Skip` instead of an exception:

    read (tar samples at planned positions) → prepare (json, `sampling.draw`, cut out the chosen JPEG frames, the
    question) → shuffle within blocks → render (decode, crop, resize, flip, pad) → batch (uint8 pixels + tokenise)

How the data is split (`ShardLoader` docstring has the reasons):

* An epoch is one pass over a virtual sequence: every shard's samples, shards in a (seed, epoch)-shuffled order
  (in order for evaluation). The sequence is cut into `world_size × workers` contiguous, near-equal ranges, one
  per (rank, worker) "slot"; a slot seeks straight to its range's first sample (byte offsets from the shard's
  `.idx`), so the split is balanced to one sample whatever the shard sizes.
* Training: a slot reads its range shuffled in blocks of `shuffle_block` samples, and yields exactly
  `worker_batches = (samples // slots) // batch_size` batches per epoch, so every rank yields
  `batches_per_epoch` batches and the engine's collectives never wait on a rank that ran dry. Undecodable
  samples are replaced by reading on past the range end (in order, wrapping around the epoch's sequence), never
  by black frames. The stream is endless: epoch after epoch.
* Evaluation: every sample exactly once over all ranks and workers, in order, the last batch partial.

Every random choice comes from `sampling.draw(seed, epoch, key)` or from hashes of (seed, epoch, slot, block),
never from a generator whose state depends on what came before. So a worker restarted at a recorded position
makes exactly the choices an uninterrupted one would have made.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import random
import tarfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, count, islice
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from braceexpand import braceexpand
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_iterator

from shards.manifest import MANIFEST, read_manifest
from shards.tario import samples as tar_samples

from .batch import NORMALISATION, Batch, Tokens
from .questions import QuestionAnswer, QuestionBuilder, tokenize_texts
from .sampling import SampleDraws, draw, sample_seed
from .transforms import pad_frames, render_clip

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

STATE_VERSION = 1
_BLOCK = 512  # bytes in a tar header block


@dataclass
class LoaderConfig:
    """Everything a loader needs; the engine builds one per data source, and the DALI pipeline takes the same.

    `shards` is a shard directory (its `manifest.json` lists the shards and their sample counts), a
    brace-expanded pattern (`'webvid-{00000..00009}.tar'`), or a list of either. `rank`/`world_size` default to
    torch.distributed's when it is initialised, else to the RANK/WORLD_SIZE environment variables, else 0/1.
    `batch_size` is per rank. `questions` (default: `train`) builds MCQ questions and answers.
    `shuffle_block` > 1 shuffles samples within consecutive blocks of that many samples of a worker's stream
    (training only); a worker holds that many samples' chosen JPEG frames (about 100 KB per 4-frame sample).
    """

    shards: str | os.PathLike | Sequence[str | os.PathLike]
    source: str
    tokenizer: PreTrainedTokenizerBase
    train: bool = True
    num_frames: int = 4
    img_size: int = 224
    batch_size: int = 20
    workers: int = 4
    seed: int = 0
    rank: int | None = None
    world_size: int | None = None
    question_type: str = "noun"
    question_mode: str = "span"
    questions: bool | None = None
    max_text_length: int | None = None
    normalisation: str = "imagenet"
    hflip: bool = True
    shuffle_block: int = 256
    prefetch_factor: int = 2
    pin_memory: bool | None = None  # default: when CUDA is available

    def __post_init__(self) -> None:
        if self.questions is None:
            self.questions = self.train
        for name in ("num_frames", "img_size", "batch_size", "prefetch_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers < 0 or self.shuffle_block < 0:
            raise ValueError("workers and shuffle_block must not be negative")
        if self.question_type not in ("noun", "verb"):
            raise ValueError(f"question_type must be 'noun' or 'verb', got {self.question_type!r}")
        if self.normalisation not in NORMALISATION:
            raise ValueError(f"unknown normalisation {self.normalisation!r}; choose one of {sorted(NORMALISATION)}")


def distributed_position(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): the arguments when given, else torch.distributed's, else RANK/WORLD_SIZE, else (0, 1)."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            found = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            found = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        rank = found[0] if rank is None else rank
        world_size = found[1] if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    return rank, world_size


# --- shards ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardInfo:
    path: str
    samples: int
    index: str | None  # its DALI .idx (byte offsets of every sample), when there is one


def resolve_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[ShardInfo]:
    """The shards a `LoaderConfig.shards` names, with their sample counts.

    Counts come from the manifest of the shard's directory when it lists the shard (the converter writes one),
    else from the shard's `.idx`, else from reading the tar's headers.
    """
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    manifests: dict[str, dict[str, Any]] = {}
    shards = []
    for item in map(os.fspath, items):
        if os.path.isdir(item):
            shards += [ShardInfo(str(s.path), s.samples, str(s.index)) for s in read_manifest(item).shards]
            continue
        for path in braceexpand(item):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"shard not found: {path} (from {item!r})")
            listed = _manifest_entry(path, manifests)
            if listed is not None:
                shards.append(ShardInfo(path, listed.samples, str(listed.index)))
            else:
                index = os.path.splitext(path)[0] + ".idx"
                index = index if os.path.isfile(index) else None
                shards.append(ShardInfo(path, len(sample_offsets(path, index)), index))
    shards = [s for s in shards if s.samples]  # an empty tar has nothing to read, and DALI cannot index it
    if not shards:
        raise ValueError(f"no shards in {spec!r}")
    return shards


def _manifest_entry(path: str, cache: dict[str, Any]):
    directory = os.path.dirname(os.path.abspath(path))
    if directory not in cache:
        has = os.path.isfile(os.path.join(directory, MANIFEST))
        cache[directory] = {os.path.basename(s.path): s for s in read_manifest(directory).shards} if has else {}
    return cache[directory].get(os.path.basename(path))


def count_samples(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> int:
    """Samples in the shards a `LoaderConfig.shards` names (no decoding; manifests or indexes when present)."""
    return sum(s.samples for s in resolve_shards(spec))


def sample_offsets(path: str, index: str | None) -> list[int]:
    """Byte offset of each sample's first tar header, so a reader can start at any sample.

    From the DALI index (`<ext> <data offset> <size> <name>` per member) when there is one: a member's header
    is 512 bytes before its data, plus a GNU long-name record for names over 100 bytes. Otherwise from the
    tar's own headers.
    """
    if index is None:
        return [members[0].offset for _, members in tar_samples(path)]
    with open(index, encoding="utf-8") as f:
        header = f.readline().split()
        offsets = []
        for line in f:
            _, data_offset, _, name = line.split(" ", 4)[:4]
            long_name = len(name.encode()) > tarfile.LENGTH_NAME
            extra = _BLOCK + -(-(len(name.encode()) + 1) // _BLOCK) * _BLOCK if long_name else 0
            offsets.append(int(data_offset) - _BLOCK - extra)
    if len(header) != 2 or int(header[1]) != len(offsets):
        raise ValueError(f"{index}: malformed DALI index (header {header}, {len(offsets)} sample lines)")
    return offsets


# --- worker side -----------------------------------------------------------------------------------------------

class Skip(NamedTuple):
    """A sample that could not be used, with why; it still takes its position in the stream."""

    key: str
    reason: str


class _Prepared(NamedTuple):
    """A sample after its json and draws, holding only the JPEG bytes of its chosen frames."""

    key: str
    meta: dict
    draws: SampleDraws
    plan: list[int]
    jpegs: dict[int, bytes]
    qa: QuestionAnswer | None


class _Sample(NamedTuple):
    key: str
    video: torch.Tensor  # (F, 3, S, S) uint8
    caption: str
    qa: QuestionAnswer | None
    plan: list[int]
    captions: list[str]


class Cursor(NamedTuple):
    """Where a worker is: in `epoch`, after `batches` batches that consumed `position` stream positions."""

    epoch: int
    batches: int
    position: int


class _SkipLog:
    """Warns about skipped samples with their keys: the first ten, then at most one a minute, with a tally."""

    def __init__(self, source: str, burst: int = 10, interval: float = 60.0) -> None:
        self.source, self.burst, self.interval = source, burst, interval
        self.count, self.last = 0, float("-inf")

    def __call__(self, skip: Skip) -> None:
        self.count += 1
        now = time.monotonic()
        if self.count <= self.burst or now - self.last >= self.interval:
            self.last = now
            log.warning("%s: skipped sample %s: %s (%d skipped by this worker so far)", self.source, skip.key,
                        skip.reason, self.count)


class ShardStream(IterableDataset):
    """The worker side: run in each DataLoader worker (or in the main process with `workers=0`).

    Workers are numbered logically: DataLoader worker `i` plays logical worker `(i + first_worker) % workers`,
    so that a resumed loader, whose DataLoader always starts with worker 0, continues the round robin where the
    interrupted one stopped. Each yielded batch is a dict of `Batch` fields plus `worker` (logical) and
    `cursor` (that worker's `Cursor` after the batch).
    """

    def __init__(self, cfg: LoaderConfig, shards: list[ShardInfo], rank: int, world_size: int,
                 cursors: Sequence[Cursor] = (), first_worker: int = 0) -> None:
        self.cfg, self.shards, self.rank = cfg, shards, rank
        self.workers = max(1, cfg.workers)
        self.slots = world_size * self.workers
        self.total = sum(s.samples for s in shards)
        self.worker_batches = self.total // self.slots // cfg.batch_size
        if cfg.train and self.worker_batches < 1:
            raise ValueError(f"{cfg.source}: {self.total} samples cannot give every one of {world_size} ranks × "
                             f"{self.workers} workers a batch of {cfg.batch_size}; use fewer workers or a smaller "
                             "batch")
        self.cursors = list(cursors) or [Cursor(0, 0, 0)] * self.workers
        self.first_worker = first_worker
        self.builder = QuestionBuilder(cfg.tokenizer, cfg.question_mode) if cfg.questions else None
        self._offsets: dict[str, list[int]] = {}
        self._skip_log = _SkipLog(cfg.source)

    # The plan: which sample sits at which position of an epoch.

    def epoch_order(self, epoch: int) -> list[int]:
        """Shard indices in the order epoch `epoch` reads them: shuffled by (seed, epoch) in training."""
        order = list(range(len(self.shards)))
        if self.cfg.train:
            random.Random(sample_seed(self.cfg.seed, epoch, "shard-order")).shuffle(order)
        return order

    def slot_range(self, slot: int) -> tuple[int, int]:
        return slot * self.total // self.slots, (slot + 1) * self.total // self.slots

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        if info is not None:
            if info.num_workers != self.workers:
                raise RuntimeError(f"ShardStream planned for {self.workers} workers runs in {info.num_workers}")
            # One thread per worker, like torch in DataLoader workers: the Rust tokenizer would otherwise start a
            # thread pool per worker (it reads this variable on every call).
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        logical = ((info.id if info else 0) + self.first_worker) % self.workers
        slot = self.rank * self.workers + logical
        if not self.cfg.train:
            yield from self._eval_batches(self._items(0, slot, 0), logical)
            return
        epoch, done, position = self.cursors[logical]
        while True:
            if done == self.worker_batches:
                epoch, done, position = epoch + 1, 0, 0
            items = self._items(epoch, slot, position)
            while done < self.worker_batches:
                samples, skipped, consumed = self._fill(items)
                position, done = position + consumed, done + 1
                yield {**self._collate(samples, skipped), "worker": logical,
                       "cursor": Cursor(epoch, done, position)}

    def _eval_batches(self, items: Iterator[_Sample | Skip], logical: int) -> Iterator[dict]:
        """Batches until the range ends; each is held back until the next fill, so that skips after the last
        sample are counted in the last batch (only a range with no usable sample at all goes uncounted, logged)."""
        held = None
        while filled := self._fill(items):
            samples, skipped, _ = filled
            if not samples:
                if held is not None:
                    held["skipped"] += skipped
                continue
            if held is not None:
                yield held
            held = {**self._collate(samples, skipped), "worker": logical, "cursor": None}
        if held is not None:
            yield held

    def _items(self, epoch: int, slot: int, position: int) -> Iterator[_Sample | Skip]:
        """The stage chain: rendered samples (or skips) of `slot`'s stream in `epoch`, from `position` on.

        Training streams are the slot's range, shuffled in blocks, then (only to replace skipped samples) the
        samples after it, in order, wrapping around the epoch's sequence.
        """
        order = self.epoch_order(epoch)
        starts = np.cumsum([0] + [self.shards[i].samples for i in order[:-1]]).tolist()
        lo, hi = self.slot_range(slot)
        prepare = self._prepare_for(epoch)
        if not self.cfg.train:
            return map(self._render, map(prepare, self._read(order, starts, lo, hi)))
        block = self.cfg.shuffle_block if position < hi - lo else 1
        first = position - position % block if block > 1 else position
        stream = map(prepare, self._read(order, starts, lo + first, hi))
        if block > 1:
            stream = _shuffle_blocks(stream, block, lambda b: random.Random(
                sample_seed(self.cfg.seed, epoch, f"block-{slot}-{b}")), first // block)
        stream = chain(stream, map(prepare, self._read(order, starts, max(hi, lo + first), None)))
        return map(self._render, islice(stream, position - first, None))

    def _fill(self, items: Iterator[_Sample | Skip]) -> tuple[list[_Sample], int, int]:
        """Up to one batch of samples from `items`: (samples, skipped, positions consumed); () at the end."""
        samples, skipped, consumed = [], 0, 0
        for item in items:
            consumed += 1
            if isinstance(item, Skip):
                skipped += 1
                self._skip_log(item)
                if skipped >= self.total:
                    raise RuntimeError(f"{self.cfg.source}: {skipped} samples in a row could not be used; "
                                       f"the last: {item.key}: {item.reason}")
            else:
                samples.append(item)
                if len(samples) == self.cfg.batch_size:
                    break
        return (samples, skipped, consumed) if consumed else ()

    # Stage 1: read. Positions of the virtual sequence → raw tar samples (dicts of member bytes) or skips.

    def _read(self, order: list[int], starts: list[int], begin: int, end: int | None) -> Iterator[dict | Skip]:
        """Samples at virtual positions [begin, end), modulo the epoch's length (end None: forever)."""
        position = begin
        while end is None or position < end:
            at = position % self.total
            j = bisect.bisect_right(starts, at) - 1
            shard = self.shards[order[j]]
            first = at - starts[j]
            n = shard.samples - first if end is None else min(shard.samples - first, end - position)
            yield from self._read_piece(shard, first, n)
            position += n

    def _read_piece(self, shard: ShardInfo, first: int, n: int) -> Iterator[dict | Skip]:
        """`n` consecutive samples of `shard` from sample `first`; a broken tar skips the rest of the piece."""
        read = 0
        with open(shard.path, "rb", buffering=1 << 20) as f:
            if first:
                self._seek(f, shard, first)
            try:
                files = ({**member, "__url__": shard.path} for member in tar_file_iterator(f))
                for sample in group_by_keys(files):
                    yield sample
                    read += 1
                    if read == n:
                        return
                reason = f"the shard ends after {first + read} of the {shard.samples} samples listed for it"
            except Exception as err:  # tarfile raises several types for a damaged archive; all mean "unreadable"
                reason = f"unreadable tar after sample {first + read}: {type(err).__name__}: {err}"
        for k in range(read, n):
            yield Skip(f"{shard.path}#{first + k}", reason)

    def _seek(self, f, shard: ShardInfo, sample: int) -> None:
        """Position `f` at the first header of `sample`, checking that a tar header is really there."""
        if shard.path not in self._offsets:
            self._offsets[shard.path] = sample_offsets(shard.path, shard.index)
        offset = self._offsets[shard.path][sample]
        f.seek(offset)
        try:
            tarfile.TarInfo.frombuf(f.read(_BLOCK), "utf-8", "surrogateescape")
        except tarfile.HeaderError as err:
            raise ValueError(f"{shard.index or shard.path}: no tar header at byte {offset} for sample {sample} "
                             f"({err}); the index does not belong to this tar, rebuild it") from None
        f.seek(offset)

    # Stage 2: prepare. json → draws → only the chosen JPEG frames are kept; the question is built here too.

    def _prepare_for(self, epoch: int) -> Callable[[dict | Skip], _Prepared | Skip]:
        def prepare(raw: dict | Skip) -> _Prepared | Skip:
            if isinstance(raw, Skip):
                return raw
            try:
                return self._prepare(raw, epoch)
            except Exception as err:  # a broken sample: bad json, missing member, inconsistent sizes
                return Skip(raw.get("__key__", "?"), f"{type(err).__name__}: {err}")
        return prepare

    def _prepare(self, raw: dict, epoch: int) -> _Prepared:
        cfg, key = self.cfg, raw["__key__"]
        if "json" not in raw:
            raise KeyError("no json member")
        meta = json.loads(raw["json"])
        if meta.get("key", key) != key:
            raise ValueError(f"the json says key {meta['key']!r}")
        if "jpgs" in raw:
            if "offsets" not in raw:
                raise KeyError("a jpgs member without its offsets member")
            offsets = np.frombuffer(raw["offsets"], dtype="<i4")
            if len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != len(raw["jpgs"]) or np.any(np.diff(offsets) <= 0):
                raise ValueError(f"offsets do not cut the {len(raw['jpgs'])}-byte jpgs member into frames")
            stored = len(offsets) - 1
            if meta.get("num_frames", stored) != stored:
                raise ValueError(f"the json says {meta['num_frames']} frames, the offsets hold {stored}")
        elif "jpg" in raw:
            offsets, stored = None, 1
        else:
            raise KeyError(f"no media member (jpg, or jpgs + offsets); members: {sorted(raw)}")
        draws = draw(cfg.seed, epoch, key, stored, cfg.num_frames, meta["height"], meta["width"], cfg.train,
                     cfg.hflip)
        if offsets is None:
            jpegs = {0: raw["jpg"]}
        else:
            jpgs = memoryview(raw["jpgs"])
            jpegs = {i: bytes(jpgs[offsets[i]:offsets[i + 1]]) for i in set(draws.frames)}
        qa = None
        if self.builder is not None:
            qa = self.builder(meta["caption"], meta.get("nouns", []), meta.get("verbs", []), cfg.question_type,
                              draws.rng)
        return _Prepared(key, meta, draws, pad_frames(draws.frames, cfg.num_frames), jpegs, qa)

    # Stage 4: render (stage 3, the block shuffle, is `_shuffle_blocks`).

    def _render(self, item: _Prepared | Skip) -> _Sample | Skip:
        if isinstance(item, Skip):
            return item
        meta = item.meta
        try:
            video = render_clip(item.jpegs, item.plan, item.draws.crop, item.draws.flip, self.cfg.img_size,
                                meta["height"], meta["width"])
        except Exception as err:  # libjpeg's errors for truncated or garbled frames, size mismatches
            return Skip(item.key, f"undecodable frame: {type(err).__name__}: {err}")
        return _Sample(item.key, video, meta["caption"], item.qa, item.plan, meta.get("captions", [meta["caption"]]))

    # Stage 5: batch. Everything the training step needs, as tensors.

    def _collate(self, samples: list[_Sample], skipped: int) -> dict:
        cfg = self.cfg
        captions = [s.caption for s in samples]
        # uint8 pixels, normalised on the training device (`Batch.to`). Stored channels-last, the layout the resize
        # leaves the clips in, so filling the batch is a plain copy; the device makes it contiguous as it normalises.
        frames, channels, height, width = samples[0].video.shape
        pixels = torch.empty((len(samples), frames, height, width, channels), dtype=torch.uint8)
        for row, sample in zip(pixels, samples):
            row.copy_(sample.video.permute(0, 2, 3, 1))
        video = pixels.permute(0, 1, 4, 2, 3)
        question = answer = None
        if cfg.questions:
            tokens = tokenize_texts(cfg.tokenizer, captions, [s.qa.question for s in samples],
                                    [s.qa.answer for s in samples], cfg.max_text_length)
            text, question, answer = (Tokens(tokens[k]["input_ids"], tokens[k]["attention_mask"])
                                      for k in ("text", "question", "answer"))
        else:
            encoded = cfg.tokenizer(captions, padding=True, truncation=True, max_length=cfg.max_text_length,
                                    return_tensors="pt")
            text = Tokens(encoded["input_ids"], encoded["attention_mask"])
        extra: dict[str, Any] = {"frames": torch.tensor([s.plan for s in samples], dtype=torch.long)}
        if not cfg.train:
            extra["captions"] = [s.captions for s in samples]
        return dict(video=video, text=text, question=question, answer=answer, keys=[s.key for s in samples],
                    kinds=[s.qa.kind for s in samples] if cfg.questions else [], source=cfg.source,
                    skipped=skipped, extra=extra, normalisation=cfg.normalisation)


def _shuffle_blocks(items: Iterable, size: int, rng_for: Callable[[int], random.Random], first: int) -> Iterator:
    """Items in consecutive blocks of `size`, each block permuted by its own generator (`rng_for(block)`).

    Unlike a shuffle buffer, whose contents depend on everything read before, a block is a pure function of its
    number: resuming in the middle of block b rereads only block b's samples (without decoding them).
    """
    items = iter(items)
    for number in count():
        block = list(islice(items, size))
        if not block:
            return
        rng_for(first + number).shuffle(block)
        yield from block


# --- main process ----------------------------------------------------------------------------------------------

class ShardLoader:
    """Batches of one data source for this rank: `for batch in loader` (training: endless, epoch after epoch;
    evaluation: one pass per `iter`).

    Why the split is by contiguous sample ranges rather than by whole shards (webdataset's split_by_node /
    split_by_worker): with whole shards, ranks differ by up to a shard's worth of samples, so equal batch counts
    per rank would drop that much from every other rank each epoch (10 % of WebVid's 2,500 shards of 1,000
    samples over 40 ranks × 8 workers), or wrap around and repeat it. Ranges are balanced to one sample, so an
    epoch drops fewer than `batch_size` samples per slot, and which ones changes every epoch with the shard order.

    Exact resume: DataLoader hands out worker batches strictly round robin, and every training worker is
    endless, so batch k comes from logical worker k % workers. Each batch carries its worker's cursor (epoch,
    batches done, stream positions consumed, skipped samples included); `state_dict` records the cursor of the
    last batch handed out per worker. A restored loader starts each worker at its cursor (seeking to the
    sample, rereading at most one shuffle block without decoding it) and rotates the worker numbering so the
    round robin continues with worker k % workers: the batches that follow are the uninterrupted run's.
    """

    def __init__(self, cfg: LoaderConfig) -> None:
        self.cfg = cfg
        self.rank, self.world_size = distributed_position(cfg.rank, cfg.world_size)
        self.shards = resolve_shards(cfg.shards)
        self.num_samples = sum(s.samples for s in self.shards)
        self.workers = max(1, cfg.workers)
        self._worker_batches = self._stream_for(()).worker_batches  # also validates the plan here, not in a worker
        self._cursors = [Cursor(0, 0, 0)] * self.workers
        self._batches = 0
        self._eval_loader: DataLoader | None = None

    @property
    def batches_per_epoch(self) -> int:
        """Training batches every rank yields per epoch: `workers × (num_samples // (world_size × workers) //
        batch_size)`."""
        self._require_train("batches_per_epoch")
        return self.workers * self._worker_batches

    @property
    def epoch(self) -> int:
        """The epoch of the next training batch."""
        return self._batches // self.batches_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        if not self.cfg.train:
            if self._eval_loader is None:
                self._eval_loader = self._data_loader(self._stream_for(()))
            for payload in self._eval_loader:
                payload.pop("worker"), payload.pop("cursor")
                yield Batch(**payload)
            return
        for payload in self._data_loader(self._stream_for(self._cursors, self._batches % self.workers)):
            worker, cursor = payload.pop("worker"), payload.pop("cursor")
            if worker != self._batches % self.workers:
                raise RuntimeError(f"batch {self._batches} came from worker {worker}, not "
                                   f"{self._batches % self.workers}: DataLoader no longer returns worker batches "
                                   "round robin, which exact resume relies on")
            self._cursors[worker] = Cursor(*cursor)
            self._batches += 1
            yield Batch(**payload)

    def state_dict(self) -> dict:
        """Where the stream stands after the last batch handed out: plain ints, lists and strings (JSON-able)."""
        self._require_train("state_dict")
        return {"version": STATE_VERSION, "source": self.cfg.source, "layout": self._layout(),
                "batches": self._batches, "epoch": self.epoch, "cursors": [list(c) for c in self._cursors]}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` at the next `iter(loader)`.

        Saved with the same layout (world size, workers, batch size, data, seed, shuffle block): exactly where
        it stopped. Otherwise the positions mean nothing on the new split, so the saved epoch restarts from its
        beginning on the new one (its samples seen before the interruption are seen again), with a warning.
        Any rank's state will do then: every rank is in the same epoch.
        """
        self._require_train("load_state_dict")
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r}, this loader reads {STATE_VERSION}")
        if state["source"] != self.cfg.source:
            raise ValueError(f"loader state of source {state['source']!r} given to the {self.cfg.source!r} loader")
        if state["layout"] == self._layout():
            self._cursors = [Cursor(*c) for c in state["cursors"]]
            self._batches = state["batches"]
            return
        changed = sorted(k for k in self._layout() if state["layout"].get(k) != self._layout()[k])
        warnings.warn(f"{self.cfg.source}: loader state saved with a different {', '.join(changed)}; restarting "
                      f"epoch {state['epoch']} from its beginning on the new split", RuntimeWarning, stacklevel=2)
        self._cursors = [Cursor(state["epoch"], 0, 0)] * self.workers
        self._batches = state["epoch"] * self.batches_per_epoch

    def _layout(self) -> dict:
        cfg = self.cfg
        names = "\n".join(f"{os.path.basename(s.path)} {s.samples}" for s in self.shards)
        return {"world_size": self.world_size, "workers": self.workers, "batch_size": cfg.batch_size,
                "samples": self.num_samples, "shards": hashlib.blake2b(names.encode(), digest_size=8).hexdigest(),
                "seed": cfg.seed, "shuffle_block": cfg.shuffle_block}

    def _stream_for(self, cursors: Sequence[Cursor], first_worker: int = 0) -> ShardStream:
        return ShardStream(self.cfg, self.shards, self.rank, self.world_size, cursors, first_worker)

    def _data_loader(self, stream: ShardStream) -> DataLoader:
        cfg = self.cfg
        pin = torch.cuda.is_available() if cfg.pin_memory is None else cfg.pin_memory
        # A generator of its own: DataLoader draws worker seeds from it when it starts, which would otherwise shift
        # torch's global stream (the training's dropout) by an amount that depends on when iteration began.
        generator = torch.Generator().manual_seed(cfg.seed)
        if cfg.workers == 0:
            return DataLoader(stream, batch_size=None, num_workers=0, pin_memory=pin, generator=generator)
        # Training makes one endless iterator per `iter`; evaluation reuses its workers from pass to pass.
        return DataLoader(stream, batch_size=None, num_workers=cfg.workers, pin_memory=pin, generator=generator,
                          prefetch_factor=cfg.prefetch_factor, persistent_workers=not cfg.train)

    def _require_train(self, what: str) -> None:
        if not self.cfg.train:
            raise TypeError(f"{what} is for training loaders; an evaluation loader is one pass over the data")
