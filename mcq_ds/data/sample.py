"""One training sample, prepared the same way by both loaders: json → draws → chosen frames → question.

The reference loader decodes the chosen frames with libjpeg-turbo in its workers; the DALI loader hands the same
frames to nvJPEG (or DALI's CPU decoder). Everything before decoding is this one function, so the two loaders
agree on every sample by construction: which stored frames, which crop window and flip (`sampling.draw`), which
question, and which samples are skipped and why (`mcq_shards.reader.Reason`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from mcq_shards.frames import ClipClock
from mcq_shards.reader import Reason, SampleError, StoredSample, check_jpeg

from .questions import QuestionAnswer, QuestionBuilder
from .sampling import SampleDraws, draw
from .transforms import pad_frames

if TYPE_CHECKING:
    from .loader import LoaderConfig


class Prepared(NamedTuple):
    """A sample after its draws, holding only the JPEG bytes of its chosen frames."""

    key: str
    meta: dict[str, Any]
    caption: str  # the text this sample is paired with in this epoch
    draws: SampleDraws
    plan: list[int]  # stored frame of each output frame; a clip shorter than the run's frames repeats its last
    jpegs: dict[int, Any]  # stored frame → its JPEG bytes (checked: one whole JPEG of the sample's size)
    qa: QuestionAnswer | None


def prepare(sample: StoredSample, cfg: LoaderConfig, epoch: int, questions: QuestionBuilder | None) -> Prepared:
    """The draws of `sample` in `epoch`, its chosen frames and its caption and question. Raises `SampleError`.

    Without questions (fine-tuning: no BridgeFormer), a sample that stores several captions (a benchmark's training
    video) is paired with one of them drawn anew every epoch, as the original's `caption_sample: rand`; with
    questions it keeps `caption`, the text its stored noun and verb spans belong to."""
    clock = ClipClock.from_meta(sample.meta) if cfg.frame_sampling == "time" else None
    draws = draw(cfg.seed, epoch, sample.key, sample.num_stored, cfg.num_frames, sample.height, sample.width,
                 hflip=cfg.hflip, clock=clock)
    jpegs = {i: check_jpeg(sample, i) for i in sorted(set(draws.frames))}
    meta = sample.meta
    caption, qa = meta["caption"], None
    if questions is None and isinstance(meta.get("captions"), list) and meta["captions"]:
        caption = str(draws.rng.choice(meta["captions"]))
    if questions is not None:
        try:
            qa = questions(meta["caption"], meta.get("nouns", []), meta.get("verbs", []), cfg.question_type,
                           draws.rng)
        except (ValueError, KeyError, TypeError, IndexError) as err:  # phrase spans that do not fit the caption
            raise SampleError(Reason.BAD_JSON, f"noun/verb phrases: {type(err).__name__}: {err}") from None
    return Prepared(sample.key, sample.meta, caption, draws, pad_frames(draws.frames, cfg.num_frames), jpegs, qa)
