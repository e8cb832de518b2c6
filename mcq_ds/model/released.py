"""Any released weight file, told apart by its key layout: MCQ's (`MCQ.pth`, `MCQ_1frame.pth`, the MILES model's
`MILES.pth`) or CLIP's in OpenAI's layout (`MCQ_CLIP.pth`, OpenAI's `ViT-B-32.pt`). Every path that takes a weight
file (`mcq-ds eval`, `extract`, fine-tuning's `--init`) reads it here, once, without running anything pickled in it.
"""
from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase

from .clip import CLIPMCQ
from .clip_loading import from_clip, read_clip_state_dict
from .loading import from_original
from .mcq import MCQ
from .presets import create_tokenizer
from .text_former import load_tokenizer


def is_clip_layout(keys) -> bool:
    return "visual.conv1.weight" in keys


def from_weight_file(path: str | Path, bridge: bool = False, frames: int | None = None,
                     tokenizer: str | None = None) -> tuple[MCQ | CLIPMCQ, PreTrainedTokenizerBase]:
    """The model and tokenizer of a released weight file. `frames` is the frame count its evaluation uses by default
    (4 for MCQ's layout, 8 for CLIP's, the released evaluations'); `tokenizer` names a WordPiece vocabulary for MCQ's
    layout, whose files carry none (default: the bert-base-uncased vocabulary that ships offline)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    state = read_clip_state_dict(path)  # a TorchScript archive or any pickled/safetensors state dict, `module.` off
    if is_clip_layout(state):
        model = from_clip(path, num_frames=frames or 8, bridge=bridge, state=state)
        return model, create_tokenizer(model.cfg)
    model = from_original(path, num_frames=frames or 4, bridge=bridge, tokenizer=tokenizer, state=state)
    return model, load_tokenizer(model.cfg.text)
