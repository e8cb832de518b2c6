"""The BridgeFormer's cross-attention maps: how strongly the question's tokens attend to each video patch.

The fast path (`mcq_ds.model.attention.CrossAttention`) runs fused SDPA kernels that never materialise the
attention probabilities. Rather than add a slow branch to it, `record_cross_attention` hooks every bridge block's
cross-attention during one ordinary forward pass and keeps the block's inputs (the normalised question states and
video patches); `cross_attention_probs` then recomputes the probabilities from the block's own `q`/`kv` weights with
the same layout (the question [CLS] over the patches of all frames, every other question token over one frame's
patches per copy). The test checks that these probabilities, applied to the values, give the block's real output.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from ..data.batch import Tokens
from ..model import MCQ
from ..model.attention import CrossAttention

TokenChoice = Literal["words", "masks", "cls"]


@dataclass
class CrossAttentionInputs:
    """What one bridge block's cross-attention saw: normalised question (B, L, Dq) and patches (B, F*P, D)."""

    question: torch.Tensor
    patches: torch.Tensor
    frames: int
    output: torch.Tensor


@contextlib.contextmanager
def record_cross_attention(model: MCQ) -> Iterator[list[CrossAttentionInputs]]:
    """Within the block, every forward pass appends one entry per bridge block (in block order) to the list."""
    if not hasattr(model, "bridge_model"):
        raise ValueError("this model has no BridgeFormer (an evaluation-only model); attention maps need the "
                         "pre-training model, e.g. MCQ.pth or a run's OUT/model")
    recorded: list[CrossAttentionInputs] = []

    def hook(module, args, output):
        question, patches, frames = args
        recorded.append(CrossAttentionInputs(question.detach(), patches.detach(), frames, output.detach()))

    handles = [block.cross_attn.register_forward_hook(hook) for block in model.bridge_model.blocks]
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


def cross_attention_probs(attn: CrossAttention, seen: CrossAttentionInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(cls, tokens): the [CLS] query's probabilities over all patches (B, H, F, P), and every other question
    token's probabilities over its frame's patches (B, H, L − 1, F, P); each distribution sums to 1."""
    b, length, _ = seen.question.shape
    dim = attn.proj.in_features
    heads, hd = attn.heads, dim // attn.heads
    frames = seen.frames
    patches = seen.patches.shape[1] // frames
    q = attn.q(seen.question).view(b, length, heads, hd).transpose(1, 2)  # (B, H, L, hd)
    k = attn.kv(seen.patches).view(b, frames * patches, 2, heads, hd)[:, :, 0].transpose(1, 2)  # (B, H, FP, hd)
    scores = q @ k.transpose(-1, -2) * hd ** -0.5  # (B, H, L, FP), SDPA's default scale
    cls = scores[:, :, 0].softmax(-1).view(b, heads, frames, patches)
    tokens = scores[:, :, 1:].view(b, heads, length - 1, frames, patches).softmax(-1)
    return cls, tokens


def apply_probs(attn: CrossAttention, seen: CrossAttentionInputs, cls: torch.Tensor,
                tokens: torch.Tensor) -> torch.Tensor:
    """The cross-attention output these probabilities give (the check that they are the ones the model used)."""
    b, heads, frames, patches = cls.shape
    dim = attn.proj.in_features
    v = attn.kv(seen.patches).view(b, frames * patches, 2, heads, dim // heads)[:, :, 1].transpose(1, 2)
    v = v.reshape(b, heads, frames, patches, -1)
    cls_out = torch.einsum("bhfp,bhfpd->bhd", cls, v).unsqueeze(2)  # (B, H, 1, hd)
    token_out = torch.einsum("bhlfp,bhfpd->bhfld", tokens, v).flatten(2, 3)  # frame-major copies, as the model
    out = torch.cat([cls_out, token_out], dim=2)
    return attn.proj(out.transpose(1, 2).reshape(b, out.shape[2], dim))


@torch.no_grad()
def question_attention(model: MCQ, video: torch.Tensor, text: Tokens, question: Tokens, answer: Tokens,
                       mask_token_id: int, tokens: TokenChoice = "words", block: int | None = -1) -> torch.Tensor:
    """Heat maps (B, F, gh, gw): per question, the attention of its chosen query tokens over each frame's patches,
    averaged over heads, those tokens and the chosen bridge block (`block=None`: all blocks).

    `tokens`: "words" = every real question token but [CLS] and [SEP]; "masks" = only the [MASK] tokens (the
    hidden phrase); "cls" = the question [CLS], whose one distribution spans all frames."""
    model.eval()
    with record_cross_attention(model) as recorded:
        model(video, text, question, answer)
    blocks = range(len(recorded)) if block is None else [range(len(recorded))[block]]
    heat = 0
    for i in blocks:
        cls, per_token = cross_attention_probs(model.bridge_model.blocks[i].cross_attn, recorded[i])
        if tokens == "cls":
            heat = heat + cls.mean(1)
            continue
        ids, real = question.ids[:, 1:], question.mask[:, 1:].bool()
        last = real.sum(1, keepdim=True) - 1  # the [SEP] of each question
        chosen = real & (torch.arange(ids.shape[1], device=ids.device) != last)
        if tokens == "masks":
            chosen &= ids == mask_token_id
        if not chosen.any(1).all():
            raise ValueError("a question has no token of the chosen kind (tokens='masks' needs a masked phrase)")
        weights = chosen.float() / chosen.sum(1, keepdim=True)
        heat = heat + torch.einsum("bhlfp,bl->bfp", per_token, weights) / per_token.shape[1]
    heat = heat / len(blocks)
    side = int(round(heat.shape[-1] ** 0.5))
    return heat.view(*heat.shape[:2], side, side)
