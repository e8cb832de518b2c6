"""CLIP weights into the CLIP-initialised MCQ: OpenAI's `ViT-B-32.pt`, open_clip checkpoints and the released
`MCQ_CLIP.pth`, all in OpenAI's key layout (`visual.*`, `transformer.*`, the released model's extra bridge keys).

The same rules as every other import: nothing from a file is executed, and every key is mapped or dropped on
purpose, so anything unknown or missing is an error naming the keys. OpenAI's `.pt` files are TorchScript archives.
`torch.jit.load` would compile the TorchScript code stored in the archive and run the `__setstate__` methods it
defines, so instead the archive's `data.pkl` is read with an unpickler that knows only tensors, storages and
containers: each TorchScript object becomes a plain record of its attributes, from which the tensors are collected
by attribute path (which is the state-dict key). Any other name in the pickle is refused.
"""
from __future__ import annotations

import argparse
import io
import json
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import BPE_VOCAB_SIZE, CLIPMCQConfig, CLIPTextConfig, CLIPVisionConfig
from .clip import CLIPMCQ
from .loading import BRIDGE_PREFIXES, save_pretrained
from .presets import create_tokenizer
from .weights_io import read_state_dict

# ---------------------------------------------------------------------------------------------------------------
# Reading a TorchScript archive without running it

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_LIST_BUILDERS = ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")


class _ScriptObject:
    """An object of the archive (a module, mostly), kept as its attributes; none of its TorchScript code runs."""

    attributes: dict[str, Any] = {}  # an object pickled without state keeps none

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if isinstance(state, dict) else {}


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                    *_: Any) -> torch.Tensor:
    return torch.as_strided(storage, size, stride, offset).clone()


def _untag(value: Any, *_: Any) -> Any:
    return value


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, root: str):
        super().__init__(io.BytesIO(archive.read(root + "data.pkl")))
        self.archive, self.root = archive, root
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__."):
            return _ScriptObject
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]  # only a tag in the storage reference below
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch.jit._pickle" and name in _LIST_BUILDERS:
            return list
        if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
            return _untag
        raise ValueError(f"refused to read the archive: its pickle names {module}.{name}, which a weight file has no "
                         "use for")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        kind, dtype, key, _location, _numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise ValueError(f"refused to read the archive: unknown storage reference {pid!r}")
        if key not in self.storages:
            data = bytearray(self.archive.read(f"{self.root}data/{key}"))
            self.storages[key] = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        return self.storages[key]


def _torchscript_root(archive: zipfile.ZipFile) -> str | None:
    """The archive's folder ("ViT-B-32/") when it is a TorchScript archive (it has constants.pkl), else None."""
    for name in archive.namelist():
        if name.endswith("constants.pkl"):
            root = name[: -len("constants.pkl")]
            if root + "data.pkl" in archive.namelist():
                return root
    return None


