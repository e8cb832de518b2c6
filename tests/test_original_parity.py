"""Parity with the original implementation: the same weights and inputs give the same four embeddings.

The original code is not part of mcq-ds (nor may it be downloaded at test time), so this test runs when
MCQ_ORIGINAL_REPO points at a checkout of TencentARC/MCQ; the README records the last run. In CI the same layout
is checked against the specification written out in test_model.py.
"""
import os
import sys

import pytest
import torch
from torch import nn
from transformers import DistilBertConfig, DistilBertModel

from mcq_ds.model import from_original
from test_model import batch, tiny_config

ORIGINAL = os.environ.get("MCQ_ORIGINAL_REPO")
pytestmark = pytest.mark.skipif(not ORIGINAL, reason="set MCQ_ORIGINAL_REPO to a checkout of TencentARC/MCQ")


@pytest.mark.parametrize("frames", [1, 4])
def test_four_embeddings_equal_the_original_implementation(tmp_path, frames):
    sys.path.insert(0, ORIGINAL)
    from model.video_bridge_former import Video_Bridge_Former

    cfg = tiny_config()
    video_model = Video_Bridge_Former(img_size=32, patch_size=16, embed_dim=64, depth=4, num_heads=4, num_frames=4)
    video_model.head, video_model.pre_logits = nn.Identity(), nn.Identity()  # as the original MCQ.__init__ does
    text_model = DistilBertModel(DistilBertConfig(**cfg.text.arch))
    text_proj, vid_proj, bridge_proj = nn.Sequential(nn.ReLU(), nn.Linear(64, 16)), nn.Sequential(nn.Linear(64, 16)), \
        nn.Sequential(nn.Linear(64, 16))
    with torch.no_grad():  # move every weight off its init so no LayerNorm is an identity that could hide a mix-up
        for p in video_model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    parts = {"text_model": text_model, "video_model": video_model, "text_proj": text_proj, "vid_proj": vid_proj,
             "bridge_proj": bridge_proj}
    state = {f"module.{name}.{k}": v for name, part in parts.items() for k, v in part.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "MCQ.pth")

    for part in parts.values():
        part.eval()
    video, text, question, answer = batch(cfg, frames)
    with torch.no_grad():
        t = text_proj(text_model(input_ids=text.ids, attention_mask=text.mask).last_hidden_state[:, 0])
        a = text_proj(text_model(input_ids=answer.ids, attention_mask=answer.mask).last_hidden_state[:, 0])
        hidden = text_model(input_ids=question.ids, attention_mask=question.mask, output_hidden_states=True)
        b, v = video_model(video, hidden.hidden_states, question.mask)
        original = (t, vid_proj(v), a, bridge_proj(b))

        ours = from_original(tmp_path / "MCQ.pth", num_frames=4, head_dim=16).eval()
        mine = ours(video, text, question, answer)
    for name, x, y in zip(("text", "video", "answer", "bridge"), mine, original):
        assert torch.allclose(x, y, atol=1e-5, rtol=0), f"{name}: max diff {(x - y).abs().max():.2e}"


@pytest.mark.parametrize("frames", [1, 3, 4])
def test_miles_embeddings_equal_the_original_miles_implementation(tmp_path, frames):
    """The original MILES model (its SpaceTimeTransformer, Frozen-in-Time's divided space-time block with the
    residual quirk, a 4-row temporal table) against our video encoder with `temporal_attention`, on 1, 3 and 4
    frames (fewer frames than the table takes its first rows)."""
    pytest.importorskip("einops")  # the original code needs it
    sys.path.insert(0, ORIGINAL)
    from model.video_encoder_MILES import SpaceTimeTransformer

    cfg = tiny_config()
    video_model = SpaceTimeTransformer(img_size=32, patch_size=16, embed_dim=64, depth=4, num_heads=4, num_frames=4,
                                       time_init="zeros")
    video_model.head, video_model.pre_logits, video_model.fc = nn.Identity(), nn.Identity(), nn.Identity()
    text_model = DistilBertModel(DistilBertConfig(**cfg.text.arch))
    text_proj, vid_proj = nn.Sequential(nn.ReLU(), nn.Linear(64, 16)), nn.Sequential(nn.Linear(64, 16))
    with torch.no_grad():  # off the zero-initialised temporal attention and unit LayerNorms, so every part matters
        for p in video_model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    parts = {"text_model": text_model, "video_model": video_model, "text_proj": text_proj, "vid_proj": vid_proj}
    state = {f"module.{name}.{k}": v for name, part in parts.items() for k, v in part.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "MILES.pth")

    for part in parts.values():
        part.eval()
    video, text, _, _ = batch(cfg, frames)
    with torch.no_grad():
        original = (text_proj(text_model(input_ids=text.ids, attention_mask=text.mask).last_hidden_state[:, 0]),
                    vid_proj(video_model(video)))
        ours = from_original(tmp_path / "MILES.pth", bridge=False, head_dim=16).eval()
        assert ours.cfg.video.temporal_attention and ours.cfg.video.num_frames == 4
        mine = (ours.encode_text(text), ours.encode_video(video))
    for name, x, y in zip(("text", "video"), mine, original):
        assert torch.allclose(x, y, atol=1e-5, rtol=0), f"{name}: max diff {(x - y).abs().max():.2e}"
        print(f"MILES parity, {frames} frames, {name}: max |diff| {(x - y).abs().max():.2e}")
