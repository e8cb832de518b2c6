"""BridgeFormer: answers the multiple-choice question from the question's text states and the video's patches.

One bridge block per VideoFormer block, as in the original. Block l reads the input of video block l (patch tokens only)
and TextFormer hidden state ⌊l·T/V⌋ (T text layers, V video blocks; ⌊l/2⌋ for DistilBERT's 6 and ViT's 12), so
the last video block's output and the last text layer are never seen. The stream starts as the first
cross-attention output; every later block adds its cross-attention output to the stream, then applies masked
self-attention (global [CLS], per-frame question tokens) and an MLP.
"""
from __future__ import annotations

import torch
from timm.layers import Mlp
from torch import nn

from ..config import VideoConfig
from .attention import CrossAttention, FactorisedAttention
from .checkpointing import maybe_checkpoint


class BridgeBlock(nn.Module):
    def __init__(self, cfg: VideoConfig, question_dim: int):
        super().__init__()
        dim = cfg.width
        self.norm_video = nn.LayerNorm(dim, eps=cfg.ln_eps)
        self.norm_question = nn.LayerNorm(question_dim, eps=cfg.ln_eps)
        self.cross_attn = CrossAttention(dim, cfg.heads, question_dim, cfg.qkv_bias)
        self.norm1 = nn.LayerNorm(dim, eps=cfg.ln_eps)
        self.attn = FactorisedAttention(dim, cfg.heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.ln_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))

    def forward(self, stream: torch.Tensor | None, patches: torch.Tensor, question: torch.Tensor,
                question_mask: torch.Tensor, frames: int) -> torch.Tensor:
        x = self.cross_attn(self.norm_question(question), self.norm_video(patches), frames)
        if stream is not None:
            x = x + stream
        x = x + self.attn(self.norm1(x), groups=frames, key_mask=question_mask)
        return x + self.mlp(self.norm2(x))


class BridgeFormer(nn.Module):
    def __init__(self, cfg: VideoConfig, question_dim: int):
        super().__init__()
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList(BridgeBlock(cfg, question_dim) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)

    def forward(self, video_block_inputs: list[torch.Tensor], question_states: tuple[torch.Tensor, ...],
                question_mask: torch.Tensor, frames: int) -> torch.Tensor:
        """video_block_inputs: V tensors (B, 1 + F*P, D); question_states: T + 1 tensors (B, L, Dq), index 0 the
        embedding output; question_mask: (B, L), nonzero for real tokens. Returns the bridge [CLS] feature."""
        text_layers, depth = len(question_states) - 1, len(self.blocks)
        mask = question_mask.bool()
        stream = None
        for layer, block in enumerate(self.blocks):
            question = question_states[layer * text_layers // depth]
            patches = video_block_inputs[layer][:, 1:]
            # The question's length changes from batch to batch: declared dynamic up front, block-wise
            # `torch.compile` makes one graph for the first block and one for the others, instead of recompiling when
            # the length first changes (a no-op without compile; inside a whole-model compile, dynamo's own business).
            if not torch.compiler.is_compiling():
                for t in (question, mask) if stream is None else (question, mask, stream):
                    torch._dynamo.maybe_mark_dynamic(t, 1)
            stream = maybe_checkpoint(self.grad_checkpointing and self.training,
                                      block, stream, patches, question, mask, frames)
        return self.norm(stream)[:, 0]
