"""The reference loader: the converter's WebDataset shards → `Batch`es, with exact mid-epoch resume.

It defines the batch contract the DALI pipeline also meets, and it is what `mcq-ds train --loader torch` trains
from. The worker side is a chain of stages, each turning a failure into a counted `Skip` (`mcq_shards.reader`)
instead of an exception:

    read (tar samples at planned positions, `mcq_shards.reader`) → prepare (`sample.prepare`: json, `sampling.draw`,
    the chosen JPEG frames, the question) → shuffle within blocks → render (decode, crop, resize, flip, pad) → batch
    (uint8 pixels + tokenise)

A worker whose stream is mostly unreadable stops with `TooManySkips` naming the shard
(`LoaderConfig.max_skip_share`).

How the data is split (`ShardLoader` docstring has the reasons):

* An epoch is one pass over a virtual sequence: every shard's samples, shards in a (seed, epoch)-shuffled order.
  The sequence is cut into `world_size × workers` contiguous, near-equal ranges, one
  per (rank, worker) "slot"; a slot seeks straight to its range's first sample (byte offsets from the shard's
  `.idx`), so the split is balanced to one sample whatever the shard sizes.
* A slot reads its range shuffled in blocks of `shuffle_block` samples, and yields exactly
  `worker_batches = (samples // slots) // batch_size` batches per epoch, so every rank yields
  `batches_per_epoch` batches and the engine's collectives never wait on a rank that ran dry. Undecodable
  samples are replaced by reading on past the range end (in order, wrapping around the epoch's sequence), never
  by black frames. The stream is endless: epoch after epoch.

Every random choice comes from `sampling.draw(seed, epoch, key)` or from hashes of (seed, epoch, slot, block),
never from a generator whose state depends on what came before. So a worker restarted at a recorded position
makes exactly the choices an uninterrupted one would have made.
"""
from __future__ import annotations

import bisect
import hashlib
import logging
import os
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, count, islice
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mcq_shards.reader import (Reason, SampleError, ShardEntries, ShardInfo, Skip, SkipLog, members_sample,
                               read_members, resolve_shards, sample_entries, skip_check_after)

