"""--phrases-file: a user's phrases per sample (JSONL, CSV, the original's TSV) through the real converter."""
import json
import tarfile
from pathlib import Path

import pytest
from shards_fixtures import encode_image

from mcq_shards.cli import main
from mcq_shards.manifest import read_manifest
from mcq_shards.phrase_table import read_phrase_table
from mcq_shards.tables import InputError
from mcq_shards.verify import describe, verify

CAPTIONS = ["An old woman is dancing on the green grass", "A man's red car drives down a road", "Two dogs play"]


@pytest.fixture()
def table(tmp_path) -> Path:
    lines = ["id,path,caption"]
    for i, caption in enumerate(CAPTIONS):
        encode_image(tmp_path / "img" / f"{i}.png", width=16, height=16, fmt="PNG")
        lines.append(f"{i},img/{i}.png,{caption}")
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "rows.csv"


def convert(table: Path, phrases: Path, out: Path) -> int:
    return main(["csv", str(table), "--id-column", "id", "--phrases-file", str(phrases), "-o", str(out),
                 "--workers", "1", "--quiet"])


def stored(out: Path) -> dict[str, dict]:
    found = {}
    for shard in read_manifest(out).shards:
        with tarfile.open(shard.path) as tar:
            found.update({m.name[:-5]: json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")})
    return found


def test_jsonl_phrases_become_caption_spans_and_missing_samples_are_rejected(table, tmp_path):
    phrases = tmp_path / "phrases.jsonl"
    phrases.write_text("\n".join(json.dumps(e) for e in [
        {"id": "0", "nouns": ["old woman", "green grass", "blue sky"], "verbs": ["is dancing"]},
        {"id": "1", "nouns": ["man 's red car", "road"], "verbs": ["drives"]},
        {"id": "9", "nouns": ["cat"], "verbs": []},
    ]) + "\n")
    assert convert(table, phrases, tmp_path / "out") == 0
    samples = stored(tmp_path / "out")
    woman = samples["csv-0"]
    assert [(n["text"], n["start"], n["end"]) for n in woman["nouns"]] == [("old woman", 3, 12),
                                                                           ("green grass", 31, 42)]
    assert woman["verbs"] == [{"text": "is dancing", "start": 13, "end": 23}]
    assert samples["csv-1"]["nouns"][0] == {"text": "man 's red car", "start": 2, "end": 15}  # "man's red car"
    rejects = [json.loads(line) for line in (tmp_path / "out/rejects.jsonl").read_text().splitlines()]
    assert [(r["key"], r["reason"].split(":")[0]) for r in rejects] == [("csv-2", "no phrases")]
    made = read_manifest(tmp_path / "out").raw["phrases"]
    assert made["source"] == "file" and made["file"]["entries_unused"] == 1  # id 9 matched no sample
    assert made["file"]["phrases_not_in_caption"] == 1  # "blue sky"
    assert verify(tmp_path / "out", progress=False) == []
    assert describe(tmp_path / "out")[0].startswith(f"phrases: from {phrases}")


def test_the_originals_tsv_matched_by_caption(table, tmp_path):
    tsv = tmp_path / "webvid_training_success_full_noun_verb.tsv"
    tsv.write_text("caption\tpath\tnoun\tverb\n"
                   f"{CAPTIONS[0]}\tp/0\t['old woman', 'green grass']\t['is dancing']\n"
                   f"{CAPTIONS[1]}\tp/1\t['red car']\t[drives]\n"  # an unquoted list: split on commas as it did
                   f"{CAPTIONS[2]}\tp/2\t['dogs']\t[]\n")
    assert convert(table, tsv, tmp_path / "out") == 0
    samples = stored(tmp_path / "out")
    assert [n["text"] for n in samples["csv-0"]["nouns"]] == ["old woman", "green grass"]
    assert samples["csv-1"]["verbs"] == [{"text": "drives", "start": 16, "end": 22}]
    assert samples["csv-2"]["verbs"] == []
    assert read_manifest(tmp_path / "out").raw["phrases"]["file"]["cells_split_on_commas"] == 1


def test_csv_with_python_lists(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('id,nouns,verbs\n7,"[\'old woman\']","[""is dancing""]"\n')
    assert read_phrase_table(path).lookup("7", "") == (["old woman"], ["is dancing"])


@pytest.mark.parametrize("name, text, message", [
    ("p.jsonl", '{"id": "1", "nouns": ["a"]}\n{"id": 2, "nouns": "dog"}\n', r"p.jsonl:2: nouns: expected a list"),
    ("p.jsonl", '{"id": "1", "nouns": ["a"]}\n{"id": "1", "nouns": ["b"]}\n', r"p.jsonl:2: id '1' is listed again"),
    ("p.jsonl", '{"id": "1"\n', r"p.jsonl:1:\d+: invalid JSON"),
    ("p.csv", "id,nouns,verbs\n1,__import__('os'),[]\n", r"p.csv:2: nouns: not a JSON list or a Python list"),
    ("p.csv", "id,nouns\n1,[]\n", r"p.csv:1:\d+: missing column 'verbs'"),
    ("p.tsv", "c\tp\tn\tv\nonly two\tcols\n", r"p.tsv:2:3: 2 columns"),
    ("p.txt", "", r"unknown phrases layout '.txt'"),
])
def test_bad_files_stop_with_file_and_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=message):
        read_phrase_table(tmp_path / name)
