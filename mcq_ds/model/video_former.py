"""VideoFormer: a ViT-B/16 that reads F frames with one global [CLS], as the original MCQ.

Tokens are `[CLS] + frame 1 patches + frame 2 patches + ...`; the spatial position table is tiled over frames and
there is no temporal parameter, so frames interact only through [CLS] and frame order is invisible. The optional
`temporal_attention` adds Frozen-in-Time's divided space-time block for users who want order to matter.
"""
from __future__ import annotations

import torch
from timm.layers import Mlp, trunc_normal_
from torch import nn

from ..config import VideoConfig
from .attention import FactorisedAttention
from .checkpointing import maybe_checkpoint
from .text_former import check_frozen_layers


def _position_major(patches: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, F*P, D) frame-major -> (B, P*F, D) grouped by spatial position, for temporal attention."""
    b, fp, d = patches.shape
    return patches.view(b, frames, fp // frames, d).transpose(1, 2).reshape(b, fp, d)


def _frame_major(patches: torch.Tensor, frames: int) -> torch.Tensor:
    """Inverse of `_position_major`."""
    b, pf, d = patches.shape
    return patches.view(b, pf // frames, frames, d).transpose(1, 2).reshape(b, pf, d)


class VideoBlock(nn.Module):
    """Pre-LN transformer block; patch tokens attend within their frame plus [CLS]."""

    def __init__(self, cfg: VideoConfig):
        super().__init__()
        dim = cfg.width
        self.norm1 = nn.LayerNorm(dim, eps=cfg.ln_eps)
        self.attn = FactorisedAttention(dim, cfg.heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.ln_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        if cfg.temporal_attention:
            self.norm3 = nn.LayerNorm(dim, eps=cfg.ln_eps)
            self.timeattn = FactorisedAttention(dim, cfg.heads, cfg.qkv_bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        if hasattr(self, "timeattn"):
            # Frozen-in-Time order: temporal attention feeds the spatial attention's input, and (Frozen's quirk,
            # kept so its weights load) the spatial residual is added to the block input, not to x + time_out.
            positions = (x.shape[1] - 1) // frames
            h = self.norm3(x)
            h = torch.cat([h[:, :1], _position_major(h[:, 1:], frames)], dim=1)
            t = self.timeattn(h, groups=positions)
            t = torch.cat([t[:, :1], _frame_major(t[:, 1:], frames)], dim=1)
            x = x + self.attn(self.norm1(x + t), groups=frames)
        else:
            x = x + self.attn(self.norm1(x), groups=frames)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VideoConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, F, 3, H, W) -> (B, F*P, D), frame-major."""
        b, f = video.shape[:2]
        x = self.proj(video.flatten(0, 1))
        return x.flatten(2).transpose(1, 2).reshape(b, -1, x.shape[1])


class VideoFormer(nn.Module):
    def __init__(self, cfg: VideoConfig):
        super().__init__()
        self.cfg = cfg
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.patches_per_frame, cfg.width))
        if cfg.temporal_attention:
            self.temporal_embed = nn.Parameter(torch.zeros(1, cfg.num_frames, cfg.width))
        self.blocks = nn.ModuleList(VideoBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)

    def init_weights(self) -> None:
        """As the original: trunc-normal(0.02) Linear weights and position/[CLS] tables, zero biases, unit LayerNorms;
        temporal attention starts as an exact no-op (Frozen's zero init: v = 0, so the output is 0)."""
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_linear_and_norm)
        for block in self.blocks:
            if hasattr(block, "timeattn"):
                nn.init.zeros_(block.timeattn.qkv.weight)
                nn.init.zeros_(block.timeattn.qkv.bias)
                nn.init.ones_(block.timeattn.proj.weight)
                nn.init.zeros_(block.timeattn.proj.bias)

    def freeze_lower(self, blocks: int) -> None:
        """Keeps the patch projection, the [CLS] and position tables and the first `blocks` blocks as they are (no
        gradient); 0 freezes nothing."""
        check_frozen_layers(blocks, len(self.blocks), "video")
        if blocks:
            for module in (self.patch_embed, *self.blocks[:blocks]):
                module.requires_grad_(False)
            self.cls_token.requires_grad_(False)
            self.pos_embed.requires_grad_(False)

    def embed(self, video: torch.Tensor) -> torch.Tensor:
        """Patch tokens + tiled spatial positions (+ temporal positions when enabled), with [CLS] in front."""
        frames = video.shape[1]
        if hasattr(self, "temporal_embed") and frames > self.cfg.num_frames:
            raise ValueError(f"the model's temporal position table has {self.cfg.num_frames} rows: it takes at most "
                             f"{self.cfg.num_frames} frames, got {frames}")
        patches = self.patch_embed(video)
        pos = self.pos_embed[:, 1:]
        if hasattr(self, "temporal_embed"):
            pos = pos.unsqueeze(1) + self.temporal_embed[:, :frames].unsqueeze(2)  # (1, F, P, D)
            pos = pos.flatten(1, 2)
        else:
            pos = pos.repeat(1, frames, 1)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(video.shape[0], -1, -1)
        return torch.cat([cls, patches + pos], dim=1)

    def forward(self, video: torch.Tensor, keep_block_inputs: bool = False
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the normalised [CLS] feature and, if asked, the input of every block (for the BridgeFormer)."""
        frames = video.shape[1]
        x = self.embed(video)
        block_inputs = []
        for block in self.blocks:
            if keep_block_inputs:
                block_inputs.append(x)
            x = maybe_checkpoint(self.grad_checkpointing and self.training, block, x, frames)
        return self.norm(x)[:, 0], block_inputs


def init_linear_and_norm(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
