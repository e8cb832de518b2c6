"""Our shards are plain WebDataset tars: the `webdataset` package (what most video-text code reads) gets every
sample's members, byte for byte, in the order our reader lists them, and the frames decode."""
import io

import pytest
from PIL import Image

from mcq_shards.manifest import read_manifest
from mcq_shards.reader import members_sample, read_members, sample_entries

wds = pytest.importorskip("webdataset")


@pytest.mark.parametrize("source", ["webvid", "cc3m"])
def test_the_webdataset_package_reads_our_shards(demo_shards, source):
    manifest = read_manifest(demo_shards[source])
    ours = {}
    for shard in manifest.shards:
        entries = sample_entries(str(shard.path), str(shard.index)).entries
        with open(shard.path, "rb") as f:
            ours.update((e.key, read_members(f, e)) for e in entries)

    theirs = list(wds.WebDataset(manifest.paths, shardshuffle=False, empty_check=False))
    assert len(theirs) == manifest.total == len(ours)
    assert [s["__key__"] for s in theirs] == list(ours)
    for sample in theirs:
        members = {k: v for k, v in sample.items() if not k.startswith("__")}
        assert members == ours[sample["__key__"]]
        stored = members_sample(sample["__key__"], members)
        for i in range(stored.num_stored):
            with Image.open(io.BytesIO(stored.frame(i))) as frame:
                assert frame.size == (stored.width, stored.height)
