"""The benchmark converters (MSVD, LSMDC, DiDeMo, MSR-VTT's 7k split) on the demo data's layouts of real encoded
videos: what each test set holds, the exact-size check, counted rejects, and file:line errors."""

import json
import pickle
import tarfile
from pathlib import Path

import pytest

from mcq_shards import synth
from mcq_shards.cli import main
from mcq_shards.manifest import read_manifest
from mcq_shards.sources import didemo, lsmdc, msvd
from mcq_shards.tables import InputError
from shards_fixtures import encode_video

FAST = ["--workers", "1", "--quiet", "--min-frames", "4"]
TEST, TRAIN = 5, 3


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("benchmarks") / "raw"
    synth.synthesize(root, train_videos=0, images=0, test_videos=4, msrvtt_train_videos=10,
                     benchmark_test_videos=TEST, benchmark_train_videos=TRAIN, size=32, fps=4, workers=1)
    return root


def samples_of(out: Path) -> dict[str, dict]:
    found = {}
    for shard in read_manifest(out).shards:
        with tarfile.open(shard.path) as tar:
            found.update({m.name[:-5]: json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")})
    return found


def test_msvd_keeps_every_caption_of_its_test_videos(raw, tmp_path):
    assert main(["msvd", str(raw / "msvd"), "--test-size", str(TEST), "-o", str(tmp_path / "test"), *FAST]) == 0
    test = samples_of(tmp_path / "test")
    captions = pickle.loads((raw / "msvd/raw-captions.pkl").read_bytes())
    assert len(test) == TEST
    for sample in test.values():  # every caption a query: all of them stored, joined from the word lists
        assert sample["captions"] == [" ".join(words) for words in captions[sample["id"]]]
        assert sample["split"] == "test" and sample["source"] == "msvd" and sample["num_frames"] >= 4
    assert main(["msvd", str(raw / "msvd"), "--split", "train", "-o", str(tmp_path / "train"), *FAST]) == 0
    assert len(samples_of(tmp_path / "train")) == TRAIN


def test_lsmdc_public_test_and_training_clips_with_two_sentences(raw, tmp_path):
    assert main(["lsmdc", str(raw / "lsmdc"), "--test-size", str(TEST), "-o", str(tmp_path / "test"), *FAST]) == 0
    test = samples_of(tmp_path / "test")
    lines = (raw / "lsmdc/LSMDC16_challenge_1000_publictect.csv").read_text().splitlines()
    assert [(s["id"], s["caption"]) for s in test.values()] == [(l.split("\t")[0], l.split("\t")[5]) for l in lines]
    assert all("captions" not in s for s in test.values())
    assert main(["lsmdc", str(raw / "lsmdc"), "--split", "train", "-o", str(tmp_path / "train"), *FAST]) == 0
    train = samples_of(tmp_path / "train")  # each clip id is on two lines: one sample with both sentences
    assert len(train) == TRAIN and all(len(s["captions"]) == 2 for s in train.values())
    assert all("." not in key for key in train)  # clip ids carry times with dots; keys must not


def test_didemo_paragraph_queries_and_transcoded_names(raw, tmp_path):
    assert main(["didemo", str(raw / "didemo"), "--test-size", str(TEST), "-o", str(tmp_path / "test"), *FAST]) == 0
    test = samples_of(tmp_path / "test")
    moments = json.loads((raw / "didemo/test_data.json").read_text())
    listed = (raw / "didemo/test_list.txt").read_text().split()
    assert [s["id"] for s in test.values()] == listed  # .mov names, found as the .mp4 files on disk
    for sample in test.values():
        sentences = [m["description"] for m in moments if m["video"] == sample["id"]]
        assert sample["sentences"] == sentences and sample["caption"] == " ".join(sentences)
    # no train_list.txt: every video of the annotation file, in file order
    assert main(["didemo", str(raw / "didemo"), "--split", "train", "-o", str(tmp_path / "train"), *FAST]) == 0
    assert len(samples_of(tmp_path / "train")) == TRAIN


def test_didemo_keeps_the_first_seconds_only(tmp_path):
    (tmp_path / "videos").mkdir()
    encode_video(tmp_path / "videos" / "v1.mp4", "h264", seconds=3, fps=10)
    (tmp_path / "test_data.json").write_text(json.dumps([{"video": "v1.mp4", "description": "a box moves"}]))
    assert main(["didemo", str(tmp_path), "--max-seconds", "1.5", "-o", str(tmp_path / "out"), *FAST]) == 0
    [sample] = samples_of(tmp_path / "out").values()
    assert sample["duration"] == pytest.approx(1.5) and max(sample["frame_times"]) < 1.5


def test_msrvtt_training_7k_is_the_official_train_and_val_lists(raw, tmp_path):
    lists = raw / "msrvtt/high-quality/structured-symlinks"
    expected = (lists / "train_list_full.txt").read_text().split() + (lists / "val_list_full.txt").read_text().split()
    assert main(["msrvtt", str(raw / "msrvtt"), "--split", "train7k", "-o", str(tmp_path / "7k"), *FAST]) == 0
    assert sorted(s["id"] for s in samples_of(tmp_path / "7k").values()) == sorted(expected)  # shuffled: a training split
    assert set(expected) < set((lists / "train_list_jsfusion.txt").read_text().split())


def test_a_test_split_of_another_size_is_refused(raw, tmp_path, capsys):
    assert main(["msvd", str(raw / "msvd"), "-o", str(tmp_path / "o"), *FAST]) == 2
    err = capsys.readouterr().err
    assert f"the msvd test split lists {TEST} videos, the test set has 670" in err and "--test-size 5" in err
    assert not (tmp_path / "o").exists()  # refused before converting
    assert main(["lsmdc", str(raw / "lsmdc"), "--allow-partial", "-o", str(tmp_path / "p"), *FAST]) == 0
    assert "lists 5 videos, the test set has 1,000; --allow-partial given" in capsys.readouterr().err


def test_a_missing_video_is_a_counted_reject_and_an_incomplete_test_set(raw, tmp_path, capsys):
    import shutil

    root = tmp_path / "msvd"
    shutil.copytree(raw / "msvd", root)
    victim = (root / "test_list.txt").read_text().split()[1]
    (root / "YouTubeClips" / f"{victim}.avi").unlink()
    args = ["msvd", str(root), "--test-size", str(TEST), "-o", str(tmp_path / "o"), *FAST]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "the msvd test set is incomplete: 1 of its 5 videos were rejected" in err and "--allow-partial" in err
    [reject] = [json.loads(line) for line in (tmp_path / "o/rejects.jsonl").read_text().splitlines()]
    assert reject["id"] == victim and reject["reason"].startswith("file not found")
    assert main(args + ["--allow-partial"]) == 0  # the finished shards are kept: nothing is converted again
    assert len(samples_of(tmp_path / "o")) == TEST - 1


def test_malformed_annotations_name_file_and_line(tmp_path):
    tsv = tmp_path / "LSMDC16_challenge_1000_publictect.csv"
    tsv.write_text("clip_a\t0\t1\t0\t1\tSOMEONE waves.\nclip_b\t0\t1\t0\tno sixth field\n")
    with pytest.raises(InputError, match=rf"^{tsv}:2:6: row has 5 fields, expected 6"):
        list(lsmdc.read(tmp_path, "test"))
    moments = tmp_path / "test_data.json"
    moments.write_text('[\n {"video": "a.mov", "description": "x"},\n {"video": }\n]')
    with pytest.raises(InputError, match=rf"^{moments}:3:12: invalid JSON"):
        list(didemo.read(tmp_path, "test"))
    moments.write_text(json.dumps([{"video": "a.mov"}]))
    with pytest.raises(InputError, match=r"moment \[0\] lacks a 'video' or 'description'"):
        list(didemo.read(tmp_path, "test"))
    (tmp_path / "test_list.txt").write_text("a.mov\nb.mov\n")
    moments.write_text(json.dumps([{"video": "a.mov", "description": "x"}]))
    with pytest.raises(InputError, match=r"test_list.txt:2:1: b.mov has no moment"):
        list(didemo.read(tmp_path, "test"))


class Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned",))


def test_msvd_caption_pickle_runs_no_code_and_names_bad_entries(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test_list.txt").write_text("v1\n")
    path = tmp_path / "raw-captions.pkl"
    path.write_bytes(pickle.dumps({"v1": [Exploit()]}))
    with pytest.raises(InputError, match="refusing to load posix.system"):
        list(msvd.read(tmp_path, "test"))
    assert not (tmp_path / "pwned").exists()
    path.write_bytes(pickle.dumps({"v1": [["a", "dog"], 3]}))
    with pytest.raises(InputError, match="v1 caption 1: expected text or a list of words"):
        list(msvd.read(tmp_path, "test"))
    path.write_bytes(pickle.dumps({"v2": [["a", "dog"]]}))
    with pytest.raises(InputError, match=r"test_list.txt:1:1: v1 has no caption"):
        list(msvd.read(tmp_path, "test"))