def _tensors(obj: _ScriptObject, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    for name, value in obj.attributes.items():
        if isinstance(value, torch.Tensor):
            yield prefix + name, value
        elif isinstance(value, _ScriptObject):
            yield from _tensors(value, f"{prefix}{name}.")


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor attribute of a TorchScript archive, keyed by its attribute path; nothing in the file runs."""
    with zipfile.ZipFile(path) as archive:
        root = _torchscript_root(archive)
        if root is None:
            raise ValueError(f"{path}: not a TorchScript archive")
        if root + "byteorder" in archive.namelist() and archive.read(root + "byteorder") != b"little":
            raise ValueError(f"{path}: big-endian archives are not supported")
        top = _ArchiveUnpickler(archive, root).load()
    if not isinstance(top, _ScriptObject):
        raise ValueError(f"{path}: the archive holds no TorchScript module")
    return dict(_tensors(top))


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A CLIP state dict (OpenAI layout) from a TorchScript archive, a pickled checkpoint (plain, or under
    `state_dict`, with or without DataParallel's `module.`) or a `.safetensors` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            scripted = _torchscript_root(archive) is not None
        if scripted:
            return read_torchscript_tensors(path)
    return {k.removeprefix("module."): v for k, v in read_state_dict(path).items()}


# ---------------------------------------------------------------------------------------------------------------
# OpenAI's key layout -> this model

# Keys that are not weights of the model: CLIP's learned temperature (mcq-ds trains with the loss's τ), sizes that
# OpenAI's archive stores as tensors (read off the weights here), and the causal mask (rebuilt by the attention).
_NOT_WEIGHTS = ("logit_scale", "input_resolution", "context_length", "vocab_size", "attn_mask")
_BLOCK_KEY = re.compile(r"(visual\.)?transformer\.resblocks\.(\d+)\.(.+)")
_BLOCK_PARAMS = {
    "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj.weight": "attn.proj.weight", "attn.out_proj.bias": "attn.proj.bias",
    **{f"{m}.{p}": f"{m}.{p}" for m in ("ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj") for p in ("weight", "bias")},
}
_VISUAL_PARAMS = ("conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight", "ln_pre.bias",
                  "ln_post.weight", "ln_post.bias", "proj")
_TEXT_PARAMS = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection")


def _rename(key: str) -> str | None:
    block = _BLOCK_KEY.fullmatch(key)
    if block:
        visual, index, param = block.groups()
        if param not in _BLOCK_PARAMS:
            return None
        return f"{'video_model' if visual else 'text_model'}.blocks.{index}.{_BLOCK_PARAMS[param]}"
    if key.startswith("visual.") and key.removeprefix("visual.") in _VISUAL_PARAMS:
        return "video_model." + key.removeprefix("visual.")
    if key in _TEXT_PARAMS:
        return "text_model." + key
    return None


def clip_to_mcq(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames a CLIP state dict (OpenAI layout) to this model's keys; the keys that are not weights are dropped on
    purpose and any other unknown key is an error."""
    out, unknown = {}, []
    for key, value in state.items():
        if key in _NOT_WEIGHTS or key.endswith(".attn_mask"):
            continue
        new = _rename(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"keys that are not part of a ViT CLIP in OpenAI's layout: {unknown[:10]}")
    return out


def _depth(state: dict[str, torch.Tensor], prefix: str) -> int:
    return 1 + max(int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix))


def config_from_clip(state: dict[str, torch.Tensor], num_frames: int = 8, bridge: bool = False,
                     quick_gelu: bool = True, head_dim: int = 64) -> CLIPMCQConfig:
    """Every size read off the tensor shapes (depths are counted, not assumed to be 12); the head count is width /
    head_dim (64 in every OpenAI and open_clip ViT). With `bridge`, the text tower gets a [MASK] row."""
    if "visual.conv1.weight" not in state or "ln_final.weight" not in state:
        raise ValueError("not a ViT CLIP state dict in OpenAI's layout (no visual.conv1.weight / ln_final.weight): "
                         "ResNet CLIPs and open_clip models with timm or Hugging Face towers are not supported")
    conv = state["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    video = CLIPVisionConfig(
        img_size=grid * patch, patch_size=patch, width=width, depth=_depth(state, "visual.transformer.resblocks."),
        heads=width // head_dim, mlp_ratio=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
        num_frames=num_frames)
    text_width, vocab = state["ln_final.weight"].shape[0], state["token_embedding.weight"].shape[0]
    text = CLIPTextConfig(
        vocab_size=vocab + 1 if bridge and vocab == BPE_VOCAB_SIZE else vocab,
        max_length=state["positional_embedding"].shape[0], width=text_width,
        depth=_depth(state, "transformer.resblocks."), heads=text_width // head_dim,
        mlp_ratio=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width)
    return CLIPMCQConfig(video=video, text=text, embed_dim=state["text_projection"].shape[1], quick_gelu=quick_gelu,
                         bridge=bridge)


