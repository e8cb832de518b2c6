"""The DALI loader on the CPU (``device_id=None``) over real shards made by the real converter from clips and
images encoded here with PyAV and PIL: frame choice, crops and flips equal the shared draws, the pixels are
those of the chosen frames, corrupt samples are skipped and counted, and resume is exact."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mcq_ds.config import TextConfig
from mcq_ds.data.batch import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from mcq_ds.data.loader import LoaderConfig, ShardLoader
from mcq_ds.data.questions import QuestionBuilder
from mcq_ds.data.sampling import draw
from mcq_ds.model.text_former import load_tokenizer
from mcq_shards.convert import Options, convert
from mcq_shards.sources import usercsv
from mcq_shards.tario import ShardWriter, index_text
from shards_fixtures import encode_image, encode_video

pytest.importorskip("nvidia.dali")
from mcq_ds.data.dali import DaliLoader  # noqa: E402
from mcq_shards.reader import jpeg_size  # noqa: E402

SECONDS = [2, 3, 4, 5, 6, 7, 8, 9, 2.5, 3.5]  # 8 to 18 stored frames at 2 fps (at least 8)
CAPTIONS = ["a man is riding a white horse on the beach", "two dogs are chasing a red ball in the park",
            "a woman is slicing bread in a small kitchen", "children are jumping into a blue lake"]
SIZE = 48  # output side: small, so the pixel checks stay fast


def Config(shards, tokenizer, **fields) -> LoaderConfig:
    """The engine's loader config with this file's defaults: one rank, batches of 4, small frames."""
    defaults = dict(source="webvid", batch_size=4, workers=1, img_size=SIZE, seed=7, rank=0, world_size=1,
                    max_text_length=32)
    return LoaderConfig(shards=shards, tokenizer=tokenizer, **{**defaults, **fields})


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    """A user CSV whose ids are the file stems, so keys differ between the two sources."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "caption", "id"])
        writer.writerows((media, caption, Path(media).stem) for media, caption in rows)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dali")
    raw = root / "raw"
    raw.mkdir()
    videos, images = [], []
    for i, seconds in enumerate(SECONDS):
        encode_video(raw / f"v{i}.mp4", seconds=seconds, fps=10, width=64 + 16 * (i % 2), height=48)
        videos.append((f"v{i}.mp4", CAPTIONS[i % 4] + f" number {i}"))
    for i in range(6):
        encode_image(raw / f"i{i}.jpg", width=80 + 8 * i, height=60)
        images.append((f"i{i}.jpg", CAPTIONS[i % 4]))
    for name, rows in (("webvid", videos), ("cc3m", images)):
        convert(usercsv.read(write_csv(root / f"{name}.csv", rows), raw, id_column="id"), root / name, name,
                Options(shard_size=4), workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TextConfig(max_length=64))


def stored(shard_dir: Path) -> dict[str, dict[str, bytes]]:
    """Every sample's members, read with tarfile."""
    samples = {}
    for tar_path in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def frames_of(members: dict[str, bytes]) -> list[bytes]:
    if "jpg" in members:
        return [members["jpg"]]
    offsets = np.frombuffer(members["offsets"], "<i4")
    return [members["jpgs"][a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def expected_frame(jpeg: bytes, crop: list[int], flip: bool, size: int,
                   stats: tuple = (IMAGENET_MEAN, IMAGENET_STD)) -> np.ndarray:
    """One output frame as torchvision-style code makes it: crop, bilinear resize, flip, normalise, CHW."""
    top, left, height, width = crop
    image = Image.open(io.BytesIO(jpeg)).convert("RGB").crop((left, top, left + width, top + height))
    pixels = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), np.float32) / 255
    if flip:
        pixels = pixels[:, ::-1]
    return ((pixels - stats[0]) / stats[1]).transpose(2, 0, 1)


def take(loader, n: int) -> list:
    iterator = iter(loader)
    return [next(iterator) for _ in range(n)]


