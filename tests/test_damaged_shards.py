"""Damaged shards, as disks, copies and other tools damage them, through every reader of the format: the reference
loader, the DALI CPU pipeline, `mcq-ds eval` and `mcq-shards verify`. Each damage gives its named outcome:

| damage                                   | training loaders                  | eval                     | verify   |
| bad json / json list / integer key       | skipped, counted as bad-json      | error naming shard + key | reported |
| random-bytes frame / bad Huffman table   | skipped, counted as bad-frame     | error naming shard + key | reported |
| offsets past the end of jpgs             | skipped, counted as bad-offsets   | error naming shard + key | reported |
| truncated tar / a header claiming 4 GiB  | samples before the break used,    | error naming the shard   | reported |
|                                          | the rest counted as unreadable-tar|                          |          |
| wrong, short or missing .idx             | warning, positions from the tar   | the same, complete set   | reported |
| empty tar                                | left out with a warning           | left out                 |          |
| shards of another converter              | TooManySkips naming the shard     | error                    |          |

The shards are the real converter's output (the demo MSR-VTT test set, 24 clips in one shard); each test damages a
copy and rewrites its index and manifest entry when the damage is inside a sample, so that only the damage itself
differs.
"""
from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import tarfile
import warnings
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from mcq_ds.config import TextConfig
from mcq_ds.data.loader import LoaderConfig, ShardLoader
from mcq_ds.eval import retrieval
from mcq_ds.model import create_model, create_tokenizer, load_tokenizer, save_pretrained
from mcq_ds.model.presets import preset
from mcq_shards.manifest import MANIFEST
from mcq_shards.reader import Reason, SampleError, TooManySkips, members_sample, sample_entries, scan_tar
from mcq_shards.tario import ShardWriter, index_text, sha256_file, split_name
from mcq_shards.verify import verify
from test_eval_extract import one_thread  # noqa: F401 - one intra-op thread for tiny models on a shared CPU

BROKEN = 3  # the sample every sample-level damage breaks


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TextConfig())


@pytest.fixture(scope="module")
def clean(demo_shards) -> Path:
    return demo_shards["msrvtt"]


def _samples(tar: Path) -> list[tuple[str, dict[str, bytes]]]:
    out = []
    with tarfile.open(tar) as t:
        for info in t:
            key, ext = split_name(info.name)
            if not out or out[-1][0] != key:
                out.append((key, {}))
            out[-1][1][ext] = t.extractfile(info).read()
    return out


def _copy(clean: Path, out: Path) -> tuple[Path, Path]:
    shutil.copytree(clean, out)
    tar = sorted(out.glob("*.tar"))[0]
    return out, tar


