"""Training checkpoints: DeepSpeed tag folders that a crash can never leave half-picked.

A checkpoint is `<out>/checkpoints/step00001234/`: DeepSpeed's model and optimizer files, one `rank<r>.pt` per rank
(its data-loader position and RNG states, which differ between ranks and which DeepSpeed's own client state, kept
by rank 0 only, cannot hold), and last a `complete.json` written atomically by rank 0 after every rank has
finished. `--resume latest` takes the newest folder with `complete.json`, so a folder half-written when a node died
is never picked; the oldest complete folders beyond `keep_last` are removed, and so are incomplete ones that a
newer complete checkpoint has made useless.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..runtime import atomic_write

COMPLETE = "complete.json"


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def _step_of(folder: Path) -> int | None:
    name = folder.name
    return int(name[4:]) if name.startswith("step") and name[4:].isdigit() else None


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if _step_of(p) is not None and (p / COMPLETE).is_file()]
    return sorted(found, key=_step_of)


def resolve_resume(ckpt_dir: Path, resume: str | None) -> Path | None:
    """`latest` → the newest complete checkpoint (None on a fresh start); a path → that checkpoint, which must be
    complete."""
    if not resume:
        return None
    if resume == "latest":
        found = complete_checkpoints(ckpt_dir)
        return found[-1] if found else None
    folder = Path(resume)
    if not (folder / COMPLETE).is_file():
        raise FileNotFoundError(f"{folder}: not a complete checkpoint (no {COMPLETE}); use --resume latest to take "
                                "the newest complete one")
    return folder


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # numpy's state as plain lists, so the file loads with weights_only=True
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, keys.tolist(), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine, ckpt_dir: Path, step: int, common: dict[str, Any], per_rank: dict[str, Any],
         keep_last: int, keep: tuple[str, ...] = ()) -> Path:
    """Collective: every rank calls it. `common` goes into DeepSpeed's client state, `per_rank` into rank<r>.pt;
    the checkpoints named in `keep` are never pruned."""
    from deepspeed.checkpoint.constants import (UNIVERSAL_CHECKPOINT_INFO, UNIVERSAL_CHECKPOINT_VERSION_KEY,
                                                UNIVERSAL_CHECKPOINT_VERSION_VALUE)

    tag = tag_for(step)
    # what DeepSpeed's universal-checkpoint conversion needs to re-shard this checkpoint for another world size
    common = {**common, UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=common)
    folder = ckpt_dir / tag
    rank = dist.get_rank()
    atomic_write(folder / f"rank{rank}.pt", lambda p: torch.save(per_rank, p))
    dist.barrier()
    if rank == 0:
        marker = {"step": step, "world_size": dist.get_world_size()}
        atomic_write(folder / COMPLETE, lambda p: p.write_text(json.dumps(marker)))
        _prune(ckpt_dir, keep_last, keep)
    dist.barrier()
    return folder


def _prune(ckpt_dir: Path, keep_last: int, keep: tuple[str, ...] = ()) -> None:
    complete = complete_checkpoints(ckpt_dir)
    newest = _step_of(complete[-1])
    for folder in [f for f in complete[:-keep_last] if f.name not in keep] if keep_last > 0 else []:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(ckpt_dir / "universal" / folder.name, ignore_errors=True)
    for folder in ckpt_dir.iterdir():
        step = _step_of(folder)
        if step is not None and step < newest and not (folder / COMPLETE).is_file():
            shutil.rmtree(folder, ignore_errors=True)


def universal(folder: Path) -> Path:
    """The checkpoint in DeepSpeed's universal format, for resuming on another number of ranks: converted once by
    rank 0 into `<checkpoints>/universal/<tag>` (written beside and renamed, so a crash never leaves half of it), then
    read by every rank with `checkpoint.load_universal`. Returns the folder to pass to `load_checkpoint`."""
    root = folder.parent / "universal"
    if dist.get_rank() == 0 and not (root / folder.name).is_dir():
        tmp = root / (folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(folder),
                        "--output_folder", str(tmp)], check=True, stdout=subprocess.DEVNULL)
        os.replace(tmp, root / folder.name)
    dist.barrier()
    return root


def saved_world_size(folder: Path) -> int:
    return json.loads((folder / COMPLETE).read_text())["world_size"]


def load_rank_state(folder: Path, rank: int) -> dict[str, Any] | None:
    """This rank's own state, or None when the checkpoint was written by fewer ranks than there are now."""
    path = folder / f"rank{rank}.pt"
    return torch.load(path, weights_only=True) if path.is_file() else None
