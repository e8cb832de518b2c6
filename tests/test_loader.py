"""The reference loader on real shards: made by the real converter from PyAV-encoded clips and PIL images (plus
one shard written by hand for exact pixel content and for corrupt samples), read in real DataLoader worker
processes. Damaged shards of every kind: tests/test_damaged_shards.py."""
from __future__ import annotations

import csv
import io
import json
import logging
import random
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from shards_fixtures import encode_image, encode_video, pattern

from mcq_ds.config import TextConfig
from mcq_ds.data.batch import IMAGENET_MEAN, IMAGENET_STD, Batch
from mcq_ds.data.loader import LoaderConfig, ShardLoader
from mcq_ds.data.sampling import draw, sample_seed
from mcq_ds.data.transforms import render_clip
from mcq_ds.model import load_tokenizer
from mcq_shards.convert import Options, convert
from mcq_shards.frames import segment_frames
from mcq_shards.reader import read_index, resolve_shards, scan_tar
from mcq_shards.sources import usercsv
from mcq_shards.tario import ShardWriter, samples as tar_samples

# Captions in which spaCy finds noun phrases (the converter rejects a caption without one), and some verb phrases.
CAPTIONS = ["a red square is moving across a green field", "a small dog runs on the beach",
            "two people are dancing in a large hall", "a white car drives down the road",
            "an old man is reading a newspaper", "a cat sleeps on the sofa", "children play with a ball",
            "a bird is flying over the lake"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TextConfig())


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """A shard directory from the converter: 10 videos (one of only two stored frames) and 8 images, in shards of
    5 samples (the last one partial)."""
    root = tmp_path_factory.mktemp("raw")
    rows = []
    for i in range(10):
        seconds = 0.3 if i == 0 else 1.5 + 0.5 * (i % 4)  # 0.3 s at 10 fps: 3 frames, 2 stored
        encode_video(root / f"v{i}.mp4", seconds=seconds, fps=10, width=64 + 16 * (i % 2), height=48)
        rows.append((f"v{i}.mp4", CAPTIONS[i % len(CAPTIONS)]))
    for i in range(8):
        encode_image(root / f"i{i}.jpg", width=80 - 20 * (i % 2), height=60 + 20 * (i % 2))
        rows.append((f"i{i}.jpg", CAPTIONS[(i + 3) % len(CAPTIONS)]))
    table = root / "data.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([("path", "caption"), *rows])
    out = tmp_path_factory.mktemp("shards") / "mixed"
    convert(usercsv.read(table, root), out, "csv", Options(shard_size=5, min_frames=2, max_frames=8, fps=2.0),
            workers=1, progress=False)
    return out