def _rewrite(folder: Path, tar: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """The tar rewritten with these samples, its index and manifest entry made to match."""
    writer = ShardWriter(tar)
    for key, members in samples:
        writer.write(key, members)
    writer.close()
    tar.with_suffix(".idx").write_text(index_text(tar))
    manifest = json.loads((folder / MANIFEST).read_text())
    for entry in manifest["shards"]:
        if entry["path"] == tar.name:
            entry.update(bytes=tar.stat().st_size, sha256=sha256_file(tar), samples=len(samples))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _frames(members: dict[str, bytes]) -> list[bytes]:
    offsets = np.frombuffer(members["offsets"], "<i4")
    return [members["jpgs"][offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def _with_frames(members: dict[str, bytes], frames: list[bytes]) -> dict[str, bytes]:
    offsets = np.cumsum([0] + [len(f) for f in frames]).astype("<i4").tobytes()
    return {**members, "jpgs": b"".join(frames), "offsets": offsets}


def _bad_huffman(jpeg: bytes) -> bytes:
    """The JPEG with its first Huffman table claiming 16 × 255 codes: markers and size intact, so only a decoder
    notices (libjpeg: "Bogus Huffman table definition")."""
    at = jpeg.index(b"\xff\xc4")
    return jpeg[:at + 5] + b"\xff" * 16 + jpeg[at + 21:]


def _damage_sample(kind: str, members: dict[str, bytes]) -> dict[str, bytes]:
    meta = json.loads(members["json"])
    rng = np.random.default_rng(0)
    if kind == "bad-json":
        return {**members, "json": members["json"][:25]}
    if kind == "json-list":
        return {**members, "json": b"[1, 2, 3]"}
    if kind == "int-key":
        return {**members, "json": json.dumps({**meta, "key": 5}).encode()}
    if kind == "random-frame":
        return _with_frames(members, [rng.integers(0, 256, len(f), np.uint8).tobytes() for f in _frames(members)])
    if kind == "bad-huffman":
        return _with_frames(members, [_bad_huffman(f) for f in _frames(members)])
    if kind == "offsets-past-end":
        offsets = np.frombuffer(members["offsets"], "<i4").copy()
        offsets[-1] += 1000
        return {**members, "offsets": offsets.tobytes()}
    raise ValueError(kind)


SAMPLE_DAMAGE = {"bad-json": Reason.BAD_JSON, "json-list": Reason.BAD_JSON, "int-key": Reason.BAD_JSON,
                 "random-frame": Reason.BAD_FRAME, "bad-huffman": Reason.BAD_FRAME,
                 "offsets-past-end": Reason.BAD_OFFSETS}


def damaged(kind: str, clean: Path, out: Path) -> tuple[Path, str | None]:
    """A copy of the clean shard folder with one damage; returns the folder and the broken sample's key (sample-level
    damage) or None."""
    folder, tar = _copy(clean, out)
    samples = _samples(tar)
    if kind in SAMPLE_DAMAGE:
        key, members = samples[BROKEN]
        samples[BROKEN] = (key, _damage_sample(kind, members))
        _rewrite(folder, tar, samples)
        return folder, key
    data = tar.read_bytes()
    if kind == "truncated-tar":
        tar.write_bytes(data[:len(data) * 3 // 5])
    elif kind == "huge-member":  # the first header of sample 20 declares a 4 GiB member
        with tarfile.open(tar) as t:
            header = [i for i in t if split_name(i.name)[0] == samples[20][0]][0].offset
        block = bytearray(data[header:header + 512])
        block[124:136] = b"%011o\0" % (4 << 30)
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\0 " % sum(block)
        tar.write_bytes(data[:header] + bytes(block) + data[header + 512:])
    elif kind == "wrong-idx":  # the index of another tar: the same samples in another order
        other = out.parent / f"{out.name}-other.tar"
        writer = ShardWriter(other)
        for key, members in reversed(samples):
            writer.write(key, members)
        writer.close()
        tar.with_suffix(".idx").write_text(index_text(other))
    elif kind == "short-idx":  # an index of the first half, consistent with itself
        lines = tar.with_suffix(".idx").read_text().splitlines()[1:]
        half = lines[:len(lines) // 2]
        tar.with_suffix(".idx").write_text(f"v1.2 {len(half)}\n" + "".join(line + "\n" for line in half))
    elif kind == "missing-idx":
        tar.with_suffix(".idx").unlink()
    else:
        raise ValueError(kind)
    return folder, None


def foreign_shard(out: Path, samples: int = 24) -> Path:
    """A tar another tool wrote (Python's default PAX headers, video2dataset-style members): no json, no jpgs."""
    out.mkdir(parents=True)
    with tarfile.open(out / "other-00000.tar", "w") as t:
        for i in range(samples):
            for ext, data in (("mp4", b"\0" * 300), ("txt", b"a caption")):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return out / "other-00000.tar"


def _loader(shards, tokenizer, **kw) -> ShardLoader:
    options = dict(source="msrvtt", num_frames=4, img_size=32, batch_size=2, workers=0, seed=1, rank=0,
                   world_size=1, shuffle_block=0, skip_check_after=16)
    return ShardLoader(LoaderConfig(shards=str(shards), tokenizer=tokenizer, **{**options, **kw}))


def _one_epoch(loader) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return list(islice(iter(loader), loader.batches_per_epoch))


# --- the reader -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(SAMPLE_DAMAGE))
def test_each_sample_damage_has_one_reason(clean, tmp_path, kind):
    folder, key = damaged(kind, clean, tmp_path / kind)
    tar = sorted(folder.glob("*.tar"))[0]
    broken = dict(_samples(tar))[key]
    if SAMPLE_DAMAGE[kind] is Reason.BAD_FRAME:
        from mcq_shards.reader import check_jpeg

        sample = members_sample(key, broken)
        if kind == "random-frame":
            with pytest.raises(SampleError) as err:
                check_jpeg(sample, 0)
            assert err.value.reason is Reason.BAD_FRAME
        else:  # markers and size intact: only a decoder sees it
            assert check_jpeg(sample, 0) is not None
    else:
        with pytest.raises(SampleError) as err:
            members_sample(key, broken)
        assert err.value.reason is SAMPLE_DAMAGE[kind]


@pytest.mark.parametrize("kind", ["wrong-idx", "short-idx", "missing-idx"])
def test_an_index_that_does_not_describe_its_tar_is_replaced_by_the_tar_headers(clean, tmp_path, kind):
    folder, _ = damaged(kind, clean, tmp_path / kind)
    tar = sorted(folder.glob("*.tar"))[0]
    with pytest.warns(RuntimeWarning, match="reading the sample positions from the tar headers"):
        found = sample_entries(str(tar), str(tar.with_suffix(".idx")), 24)
    assert found.entries == scan_tar(str(tar))[0] and len(found.entries) == 24 and found.damage is None


@pytest.mark.parametrize("kind, readable", [("truncated-tar", range(1, 24)), ("huge-member", [20])])
def test_a_tar_that_breaks_off_gives_the_samples_before_the_break(clean, tmp_path, kind, readable):
    folder, _ = damaged(kind, clean, tmp_path / kind)
    tar = sorted(folder.glob("*.tar"))[0]
    entries, damage = scan_tar(str(tar))
    assert len(entries) in readable and damage is not None
    if kind == "huge-member":
        assert "declares 4294967296 bytes" in damage


# --- the reference loader -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(SAMPLE_DAMAGE))
def test_reference_loader_skips_and_counts_a_damaged_sample(clean, tokenizer, tmp_path, kind, caplog):
    folder, key = damaged(kind, clean, tmp_path / kind)
    loader = _loader(folder, tokenizer, batch_size=1)
    with caplog.at_level("WARNING", logger="mcq_shards.reader"):
        batches = _one_epoch(loader)
    assert len(batches) == 24 and all(len(b) == 1 for b in batches)
    assert key not in {k for b in batches for k in b.keys}
    assert sum(b.skipped for b in batches) == 1
    assert f": {key}: {SAMPLE_DAMAGE[kind].value}: " in caplog.text


@pytest.mark.parametrize("kind", ["truncated-tar", "huge-member"])
def test_reference_loader_uses_the_samples_before_a_break_and_counts_the_rest(clean, tokenizer, tmp_path, kind,
                                                                              caplog):
    """Without an index to read by (the truncated tar's index points past its end; the other has none), the tar's
    headers say where the samples are, up to the break. Every epoch then reads the samples before it, skips each lost
    one once, and refills the batches from the start of the epoch: it ends, instead of cycling over the same 20
    samples ~30 times as a reader that follows the broken header would."""
    folder, _ = damaged(kind, clean, tmp_path / kind)
    tar = sorted(folder.glob("*.tar"))[0]
    if kind == "huge-member":
        tar.with_suffix(".idx").unlink()
    readable = len(scan_tar(str(tar))[0])
    loader = _loader(folder, tokenizer, batch_size=2)
    with caplog.at_level("WARNING", logger="mcq_shards.reader"):
        two = [_one_epoch(loader), _one_epoch(loader)]
    for epoch in two:
        assert len(epoch) == 12 and all(len(b) == 2 for b in epoch)
        assert len({k for b in epoch for k in b.keys}) == readable
        assert sum(b.skipped for b in epoch) == 24 - readable
    assert "unreadable-tar" in caplog.text and loader.epoch == 2


def test_a_header_that_lies_about_its_size_does_not_matter_with_a_good_index(clean, tokenizer, tmp_path):
    folder, _ = damaged("huge-member", clean, tmp_path / "huge")
    epoch = _one_epoch(_loader(folder, tokenizer, batch_size=2))  # read by the index's offsets: the data is intact
    assert len({k for b in epoch for k in b.keys}) == 24 and sum(b.skipped for b in epoch) == 0


@pytest.mark.parametrize("kind", ["wrong-idx", "short-idx", "missing-idx"])
def test_reference_loader_with_two_workers_reads_past_a_bad_index(clean, tokenizer, tmp_path, kind):
    folder, _ = damaged(kind, clean, tmp_path / kind)
    batches = _one_epoch(_loader(folder, tokenizer, workers=2, batch_size=2))
    keys = [k for b in batches for k in b.keys]
    assert len(batches) == 12 and len(set(keys)) == 24 and sum(b.skipped for b in batches) == 0


def test_reference_loader_stops_on_shards_of_another_converter(tokenizer, tmp_path):
    tar = foreign_shard(tmp_path / "foreign")
    with pytest.raises(TooManySkips, match=f"{tar}: 0000.*: missing-member"):
        next(iter(_loader(tar, tokenizer)))


def test_a_share_mostly_of_another_converters_shards_stops_within_its_first_epoch(clean, tokenizer, tmp_path):
    """72 foreign samples and 24 good ones, default limits: refilling the batches from the good samples would keep
    the share of skips under one half over an epoch (72 of 168 reads), so the share is judged once it has been read
    once, and the loader stops there instead of training on the 24 good samples forever."""
    foreign = foreign_shard(tmp_path / "foreign", samples=72)
    loader = ShardLoader(LoaderConfig(shards=[str(sorted(clean.glob("*.tar"))[0]), str(foreign)], source="mix",
                                      tokenizer=tokenizer, batch_size=2, workers=0, img_size=32, rank=0, world_size=1,
                                      shuffle_block=0))
    with pytest.raises(TooManySkips, match=f"{foreign}: 0000.*: missing-member") as stopped:
        _one_epoch(loader)
    skipped, read = map(int, re.search(r"(\d+) of the (\d+) samples read", str(stopped.value)).groups())
    assert 96 <= read <= 100 and skipped > read / 2  # judged as soon as the share had been read once


def test_empty_tars_are_left_out(clean, tokenizer, tmp_path):
    empty = tmp_path / "empty-00000.tar"
    tarfile.open(empty, "w").close()
    tar = sorted(clean.glob("*.tar"))[0]
    with pytest.warns(RuntimeWarning, match="hold no sample and are left out"):
        loader = ShardLoader(LoaderConfig(shards=[str(empty), str(tar)], source="msrvtt", tokenizer=tokenizer,
                                          batch_size=2, workers=0, img_size=32, rank=0, world_size=1))
    assert loader.num_samples == 24
    with pytest.raises(ValueError, match="no samples"):
        _loader(empty, tokenizer)


# --- the DALI loader (CPU pipeline) ---------------------------------------------------------------------------

def _dali(shards, tokenizer, **kw):
    pytest.importorskip("nvidia.dali")
    from mcq_ds.data.dali import DaliLoader

    options = dict(source="msrvtt", num_frames=4, img_size=32, batch_size=4, workers=1, seed=1, rank=0,
                   world_size=1, skip_check_after=16)
    return DaliLoader(LoaderConfig(shards=str(shards), tokenizer=tokenizer, **{**options, **kw}), device="cpu")


@pytest.mark.parametrize("kind", list(SAMPLE_DAMAGE))
def test_dali_loader_skips_and_counts_a_damaged_sample(clean, tokenizer, tmp_path, kind, caplog):
    folder, key = damaged(kind, clean, tmp_path / kind)
    loader = _dali(folder, tokenizer)
    with caplog.at_level("WARNING", logger="mcq_shards.reader"):
        batches = _one_epoch(loader)
    assert len(batches) == 6 and all(len(b) == 4 for b in batches)
    assert key not in {k for b in batches for k in b.keys}
    assert sum(b.skipped for b in batches) == loader.skipped >= 1
    assert f"{SAMPLE_DAMAGE[kind].value}: " in caplog.text and str(sorted(folder.glob("*.tar"))[0]) in caplog.text


@pytest.mark.parametrize("kind", ["wrong-idx", "short-idx", "missing-idx", "truncated-tar", "huge-member"])
def test_dali_loader_reads_the_samples_that_are_there(clean, tokenizer, tmp_path, kind):
    """Before it gets stuck, trains on half an epoch or reads garbled frames, every index is checked and, where wrong,
    rebuilt from the tar's headers for the samples before any break."""
    folder, _ = damaged(kind, clean, tmp_path / kind)
    tar = sorted(folder.glob("*.tar"))[0]
    if kind == "huge-member":
        tar.with_suffix(".idx").unlink()
    readable = len(scan_tar(str(tar))[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = _dali(folder, tokenizer, batch_size=2)
    assert any("tar headers" in str(w.message) for w in caught)
    assert loader.num_samples == readable
    batches = _one_epoch(loader)
    keys = {k for b in batches for k in b.keys}
    assert len(batches) == readable // 2 and sum(b.skipped for b in batches) == 0
    assert keys <= {k for k, _ in _samples(sorted(clean.glob("*.tar"))[0])[:readable]}


def test_dali_loader_stops_on_shards_of_another_converter(tokenizer, tmp_path):
    tar = foreign_shard(tmp_path / "foreign")
    with pytest.raises(TooManySkips, match=f"{tar}.*missing-member"):
        next(iter(_dali(tar, tokenizer)))


# --- mcq-ds eval ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model(preset("tiny"))
    return save_pretrained(model, create_tokenizer(model.cfg), tmp_path_factory.mktemp("model") / "tiny")


def _eval(model: Path, shards: Path, out: Path, *flags: str) -> dict:
    parser = argparse.ArgumentParser()
    retrieval.add_arguments(parser)
    args = parser.parse_args([str(model), str(shards), "--workers", "0", "--batch-size", "8", "--mlflow-uri", "none",
                              "--quiet", "--out", str(out), *flags])
    return retrieval.evaluate(args)


@pytest.mark.parametrize("kind", ["json-list", "random-frame", "offsets-past-end", "truncated-tar"])
def test_eval_names_shard_key_and_reason_or_skips_them_when_asked(clean, model_folder, tmp_path, kind):
    folder, key = damaged(kind, clean, tmp_path / kind)
    tar = sorted(folder.glob("*.tar"))[0]
    reason = SAMPLE_DAMAGE[kind].value if key else "unreadable-tar"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match=f"{tar}: {key or '#'}.*: {reason}: .*--skip-corrupt"):
            _eval(model_folder, folder, tmp_path / "r.json")
        results = _eval(model_folder, folder, tmp_path / "r.json", "--skip-corrupt")
    skipped = results["skipped"]
    assert skipped["count"] == len(skipped["samples"]) >= 1 and skipped["by_reason"] == {reason: skipped["count"]}
    assert all(s["shard"] == str(tar) and s["reason"] == reason for s in skipped["samples"])
    assert results["protocol"]["videos"] == 24 - skipped["count"]
    assert json.loads((tmp_path / "r.json").read_text())["skipped"] == skipped
    if key:
        assert [s["key"] for s in skipped["samples"]] == [key]


def test_eval_reads_a_complete_set_past_a_wrong_index(clean, model_folder, tmp_path):
    folder, _ = damaged("wrong-idx", clean, tmp_path / "wrong")
    with pytest.warns(RuntimeWarning, match="tar headers"):
        results = _eval(model_folder, folder, tmp_path / "r.json")
    assert results["protocol"]["videos"] == 24 and results["skipped"]["count"] == 0


# --- mcq-shards verify ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [k for k in SAMPLE_DAMAGE if k != "bad-huffman"])
def test_verify_reports_a_damaged_sample_with_its_reason(clean, tmp_path, kind):
    """(A bad Huffman table keeps the JPEG's markers and size: finding it takes decoding every frame, which the
    loaders do and verify, reading terabytes, does not.)"""
    folder, key = damaged(kind, clean, tmp_path / kind)
    problems = verify(folder, progress=False)
    assert any(f": {key}: {SAMPLE_DAMAGE[kind].value}: " in p for p in problems), problems


@pytest.mark.parametrize("kind, says", [("truncated-tar", "past the end"), ("huge-member", "declares 4294967296"),
                                        ("wrong-idx", "does not match"), ("short-idx", "does not match"),
                                        ("missing-idx", "missing")])
def test_verify_reports_a_damaged_tar_or_index(clean, tmp_path, kind, says):
    assert verify(clean, progress=False) == []
    folder, _ = damaged(kind, clean, tmp_path / kind)
    problems = verify(folder, progress=False)
    assert any(says in p for p in problems), problems


# --- every rank stops the same way ------------------------------------------------------------------------------

RANK_SCRIPT = """
import sys, torch.distributed as dist
from mcq_ds.config import TextConfig
from mcq_ds.data.loader import LoaderConfig, ShardLoader
from mcq_ds.model import load_tokenizer
from mcq_ds.runtime import next_on_every_rank
dist.init_process_group("gloo")
loader = ShardLoader(LoaderConfig(shards=sys.argv[1 + dist.get_rank()], source="webvid", tokenizer=load_tokenizer(
    TextConfig()), batch_size=2, workers=1, img_size=32, skip_check_after=16, shuffle_block=0))
batches = iter(loader)
for step in range(200):
    next_on_every_rank(batches)
    dist.barrier()  # what a training step's gradient all-reduce does: wait for every rank
print("never stopped")
"""


def test_a_rank_with_unreadable_shards_stops_every_rank_with_the_error(clean, tmp_path):
    """Rank 1 reads another converter's tar, rank 0 good shards: both stop at the same step, naming the shard,
    instead of rank 0 waiting forever in its next collective."""
    import os
    import socket
    import subprocess
    import sys

    foreign = foreign_shard(tmp_path / "foreign")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(clean), str(foreign)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port)}) for r in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode != 0 for p in procs), outs
    assert "never stopped" not in "".join(outs)
    assert "TooManySkips" in outs[1] and str(foreign) in outs[1]
    assert "stopping: rank 1: TooManySkips" in outs[0] and str(foreign) in outs[0], outs[0][-2000:]
