"""The two attention patterns of MCQ, both through `scaled_dot_product_attention` (FlashAttention on GPU).

Both work on a sequence laid out as `[CLS] + G groups of n tokens` (groups are frames for the VideoFormer and the
bridge stream, spatial positions for the optional temporal attention). The [CLS] query attends to every token;
every other query attends only to [CLS] + the tokens of its own group, as in the original
VideoFormer and BridgeFormer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _split_groups(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, H, G*n, d) -> (B*G, H, n, d), group-major within each sample."""
    b, h, gn, d = t.shape
    return t.view(b, h, groups, gn // groups, d).transpose(1, 2).reshape(b * groups, h, gn // groups, d)


def _merge_groups(t: torch.Tensor, groups: int) -> torch.Tensor:
    """Inverse of `_split_groups`: (B*G, H, n, d) -> (B, H, G*n, d)."""
    bg, h, n, d = t.shape
    return t.view(bg // groups, groups, h, n, d).transpose(1, 2).reshape(bg // groups, h, groups * n, d)


def _repeat_per_group(t: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, ...) -> (B*G, ...): the same tensor for every group of a sample."""
    return t.unsqueeze(1).expand(t.shape[0], groups, *t.shape[1:]).reshape(t.shape[0] * groups, *t.shape[1:])


class FactorisedAttention(nn.Module):
    """Multi-head self-attention with the global-[CLS], per-group layout.

    `key_mask` (B, 1 + n), True where a token is real, masks padding keys; it is the same for every group (the
    question mask tiled over frames in the bridge stream). With one group this is plain ViT attention, and with
    `causal` (one group only) each query sees itself and the tokens before it: CLIP's text attention.
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, groups: int, key_mask: torch.Tensor | None = None,
                causal: bool = False) -> torch.Tensor:
        if causal and groups != 1:
            raise ValueError("causal attention is for a single sequence (groups=1)")
        b, n, dim = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        cls_mask = None
        if key_mask is not None:
            tiled = torch.cat([key_mask[:, :1], key_mask[:, 1:].repeat(1, groups)], dim=1)
            cls_mask = tiled[:, None, None, :]
        if groups == 1:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=cls_mask, is_causal=causal)
        else:
            cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v, attn_mask=cls_mask)
            kg = torch.cat([_repeat_per_group(k[:, :, :1], groups), _split_groups(k[:, :, 1:], groups)], dim=2)
            vg = torch.cat([_repeat_per_group(v[:, :, :1], groups), _split_groups(v[:, :, 1:], groups)], dim=2)
            group_mask = None if key_mask is None else _repeat_per_group(key_mask[:, None, None, :], groups)
            out = F.scaled_dot_product_attention(_split_groups(q[:, :, 1:], groups), kg, vg, attn_mask=group_mask)
            out = torch.cat([cls_out, _merge_groups(out, groups)], dim=2)
        return self.proj(out.transpose(1, 2).reshape(b, n, dim))


class CrossAttention(nn.Module):
    """Question tokens (queries) attend to video patch tokens (keys/values), the BridgeFormer's first step.

    The question [CLS] attends to the patches of all frames; every other question token is copied once per frame and
    each copy attends only to that frame's patches, so the output has 1 + frames * (L - 1) tokens, frame-major.
    The question may be narrower than the video stream (a 384-wide MiniLM beside a 768-wide ViT): the query
    projection maps it to the video width, which is the original layer when the widths agree.
    """

    def __init__(self, dim: int, heads: int, question_dim: int | None = None, qkv_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(question_dim or dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, question: torch.Tensor, patches: torch.Tensor, frames: int) -> torch.Tensor:
        b, length, _ = question.shape
        dim = self.proj.in_features
        hd = dim // self.heads
        q = self.q(question).view(b, length, self.heads, hd).transpose(1, 2)
        k, v = self.kv(patches).view(b, patches.shape[1], 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        if frames == 1:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)
            out = F.scaled_dot_product_attention(
                _repeat_per_group(q[:, :, 1:], frames), _split_groups(k, frames), _split_groups(v, frames))
            out = torch.cat([cls_out, _merge_groups(out, frames)], dim=2)
        return self.proj(out.transpose(1, 2).reshape(b, out.shape[2], dim))