def _frame_jpeg(value: int, width: int = 48, height: int = 40) -> bytes:
    """A frame whose pixels are known: the moving-square pattern, brightened by `value`."""
    image = Image.fromarray(np.clip(pattern(value, width, height).astype(int) + value, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _clip_members(key: str, frames: list[bytes], width: int = 48, height: int = 40, **meta) -> dict[str, bytes]:
    offsets = np.cumsum([0] + [len(f) for f in frames]).astype("<i4").tobytes()
    info = {"key": key, "caption": "a white square on a gradient", "media": "video", "num_frames": len(frames),
            "width": width, "height": height, "nouns": [{"text": "a white square", "start": 0, "end": 14}],
            "verbs": [], **meta}
    return {"jpgs": b"".join(frames), "offsets": offsets, "json": json.dumps(info).encode()}


GOOD_HAND = ["hand-static", "hand-moving", "hand-image"]
BAD_HAND = ["hand-truncated", "hand-badjson", "hand-nooffsets", "hand-wrongsize"]


@pytest.fixture(scope="module")
def hand_shard(tmp_path_factory) -> Path:
    """A GNU tar written by hand (no manifest, no index): a clip whose 6 stored frames are the same JPEG bytes,
    a clip with distinct frames, an image, and four broken samples between them."""
    path = tmp_path_factory.mktemp("hand") / "hand-00000.tar"
    writer = ShardWriter(path)
    still = _frame_jpeg(0)
    writer.write("hand-static", _clip_members("hand-static", [still] * 6))
    writer.write("hand-truncated", _clip_members("hand-truncated", [_frame_jpeg(i)[:300] for i in range(6)]))
    writer.write("hand-moving", _clip_members("hand-moving", [_frame_jpeg(10 * i) for i in range(6)]))
    writer.write("hand-badjson", {**_clip_members("hand-badjson", [still] * 3), "json": b'{"key": "hand-badj'})
    members = _clip_members("hand-nooffsets", [still] * 3)
    del members["offsets"]
    writer.write("hand-nooffsets", members)
    writer.write("hand-wrongsize", _clip_members("hand-wrongsize", [still] * 3, width=50))
    image = json.loads(_clip_members("hand-image", [still])["json"]) | {"media": "image"}
    writer.write("hand-image", {"jpg": _frame_jpeg(50), "json": json.dumps(image).encode()})
    writer.close()
    return path


def _loader(shards, tokenizer, **kw) -> ShardLoader:
    options = dict(source="csv", num_frames=4, img_size=32, batch_size=2, workers=2, seed=7, rank=0,
                   world_size=1, shuffle_block=3)
    options.update(kw)
    return ShardLoader(LoaderConfig(shards=shards, tokenizer=tokenizer, **options))


def _stored(shards) -> dict[str, tuple[dict, dict[str, bytes]]]:
    """Every good sample in the shards: key → (json, members), read with plain tarfile."""
    out = {}
    for shard in resolve_shards(shards).shards:
        with open(shard.path, "rb") as f:
            for key, members in tar_samples(Path(shard.path)):
                data = {}
                for m in members:
                    f.seek(m.offset_data)
                    data[m.name.split(".", 1)[1]] = f.read(m.size)
                if key not in BAD_HAND:
                    out[key] = (json.loads(data["json"]), data)
    return out


def _stored_count(meta: dict) -> int:
    return meta.get("num_frames", 1) if meta["media"] == "video" else 1


def test_batch_contract(converted, tokenizer):
    loader = _loader(converted, tokenizer)
    batch = next(iter(loader))
    assert isinstance(batch, Batch) and len(batch) == 2 and batch.source == "csv" and batch.skipped == 0
    assert batch.video.shape == (2, 4, 3, 32, 32) and batch.video.dtype == torch.uint8  # normalised on the device
    assert batch.normalisation == "imagenet"
    normalised = batch.to("cpu").video
    assert normalised.dtype == torch.float32 and normalised.is_contiguous() and batch.to("cpu").normalisation is None
    pixels = normalised * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert torch.allclose(pixels * 255, batch.video.float(), atol=1e-3)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5 and pixels.std() > 0.05
    for tokens in (batch.text, batch.question, batch.answer):
        assert tokens.ids.dtype == torch.long and tokens.ids.shape == tokens.mask.shape and tokens.ids.shape[0] == 2
        assert tokens.mask[:, 0].all() and (tokens.ids[:, 0] == tokenizer.cls_token_id).all()
    assert (batch.question.ids == tokenizer.mask_token_id).any()
    assert (batch.answer.ids[:, 1:4] == tokenizer.mask_token_id).all()  # "[MASK] [MASK] [MASK] " + phrase
    assert all(kind in ("noun", "verb") for kind in batch.kinds) and len(batch.kinds) == 2
    assert batch.extra["frames"].shape == (2, 4) and batch.extra["frames"].dtype == torch.long
    assert resolve_shards(converted).samples == 18 and loader.num_samples == 18


def test_frames_follow_segment_frames_and_pad_with_the_last(converted, tokenizer):
    stored = _stored(converted)
    loader = _loader(converted, tokenizer, workers=0, batch_size=1)
    seen = 0
    for batch in islice(iter(loader), loader.batches_per_epoch):
        for key, frames in zip(batch.keys, batch.extra["frames"].tolist()):
            n = _stored_count(stored[key][0])
            chosen = segment_frames(n, 4, "rand", random.Random(sample_seed(7, 0, key)))
            assert frames == chosen + [chosen[-1]] * (4 - len(chosen)), key
            seen += n < 4
    assert seen >= 9  # the 8 images and the 2-frame clip (at least) were padded


def _reference_frames(members: dict[str, bytes], meta: dict, frames: list[int], crop, flip: bool,
                      size: int) -> torch.Tensor:
    """The expected output frames, computed independently with PIL: decode, crop, resize (bilinear, antialiased),
    flip."""
    if "jpgs" in members:
        offsets = np.frombuffer(members["offsets"], dtype="<i4")
        jpegs = [members["jpgs"][offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    else:
        jpegs = [members["jpg"]]
    out = []
    for index in frames:
        image = Image.open(io.BytesIO(jpegs[index])).convert("RGB")
        assert image.size == (meta["width"], meta["height"])
        box = (crop.left, crop.top, crop.left + crop.width, crop.top + crop.height)
        image = image.crop(box).resize((size, size), Image.Resampling.BILINEAR)  # torchvision's resized_crop
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
    return torch.stack(out)


def _pixels(video: torch.Tensor) -> torch.Tensor:
    """A batch's frames as 0..255 levels (the loaders hand over uint8 pixels)."""
    assert video.dtype == torch.uint8
    return video.float()


def test_pixels_match_an_independent_pil_reference(converted, tokenizer):
    """Every output frame is its stored frame under the sample's one crop window and flip: the crop is shared by
    all frames of a clip, and the frames are the right ones."""
    stored = _stored(converted)
    loader = _loader(converted, tokenizer, workers=0, batch_size=6)
    batch = next(iter(loader))
    flips = 0
    for key, video, frames in zip(batch.keys, batch.video, batch.extra["frames"].tolist()):
        meta, members = stored[key]
        draws = draw(7, 0, key, _stored_count(meta), 4, meta["height"], meta["width"])
        expected = _reference_frames(members, meta, frames, draws.crop, draws.flip, 32)
        assert (_pixels(video) - expected).abs().max() <= 2.5, key  # torch and PIL resampling round differently
        flips += draws.flip
    assert 0 < flips < 6  # both kinds present, so flipping is checked


def test_identical_stored_frames_give_identical_output_frames(hand_shard, tokenizer):
    loader = _loader(str(hand_shard), tokenizer, batch_size=1, workers=0, shuffle_block=0)
    stored = _stored(str(hand_shard))
    seen = {}
    for batch in islice(iter(loader), loader.batches_per_epoch):
        seen.setdefault(batch.keys[0], batch)
    assert set(seen) == set(GOOD_HAND)
    still = seen["hand-static"].video[0]
    assert all(torch.equal(still[0], frame) for frame in still[1:])
    moving = seen["hand-moving"]
    frames = moving.extra["frames"][0].tolist()
    assert len(set(frames)) == 4  # four different stored frames, all under one crop (checked against PIL)
    meta, members = stored["hand-moving"]
    draws = draw(7, 0, "hand-moving", 6, 4, 40, 48)
    assert (_pixels(moving.video[0]) - _reference_frames(members, meta, frames, draws.crop, draws.flip, 32)
            ).abs().max() <= 2.5
    image = seen["hand-image"]
    assert image.extra["frames"].tolist() == [[0, 0, 0, 0]]
    assert all(torch.equal(image.video[0, 0], frame) for frame in image.video[0, 1:])


def test_corrupt_samples_are_skipped_counted_and_logged(hand_shard, tokenizer, caplog):
    for workers in (2, 0):
        loader = _loader(str(hand_shard), tokenizer, workers=workers, batch_size=1, shuffle_block=0)
        with caplog.at_level(logging.WARNING, logger="mcq_shards.reader"):
            batches = list(islice(iter(loader), loader.batches_per_epoch))
        assert {k for b in batches for k in b.keys} <= set(GOOD_HAND) and len(batches) == loader.batches_per_epoch
        assert sum(b.skipped for b in batches) >= len(BAD_HAND)  # each read at least once; refills may reread
    logged = "\n".join(r.getMessage() for r in caplog.records)  # the in-process run's warnings
    for key, reason in [("hand-truncated", "bad-frame: stored frame"), ("hand-badjson", "bad-json: the json member is "
                        "not JSON"), ("hand-nooffsets", "missing-member: a jpgs member without its offsets"),
                        ("hand-wrongsize", "bad-frame: stored frame 0 is not a whole 50x40 JPEG")]:
        assert f"{hand_shard}: {key}: {reason}" in logged, key


def test_training_skips_and_refills_so_every_batch_is_full(converted, hand_shard, tokenizer):
    loader = _loader([str(converted), str(hand_shard)], tokenizer, batch_size=3, workers=2)
    batches = list(islice(iter(loader), 2 * loader.batches_per_epoch))
    assert all(len(b) == 3 for b in batches)
    assert not {k for b in batches for k in b.keys} & set(BAD_HAND)
    assert sum(b.skipped for b in batches) >= len(BAD_HAND)  # two epochs read every sample at least once
    assert loader.epoch == 2


def test_every_rank_yields_the_same_number_of_batches_on_disjoint_samples(converted, tokenizer):
    epochs = {}
    for rank in range(2):
        loader = _loader(converted, tokenizer, rank=rank, world_size=2)
        assert loader.batches_per_epoch == 4  # 2 workers × (18 // 4 slots // batch 2)
        it = iter(loader)
        epochs[rank] = [[k for b in islice(it, 4) for k in b.keys] for _ in range(2)]
        state = loader.state_dict()
        assert state["epoch"] == 2 and all(c == [1, 2, 4] for c in state["cursors"])
    for epoch in range(2):
        keys = epochs[0][epoch] + epochs[1][epoch]
        assert len(keys) == len(set(keys)) == 16  # 18 samples, 2 left over: fewer than a batch per slot
    assert epochs[0][0] != epochs[0][1]  # the shard order and the blocks are reshuffled every epoch


def _same(a: Batch, b: Batch) -> bool:
    return (a.keys == b.keys and a.kinds == b.kinds and a.skipped == b.skipped and torch.equal(a.video, b.video)
            and all(torch.equal(x.ids, y.ids) and torch.equal(x.mask, y.mask)
                    for x, y in ((a.text, b.text), (a.question, b.question), (a.answer, b.answer)))
            and torch.equal(a.extra["frames"], b.extra["frames"]))


@pytest.mark.parametrize("taken", [5, 6])  # mid-epoch with the round robin at worker 1; exactly at an epoch end
def test_resume_continues_exactly_as_an_uninterrupted_run(converted, hand_shard, tokenizer, taken):
    shards = [str(converted), str(hand_shard)]  # with corrupt samples, so skips move the cursors
    options = dict(rank=1, world_size=2, workers=2, batch_size=2, shuffle_block=3)
    reference = list(islice(iter(_loader(shards, tokenizer, **options)), taken + 5))
    interrupted = _loader(shards, tokenizer, **options)
    assert interrupted.batches_per_epoch == 6  # 25 samples: 2 workers × (25 // 4 // 2)
    assert all(_same(a, b) for a, b in zip(islice(iter(interrupted), taken), reference))
    state = json.loads(json.dumps(interrupted.state_dict()))  # what a checkpoint stores
    resumed = _loader(shards, tokenizer, **options)
    resumed.load_state_dict(state)
    after = list(islice(iter(resumed), 5))
    assert all(_same(a, b) for a, b in zip(after, reference[taken:]))
    assert sum(b.skipped for b in reference) > 0 and resumed.epoch == (taken + 5) // 6


def test_a_changed_world_size_restarts_the_epoch_on_the_new_split(converted, tokenizer):
    old = _loader(converted, tokenizer, world_size=1, batch_size=2)
    list(islice(iter(old), old.batches_per_epoch + 1))  # into epoch 1
    new = _loader(converted, tokenizer, rank=1, world_size=2, batch_size=2)
    with pytest.warns(RuntimeWarning, match="different world_size; restarting epoch 1"):
        new.load_state_dict(old.state_dict())
    fresh = iter(_loader(converted, tokenizer, rank=1, world_size=2, batch_size=2))
    epoch1 = list(islice(fresh, 2 * new.batches_per_epoch))[new.batches_per_epoch:]
    assert all(_same(a, b) for a, b in zip(islice(iter(new), new.batches_per_epoch), epoch1))


def test_two_loaders_in_one_process_share_no_state(converted, hand_shard, tokenizer):
    def make():
        return (_loader(converted, tokenizer, seed=1, workers=2),
                _loader([str(hand_shard), str(converted)], tokenizer, seed=1, workers=0, source="other"))

    alone = [list(islice(iter(loader), 6)) for loader in make()]
    first, second = (iter(loader) for loader in make())
    mixed = [(next(first), next(second)) for _ in range(6)]  # stage 1 alternates steps between sources
    assert all(_same(a, b) for a, b in zip([m[0] for m in mixed], alone[0]))
    assert all(_same(a, b) for a, b in zip([m[1] for m in mixed], alone[1]))


def test_shard_lists_and_clear_errors(converted, tokenizer):
    pattern_ = str(converted / "csv-{00000..00003}.tar")
    assert [(s.path, s.samples) for s in resolve_shards(pattern_).shards] == \
        [(s.path, s.samples) for s in resolve_shards(converted).shards]
    with pytest.raises(FileNotFoundError, match="csv-00004.tar"):
        resolve_shards(str(converted / "csv-{00000..00009}.tar"))
    with pytest.raises(ValueError, match="cannot give every one of 4 ranks × 2 workers a batch of 3"):
        _loader(converted, tokenizer, world_size=4, batch_size=3)
    loader = _loader(converted, tokenizer)
    with pytest.raises(ValueError, match="source 'csv' given to the 'webvid' loader"):
        _loader(converted, tokenizer, source="webvid").load_state_dict(loader.state_dict())


def test_index_offsets_match_the_tar_headers_with_long_names(tmp_path):
    """Seeking into a shard uses the DALI index; GNU long names (over 100 bytes) put extra blocks before a
    member's header, which the offsets must include."""
    from mcq_shards.tario import index_text

    path = tmp_path / "long.tar"
    writer = ShardWriter(path)
    for i, key in enumerate(["short", "x" * 120, "y" * 95, "z" * 600, "end"]):
        writer.write(key, {"json": b"{}" * (i + 1), "txt": b"a" * 700})
    writer.close()
    index = tmp_path / "long.idx"
    index.write_text(index_text(path))
    assert read_index(str(index), str(path)) == scan_tar(str(path))[0]
    assert [e.key for e in scan_tar(str(path))[0]] == ["short", "x" * 120, "y" * 95, "z" * 600, "end"]


def test_time_sampling_and_the_original_resize(converted, tokenizer):
    """`mcq-ds train`'s defaults: frames at the original's sampled instants (the clip's clock in its json), and the
    plain bilinear resize of the original's tensor transforms."""
    from mcq_shards.frames import ClipClock, time_frames

    stored = _stored(converted)
    loader = _loader(converted, tokenizer, workers=0, batch_size=6, frame_sampling="time", antialias=False)
    batch = next(iter(loader))
    videos = 0
    for key, video, frames in zip(batch.keys, batch.video, batch.extra["frames"].tolist()):
        meta, members = stored[key]
        clock = ClipClock.from_meta(meta)
        draws = draw(7, 0, key, _stored_count(meta), 4, meta["height"], meta["width"], clock=clock)
        if clock is not None:
            videos += 1
            chosen = time_frames(clock, 4, random.Random(sample_seed(7, 0, key)))
            assert frames == chosen + [chosen[-1]] * (4 - len(chosen)), key
        offsets = np.frombuffer(members["offsets"], "<i4") if "offsets" in members else None
        jpegs = {i: (members["jpgs"][offsets[i]:offsets[i + 1]] if offsets is not None else members["jpg"])
                 for i in set(frames)}
        plain = render_clip(jpegs, frames, draws.crop, draws.flip, 32, meta["height"], meta["width"], antialias=False)
        assert (_pixels(video) - plain.float()).abs().max() <= 0.01, key
    assert videos
    with pytest.raises(ValueError, match="frame_sampling"):
        LoaderConfig(shards=converted, source="csv", tokenizer=tokenizer, frame_sampling="grid")
