"""MCQ initialised from CLIP, as the paper's MCQ-CLIP: CLIP's two towers as VideoFormer and TextFormer, plus a
BridgeFormer.

    caption  ─► CLIP text tower ─► end-of-text token ─► ln_final ─► text_projection ─► text   (512-d)
    answer   ─► CLIP text tower ─► (the same)                                      ─► answer
    question ─► CLIP text tower ─► hidden states, end-of-text state first ─┐
    video    ─► CLIP visual tower, frame-factorised ─► [CLS] ─► ln_post ─► proj ─► video  (512-d)
                    └─ block inputs ─► BridgeFormer (768 wide) ─► [CLS] ─► Linear ─► bridge (512-d)

The visual tower reads F frames the parameter-free way of the released model: the spatial position rows are tiled
over frames, the [CLS] query attends to every token and each patch attends to [CLS] + its own frame (the same
`FactorisedAttention` as the ImageNet VideoFormer, loaded with CLIP's weights). With one frame it is exactly CLIP.
The patch grid comes from the config, so ViT-B/16 or any other ViT CLIP works, not only the released B/32.

The BridgeFormer design (the original never published it) and its reasons are in the README, "MCQ from CLIP".
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CLIPMCQConfig, CLIPTextConfig, CLIPVisionConfig, VideoConfig
from .attention import FactorisedAttention
from .bridge_former import BridgeFormer
from .checkpointing import maybe_checkpoint
from .mcq import ThreeFormer
from .text_former import check_frozen_layers
from .video_former import init_linear_and_norm


class LayerNorm(nn.LayerNorm):
    """Computed in fp32 whatever the weights' dtype, as in CLIP: its weights are published in fp16, and DeepSpeed's
    bf16 engine casts every weight to bf16."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """x·σ(1.702x), the GELU approximation OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """CLIP's pre-LN block. Its attention is `FactorisedAttention`: per-frame in the visual tower, causal in the text
    tower, and exactly CLIP's multi-head attention for a single frame (keys: `attn.qkv` = CLIP's `in_proj`)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, quick_gelu: bool):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = LayerNorm(width)
        self.attn = FactorisedAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, hidden),
                                             gelu=QuickGELU() if quick_gelu else nn.GELU(),
                                             c_proj=nn.Linear(hidden, width)))

    def forward(self, x: torch.Tensor, groups: int = 1, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), groups=groups, causal=causal)
        return x + self.mlp(self.ln_2(x))


class CLIPVideoFormer(nn.Module):
    """CLIP's visual tower over F frames: `[CLS] + frame 1 patches + frame 2 patches + ...`."""

    def __init__(self, cfg: CLIPVisionConfig, embed_dim: int, quick_gelu: bool):
        super().__init__()
        self.cfg = cfg
        self.grad_checkpointing = False
        width = cfg.width
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(1 + cfg.patches_per_frame, width))
        self.ln_pre = LayerNorm(width)
        self.blocks = nn.ModuleList(ResidualAttentionBlock(width, cfg.heads, cfg.mlp_ratio, quick_gelu)
                                    for _ in range(cfg.depth))
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, embed_dim))

    def freeze_lower(self, blocks: int) -> None:
        """Keeps the patch projection, the class and position embeddings, ln_pre and the first `blocks` blocks as
        they are; 0 freezes nothing."""
        check_frozen_layers(blocks, len(self.blocks), "video")
        if blocks:
            for module in (self.conv1, self.ln_pre, *self.blocks[:blocks]):
                module.requires_grad_(False)
            self.class_embedding.requires_grad_(False)
            self.positional_embedding.requires_grad_(False)

    def forward(self, video: torch.Tensor, keep_block_inputs: bool = False
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """video: (B, F, 3, H, W), normalised with CLIP's statistics. Returns the (B, embed_dim) video embedding and,
        if asked, the input of every block (for the BridgeFormer)."""
        b, frames = video.shape[:2]
        x = self.conv1(video.flatten(0, 1))
        if x.shape[-2] * x.shape[-1] != self.cfg.patches_per_frame:
            raise ValueError(f"frames of {tuple(video.shape[-2:])} pixels give a {x.shape[-2]}×{x.shape[-1]} patch "
                             f"grid; this model takes {self.cfg.img_size}×{self.cfg.img_size}")
        x = x.flatten(2).transpose(1, 2).reshape(b, frames * self.cfg.patches_per_frame, -1)  # frame-major
        pos = self.positional_embedding.to(x.dtype)
        cls = (self.class_embedding.to(x.dtype) + pos[0]).expand(b, 1, -1)
        x = self.ln_pre(torch.cat([cls, x + pos[1:].repeat(frames, 1)], dim=1))
        block_inputs = []
        for block in self.blocks:
            if keep_block_inputs:
                block_inputs.append(x)
            x = maybe_checkpoint(self.grad_checkpointing and self.training, block, x, frames)
        return self.ln_post(x[:, 0]) @ self.proj, block_inputs


class CLIPTextFormer(nn.Module):
    """CLIP's text transformer (causal attention); a text's feature is taken at its end-of-text token."""

    def __init__(self, cfg: CLIPTextConfig, embed_dim: int, quick_gelu: bool):
        super().__init__()
        self.cfg = cfg
        self.grad_checkpointing = False
        width = cfg.width
        self.token_embedding = nn.Embedding(cfg.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.max_length, width))
        self.blocks = nn.ModuleList(ResidualAttentionBlock(width, cfg.heads, cfg.mlp_ratio, quick_gelu)
                                    for _ in range(cfg.depth))
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.zeros(width, embed_dim))

    @property
    def width(self) -> int:
        return self.cfg.width

    def freeze_lower(self, layers: int) -> None:
        """Keeps the token and position embeddings and the first `layers` blocks as they are; 0 freezes nothing."""
        check_frozen_layers(layers, len(self.blocks))
        if layers:
            for module in (self.token_embedding, *self.blocks[:layers]):
                module.requires_grad_(False)
            self.positional_embedding.requires_grad_(False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, hidden_states: bool = False
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Returns the (B, embed_dim) text embedding and, if asked, all T + 1 hidden states (index 0: embeddings).

        The end-of-text token is the last real one (mask sum - 1), which is where CLIP's argmax over ids lands for
        every tokenised text, and stays right when a [MASK] id above end-of-text is in the text.
        """
        if ids.shape[1] > self.cfg.max_length:
            raise ValueError(f"texts of {ids.shape[1]} tokens; CLIP reads at most {self.cfg.max_length} (tokenize with "
                             "truncation=True)")
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]].to(self.token_embedding.weight.dtype)
        states = [x]
        for block in self.blocks:
            x = maybe_checkpoint(self.grad_checkpointing and self.training, block, x, 1, True)
            states.append(x)
        eot = mask.sum(1) - 1
        features = self.ln_final(x[torch.arange(len(ids), device=ids.device), eot])
        return features @ self.text_projection, tuple(states) if hidden_states else None


def bridge_config(vision: CLIPVisionConfig) -> VideoConfig:
    """The BridgeFormer runs at the visual tower's width, heads and depth (one bridge block per visual block)."""
    return VideoConfig(img_size=vision.img_size, patch_size=vision.patch_size, width=vision.width, depth=vision.depth,
                       heads=vision.heads, mlp_ratio=vision.mlp_ratio, num_frames=vision.num_frames, ln_eps=1e-5)


def _sentence_token_first(states: tuple[torch.Tensor, ...], mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Puts each layer's end-of-text state in place of the start-of-text token, as the question's [CLS].

    CLIP's text attention is causal: its start token never sees the question, while the end-of-text token has read
    all of it and is what CLIP pools. The bridge's [CLS] query (which attends to every frame and becomes the bridge
    embedding) is therefore the end-of-text state; the start token carried no information.
    """
    rows, eot = torch.arange(len(mask), device=mask.device), mask.sum(1) - 1
    return tuple(torch.cat([h[rows, eot].unsqueeze(1), h[:, 1:]], dim=1) for h in states)


class CLIPMCQ(ThreeFormer):
    """The MCQ model on CLIP's towers; the same interface as `MCQ`, so the engine, loss, eval and extract code take
    either."""

    def __init__(self, cfg: CLIPMCQConfig):
        super().__init__()
        self.cfg = cfg
        self.video_model = CLIPVideoFormer(cfg.video, cfg.embed_dim, cfg.quick_gelu)
        self.text_model = CLIPTextFormer(cfg.text, cfg.embed_dim, cfg.quick_gelu)
        if cfg.bridge:
            self.bridge_model = BridgeFormer(bridge_config(cfg.video), question_dim=cfg.text.width)
            self.bridge_proj = nn.Linear(cfg.video.width, cfg.embed_dim)
        self.init_weights()
        self.set_grad_checkpointing(cfg.grad_checkpointing)

    def init_weights(self) -> None:
        """A fresh model: truncated-normal(0.02) Linear weights, unit LayerNorms, CLIP's scales for its embedding
        tables and projections. Real runs overwrite the towers with CLIP's weights; the bridge keeps this init."""
        self.apply(init_linear_and_norm)
        for tower in (self.video_model, self.text_model):
            nn.init.normal_(tower.positional_embedding, std=0.01)
        nn.init.normal_(self.video_model.class_embedding, std=self.cfg.video.width ** -0.5)
        nn.init.normal_(self.video_model.proj, std=self.cfg.video.width ** -0.5)
        nn.init.normal_(self.text_model.token_embedding.weight, std=0.02)
        nn.init.normal_(self.text_model.text_projection, std=self.cfg.text.width ** -0.5)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Per-block activation checkpointing in all three formers."""
        self.cfg.grad_checkpointing = enabled
        for former in (self.video_model, self.text_model, getattr(self, "bridge_model", None)):
            if former is not None:
                former.grad_checkpointing = enabled

    def _text_pass(self, ids, mask, hidden_states):
        return self.text_model(ids, mask, hidden_states=hidden_states)

    def _video_pass(self, video, keep_block_inputs):
        return self.video_model(video, keep_block_inputs=keep_block_inputs)

    def _question_states(self, states, mask):
        return _sentence_token_first(states, mask)
