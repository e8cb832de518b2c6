"""Training checkpoints: DeepSpeed tag folders that a crash can never leave half-picked.

A checkpoint is `<out>/checkpoints/step00001234/`: DeepSpeed's model and optimizer files, one `rank<r>.pt` per rank
(its data-loader position and RNG states, which differ between ranks and which DeepSpeed's own client state, kept
by rank 0 only, cannot hold), and last a `complete.json` written atomically by rank 0 after every rank has
finished. `--resume latest` takes the newest folder with `complete.json`, so a folder half-written when a node died
is never picked; the oldest complete folders beyond `keep_last` are removed, and so are incomplete ones that a
newer complete checkpoint has made useless.

DeepSpeed reads its checkpoint files with `torch.load(weights_only=False)`, which runs whatever a pickle asks for,
and anyone who can write to a shared run folder can plant such a file. So every file a resume, a universal
conversion or an export will read is first checked without unpickling it (`check_pickles`), and DeepSpeed's own
reads run under `weights_only_loads`, PyTorch's weights-only unpickler with DeepSpeed's three classes allowed, so a
file swapped in after the check is refused too.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

from ..runtime import atomic_write

COMPLETE = "complete.json"

# What DeepSpeed's checkpoint files pickle besides what PyTorch's weights-only unpickler allows (tensors, storages,
# OrderedDict, plain data). Listed from real checkpoints of DeepSpeed 0.19: ZeRO 0-3, fp32 and bf16, 1 and 2 ranks,
# and their universal conversions; only the ZeRO optimizer files hold any of them.
DEEPSPEED_GLOBALS = (
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)
_ALLOWED = frozenset(f"{module}.{name}" for module, name in DEEPSPEED_GLOBALS)
_FORCE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_FORCE_NOT = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


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


def newer_checkpoints(ckpt_dir: Path, folder: Path) -> list[Path]:
    """Complete checkpoints in `ckpt_dir` of a later step than `folder`: a run continued from `folder` would leave
    them for `--resume latest` to pick after its next crash."""
    return [p for p in complete_checkpoints(ckpt_dir) if _step_of(p) > (_step_of(folder) or 0)]


def saved_config(folder: Path) -> dict[str, Any] | None:
    """The training config a checkpoint was made with (recorded in its `complete.json`; for checkpoints of older
    versions, the run's `config.json`), or None when neither records it."""
    recorded = json.loads((folder / COMPLETE).read_text()).get("config")
    run_config = folder.parent.parent / "config.json"
    if recorded is None and run_config.is_file():
        recorded = json.loads(run_config.read_text())
    return recorded


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


def check_pickles(folder: Path) -> None:
    """Refuses a checkpoint folder in which any `*.pt` file (sub-folders included) names a global beyond tensors,
    plain data and DeepSpeed's own classes, before anything unpickles it. The pickles are read as opcodes only."""
    for file in sorted(folder.rglob("*.pt")):
        try:
            foreign = set(torch.serialization.get_unsafe_globals_in_checkpoint(file)) - _ALLOWED
        except Exception as err:  # not a zip-format torch.save file (legacy, TorchScript, truncated): unchecked
            raise ValueError(f"{file}: refused, not a checkpoint file DeepSpeed writes ({err}); it will not be "
                             f"unpickled. Delete {folder} or resume from another checkpoint") from None
        if foreign:
            raise ValueError(f"{file}: refused, the file names {sorted(foreign)[:5]}, which a DeepSpeed checkpoint "
                             "never holds (pickled code runs when such a file is loaded); it will not be unpickled. "
                             f"Someone or something other than mcq-ds wrote it: delete {folder} or resume from "
                             "another checkpoint")


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every `torch.load` inside, DeepSpeed's `weights_only=False` ones included, runs PyTorch's weights-only
    unpickler with DeepSpeed's classes allowed: nothing a checkpoint pickles can run code."""
    from importlib import import_module

    classes = [(getattr(import_module(module), name), f"{module}.{name}") for module, name in DEEPSPEED_GLOBALS]
    saved = {name: os.environ.pop(name, None) for name in (_FORCE, _FORCE_NOT)}
    os.environ[_FORCE] = "1"
    try:
        with torch.serialization.safe_globals(classes):
            yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


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
    folder = ckpt_dir / tag
    rank = dist.get_rank()
    if rank == 0:  # a leftover of a crashed save (or of another run) must not lend its files to this checkpoint
        shutil.rmtree(folder, ignore_errors=True)
    dist.barrier()
    # what DeepSpeed's universal-checkpoint conversion needs to re-shard this checkpoint for another world size
    common = {**common, UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=common)
        atomic_write(folder / f"rank{rank}.pt", lambda p: torch.save(per_rank, p))
    except RuntimeError as err:  # torch.save says only "file write failed": find out why
        cause = _write_error(folder)
        if cause is None:
            raise
        raise cause from err
    dist.barrier()
    if rank == 0:
        marker = {"step": step, "world_size": dist.get_world_size(), "config": common.get("config")}
        atomic_write(folder / COMPLETE, lambda p: p.write_text(json.dumps(marker)))
        _prune(ckpt_dir, keep_last, keep)
    dist.barrier()
    return folder


def _write_error(folder: Path) -> OSError | None:
    """The error a write into `folder` gives now (a full disk, a read-only mount), or None when a MiB goes in."""
    probe = folder / ".write-probe"
    try:
        with open(probe, "wb") as f:
            f.write(bytes(1 << 20))
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        return OSError(err.errno, f"{err.strerror} (writing checkpoint {folder.name}; once it can be written, the "
                                  "same command resumes from the last complete checkpoint)", str(folder))
    finally:
        probe.unlink(missing_ok=True)
    return None


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


def universal(folder: Path, root: Path) -> Path:
    """The checkpoint in DeepSpeed's universal format, for resuming on another number of ranks: converted once by
    rank 0 into `root/<tag>` (`root` is the resuming run's `checkpoints/universal`; written beside and renamed, so a
    crash never leaves half of it; `source.json` names the checkpoint it came from, so a conversion of another
    folder's same-named tag is redone), then read by every rank with `checkpoint.load_universal`. Returns the
    folder to pass to `load_checkpoint`; its pickles have been checked."""
    converted, source = root / folder.name, {"source": str(folder.resolve())}
    if dist.get_rank() == 0 and not _is_conversion_of(converted, source):
        tmp = root / (folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([sys.executable, "-m", __name__, "--input_folder", str(folder), "--output_folder", str(tmp)],
                       check=True, stdout=subprocess.DEVNULL)
        (tmp / "source.json").write_text(json.dumps(source))
        shutil.rmtree(converted, ignore_errors=True)
        os.replace(tmp, converted)
    dist.barrier()
    check_pickles(converted)
    return root


def _is_conversion_of(converted: Path, source: dict) -> bool:
    try:
        return json.loads((converted / "source.json").read_text()) == source
    except (OSError, ValueError):
        return False


def saved_world_size(folder: Path) -> int:
    return json.loads((folder / COMPLETE).read_text())["world_size"]


def load_rank_state(folder: Path, rank: int) -> dict[str, Any] | None:
    """This rank's own state, or None when the checkpoint was written by fewer ranks than there are now."""
    path = folder / f"rank{rank}.pt"
    return torch.load(path, weights_only=True) if path.is_file() else None


def _convert_to_universal() -> None:
    """DeepSpeed's `ds_to_universal` (same command line) with every read weights-only: it loads with
    `weights_only=False`. Its worker processes are forked, so they inherit the allowed classes."""
    import multiprocessing

    from deepspeed.checkpoint import ds_to_universal

    args = ds_to_universal.parse_arguments()
    check_pickles(Path(args.input_folder))
    multiprocessing.set_start_method("fork", force=True)
    with weights_only_loads():
        ds_to_universal.main(args)


if __name__ == "__main__":
    _convert_to_universal()
