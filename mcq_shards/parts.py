"""Joining the parts of a conversion run on several machines (`mcq-shards ... --part i/N`) into one shard set.

Every part read the same table, computed the same order and wrote its run of shards under the names a one-machine run
gives them, so joining is moving files: each part's tars, DALI indexes and shard records move into the output folder
(a rename when it is on the same file system, so terabytes cost nothing), and the manifest and rejects list are
written from the records as a one-machine run writes them. The result is that run's shard set, byte for byte,
manifest included; a one-machine rerun of the same command into it finds every shard done.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from mcq_shards.convert import PROGRESS, ConvertError, _claim, _record_path, part_shards, write_manifest
from mcq_shards.manifest import MANIFEST, write_json_atomic


def read_part(folder: Path) -> dict:
    """The plan of a finished part; an error says what is missing."""
    plan_path = folder / PROGRESS / "plan.json"
    if not plan_path.is_file():
        raise ConvertError(f"{folder} is not a conversion part (no {PROGRESS}/plan.json)")
    plan = json.loads(plan_path.read_text(encoding="utf-8"))
    if "part" not in plan:
        raise ConvertError(f"{folder} is a whole conversion, not a part of one (it was not made with --part)")
    if not (folder / MANIFEST).is_file():
        raise ConvertError(f"{folder} (part {plan['part']['index']}/{plan['part']['of']}) has not finished: rerun "
                           "its command to complete it")
    return plan


def merge(out: Path, folders: list[Path]) -> dict:
    """Move the parts `folders` (all N of one conversion) into `out`; returns the manifest. Safe to rerun."""
    plans = [read_part(folder) for folder in folders]
    whole = {k: v for k, v in plans[0].items() if k != "part"}
    for folder, plan in zip(folders, plans):
        differ = sorted(k for k in whole.keys() | plan.keys() if k != "part" and whole.get(k) != plan.get(k))
        if differ:
            raise ConvertError(f"{folder} is a part of another conversion than {folders[0]} (different "
                               f"{', '.join(differ)})")
    count = plans[0]["part"]["of"]
    indices = sorted(plan["part"]["index"] for plan in plans)
    if indices != list(range(count)) or any(plan["part"]["of"] != count for plan in plans):
        missing = sorted(set(range(count)) - set(indices))
        raise ConvertError(f"the parts given are {', '.join(f'{i}/{count}' for i in indices)}: every one of the "
                           f"{count} parts, each once, is needed" + (f" (missing: {missing})" if missing else ""))
    rows, size = whole["input"]["rows"], whole["options"]["shard_size"]
    num_shards = (rows + size - 1) // size
    out.mkdir(parents=True, exist_ok=True)
    (out / PROGRESS).mkdir(exist_ok=True)
    _claim(out, whole)
    for folder, plan in zip(folders, plans):
        for j in part_shards(num_shards, plan["part"]["index"], count):
            _move_shard(folder, out, whole["prefix"], j)
    return write_manifest(out, whole, range(num_shards), rows)


def _move_shard(folder: Path, out: Path, prefix: str, j: int) -> None:
    """The shard's files, then its record (which marks it done in `out`); already moved ones are skipped."""
    source_record = _record_path(folder, prefix, j)
    if not source_record.is_file():
        if _record_path(out, prefix, j).is_file():
            return  # moved by an earlier, interrupted merge
        raise ConvertError(f"{folder} lacks the record of shard {j} ({source_record.name}): rerun that part")
    record = json.loads(source_record.read_text(encoding="utf-8"))
    for name in (record.get("path"), record.get("index")):
        if name and (folder / name).exists():
            shutil.move(folder / name, out / name)
        elif name and not (out / name).is_file():
            raise ConvertError(f"{folder / name} is missing: rerun that part")
    write_json_atomic(_record_path(out, prefix, j), record)
    source_record.unlink()
