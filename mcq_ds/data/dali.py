"""The NVIDIA DALI loader: the reference loader's batches, decoded by nvJPEG on a GPU or libjpeg-turbo on the CPU.

One pipeline definition serves both machines; only the decoder's device changes (``"mixed"``: nvJPEG, the
frames stay on the GPU; ``"cpu"``: ``device_id=None``, which is what CI runs). Per pipeline iteration:

1. ``fn.readers.webdataset`` reads each sample's ``jpgs`` + ``offsets`` (a clip stored as JPEG frames, see
   ``mcq_shards/media.py``) or ``jpg`` (an image, a one-frame clip), and its ``json``, from this rank's part of the
   shards, through their ``.idx`` files.
2. A host step (``fn.python_function``, one call per batch) runs the reference loader's own per-sample
   preparation (:func:`mcq_ds.data.sample.prepare`: the checked json and offsets, ``sampling.draw``'s stored
   frames, crop window and flip from ``(seed, epoch, key)``, the question), so the two loaders agree on every
   sample and skip the same ones for the same reasons. It hands DALI only the chosen frames' JPEG bytes, so
   nothing else is ever decoded, plus the crop window (a JPEG whose markers or size are wrong is never handed
   over: a decoder error stops a DALI pipeline for good), and it tokenises the batch's captions, questions and
   answers (padded to the batch's
   longest, so DALI's iterator gets dense tensors). Its cost is measured by ``mcq_ds/bench/dali.py``.
3. ``fn.decoders.image_slice`` decodes only the crop window of each chosen frame, ``fn.stack`` makes the clip,
   ``fn.resize`` brings it to ``img_size`` and ``fn.crop_mirror_normalize`` flips it on the decoder's device into
   ``(F, 3, H, W)`` uint8; the engine normalises on its device (``Batch.to``), as for the reference loader.

A sample that fails the host step's checks is decoded as a placeholder, dropped after the pipeline and
counted in ``Batch.skipped``; the batch is filled from the next samples, so every batch has ``batch_size``
samples on every rank (the distributed loss needs equal batches). A frame with sound markers whose data the
decoder still rejects (a broken Huffman table) fails the pipeline batch: the loader rebuilds the pipeline from
the DALI checkpoint taken before that batch and has the host step decode that batch's frames with libjpeg first,
so the broken sample is skipped like any other. When most samples read are unusable (foreign or damaged shards)
the loader stops with ``TooManySkips`` naming a shard instead of reading on forever.

Shards. Each shard's ``.idx`` is checked against its tar before DALI sees it (``mcq_shards.reader``); a missing,
short or foreign index, or a tar that breaks off, is replaced by an index of the samples actually there, written
to a temporary folder, with a warning.

Epochs. Each training epoch is its own pipeline: the shard list is shuffled with ``(seed, epoch)``, DALI gives
this rank its contiguous ``1/world_size`` of the samples (sequential reads, what a network file system wants)
and shuffles them in a buffer; every rank yields ``floor(floor(N / world) / batch_size)`` batches, the same
number everywhere (a rank that skipped samples reads on into its part again). The epoch is a constant of the
host step, so a new epoch builds a new pipeline: its start-up (0.2-1.2 s to the first batch on the CPU,
measured by the benchmark) is paid once per epoch.

Resume. ``state_dict()`` holds the epoch, the batches already yielded in it, and a DALI checkpoint
(``enable_checkpointing``: reader position and shuffle state) taken before the oldest pipeline batch whose
samples are not all yielded yet, with the count of its samples already yielded; a loader given that state
yields exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

import base64
import io
import os
import random
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from mcq_shards.reader import (Reason, SampleError, ShardInfo, Skip, SkipLog, TooManySkips, index_lines,
                               resolve_shards, sample_entries, skip_check_after, stored_sample)
from mcq_shards.tario import split_name

from ..runtime import distributed_position
from .batch import Batch, Tokens
from .loader import LoaderConfig
from .questions import QuestionAnswer, QuestionBuilder, tokenize_texts
from .sample import prepare
from .sampling import CropBox, sample_seed

KINDS = ("noun", "verb", "none")
STATE_VERSION = 1


# --- shards ------------------------------------------------------------------------------------------------------


def dali_shards(config: LoaderConfig) -> list[ShardInfo]:
    """The config's shards (``resolve_shards``: directories, brace patterns, lists), each with an index DALI can
    trust: its own ``.idx`` when it checks out against the tar, else one rebuilt from the tar's headers (covering
    only the samples before any break in the tar) in a temporary folder, with a warning."""
    shards, rebuilt = [], None
    for shard in resolve_shards(config.shards).shards:
        found = sample_entries(shard.path, shard.index, shard.samples)
        if found.damage:
            warnings.warn(f"{config.source}: {shard.path}: {found.damage}; {found.lost} of its {found.listed} "
                          "samples cannot be read", RuntimeWarning, stacklevel=2)
        if not found.entries:
            continue
        if not found.rebuilt:
            shards.append(ShardInfo(shard.path, len(found.entries), shard.index))
            continue
        rebuilt = rebuilt or tempfile.mkdtemp(prefix="mcq-ds-dali-index-")
        index = os.path.join(rebuilt, f"{len(shards):06d}-{os.path.basename(shard.path)}.idx")
        with open(index, "w", encoding="utf-8") as f:
            f.write(index_lines(found.entries))
        shards.append(ShardInfo(shard.path, len(found.entries), index))
    if not shards:
        raise ValueError(f"{config.source}: no readable sample in {config.shards!r}")
    return shards


def epoch_shards(files: list[ShardInfo], seed: int, epoch: int) -> list[ShardInfo]:
    """The shards in a new order every epoch (each rank gets different shards each epoch)."""
    order = list(files)
    random.Random(sample_seed(seed, epoch, "shards")).shuffle(order)
    return order


# --- the host step -----------------------------------------------------------------------------------------------

def _placeholder_jpeg() -> np.ndarray:
    """What the decoder gets for a rejected sample (it has to decode something); the sample is dropped after."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 16)).save(out, "JPEG")
    return np.frombuffer(out.getvalue(), np.uint8)


