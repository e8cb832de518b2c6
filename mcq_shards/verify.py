"""``mcq-shards verify DIR``: check manifest, tars, index files and rejects against each other.

Reads every byte once (for the SHA-256) and reports every difference it finds rather than stopping
at the first, so one run tells a user everything that is wrong with a copied or damaged directory.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from tqdm import tqdm

from mcq_shards.manifest import MANIFEST, REJECTS, read_manifest
from mcq_shards.reader import SampleEntry, SampleError, check_jpeg, members_sample, read_members, scan_tar
from mcq_shards.tario import index_text, non_gnu_headers, sha256_file

MEDIA_MEMBERS = ({"jpg", "json"}, {"jpgs", "offsets", "json"})


def verify(directory: Path, progress: bool = True) -> list[str]:
    """Every problem found, as one line each; an empty list means the directory is consistent."""
    try:
        manifest = read_manifest(directory)
    except ValueError as err:
        return [str(err)]
    problems: list[str] = []
    keys: set[str] = set()
    for shard in tqdm(manifest.shards, desc="verify", unit="shard", disable=not progress):
        problems += _check_shard(shard, keys)
    if sum(s.samples for s in manifest.shards) != manifest.total:
        problems.append(f"{MANIFEST}: shard sample counts add up to {sum(s.samples for s in manifest.shards)}, "
                        f"not the {manifest.total} it states")
    problems += _check_rejects(directory, manifest.rejects)
    rows = manifest.raw.get("input", {}).get("rows")
    if rows is not None and manifest.total + manifest.rejects != rows:
        problems.append(f"{MANIFEST}: {manifest.total} samples + {manifest.rejects} rejects != {rows} input rows")
    listed = {s.path.name for s in manifest.shards} | {s.index.name for s in manifest.shards}
    for path in sorted(directory.iterdir()):
        if path.suffix in (".tar", ".idx") and path.name not in listed:
            problems.append(f"{path.name}: not in {MANIFEST}")
        elif path.name.endswith(".part"):
            problems.append(f"{path.name}: left over from an unfinished conversion")
    return problems


def describe(directory: Path) -> list[str]:
    """What a user should know about how a shard set was made, beyond its consistency: where its phrases came
    from and the sample order."""
    try:
        raw = read_manifest(directory).raw
    except ValueError:
        return []
    phrases = raw.get("phrases", {})
    if phrases.get("source") == "file":
        made = phrases["file"]
        lines = [f"phrases: from {made['path']} (sha256 {made['sha256'][:12]}…, matched by {made['matched_by']}; "
                 f"{made['entries_unused']} entries unused, {made['phrases_not_in_caption']} phrases not in their "
                 "caption)"]
    elif "source" in phrases:
        lines = [f"phrases: {phrases['source']}: nouns {phrases['nouns']}; verbs {phrases['verbs']}"]
    else:
        lines = ["phrases: spacy: nouns spaCy noun chunks (a converter that did not record its phrase source)"]
    seed = raw.get("options", {}).get("shuffle_seed")
    lines.append(f"order: global shuffle of the input rows (seed {seed})" if seed is not None else
                 "order: the input order (converted with --no-shuffle, or before the converter shuffled)")
    return lines


def _check_shard(shard, keys: set[str]) -> list[str]:
    name = shard.path.name
    if not shard.path.is_file():
        return [f"{name}: missing"]
    problems = []
    size = shard.path.stat().st_size
    if size != shard.bytes:
        problems.append(f"{name}: {size} bytes, manifest says {shard.bytes}")
    elif sha256_file(shard.path) != shard.sha256:
        problems.append(f"{name}: SHA-256 differs from the manifest")
    entries, damage = scan_tar(str(shard.path))
    if damage:
        problems.append(f"{name}: {damage}; {len(entries)} samples readable before it")
    try:
        bad = non_gnu_headers(shard.path) if not damage else []
    except (tarfile.TarError, OSError, EOFError) as err:
        bad, damage = [], str(err)
    if bad:
        problems.append(f"{name}: {len(bad)} member headers are not GNU tar (DALI needs GNU), e.g. {bad[0]}")
    with open(shard.path, "rb") as raw:
        for entry in entries:
            problems += [f"{name}: {entry.key}: {p}" for p in _check_sample(raw, entry, keys)]
    if len(entries) != shard.samples:
        problems.append(f"{name}: {len(entries)} readable samples, manifest says {shard.samples}")
    if not shard.index.is_file():
        problems.append(f"{shard.index.name}: missing")
    elif damage or shard.index.read_text(encoding="utf-8") != index_text(shard.path):
        problems.append(f"{shard.index.name}: does not match {name} (regenerate it with wds2idx)")
    return problems


def _check_sample(raw, entry: SampleEntry, keys: set[str]) -> list[str]:
    """What is wrong with one sample, by the same checks every loader makes (`mcq_shards.reader`), plus the json
    fields the converter always writes."""
    problems = []
    if entry.key in keys:
        problems.append("duplicate key")
    keys.add(entry.key)
    if set(entry.members) not in MEDIA_MEMBERS:
        return problems + [f"members {sorted(entry.members)}, expected {sorted(MEDIA_MEMBERS[0])} or "
                           f"{sorted(MEDIA_MEMBERS[1])}"]
    try:
        sample = members_sample(entry.key, read_members(raw, entry))
        for i in range(sample.num_stored):
            check_jpeg(sample, i)
    except SampleError as err:
        return problems + [str(err)]
    for field in ("caption", "nouns", "verbs", "source", "id", "media"):
        if field not in sample.meta:
            problems.append(f"json lacks {field!r}")
    return problems


def _check_rejects(directory: Path, expected: int) -> list[str]:
    path = directory / REJECTS
    if not path.is_file():
        return [f"{REJECTS}: missing"]
    problems, count = [], 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            count += 1
            try:
                if not json.loads(line).get("reason"):
                    problems.append(f"{REJECTS}:{line_no}: no reason")
            except ValueError as err:
                problems.append(f"{REJECTS}:{line_no}: not JSON: {err}")
    if count != expected:
        problems.append(f"{REJECTS}: {count} lines, manifest says {expected} rejects")
    return problems
