"""The converter on input that is easy to misread: byte-order marks, rows out of step with their files, names that
are not UTF-8, paths that leave the data folder, NUL bytes, other people's files in the output folder, and a
kill -9 that must not leave its workers behind."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mcq_shards.cli import main
from mcq_shards.manifest import read_manifest
from mcq_shards.sources import cc3m
from fs_fixtures import needs_mounts, run_on_tmpfs
from shards_fixtures import encode_image, encode_video, write_webvid
from test_shards_convert import samples_of

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--workers", "1", "--quiet", "--min-frames", "4"]
BOM = "\ufeff".encode()


def rejects_of(out: Path) -> dict[str, str]:
    lines = (out / "rejects.jsonl").read_bytes().decode("utf-8").splitlines()  # must be valid UTF-8
    return {r["key"]: r["reason"].split(":")[0] for r in map(json.loads, lines)}


def img2dataset_folder(folder: Path, rows: list[tuple[str, str]], sidecars: bool = False) -> None:
    """Images in img2dataset's "files" layout, row i `width = 200 + 10 i`, so a sample tells which file it got;
    with `sidecars`, the `.json` img2dataset writes beside each image (its url and caption)."""
    for i, (caption, url) in enumerate(rows):
        path = folder / cc3m.img2dataset_name(i)
        encode_image(path, 200 + 10 * i, 150)
        if sidecars:
            path.with_suffix(".json").write_text(json.dumps({"key": f"{i:09d}", "url": url, "caption": caption}))


def video(path: Path | bytes) -> None:
    """A 2 s clip at `path` (bytes: a file name that need not be UTF-8, written beside and renamed)."""
    target = os.fsencode(path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = Path(os.path.dirname(os.fsdecode(target))) / "encoding.mp4"
    encode_video(tmp, "h264", seconds=2)
    os.rename(tmp, target)


CAPTIONS = [("A red apple on a wooden table", "http://img.example/0.jpg"),
            ("A dog runs on the beach", "http://img.example/1.jpg"),
            ("An old map of the city", "http://img.example/2.jpg")]


def test_a_byte_order_mark_is_not_data(tmp_path):
    """A TSV saved by a spreadsheet tool starts with a BOM: its header must still be seen as one, or every image
    gets the previous row's caption. The same for the CSV and JSON layouts."""
    tsv = tmp_path / "cc3m.tsv"
    tsv.write_bytes(BOM + b"caption\turl\n" + "".join(f"{c}\t{u}\n" for c, u in CAPTIONS).encode())
    img2dataset_folder(tmp_path / "images", CAPTIONS)
    assert main(["cc3m", str(tsv), "--images", str(tmp_path / "images"), "-o", str(tmp_path / "cc3m"), *FAST]) == 0
    samples = samples_of(tmp_path / "cc3m")
    assert {k: (s["caption"], s["width"]) for k, s in samples.items()} == {
        f"cc3m-{i:09d}": (caption, 200 + 10 * i) for i, (caption, _) in enumerate(CAPTIONS)}

    csv = write_webvid(tmp_path / "webvid", [("1", "A white square moves across a gradient", "h264")])
    csv.write_bytes(BOM + csv.read_bytes())
    assert main(["webvid", str(csv), "-o", str(tmp_path / "webvid-out"), *FAST]) == 0
    assert list(samples_of(tmp_path / "webvid-out")) == ["webvid-1"]

    root = tmp_path / "MSRVTT"
    video(root / "videos/all/video7.mp4")
    (root / "MSR_VTT.json").write_bytes(BOM + json.dumps(
        {"annotations": [{"image_id": "video7", "caption": "a man sings a song"}]}).encode())
    (root / "train_list_jsfusion.txt").write_bytes(BOM + b"video7\n")
    assert main(["msrvtt", str(root), "--split", "train", "-o", str(tmp_path / "msrvtt"), *FAST]) == 0
    assert list(samples_of(tmp_path / "msrvtt")) == ["msrvtt-video7"]