def test_jpeg_size_reads_the_frame_header_and_rejects_partial_jpegs():
    jpeg = np.frombuffer(encode_image(None, width=80, height=60), np.uint8)
    assert jpeg_size(jpeg) == (80, 60)
    assert jpeg_size(jpeg[:len(jpeg) // 2]) is None  # truncated: no end marker
    assert jpeg_size(jpeg[2:]) is None  # no start marker
    assert jpeg_size(np.zeros(100, np.uint8)) is None


def test_training_batches_follow_the_shared_draws_frame_by_frame(data, tokenizer):
    """Frames, crop and flip are draw(seed, epoch, key, ...) for every sample, and each output frame is the crop of
    its own stored frame: one crop window and one flip for all frames of a clip."""
    cfg = Config(str(data / "webvid"), tokenizer)
    loader = DaliLoader(cfg, device="cpu")
    assert loader.batches_per_epoch == len(SECONDS) // cfg.batch_size
    samples = stored(data / "webvid")
    seen_flips, epochs = set(), set()
    errors = {"right": 0.0, "other frame": 0.0, "other flip": 0.0}
    batches = take(loader, 3 * loader.batches_per_epoch)  # three epochs
    for n, batch in enumerate(batches):
        epoch = n // loader.batches_per_epoch
        assert batch.video.shape == (4, 4, 3, SIZE, SIZE) and batch.video.dtype == torch.uint8
        assert batch.source == "webvid" and batch.skipped == 0
        video = batch.to("cpu").video
        for i, key in enumerate(batch.keys):
            meta = json.loads(samples[key]["json"])
            d = draw(cfg.seed, epoch, key, meta["num_frames"], 4, meta["height"], meta["width"])
            assert batch.extra["frames"][i].tolist() == d.frames
            assert batch.extra["crop"][i].tolist() == list(d.crop)
            assert bool(batch.extra["flip"][i]) == d.flip
            seen_flips.add(d.flip)
            epochs.add(epoch)
            frames = frames_of(samples[key])
            for k, index in enumerate(d.frames):
                got = video[i, k].numpy()
                error = np.abs(got - expected_frame(frames[index], list(d.crop), d.flip, SIZE)).mean()
                assert error < 0.12, (key, k)
                errors["right"] += error
                other = frames[index + 1] if index + 1 < len(frames) else frames[index - 1]
                errors["other frame"] += np.abs(got - expected_frame(other, list(d.crop), d.flip, SIZE)).mean()
                errors["other flip"] += np.abs(got - expected_frame(frames[index], list(d.crop), not d.flip,
                                                                    SIZE)).mean()
    assert seen_flips == {True, False}
    # a crop can miss the moving square, or be nearly symmetric, so wrong frames and flips are told apart in sum
    assert errors["right"] < 0.3 * errors["other frame"] and errors["right"] < 0.3 * errors["other flip"]
    # a new epoch draws again: the same key gets new frames or a new crop
    first = {k: (f.tolist(), c.tolist()) for b in batches[:2] for k, f, c in zip(b.keys, b.extra["frames"],
                                                                                 b.extra["crop"])}
    second = {k: (f.tolist(), c.tolist()) for b in batches[2:4] for k, f, c in zip(b.keys, b.extra["frames"],
                                                                                  b.extra["crop"])}
    assert any(first[k] != second[k] for k in first.keys() & second.keys())


def test_questions_continue_the_sample_stream_and_tokens_are_the_batch_tokenisation(data, tokenizer):
    cfg = Config(str(data / "webvid"), tokenizer, question_type="verb")
    batch = take(DaliLoader(cfg, device="cpu"), 1)[0]
    samples = stored(data / "webvid")
    builder = QuestionBuilder(tokenizer, "span")
    captions, questions, answers = [], [], []
    for key, kind in zip(batch.keys, batch.kinds):
        meta = json.loads(samples[key]["json"])
        d = draw(cfg.seed, 0, key, meta["num_frames"], 4, meta["height"], meta["width"])
        qa = builder(meta["caption"], meta["nouns"], meta["verbs"], "verb", d.rng)
        assert kind == qa.kind
        captions.append(meta["caption"])
        questions.append(qa.question)
        answers.append(qa.answer)
    assert "verb" in batch.kinds
    for name, texts, got in (("text", captions, batch.text), ("question", questions, batch.question),
                             ("answer", answers, batch.answer)):
        want = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        assert torch.equal(got.ids, want["input_ids"]) and torch.equal(got.mask, want["attention_mask"]), name


def test_ranks_read_disjoint_parts_and_yield_the_same_number_of_batches(data, tokenizer):
    keys = []
    for rank in range(2):
        cfg = Config(str(data / "webvid"), tokenizer, rank=rank, world_size=2, batch_size=2)
        loader = DaliLoader(cfg, device="cpu")
        assert loader.batches_per_epoch == 2
        keys.append({k for b in take(loader, loader.batches_per_epoch) for k in b.keys})
    assert not keys[0] & keys[1] and len(keys[0]) == len(keys[1]) == 4


def test_images_and_one_frame_clips_mix_in_stage_one(data, tokenizer):
    """Stage 1 alternates CC3M images and one WebVid frame per clip: both loaders give (B, 1, 3, H, W)."""
    images = DaliLoader(Config(str(data / "cc3m"), tokenizer, source="cc3m", num_frames=1, batch_size=3), "cpu")
    clips = DaliLoader(Config(str(data / "webvid"), tokenizer, num_frames=1, batch_size=3), "cpu")
    samples = stored(data / "cc3m")
    iterators = {"cc3m": iter(images), "webvid": iter(clips)}
    for step in range(4):
        source = ("cc3m", "webvid")[step % 2]
        batch = next(iterators[source]).to("cpu")
        assert batch.source == source and batch.video.shape == (3, 1, 3, SIZE, SIZE)
        if source == "cc3m":
            for i, key in enumerate(batch.keys):
                assert batch.extra["frames"][i].tolist() == [0]
                expected = expected_frame(samples[key]["jpg"], batch.extra["crop"][i].tolist(),
                                          bool(batch.extra["flip"][i]), SIZE)
                assert np.abs(batch.video[i, 0].numpy() - expected).mean() < 0.12


def corrupt_copy(shard_dir: Path, out: Path) -> tuple[Path, set[str]]:
    """The shards' samples in one new tar, with four of them broken in the ways a disk or a copy breaks them."""
    samples = stored(shard_dir)
    keys = sorted(samples)
    broken = {keys[1]: "truncated frames", keys[4]: "bad json", keys[6]: "no json", keys[7]: "offsets lost"}
    out.mkdir()
    writer = ShardWriter(out / "broken-00000.tar")
    for key in keys:
        members = dict(samples[key])
        what = broken.get(key)
        if what == "truncated frames":  # same length, but every frame's tail is zeros: no JPEG end marker
            offsets = np.frombuffer(members["offsets"], "<i4")
            jpgs = bytearray(members["jpgs"])
            for end in offsets[1:]:
                jpgs[end - 40:end] = bytes(40)
            members["jpgs"] = bytes(jpgs)
        elif what == "bad json":
            members["json"] = members["json"][:20]
        elif what == "no json":
            del members["json"]
        elif what == "offsets lost":
            del members["offsets"]
        writer.write(key, members)
    writer.close()
    (out / "broken-00000.idx").write_text(index_text(out / "broken-00000.tar"))
    return out / "broken-00000.tar", set(broken)


def test_corrupt_samples_are_skipped_counted_and_batches_stay_full(data, tokenizer, tmp_path):
    tar, broken = corrupt_copy(data / "webvid", tmp_path / "broken")
    cfg = Config(str(tar), tokenizer, batch_size=3)
    loader = DaliLoader(cfg, device="cpu")
    assert loader.batches_per_epoch == 3  # from the index: 10 samples
    batches = take(loader, 3)  # 9 good samples, but this rank's part has 6: the epoch wraps around it
    assert all(len(b) == 3 and b.video.shape[0] == 3 for b in batches)
    keys = [k for b in batches for k in b.keys]
    assert not set(keys) & broken and set(keys) == set(stored(data / "webvid")) - broken
    assert sum(b.skipped for b in batches) == loader.skipped >= len(broken)


def resume_run(cfg, stop: int, total: int) -> tuple[list, list]:
    """Keys, pixel sums, frames and questions of `total` batches, once without a break and once resumed after
    `stop` batches."""
    def summary(batch):
        return (batch.keys, float(batch.video.double().sum()), batch.extra["frames"].tolist(),
                batch.question.ids.tolist())

    straight = [summary(b) for b in take(DaliLoader(cfg, device="cpu"), total)]
    first = DaliLoader(cfg, device="cpu")
    iterator = iter(first)
    resumed = [summary(next(iterator)) for _ in range(stop)]
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores must be plain data
    second = DaliLoader(cfg, device="cpu")
    second.load_state_dict(state)
    resumed += [summary(b) for b in take(second, total - stop)]
    return straight, resumed


@pytest.mark.parametrize("stop", [1, 2, 3])
def test_resume_gives_the_batches_of_an_uninterrupted_run(data, tokenizer, stop):
    """Within an epoch, and at an epoch boundary (len is 2), with DALI's shuffle buffer and per-sample draws."""
    cfg = Config(str(data / "webvid"), tokenizer)
    straight, resumed = resume_run(cfg, stop, 5)
    assert resumed == straight


def test_resume_inside_a_pipeline_batch_that_had_corrupt_samples(data, tokenizer, tmp_path):
    """After a skipped sample, batches straddle pipeline batches; the state points into the older one."""
    tar, _ = corrupt_copy(data / "webvid", tmp_path / "broken")
    cfg = Config(str(tar), tokenizer, batch_size=3)
    for stop in (1, 2, 4):
        straight, resumed = resume_run(cfg, stop, 6)
        assert resumed == straight


def test_a_state_from_another_layout_restarts_its_epoch(data, tokenizer):
    """Positions saved on one world size mean other samples on another: the saved epoch starts over."""
    loader = DaliLoader(Config(str(data / "webvid"), tokenizer, batch_size=2), device="cpu")
    take(loader, 7)  # epoch 1 of 5-batch epochs
    assert loader.epoch == 1
    state = loader.state_dict()
    other = DaliLoader(Config(str(data / "webvid"), tokenizer, batch_size=2, rank=1, world_size=2), device="cpu")
    with pytest.warns(RuntimeWarning, match="world_size"):
        other.load_state_dict(state)
    assert other.epoch == 1
    fresh = DaliLoader(Config(str(data / "webvid"), tokenizer, batch_size=2, rank=1, world_size=2), device="cpu")
    fresh.load_state_dict({**fresh.state_dict(), "epoch": 1})
    assert [b.keys for b in take(other, 2)] == [b.keys for b in take(fresh, 2)]
    with pytest.raises(ValueError, match="source"):
        other.load_state_dict({**state, "source": "cc3m"})


def test_clip_normalisation_over_a_list_of_tars_and_directories(data, tokenizer):
    cfg = Config([str(data / "webvid" / "webvid-00000.tar"), str(data / "cc3m")], tokenizer, num_frames=1,
                 normalisation="clip", batch_size=2)
    loader = DaliLoader(cfg, device="cpu")
    assert loader.num_samples == 4 + 6
    samples = {**stored(data / "webvid"), **stored(data / "cc3m")}
    batches = [batch.to("cpu") for batch in take(loader, loader.batches_per_epoch)]
    assert len([k for b in batches for k in b.keys]) == 10 and {k for b in batches for k in b.keys} <= set(samples)
    for batch in batches:
        for i, key in enumerate(batch.keys):
            frame = frames_of(samples[key])[int(batch.extra["frames"][i, 0])]
            expected = expected_frame(frame, batch.extra["crop"][i].tolist(), bool(batch.extra["flip"][i]), SIZE,
                                      (CLIP_MEAN, CLIP_STD))
            assert np.abs(batch.video[i, 0].numpy() - expected).mean() < 0.12


def test_same_frames_crops_and_pixels_as_the_reference_loader(data, tokenizer):
    """Both loaders over the same shards, seed and epoch: every sample gets the same frames and nearly the same
    pixels (two JPEG decoders and two antialiased resizers), and the same question tokens."""
    cfg = Config(str(data / "webvid"), tokenizer, batch_size=2, workers=0, seed=3)
    ref = {k: (b.to("cpu"), i) for b in take(ShardLoader(cfg), 5) for i, k in enumerate(b.keys)}
    ours = {k: (b.to("cpu"), i) for b in take(DaliLoader(cfg, device="cpu"), 5) for i, k in enumerate(b.keys)}
    assert ref.keys() == ours.keys() == set(stored(data / "webvid"))
    for key, (b, i) in ours.items():
        r, j = ref[key]
        assert b.extra["frames"][i].tolist() == r.extra["frames"][j].tolist()
        assert (b.video[i] - r.video[j]).abs().mean() < 0.05
        q, rq = b.question.ids[i][b.question.mask[i].bool()], r.question.ids[j][r.question.mask[j].bool()]
        assert q.tolist() == rq.tolist()


def gpus() -> int:
    from nvidia.dali.backend import GetCUDADeviceCount

    return GetCUDADeviceCount()


@pytest.mark.skipif(gpus() == 0, reason="no GPU here: run on a GPU machine to check nvJPEG decoding")
def test_gpu_decoding_gives_the_cpu_batches_on_the_gpu(data, tokenizer):
    cfg = Config(str(data / "webvid"), tokenizer)
    cpu = take(DaliLoader(cfg, device="cpu"), 2)
    gpu = take(DaliLoader(cfg, device="mixed", device_id=0), 2)
    for c, g in zip(cpu, gpu):
        assert g.video.device.type == "cuda" and g.keys == c.keys
        assert torch.equal(g.extra["frames"], c.extra["frames"]) and torch.equal(g.question.ids, c.question.ids)
        # nvJPEG and libjpeg-turbo differ in rounding
        assert (g.to("cpu").video - c.to("cpu").video).abs().mean() < 0.05