from ..runtime import distributed_position
from .batch import NORMALISATION, Batch, Tokens
from .questions import QuestionAnswer, QuestionBuilder, tokenize_texts
from .sample import Prepared, prepare
from .sampling import sample_seed
from .transforms import render_clip

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass
class LoaderConfig:
    """Everything a loader needs; the engine builds one per data source, and the DALI pipeline takes the same.

    `shards` is a shard directory (its `manifest.json` lists the shards and their sample counts), a
    brace-expanded pattern (`'webvid-{00000..00009}.tar'`), or a list of either. `rank`/`world_size` default to
    torch.distributed's when it is initialised, else to the RANK/WORLD_SIZE environment variables, else 0/1.
    `batch_size` is per rank. `shuffle_block` > 1 shuffles samples within consecutive blocks of that many samples
    of a worker's stream; a worker holds that many samples' chosen JPEG frames (about 100 KB per 4-frame sample).
    A reader (a worker, or the DALI host step) stops with `TooManySkips` when more than `max_skip_share` of the
    samples it has read were unusable, once it has read `skip_check_after` of them (about two WebVid shards) or its
    whole share of an epoch, if that is smaller (`mcq_shards.reader.skip_check_after`).
    `frame_sampling` "time" takes training frames at the original's sampled instants (`sampling.draw` with the clip's
    clock), "stored" by its index rule over the stored frames; `antialias` is the training resize's (the original
    resized without). `mcq-ds train` sets both to the original's; these defaults keep the behaviour of older runs.
    """

    shards: str | os.PathLike | Sequence[str | os.PathLike]
    source: str
    tokenizer: PreTrainedTokenizerBase
    num_frames: int = 4
    img_size: int = 224
    batch_size: int = 20
    workers: int = 4
    seed: int = 0
    rank: int | None = None
    world_size: int | None = None
    question_type: str = "noun"
    question_mode: str = "span"
    questions: bool = True  # False: no MCQ questions (fine-tuning without the BridgeFormer); question/answer None
    max_text_length: int | None = None
    normalisation: str = "imagenet"
    hflip: bool = True
    shuffle_block: int = 256
    frame_sampling: str = "stored"
    antialias: bool = True
    prefetch_factor: int = 2
    pin_memory: bool | None = None  # default: when CUDA is available
    max_skip_share: float = 0.5
    skip_check_after: int = 2000

    def __post_init__(self) -> None:
        for name in ("num_frames", "img_size", "batch_size", "prefetch_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers < 0 or self.shuffle_block < 0:
            raise ValueError("workers and shuffle_block must not be negative")
        if self.question_type not in ("noun", "verb"):
            raise ValueError(f"question_type must be 'noun' or 'verb', got {self.question_type!r}")
        if self.normalisation not in NORMALISATION:
            raise ValueError(f"unknown normalisation {self.normalisation!r}; choose one of {sorted(NORMALISATION)}")
        if not 0 < self.max_skip_share <= 1:
            raise ValueError(f"max_skip_share must be in (0, 1], got {self.max_skip_share}")
        if self.frame_sampling not in ("time", "stored"):
            raise ValueError(f"frame_sampling must be 'time' or 'stored', got {self.frame_sampling!r}")


# --- worker side -----------------------------------------------------------------------------------------------

class _Sample(NamedTuple):
    key: str
    video: torch.Tensor  # (F, 3, S, S) uint8
    caption: str
    qa: QuestionAnswer | None
    plan: list[int]


_Raw = tuple[str, str, dict[str, bytes]]  # a sample read from a tar: (shard, key, {extension: bytes})


class Cursor(NamedTuple):
    """Where a worker is: in `epoch`, after `batches` batches that consumed `position` stream positions."""

    epoch: int
    batches: int
    position: int


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
        if self.worker_batches < 1:
            raise ValueError(f"{cfg.source}: {self.total} samples cannot give every one of {world_size} ranks × "
                             f"{self.workers} workers a batch of {cfg.batch_size}; use fewer workers or a smaller "
                             "batch")
        self.cursors = list(cursors) or [Cursor(0, 0, 0)] * self.workers
        self.first_worker = first_worker
        self.builder = QuestionBuilder(cfg.tokenizer, cfg.question_mode) if cfg.questions else None
        self._entries: dict[str, ShardEntries] = {}
        self._skip_log = SkipLog(cfg.source, cfg.max_skip_share,
                                 skip_check_after(cfg.skip_check_after, self.total // self.slots))

    # The plan: which sample sits at which position of an epoch.

    def epoch_order(self, epoch: int) -> list[int]:
        """Shard indices in the order epoch `epoch` reads them: shuffled by (seed, epoch)."""
        order = list(range(len(self.shards)))
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

    def _items(self, epoch: int, slot: int, position: int) -> Iterator[_Sample | Skip]:
        """The stage chain: rendered samples (or skips) of `slot`'s stream in `epoch`, from `position` on: the slot's
        range, shuffled in blocks, then (only to replace skipped samples) the samples after it, in order, wrapping
        around the epoch's sequence."""
        order = self.epoch_order(epoch)
        starts = np.cumsum([0] + [self.shards[i].samples for i in order[:-1]]).tolist()
        lo, hi = self.slot_range(slot)
        prepare = self._prepare_for(epoch)
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
            else:
                self._skip_log.good()
                samples.append(item)
                if len(samples) == self.cfg.batch_size:
                    break
        return (samples, skipped, consumed) if consumed else ()

    # Stage 1: read. Positions of the virtual sequence → raw tar samples (dicts of member bytes) or skips.

    def _read(self, order: list[int], starts: list[int], begin: int, end: int | None) -> Iterator[_Raw | Skip]:
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

    def _read_piece(self, shard: ShardInfo, first: int, n: int) -> Iterator[_Raw | Skip]:
        """`n` consecutive samples of `shard` from sample `first`, as (shard, key, members), read by the offsets of the
        shard's checked index (`mcq_shards.reader.sample_entries`); samples past a break in the tar are skips."""
        if shard.path not in self._entries:
            self._entries[shard.path] = sample_entries(shard.path, shard.index, shard.samples)
        found = self._entries[shard.path]
        readable = found.entries[first:first + n]
        with open(shard.path, "rb", buffering=1 << 20) as f:
            for entry in readable:
                try:
                    yield shard.path, entry.key, read_members(f, entry)
                except SampleError as err:
                    yield Skip(shard.path, entry.key, err.reason, err.detail)
        for k in range(first + len(readable), first + n):
            yield Skip(shard.path, f"#{k}", Reason.UNREADABLE_TAR, found.damage or
                       f"the shard holds {len(found.entries)} of the {shard.samples} samples listed for it")

    # Stage 2: prepare. json → draws → only the chosen JPEG frames are kept; the question is built here too.

    def _prepare_for(self, epoch: int) -> Callable[[_Raw | Skip], tuple[str, Prepared] | Skip]:
        def prepare_one(raw: _Raw | Skip) -> tuple[str, Prepared] | Skip:
            if isinstance(raw, Skip):
                return raw
            shard, key, members = raw
            try:
                return shard, prepare(members_sample(key, members), self.cfg, epoch, self.builder)
            except SampleError as err:
                return Skip(shard, key, err.reason, err.detail)
        return prepare_one

    # Stage 4: render (stage 3, the block shuffle, is `_shuffle_blocks`).

    def _render(self, item: tuple[str, Prepared] | Skip) -> _Sample | Skip:
        if isinstance(item, Skip):
            return item
        shard, item = item
        meta = item.meta
        try:
            video = render_clip(item.jpegs, item.plan, item.draws.crop, item.draws.flip, self.cfg.img_size,
                                meta["height"], meta["width"], self.cfg.antialias)
        except Exception as err:  # libjpeg's errors for truncated or garbled frames, size mismatches
            return Skip(shard, item.key, Reason.BAD_FRAME,
                        f"undecodable: {type(err).__name__}: {err}")
        return _Sample(item.key, video, item.caption, item.qa, item.plan)

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
        tokens = tokenize_texts(cfg.tokenizer, captions, [s.qa.question if s.qa else "" for s in samples],
                                [s.qa.answer if s.qa else "" for s in samples], cfg.max_text_length)
        text, question, answer = (Tokens(tokens[k]["input_ids"], tokens[k]["attention_mask"])
                                  for k in ("text", "question", "answer"))
        if not cfg.questions:
            question = answer = None
        extra: dict[str, Any] = {"frames": torch.tensor([s.plan for s in samples], dtype=torch.long)}
        return dict(video=video, text=text, question=question, answer=answer, keys=[s.key for s in samples],
                    kinds=[s.qa.kind if s.qa else "none" for s in samples], source=cfg.source, skipped=skipped,
                    extra=extra, normalisation=cfg.normalisation)


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
    """Training batches of one data source for this rank: `for batch in loader`, endless, epoch after epoch.

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
        self.shards = resolve_shards(cfg.shards).shards
        self.num_samples = sum(s.samples for s in self.shards)
        self.workers = max(1, cfg.workers)
        self._worker_batches = self._stream_for(()).worker_batches  # also validates the plan here, not in a worker
        self._cursors = [Cursor(0, 0, 0)] * self.workers
        self._batches = 0

    @property
    def batches_per_epoch(self) -> int:
        """Training batches every rank yields per epoch: `workers × (num_samples // (world_size × workers) //
        batch_size)`."""
        return self.workers * self._worker_batches

    @property
    def epoch(self) -> int:
        """The epoch of the next training batch."""
        return self._batches // self.batches_per_epoch

    def __iter__(self) -> Iterator[Batch]:
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
        return {"version": STATE_VERSION, "source": self.cfg.source, "layout": self._layout(),
                "batches": self._batches, "epoch": self.epoch, "cursors": [list(c) for c in self._cursors]}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` at the next `iter(loader)`.

        Saved with the same layout (world size, workers, batch size, data, seed, shuffle block): exactly where
        it stopped. Otherwise the positions mean nothing on the new split, so the saved epoch restarts from its
        beginning on the new one (its samples seen before the interruption are seen again), with a warning.
        Any rank's state will do then: every rank is in the same epoch.
        """
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
        return DataLoader(stream, batch_size=None, num_workers=cfg.workers, pin_memory=pin, generator=generator,
                          prefetch_factor=cfg.prefetch_factor)
