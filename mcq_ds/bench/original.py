"""The original implementation's training step (TencentARC/MCQ, fp32 as it trains), for `mcq_ds.bench.model` to time
beside ours on the same inputs. Its code is not part of mcq-ds: it is imported at run time from a checkout named by
MCQ_ORIGINAL_REPO (`git clone https://github.com/TencentARC/MCQ`).

The step is the original's `MCQ.forward` on random weights of the same shapes: DistilBERT over the caption, the
answer and the question (all hidden states), `Video_Bridge_Former` over the clip and the question's layers, the three
projections, and backward from a loss over the four embeddings.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def checkout() -> Path | None:
    """The checkout MCQ_ORIGINAL_REPO names, or None; a path that does not hold the original's model is an error."""
    repo = os.environ.get("MCQ_ORIGINAL_REPO")
    if not repo:
        return None
    if not (Path(repo) / "model" / "video_bridge_former.py").is_file():
        raise FileNotFoundError(f"MCQ_ORIGINAL_REPO={repo} has no model/video_bridge_former.py: point it at a "
                                "checkout of https://github.com/TencentARC/MCQ")
    return Path(repo)


def original_step(repo: Path, cfg, inputs: tuple) -> Callable[[], None]:
    """One fp32 forward + backward of the original model at `cfg`'s sizes (the base preset: ViT-B/16 at 224 pixels
    and DistilBERT-base) on `inputs` (`model.probe.example_inputs`, fp32)."""
    sys.path.insert(0, str(repo))
    try:
        from model.video_bridge_former import Video_Bridge_Former
    finally:
        sys.path.remove(str(repo))
    from transformers import DistilBertConfig, DistilBertModel

    v = cfg.video
    video_model = Video_Bridge_Former(img_size=v.img_size, patch_size=v.patch_size, embed_dim=v.width,
                                      depth=v.depth, num_heads=v.heads, num_frames=v.num_frames)
    video_model.head, video_model.pre_logits = nn.Identity(), nn.Identity()  # as the original MCQ.__init__ does
    text_model = DistilBertModel(DistilBertConfig(**cfg.text.arch))
    width = text_model.config.hidden_size
    text_proj = nn.Sequential(nn.ReLU(), nn.Linear(width, cfg.embed_dim))
    vid_proj, bridge_proj = nn.Linear(v.width, cfg.embed_dim), nn.Linear(v.width, cfg.embed_dim)
    parts = nn.ModuleList([video_model, text_model, text_proj, vid_proj, bridge_proj]).train()
    video, text, question, answer = inputs

    def step() -> None:
        t = text_proj(text_model(input_ids=text.ids, attention_mask=text.mask).last_hidden_state[:, 0])
        a = text_proj(text_model(input_ids=answer.ids, attention_mask=answer.mask).last_hidden_state[:, 0])
        hidden = text_model(input_ids=question.ids, attention_mask=question.mask, output_hidden_states=True)
        b, x = video_model(video, hidden.hidden_states, question.mask)
        sum(e.pow(2).mean() for e in (t, a, vid_proj(x), bridge_proj(b))).backward()
        parts.zero_grad(set_to_none=False)

    return step
