"""Converting on several machines: `--part i/N` per machine, `mcq-shards merge` after, the one-machine shard set."""
from pathlib import Path

import pytest

from mcq_shards.cli import main
from shards_fixtures import write_webvid

FAST = ["--workers", "1", "--quiet", "--min-frames", "4", "--shard-size", "2"]


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    rows = [(str(i), f"A {colour} square moves across a gradient", "h264")
            for i, colour in enumerate(["red", "blue", "green", "white", "black", "grey", "pink"])]
    return write_webvid(tmp_path_factory.mktemp("webvid"), [*rows, ("7", "A missing clip of a dog", "missing")])


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_two_parts_merge_into_the_one_machine_shard_set(table, tmp_path):
    assert main(["webvid", str(table), "-o", str(tmp_path / "whole"), *FAST]) == 0
    for i in (0, 1):
        assert main(["webvid", str(table), "-o", str(tmp_path / f"part{i}"), "--part", f"{i}/2", *FAST]) == 0
    assert sorted(p.name for p in (tmp_path / "part0").glob("*.tar")) == ["webvid-00000.tar", "webvid-00001.tar"]
    assert main(["merge", "-o", str(tmp_path / "merged"), str(tmp_path / "part1"), str(tmp_path / "part0")]) == 0
    whole, merged = files(tmp_path / "whole"), files(tmp_path / "merged")
    assert sorted(merged) == sorted(whole) and len([n for n in whole if n.endswith(".tar")]) == 4
    assert merged == whole  # every tar, index, manifest.json and rejects.jsonl, byte for byte
    # and a one-machine rerun into the merged folder finds everything done
    assert main(["webvid", str(table), "-o", str(tmp_path / "merged"), *FAST]) == 0
    assert files(tmp_path / "merged") == whole
    assert main(["verify", str(tmp_path / "merged"), "--quiet"]) == 0


def test_merge_refuses_missing_and_foreign_parts(table, tmp_path, capsys):
    assert main(["webvid", str(table), "-o", str(tmp_path / "p0"), "--part", "0/2", *FAST]) == 0
    assert main(["merge", "-o", str(tmp_path / "m"), str(tmp_path / "p0")]) == 2
    assert "every one of the 2 parts, each once, is needed (missing: [1])" in capsys.readouterr().err
    assert main(["webvid", str(table), "-o", str(tmp_path / "q1"), "--part", "1/2", "--jpeg-quality", "50",
                 *FAST]) == 0
    assert main(["merge", "-o", str(tmp_path / "m"), str(tmp_path / "p0"), str(tmp_path / "q1")]) == 2
    assert "is a part of another conversion" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["webvid", str(table), "-o", str(tmp_path / "x"), "--part", "2/2", *FAST])
    assert "is not I/N with 0 <= I < N" in capsys.readouterr().err
