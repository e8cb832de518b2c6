"""Input tables: malformed files stop with file, line and column; the caption-index pickle runs no code."""

import json
import pickle

import numpy as np
import pytest

from mcq_shards.sources import cc3m, msrvtt, usercsv, webvid
from mcq_shards.sources.msrvtt import read_caption_index
from mcq_shards.tables import InputError


def test_webvid_missing_column_names_file_line_column(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text("videoid,contentUrl,duration,name\n1,u,PT1S,a cat\n")
    with pytest.raises(InputError, match=rf"^{path}:1:5: missing column 'page_dir'"):
        list(webvid.read(path, tmp_path))


def test_wrong_delimiter_is_named(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text("videoid;contentUrl;duration;page_dir;name\n1;u;PT1S;p;a cat\n")
    with pytest.raises(InputError, match=r":1:2: missing column 'videoid'.*delimiter ','"):
        list(webvid.read(path, tmp_path))


def test_row_with_wrong_field_count_names_its_line(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text('videoid,contentUrl,duration,page_dir,name\n1,u,PT1S,p,"a, quoted cat"\n'
                    '2,u,PT1S,p,a cat,extra\n')
    with pytest.raises(InputError, match=rf"^{path}:3:6: row has 6 fields, expected 5"):
        list(webvid.read(path, tmp_path))


def test_multiline_quoted_caption_keeps_line_numbers(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text('videoid,contentUrl,duration,page_dir,name\n1,u,PT1S,p,"two\nlines"\n2,u,PT1S,p,cat\n')
    rows = list(webvid.read(path, tmp_path))
    assert [r.where for r in rows] == [f"{path}:2", f"{path}:4"] and rows[0].caption == "two\nlines"


def test_cc3m_tsv_with_a_comma_csv_fails_on_line_one(tmp_path):
    path = tmp_path / "cc.tsv"
    path.write_text("a cat on a mat,http://x/1.jpg\n")
    with pytest.raises(InputError, match=rf"^{path}:1:2: row has 1 fields, expected 2"):
        list(cc3m.read(path, tmp_path))


def test_cc3m_naming(tmp_path):
    assert cc3m.img2dataset_name(12345) == "00001/000012345.jpg"
    assert cc3m.crc32_name("hello") == "907060870"  # the well-known CRC-32 of b"hello"


def test_csv_source_tells_images_from_videos(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("path,caption\na.jpg,a cat\nb.mp4,a dog\nc.txt,a note\n,nothing\n")
    rows = list(usercsv.read(path, tmp_path))
    assert [r.kind for r in rows] == ["image", "video", None, None]
    assert [r.reject.split(":")[0] if r.reject else None for r in rows] == [
        None, None, "unknown media type", "missing media"]
    assert [r.key for r in rows] == ["csv-000000000", "csv-000000001", "csv-000000002", "csv-000000003"]


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "MSR_VTT.json"
    path.write_text('{"annotations": [\n  {"image_id": "video1", "caption": "a cat"},\n  {"image_id": }\n]}')
    with pytest.raises(InputError, match=rf"^{path}:3:16: invalid JSON"):
        msrvtt.captions_by_video(path)


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), np.uint8(3)])
def test_caption_index_pickle_plain_and_numpy_ints(tmp_path, value):
    path = tmp_path / "idx.pkl"
    for protocol in (2, 4, 5):
        path.write_bytes(pickle.dumps({"video7020": value, "video7021": 0}, protocol=protocol))
        assert read_caption_index(path) == {"video7020": 3, "video7021": 0}


class Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned",))


def test_caption_index_pickle_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "idx.pkl"
    path.write_bytes(pickle.dumps({"video1": Exploit()}))
    with pytest.raises(InputError, match="refusing to load posix.system"):
        read_caption_index(path)
    assert not (tmp_path / "pwned").exists()


def test_caption_index_csv(tmp_path):
    path = tmp_path / "idx.csv"
    path.write_text("video_id,caption_index\nvideo1,2\nvideo2,x\n")
    with pytest.raises(InputError, match=r":3:2: caption_index 'x' is not an integer"):
        read_caption_index(path)


def test_msrvtt_test_split_picks_the_indexed_caption(tmp_path):
    (tmp_path / "annotation").mkdir()
    (tmp_path / "annotation" / "MSR_VTT.json").write_text(json.dumps({"annotations": [
        {"image_id": "video2", "caption": "c0"}, {"image_id": "video1", "caption": "a0"},
        {"image_id": "video2", "caption": "c1"}, {"image_id": "video1", "caption": "a1"}]}))
    (tmp_path / "val_list_jsfusion.txt").write_text("video1\nvideo2\n")
    (tmp_path / "train_list_jsfusion.txt").write_text("video2\n")
    (tmp_path / "jsfusion_val_caption_idx.pkl").write_bytes(pickle.dumps({"video1": 1, "video2": 0}))
    test = list(msrvtt.read(tmp_path, "test"))
    assert [(r.key, r.caption) for r in test] == [("msrvtt-video1", "a1"), ("msrvtt-video2", "c0")]
    [train] = msrvtt.read(tmp_path, "train")
    assert train.extra == {"split": "train", "captions": ["c0", "c1"]}
    (tmp_path / "jsfusion_val_caption_idx.pkl").write_bytes(pickle.dumps({"video1": 5, "video2": 0}))
    with pytest.raises(InputError, match="caption index 5 for video1 is out of range"):
        list(msrvtt.read(tmp_path, "test"))