class _Sample(NamedTuple):
    """One sample after the host step's checks: the chosen frames' JPEG bytes and what the batch needs."""

    plan: list[int]  # stored frame of each output frame
    encoded: list[np.ndarray]
    crop: CropBox
    flip: bool
    meta: dict
    caption: str
    qa: QuestionAnswer | None


def _decodes(frame: np.ndarray) -> None:
    """Raises `SampleError` when libjpeg cannot decode the frame."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(frame.tobytes())) as image:
            image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:
        raise SampleError(Reason.BAD_FRAME, f"undecodable: {type(err).__name__}: {err}") from None


_SOURCE_INFO = re.compile(r"(.*):(\d+):([^:]*)")  # DALI's webdataset source info: <tar>:<offset>:<member name>


def _origin(infos: tuple[np.ndarray, ...], fallback: str) -> tuple[str, str]:
    """(shard, key) of a sample from the source info of any member DALI found for it; `fallback` (this rank's
    shards) when it found none, as for a tar of another converter."""
    for info in infos:
        match = _SOURCE_INFO.fullmatch(info.tobytes().decode("utf-8", "replace"))
        if match:
            return match[1], split_name(match[3])[0]
    return fallback, "?"


def rank_shards(files: list[ShardInfo], rank: int, world_size: int) -> list[str]:
    """The shards of an epoch's order that DALI's reader gives ``rank``: those overlapping its contiguous part."""
    total, start, found = sum(f.samples for f in files), 0, []
    lo, hi = total * rank // world_size, total * (rank + 1) // world_size
    for f in files:
        if start < hi and start + f.samples > lo:
            found.append(f.path)
        start += f.samples
    return found


def _padded(rows: list[bytes]) -> list[np.ndarray]:
    """Byte strings as equal-length uint8 rows (DALI's iterator needs dense outputs)."""
    width = max(1, max(map(len, rows)))
    return [np.frombuffer(r.ljust(width, b"\0"), np.uint8) for r in rows]


class HostStep:
    """The per-batch Python step of the pipeline (see the module docstring). One instance per epoch pipeline:
    the epoch is part of every sample's random draws."""

    OUTPUTS = ("anchor", "window", "flip", "frames", "crop", "valid", "keys", "kinds", "text_ids", "text_mask",
               "question_ids", "question_mask", "answer_ids", "answer_mask")

    def __init__(self, config: LoaderConfig, epoch: int, questions: QuestionBuilder | None, skip_log: SkipLog,
                 shards: list[str], decode_first: int = 0):
        self.config, self.epoch, self.questions, self.skip_log = config, epoch, questions, skip_log
        self.shards = "one of " + ", ".join(shards[:3]) + (f" (+{len(shards) - 3})" if len(shards) > 3 else "")
        self.decode_first = decode_first  # calls (pipeline batches) whose frames are decoded here before DALI's
        self.placeholder = _placeholder_jpeg()
        self.failure: TooManySkips | None = None

    def sample(self, raw_meta: np.ndarray, jpgs: np.ndarray, offsets: np.ndarray, decode: bool) -> _Sample:
        """Draws, chosen frames and question of one sample (`sample.prepare`); raises `SampleError`."""
        prepared = prepare(stored_sample(None, raw_meta, jpgs, offsets), self.config, self.epoch, self.questions)
        if decode:
            for frame in prepared.jpegs.values():
                _decodes(frame)
        return _Sample(prepared.plan, [prepared.jpegs[i] for i in prepared.plan], prepared.draws.crop,
                       prepared.draws.flip, prepared.meta, prepared.caption, prepared.qa)

    def __call__(self, metas: list[np.ndarray], jpgs: list[np.ndarray], offsets: list[np.ndarray],
                 *sources: list[np.ndarray]) -> tuple:
        cfg = self.config
        decode, self.decode_first = self.decode_first > 0, max(0, self.decode_first - 1)
        samples: list[_Sample | None] = []
        for raw_meta, data, bounds, *infos in zip(metas, jpgs, offsets, *sources):
            try:
                samples.append(self.sample(raw_meta, data, bounds, decode))
                self.skip_log.good()
            except SampleError as err:
                samples.append(None)
                try:
                    self.skip_log(Skip(*_origin(infos, self.shards), err.reason, err.detail))
                except TooManySkips as failure:  # DALI would wrap it in its own error: the loader raises it
                    self.failure = failure
                    raise
        # A rejected sample is decoded as a 16x16 placeholder and dropped after the pipeline.
        blank = _Sample([0] * cfg.num_frames, [self.placeholder] * cfg.num_frames, CropBox(0, 0, 16, 16), False,
                        {"key": ""}, "", None)
        rows = [s or blank for s in samples]
        encoded = [[s.encoded[k] for s in rows] for k in range(cfg.num_frames)]
        anchor = [np.array([s.crop.left, s.crop.top], np.float32) for s in rows]
        window = [np.array([s.crop.width, s.crop.height], np.float32) for s in rows]
        flip = [np.array(s.flip, np.int32) for s in rows]
        frames = [np.array(s.plan, np.int64) for s in rows]
        crop = [np.array(s.crop, np.int64) for s in rows]
        valid = [np.array(s is not None, np.uint8) for s in samples]
        keys = _padded([s.meta["key"].encode() for s in rows])
        kinds = [np.array(KINDS.index(s.qa.kind if s.qa else "none"), np.uint8) for s in rows]
        tokens = tokenize_texts(cfg.tokenizer, [s.caption for s in rows],
                                [s.qa.question if s.qa else "" for s in rows],
                                [s.qa.answer if s.qa else "" for s in rows], cfg.max_text_length)
        text = [list(tokens[name][part].numpy()) for name in ("text", "question", "answer")
                for part in ("input_ids", "attention_mask")]
        return (*encoded, anchor, window, flip, frames, crop, valid, keys, kinds, *text)


# --- the pipeline ------------------------------------------------------------------------------------------------


def default_device() -> str:
    """``"mixed"`` (decode on the GPU) when DALI sees a CUDA device, else ``"cpu"``."""
    from nvidia.dali.backend import GetCUDADeviceCount

    return "mixed" if GetCUDADeviceCount() > 0 else "cpu"


def build_pipeline(config: LoaderConfig, files: list[ShardInfo], epoch: int, rank: int, world_size: int, device: str,
                   device_id: int | None, host: HostStep, checkpoint: bytes | None = None):
    """The DALI pipeline of one epoch on ``rank`` (not yet built); `host` is its host step."""
    from nvidia.dali import fn, pipeline_def, types

    cfg = config
    files = epoch_shards(files, cfg.seed, epoch)

    @pipeline_def(batch_size=cfg.batch_size, num_threads=max(1, cfg.workers), device_id=device_id,
                  seed=sample_seed(cfg.seed, epoch, f"dali-rank{rank}") % 2**31, enable_checkpointing=True,
                  prefetch_queue_depth=2)
    def pipeline():
        jpgs, offsets, meta = fn.readers.webdataset(
            paths=[f.path for f in files], index_paths=[f.index for f in files], ext=["jpgs;jpg", "offsets", "json"],
            missing_component_behavior="empty", shard_id=rank, num_shards=world_size, stick_to_shard=True,
            random_shuffle=True, dont_use_mmap=True, name="Reader")
        sources = [fn.get_property(member, key="source_info") for member in (meta, jpgs, offsets)]
        out = fn.python_function(meta, jpgs, offsets, *sources, function=host, batch_processing=True,
                                 num_outputs=cfg.num_frames + len(HostStep.OUTPUTS))
        encoded, rest = out[:cfg.num_frames], dict(zip(HostStep.OUTPUTS, out[cfg.num_frames:]))
        frames = [fn.decoders.image_slice(e, rest["anchor"], rest["window"], device=device, output_type=types.RGB,
                                          axis_names="WH", normalized_anchor=False, normalized_shape=False)
                  for e in encoded]
        video = fn.stack(*frames, axis_name="F")
        video = fn.resize(video, size=[cfg.img_size, cfg.img_size], antialias=cfg.antialias)
        video = fn.crop_mirror_normalize(video, mirror=rest["flip"], dtype=types.UINT8, output_layout="FCHW")
        return (video, *(rest[name] for name in HostStep.OUTPUTS[2:]))

    return pipeline(checkpoint=checkpoint)


OUTPUT_MAP = ("video",) + HostStep.OUTPUTS[2:]


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate samples of two pipeline batches; token ids and keys are zero-padded to the wider batch."""
    if parts[0].dim() == 2 and len({p.shape[1] for p in parts}) > 1:
        width = max(p.shape[1] for p in parts)
        parts = [torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts]
    return torch.cat(parts)


# --- the loader --------------------------------------------------------------------------------------------------


@dataclass
class _Chunk:
    """The not yet yielded valid samples of one pipeline batch, and the DALI checkpoint taken before it."""

    data: dict[str, torch.Tensor]  # valid samples only
    start: int  # how many of them were yielded already
    before: bytes  # DALI checkpoint before this pipeline batch
    skipped: int  # samples of this pipeline batch rejected by the host step (counted once)


class DaliLoader:
    """Drop-in for the reference loader (``mcq_ds.data.loader.ShardLoader``): the same config in, :class:`Batch`
    out, ``state_dict``/``load_state_dict`` for exact resume, ``batches_per_epoch`` and ``epoch``.

    Training iterates without end, epoch after epoch; evaluation iterates over one pass per ``iter``.
    ``device`` is ``"mixed"`` (GPU decoding; batches come out on GPU ``device_id``, by default the current CUDA
    device), ``"cpu"`` (CPU decoding, ``device_id=None``), or None: ``"mixed"`` whenever DALI sees a GPU.
    """

    def __init__(self, config: LoaderConfig, device: str | None = None, device_id: int | None = None):
        self.config = config
        self.rank, self.world_size = distributed_position(config.rank, config.world_size)
        self.device = device or default_device()
        if self.device not in ("cpu", "mixed"):
            raise ValueError(f"device must be 'cpu' or 'mixed', got {self.device!r}")
        self.device_id = None if self.device == "cpu" else (
            device_id if device_id is not None else torch.cuda.current_device())
        self.files = dali_shards(config)
        self.num_samples = sum(f.samples for f in self.files)
        # the same on every rank, so that no rank waits in a collective for one that ran dry
        self.batches_per_epoch = self.num_samples // self.world_size // config.batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(f"{config.source}: {self.num_samples} samples cannot give each of {self.world_size} "
                             f"ranks a batch of {config.batch_size}")
        self.questions = QuestionBuilder(config.tokenizer, config.question_mode) if config.questions else None
        self.skip_log = SkipLog(config.source, config.max_skip_share,
                                skip_check_after(config.skip_check_after, self.num_samples // self.world_size))
        self.skipped = 0  # samples rejected so far, over all epochs
        self._epoch = 0  # of the pipeline being read
        self._batches = 0  # yielded in that epoch
        self._resume: tuple[bytes, int] | None = None  # (DALI checkpoint, valid samples to drop) for the next pipeline
        self._chunks: list[_Chunk] = []
        self._iterator = None
        self._host: HostStep | None = None
        self._decoded_at: bytes | None = None  # the checkpoint of the last batch retried with host-side decoding

    @property
    def epoch(self) -> int:
        """The epoch of the next batch."""
        return self._epoch + (self._batches == self.batches_per_epoch)

    def _layout(self) -> dict[str, Any]:
        """What a saved position depends on: with another layout the same position means other samples."""
        cfg = self.config
        return {"world_size": self.world_size, "batch_size": cfg.batch_size, "samples": self.num_samples,
                "shards": [os.path.basename(f.path) for f in self.files], "seed": cfg.seed,
                "num_frames": cfg.num_frames}

    def state_dict(self) -> dict[str, Any]:
        """Where the next batch comes from, as plain data (the DALI checkpoint base64-encoded), for the training
        checkpoint."""
        if self._batches == self.batches_per_epoch:  # the epoch is over: the next batch starts the next one
            epoch, batches, dali, skip = self._epoch + 1, 0, None, 0
        else:
            epoch, batches = self._epoch, self._batches
            if self._chunks:
                dali, skip = self._chunks[0].before, self._chunks[0].start
            elif self._iterator is not None:
                dali, skip = self._iterator.checkpoints()[0], 0
            else:
                dali, skip = self._resume or (None, 0)
        return {"version": STATE_VERSION, "source": self.config.source, "layout": self._layout(), "epoch": epoch,
                "batches": batches, "dali": None if dali is None else base64.b64encode(dali).decode("ascii"),
                "skip": skip, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` at the next ``iter(loader)``: exactly where it stopped when saved with the same
        layout; otherwise (another world size, batch size, data or seed) from the start of the saved epoch, with
        a warning, as the reference loader does."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r}, this loader reads {STATE_VERSION}")
        if state["source"] != self.config.source:
            raise ValueError(f"loader state of source {state['source']!r} given to the {self.config.source!r} loader")
        self._close()
        self._epoch, self.skipped = state["epoch"], state["skipped"]
        if state["layout"] == self._layout():
            self._batches = state["batches"]
            self._resume = None if state["dali"] is None else (base64.b64decode(state["dali"]), state["skip"])
            return
        changed = sorted(k for k, v in self._layout().items() if state["layout"].get(k) != v)
        warnings.warn(f"{self.config.source}: loader state saved with a different {', '.join(changed)}; restarting "
                      f"epoch {state['epoch']} from its beginning", RuntimeWarning, stacklevel=2)
        self._batches, self._resume = 0, None

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield from self._read_epoch()

    def _read_epoch(self) -> Iterator[Batch]:
        while self._batches < self.batches_per_epoch:
            batch = self._next_batch()
            self._batches += 1
            yield batch
        self._close()
        self._epoch, self._batches, self._resume = self._epoch + 1, 0, None

    def _open(self, decode_first: int = 0) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        checkpoint, skip = self._resume or (None, 0)
        self._resume = None
        shards = rank_shards(epoch_shards(self.files, self.config.seed, self._epoch), self.rank, self.world_size)
        self._host = HostStep(self.config, self._epoch, self.questions, self.skip_log, shards, decode_first)
        pipe = build_pipeline(self.config, self.files, self._epoch, self.rank, self.world_size, self.device,
                              self.device_id, self._host, checkpoint)
        self._iterator = DALIGenericIterator(pipe, list(OUTPUT_MAP), last_batch_policy=LastBatchPolicy.PARTIAL,
                                             prepare_first_batch=False)
        self._drop = skip

    def _close(self) -> None:
        self._iterator, self._chunks = None, []

    def _fetch(self) -> None:
        """Append the next pipeline batch's valid samples to the chunks."""
        if self._iterator is None:
            self._open()
        before = self._iterator.checkpoints()[0]
        try:
            out = next(self._iterator)[0]
        except RuntimeError as err:
            if self._host.failure is not None:
                raise self._host.failure from None
            if self._decoded_at == before:  # libjpeg accepted every frame of this batch, DALI's decoder did not
                raise
            # A frame with sound markers that DALI's decoder rejects: the pipeline is broken for good. Rebuild it
            # from before this batch, with the host step decoding the batch's frames first to find the bad one.
            warnings.warn(f"{self.config.source}: the decoder failed on a batch ({str(err).splitlines()[0][:200]}); "
                          "retrying it with every frame checked by libjpeg first", RuntimeWarning, stacklevel=2)
            self._decoded_at, self._resume = before, (before, self._drop)
            self._open(decode_first=1)
            return self._fetch()
        valid = out.pop("valid").bool().cpu()
        rejected = int((~valid).sum())
        if rejected:
            keep = valid.nonzero().squeeze(1)
            out = {name: t.index_select(0, keep.to(t.device)) for name, t in out.items()}
        if self._drop:  # resuming inside this pipeline batch: its rejects were counted before the checkpoint
            rejected = 0
        self.skipped += rejected
        self._chunks.append(_Chunk(out, self._drop, before, rejected))
        self._drop = 0

    def _next_batch(self) -> Batch:
        size = self.config.batch_size
        while sum(len(c.data["video"]) - c.start for c in self._chunks) < size:
            self._fetch()
        parts, skipped, need = [], 0, size
        while need and self._chunks:
            chunk = self._chunks[0]
            take = min(need, len(chunk.data["video"]) - chunk.start)
            parts.append({k: v[chunk.start:chunk.start + take] for k, v in chunk.data.items()})
            skipped += chunk.skipped
            chunk.skipped = 0
            chunk.start += take
            need -= take
            if chunk.start == len(chunk.data["video"]):
                self._chunks.pop(0)
        data = parts[0] if len(parts) == 1 else {k: _cat([p[k] for p in parts]) for k in parts[0]}
        return self._batch(data, skipped)

    def _batch(self, data: dict[str, torch.Tensor], skipped: int) -> Batch:
        def tokens(name: str) -> Tokens:
            ids, mask = data[f"{name}_ids"], data[f"{name}_mask"]
            width = int(mask.sum(1).max())  # samples of two pipeline batches came with two paddings
            return Tokens(ids[:, :width], mask[:, :width])

        def strings(rows: torch.Tensor) -> list[str]:
            return [bytes(row).rstrip(b"\0").decode() for row in rows.tolist()]

        extra = {"frames": data["frames"], "crop": data["crop"], "flip": data["flip"].bool()}
        return Batch(
            video=data["video"], text=tokens("text"), question=tokens("question") if self.config.questions else None,
            answer=tokens("answer") if self.config.questions else None,
            keys=strings(data["keys"]), kinds=[KINDS[k] for k in data["kinds"].tolist()], source=self.config.source,
            skipped=skipped, extra=extra, normalisation=self.config.normalisation)