def test_rows_out_of_step_with_img2dataset_files_stop_the_run(tmp_path, capsys):
    """img2dataset names files by row number and stores each row's url beside the image: a TSV that lost a line
    (or gained one) no longer matches, and every later caption would land on the wrong image."""
    img2dataset_folder(tmp_path / "images", CAPTIONS, sidecars=True)
    tsv = tmp_path / "cc3m.tsv"
    tsv.write_text("".join(f"{c}\t{u}\n" for c, u in CAPTIONS))
    assert main(["cc3m", str(tsv), "--images", str(tmp_path / "images"), "-o", str(tmp_path / "ok"), *FAST]) == 0
    tsv.write_text("".join(f"{c}\t{u}\n" for c, u in CAPTIONS[1:]))  # row 0 lost
    assert main(["cc3m", str(tsv), "--images", str(tmp_path / "images"), "-o", str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err
    assert f"{tsv}:1:" in err and "http://img.example/1.jpg" in err and "http://img.example/0.jpg" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_name_that_is_not_utf8_is_one_counted_reject(tmp_path):
    """An id / file name in Latin-1 (common in old downloads) cannot go into a sample's JSON: that row is a
    reject, the rest converts, and the records stay valid UTF-8. A folder name that is not UTF-8 is fine."""
    videos = Path(os.fsdecode(bytes(tmp_path) + b"/vid\xe9os"))  # the data folder's own name is not UTF-8
    video(videos / "p/ok.mp4")
    video(os.fsencode(videos / "p") + b"/caf\xe9.mp4")
    csv = tmp_path / "results.csv"
    csv.write_bytes(b"videoid,page_dir,name\n"
                    b"ok,p,A white square moves across a gradient\n"
                    b"caf\xe9,p,A white square slides across a gradient\n"
                    b"gon\xe9,p,A missing clip of a dog\n")
    out = tmp_path / "out"
    assert main(["webvid", str(csv), "--videos", str(videos), "-o", str(out), *FAST]) == 0
    assert list(samples_of(out)) == ["webvid-ok"]
    assert rejects_of(out) == {"webvid-caf_": "id not UTF-8", "webvid-gon_": "id not UTF-8"}
    ids = [json.loads(line)["id"] for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert ids == ["caf\\xe9", "gon\\xe9"]
    assert not list(out.rglob("*.part"))
    assert read_manifest(out).raw["reject_reasons"] == {"id not UTF-8": 2}

    mine = tmp_path / "mine.csv"  # the path is the id when there is no id column
    Path(os.fsdecode(bytes(tmp_path) + b"/\xe9t\xe9.png")).write_bytes(encode_image(None, 200, 200, fmt="PNG"))
    mine.write_bytes(b"path,caption\n\xe9t\xe9.png,A bright square on a gradient\n")
    assert main(["csv", str(mine), "-o", str(tmp_path / "csv"), *FAST]) == 0
    assert rejects_of(tmp_path / "csv") == {"csv-000000000": "id not UTF-8"}


def test_paths_that_leave_the_data_folder_are_rejects(tmp_path):
    """`page_dir`, `videoid` or a CSV path could name any file on the machine; unless asked to, the converter only
    reads below the data folder."""
    video(tmp_path / "raw/videos/p/1.mp4")
    video(tmp_path / "2.mp4")  # outside raw/videos
    video(tmp_path / "elsewhere/3.mp4")
    csv = tmp_path / "raw/results.csv"
    csv.write_text("videoid,page_dir,name\n1,p,A white square moves across a gradient\n"
                   "2,../..,A white square climbs out of the folder\n"
                   f"3,{tmp_path / 'elsewhere'},A white square at an absolute path\n")
    out = tmp_path / "out"
    assert main(["webvid", str(csv), "-o", str(out), *FAST]) == 0
    assert list(samples_of(out)) == ["webvid-1"]
    assert rejects_of(out) == {"webvid-2": "path outside the data folder", "webvid-3": "path outside the data folder"}
    assert main(["webvid", str(csv), "-o", str(tmp_path / "allowed"), "--allow-outside-paths", *FAST]) == 0
    assert sorted(samples_of(tmp_path / "allowed")) == ["webvid-1", "webvid-2", "webvid-3"]

    encode_image(tmp_path / "secret.png", 200, 200)
    (tmp_path / "raw/mine.csv").write_text(f"path,caption\n../secret.png,A bright square on a gradient\n"
                                           f"{tmp_path / 'secret.png'},A bright square on a gradient\n")
    assert main(["csv", str(tmp_path / "raw/mine.csv"), "-o", str(tmp_path / "csv"), *FAST]) == 0
    assert set(rejects_of(tmp_path / "csv").values()) == {"path outside the data folder"}


def test_nul_bytes_in_a_caption_are_not_stored(tmp_path):
    csv = write_webvid(tmp_path / "raw", [("1", "A white square moves across a gradient", "h264"),
                                          ("2", b"A white square\x00 moves to the left", "h264")])
    assert main(["webvid", str(csv), "-o", str(tmp_path / "out"), *FAST]) == 0
    assert list(samples_of(tmp_path / "out")) == ["webvid-1"]
    assert rejects_of(tmp_path / "out") == {"webvid-2": "caption has a NUL byte"}


def test_someone_elses_shards_are_not_overwritten(tmp_path, capsys):
    csv = write_webvid(tmp_path / "raw", [("1", "A white square moves across a gradient", "h264")])
    out = tmp_path / "out"
    out.mkdir()
    (out / "webvid-00000.tar").write_bytes(b"their shard")
    assert main(["webvid", str(csv), "-o", str(out), *FAST]) == 2
    assert "webvid-00000.tar" in capsys.readouterr().err
    assert (out / "webvid-00000.tar").read_bytes() == b"their shard"


def test_workers_end_when_the_converter_is_killed(tmp_path):
    """kill -9 runs no clean-up in the converter: its pool workers and multiprocessing's resource tracker must still
    go (read from the OS's process table)."""
    rows = [(str(i), f"A white square number {i} slides over a gradient", "h264") for i in range(24)]
    csv = write_webvid(tmp_path / "raw", rows)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mcq_shards.cli", "webvid", str(csv), "-o", str(tmp_path / "out"),
                             "--workers", "2", "--quiet", "--min-frames", "4"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while len(children) < 3:  # two workers and the resource tracker
            assert proc.poll() is None and time.monotonic() < deadline, "the converter ended before it was killed"
            time.sleep(0.1)
            children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _, alive = psutil.wait_procs(children, timeout=90)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [" ".join(p.cmdline())[:120] for p in alive]
    finally:
        for child in children:
            if child.is_running():
                child.kill()


@needs_mounts
@pytest.mark.parametrize("options, says", [("ro", "read-only"), ("size=48k", "the disk is full")])
def test_a_full_or_read_only_output_is_one_clear_error(tmp_path, options, says):
    rows = [(str(i), f"A white square number {i} slides over a gradient", "h264") for i in range(6)]
    csv = write_webvid(tmp_path / "raw", rows)
    done = run_on_tmpfs(tmp_path / "mnt", options,
                        ["mcq_shards.cli", "webvid", str(csv), "-o", str(tmp_path / "mnt/out"), *FAST])
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"{tmp_path}/mnt/out" in done.stderr and says in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("pickle_bytes", [
    b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00i8\x85R(K\x03K\x05tb.",  # a dtype state that is not one (TypeError)
    b"\x80\x02cnumpy.core.multiarray\nscalar\n)R.",  # a scalar without its arguments (TypeError)
    b"\x80\x02K\x01}b.",  # state set on an int (AttributeError)
    b"\x80\x02](K\x01K\x02u.",  # dict items set on a list (IndexError)
    b"\x80\x02}",  # cut short
], ids=["dtype-state", "scalar-args", "build-int", "setitems-list", "truncated"])
def test_a_malformed_caption_index_is_named(tmp_path, capsys, pickle_bytes):
    root = tmp_path / "MSRVTT"
    (root / "MSR_VTT.json").parent.mkdir(parents=True)
    (root / "MSR_VTT.json").write_text(json.dumps({"annotations": [{"image_id": "video7", "caption": "a song"}]}))
    (root / "val_list_jsfusion.txt").write_text("video7\n")
    (root / "jsfusion_val_caption_idx.pkl").write_bytes(pickle_bytes)
    assert main(["msrvtt", str(root), "-o", str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err
    assert f"{root / 'jsfusion_val_caption_idx.pkl'}: cannot read caption index" in err and "CSV" in err
