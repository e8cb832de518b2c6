"""`mcq-ds export-onnx MODEL OUT`: the two retrieval encoders as ONNX files, to embed queries and videos without
PyTorch or mcq-ds (ONNX Runtime, TensorRT, a browser).

    OUT/text_encoder.onnx    input_ids, attention_mask (batch, length) int64 → text_embedding (batch, D) float32
    OUT/video_encoder.onnx   video (batch, frames, 3, S, S) float32, normalised → video_embedding (batch, D) float32
    OUT/tokenizer/           the tokenizer that makes input_ids and attention_mask (Hugging Face format)
    OUT/onnx.json            shapes, the pixel statistics and frame protocol a video needs, the measured differences

Both outputs are L2-normalised, as `mcq-ds extract` writes them: a text and a video embedding's dot product is their
cosine. Batch and text length are dynamic; so is the number of frames, up to the model's (the position table is tiled
per frame). Videos are prepared as `mcq-ds eval` does: F segment-midpoint frames, resize short side to 256/224·S,
centre crop, resize to S, bilinear without antialiasing, normalised with the mean and std in onnx.json.

The export uses PyTorch's `torch.export`-based exporter (dynamo=True). The older TorchScript tracer
(dynamo=False) records transformers' attention-mask preparation for the example's own length, and its text encoder
was wrong (max difference 0.34) on a batch of another length. After writing, both files are run with ONNX Runtime on
inputs of other shapes than the example's and compared with PyTorch; a difference over --tolerance is an error.
"""
from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.batch import NORMALISATION, Tokens
from ..eval.checkpoint import LoadedModel, load_model
from ..loss import l2_normalise

OPSET = 18
PROBE_TEXTS = ["a red square is moving to the left on a striped background", "a dog",
               "two people are dancing in a kitchen while a third one plays the guitar badly"]


class TextEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return l2_normalise(self.model.encode_text(Tokens(input_ids, attention_mask)))


class VideoEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return l2_normalise(self.model.encode_video(video))


def _tokens(loaded: LoadedModel, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    t = loaded.tokenizer(texts, padding=True, truncation=True, max_length=loaded.model.cfg.text.max_length,
                         return_tensors="pt")
    return t["input_ids"].long(), t["attention_mask"].long()


def _videos(loaded: LoadedModel, batch: int, frames: int, seed: int) -> torch.Tensor:
    size = loaded.model.cfg.video.img_size
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _export(module: nn.Module, inputs: tuple, path: Path, input_names: list[str], output: str,
            dynamic_shapes: tuple) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():  # two inputs sharing the batch and length axes is what is meant
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints with another axis")
        torch.onnx.export(module.eval(), inputs, str(tmp), dynamo=True, external_data=False, opset_version=OPSET,
                          input_names=input_names, output_names=[output], dynamic_shapes=dynamic_shapes,
                          verbose=False)
    os.replace(tmp, path)


def export_onnx(loaded: LoadedModel, out: Path, tolerance: float = 1e-4) -> dict:
    """Writes the two encoders, the tokenizer and onnx.json into `out`; returns what onnx.json holds, with the
    largest differences between ONNX Runtime and PyTorch on the same inputs."""
    import onnxruntime

    model = loaded.model.eval().cpu()
    cfg = model.cfg
    frames = cfg.video.num_frames
    out.mkdir(parents=True, exist_ok=True)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=cfg.text.max_length)
    frame_dim = torch.export.Dim("frames", max=frames) if frames > 1 else None
    with torch.no_grad():
        _export(TextEncoder(model), _tokens(loaded, PROBE_TEXTS[:2]), out / "text_encoder.onnx",
                ["input_ids", "attention_mask"], "text_embedding", ({0: batch, 1: length}, {0: batch, 1: length}))
        video_axes = {0: batch, 1: frame_dim} if frame_dim is not None else {0: batch}
        _export(VideoEncoder(model), (_videos(loaded, 2, frames, 0),), out / "video_encoder.onnx", ["video"],
                "video_embedding", (video_axes,))
    loaded.tokenizer.save_pretrained(out / "tokenizer")

    # checked on shapes the export never saw: another batch size and text length, and (where allowed) fewer frames
    text_session = onnxruntime.InferenceSession(str(out / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    video_session = onnxruntime.InferenceSession(str(out / "video_encoder.onnx"), providers=["CPUExecutionProvider"])
    ids, mask = _tokens(loaded, PROBE_TEXTS)
    checks = {"video": _videos(loaded, 3, frames, 1)}
    if frame_dim is not None:
        checks["video_fewer_frames"] = _videos(loaded, 1, frames - 1, 2)
    with torch.no_grad():
        differences = {"text": float(np.abs(
            text_session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
            - TextEncoder(model)(ids, mask).numpy()).max())}
        for name, video in checks.items():
            differences[name] = float(np.abs(video_session.run(None, {"video": video.numpy()})[0]
                                             - VideoEncoder(model)(video).numpy()).max())
    mean, std = NORMALISATION[cfg.normalisation]
    about = {
        "model": loaded.describe(), "opset": OPSET, "embed_dim": cfg.embed_dim,
        "text_encoder": {"file": "text_encoder.onnx", "inputs": {"input_ids": ["batch", "length"],
                                                                  "attention_mask": ["batch", "length"]},
                         "output": "text_embedding", "max_length": cfg.text.max_length, "tokenizer": "tokenizer"},
        "video_encoder": {"file": "video_encoder.onnx", "input": "video",
                          "shape": ["batch", "frames" if frame_dim is not None else frames, 3, cfg.video.img_size,
                                    cfg.video.img_size],
                          "output": "video_embedding", "frames": frames, "frame_choice": "segment midpoints",
                          "normalisation": {"name": cfg.normalisation, "mean": list(mean), "std": list(std)}},
        "outputs_l2_normalised": True,
        "max_abs_difference_vs_pytorch": differences, "checked_on": {"text_batch": len(PROBE_TEXTS),
                                                                     "text_length": int(ids.shape[1])},
    }
    (out / "onnx.json").write_text(json.dumps(about, indent=2) + "\n")
    worst = max(differences, key=differences.get)
    if differences[worst] > tolerance:
        raise ValueError(f"the ONNX {worst} encoder differs from PyTorch by {differences[worst]:.3g} (> --tolerance "
                         f"{tolerance:g}) on inputs of another shape than the export's; the files in {out} are not "
                         "trustworthy")
    return about


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a model folder, a training run or DeepSpeed checkpoint, or MCQ.pth")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest difference from PyTorch accepted "
                        "(default %(default)s, on unit-length embeddings)")
    parser.add_argument("--frames", type=int, help="most frames the video encoder takes (default: the model's)")
    parser.add_argument("--tokenizer", help="tokenizer for an original .pth checkpoint")


def run(args: argparse.Namespace) -> int:
    for package in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(package)
        except ImportError:
            raise ValueError(f"export-onnx needs {package}: pip install 'mcq-ds[onnx]' (onnx, onnxscript, "
                             "onnxruntime)") from None
    loaded = load_model(args.model, bridge=False, frames=args.frames, tokenizer=args.tokenizer)
    about = export_onnx(loaded, args.out, args.tolerance)
    for name, difference in about["max_abs_difference_vs_pytorch"].items():
        print(f"{name}: max |ONNX Runtime − PyTorch| = {difference:.2e}")
    print(f"wrote {args.out}: text_encoder.onnx, video_encoder.onnx, tokenizer/, onnx.json")
    return 0