def _quick_gelu_for(path: Path) -> bool:
    """open_clip's Hugging Face folders say it in `open_clip_config.json`; otherwise OpenAI's QuickGELU (its own
    weights, and MCQ_CLIP.pth which was fine-tuned from them)."""
    config = path.parent / "open_clip_config.json"
    if config.is_file():
        return bool(json.loads(config.read_text()).get("model_cfg", {}).get("quick_gelu", False))
    return True


def from_clip(path: str | Path, num_frames: int = 8, bridge: bool = False, quick_gelu: bool | None = None,
              head_dim: int = 64, state: dict[str, torch.Tensor] | None = None) -> CLIPMCQ:
    """The CLIP-initialised MCQ from CLIP weights in OpenAI's layout.

    `bridge=False` gives the retrieval model (e.g. from MCQ_CLIP.pth, which loads strictly: every tower weight
    present, nothing left over). `bridge=True` is the start of pre-training: the towers from the file, a fresh
    BridgeFormer, and a [MASK] token row set to the mean of the token embeddings (an average word to start from).
    `quick_gelu=None` takes the activation from an `open_clip_config.json` beside the file, else QuickGELU; pass
    False for open_clip weights trained with GELU (the LAION/DataComp ViT-B-32 without "-quickgelu"). `state` is the
    file's state dict when the caller has read it already.
    """
    path = Path(path)
    state = read_clip_state_dict(path) if state is None else state
    cfg = config_from_clip(state, num_frames, bridge, _quick_gelu_for(path) if quick_gelu is None else quick_gelu,
                           head_dim)
    weights = clip_to_mcq(state)
    table = weights["text_model.token_embedding.weight"]
    if cfg.text.vocab_size == len(table) + 1:
        weights["text_model.token_embedding.weight"] = torch.cat([table, table.float().mean(0, keepdim=True)])
    model = CLIPMCQ(cfg)
    current = model.state_dict()
    missing = [k for k in current if k not in weights and not k.startswith(BRIDGE_PREFIXES)]
    unexpected = [k for k in weights if k not in current]
    if missing or unexpected:
        raise ValueError(f"{path}: CLIP weights missing: {missing[:10]}; not in the model: {unexpected[:10]}")
    model.load_state_dict({**current, **weights}, strict=True)  # the bridge keeps its fresh init on purpose
    return model


# ---------------------------------------------------------------------------------------------------------------
# mcq-ds convert-clip

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", help="OpenAI's ViT-B-32.pt (a TorchScript archive, read without running it), an "
                        "open_clip checkpoint (.pt/.bin/.safetensors, OpenAI layout) or the released MCQ_CLIP.pth")
    parser.add_argument("-o", "--out", required=True, help="output model folder")
    parser.add_argument("--frames", type=int, default=8,
                        help="frames the pipelines feed by default (default 8, as the released evaluation)")
    parser.add_argument("--bridge", action=argparse.BooleanOptionalAction, default=False,
                        help="add a fresh BridgeFormer and a [MASK] token: the start of CLIP-initialised pre-training "
                        "(then `mcq-ds train --stage clip-1f-noun --init OUT`); default --no-bridge: the retrieval "
                        "model")
    parser.add_argument("--quick-gelu", action=argparse.BooleanOptionalAction, default=None,
                        help="the towers' activation: QuickGELU for OpenAI's weights and MCQ_CLIP.pth, --no-quick-gelu "
                        "for open_clip weights trained with GELU (default: open_clip_config.json beside the file, "
                        "else QuickGELU)")


def run(args: argparse.Namespace) -> int:
    model = from_clip(args.weights, num_frames=args.frames, bridge=args.bridge, quick_gelu=args.quick_gelu)
    folder = save_pretrained(model, create_tokenizer(model.cfg), args.out)
    print(f"wrote {folder}: every key of {args.weights} mapped"
          + (", fresh BridgeFormer and [MASK] token added" if args.bridge else " (retrieval model)"))
    return 0
