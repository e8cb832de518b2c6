"""Reading and writing weight files safely, and finding the ones installed packages ship.

Users hand us `.pth` files pickled by other code (the original MCQ checkpoints pickle a `parse_config.ConfigParser`
object next to the weights). They are read with `torch.load(weights_only=True)`, which executes no code from the
file; any class the file names that PyTorch does not allow is replaced by an inert placeholder that only records
its arguments, so the tensors load and nothing foreign runs.
"""
from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..runtime import atomic_write


class InertObject:
    """Stands in for a class a checkpoint names but we will not import; it keeps what was pickled, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _placeholder(qualified_name: str) -> type:
    module, _, name = qualified_name.rpartition(".")
    return type(name, (InertObject,), {"__module__": module, "__qualname__": name})


def load_pickled(path: str | Path) -> Any:
    """`torch.load` without executing code from the file, and without failing on unknown (non-tensor) classes."""
    path = Path(path)
    try:
        foreign = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({err})") from err
    stand_ins = [(_placeholder(name), name) for name in foreign]
    with torch.serialization.safe_globals(stand_ins):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:  # e.g. a call into os/subprocess, which PyTorch blocks outright
            reason = str(err).split("Trying to load", 1)[-1].split("\n")[0].strip()
            raise ValueError(f"{path}: refused to load, the file asks to run code ({reason}); it is not a plain "
                             "checkpoint and will not be unpickled") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a `.safetensors` file, or the state dict inside a PyTorch checkpoint (`state_dict`/`model`/
    `module` entry, or the file itself when it is a plain mapping of tensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(path)
    obj = load_pickled(path)
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ValueError(f"{path}: no state dict found (expected a mapping of names to tensors, or one under "
                         "'state_dict')")
    return dict(obj)


def save_safetensors_atomic(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Writes next to the target and renames, so a crash never leaves a half-written model file behind."""
    atomic_write(path, lambda tmp: save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp))


def shipped_file(package: str, relative: str, install: str) -> Path:
    """A data file an installed package ships, found without importing the package (whose own imports may be heavy or
    absent: only the file is wanted). `install` is the command that fixes a missing package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{relative} comes from the {package} package, which is not installed: `{install}`")
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed {package}; reinstall it: `{install}`")
    return path
