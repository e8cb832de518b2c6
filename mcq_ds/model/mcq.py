"""The MCQ model: VideoFormer, TextFormer, BridgeFormer and the projection heads, as the original MCQ code builds them.

    caption  ─► TextFormer ─► [CLS] ─► ReLU ─► Linear ─► text
    answer   ─► TextFormer ─► [CLS] ─► ReLU ─► Linear ─► answer      (shared encoder and head)
    question ─► TextFormer ─► hidden states ─┐
    video    ─► VideoFormer ─► [CLS] ─► Linear ─► video
                    └─ block inputs ─► BridgeFormer ─► [CLS] ─► Linear ─► bridge
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MCQConfig
from ..data.batch import Tokens
from .bridge_former import BridgeFormer
from .text_former import TextFormer, build_text_encoder
from .video_former import VideoFormer, init_linear_and_norm
from .vit_init import load_timm_vit


class Embeddings(NamedTuple):
    """The four embeddings of a training step, each (B, embed_dim), not normalised; answer/bridge are None when no
    question was given."""

    text: torch.Tensor
    video: torch.Tensor
    answer: torch.Tensor | None
    bridge: torch.Tensor | None


class ThreeFormer(nn.Module):
    """The MCQ pre-training step, shared by every model family; a family says how its towers pool (`_text_pass`,
    `_video_pass`) and which question token is the bridge's [CLS] (`_question_states`)."""

    def _text_pass(self, ids: torch.Tensor, mask: torch.Tensor, hidden_states: bool
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        raise NotImplementedError

    def _video_pass(self, video: torch.Tensor, keep_block_inputs: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raise NotImplementedError

    def _question_states(self, states: tuple[torch.Tensor, ...], mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return states

    def encode_text(self, text: Tokens) -> torch.Tensor:
        return self._text_pass(text.ids, text.mask, False)[0]

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """video: (B, F, 3, H, W), normalised; F may be fewer than the configured number of frames."""
        return self._video_pass(video, False)[0]

    def forward(self, video: torch.Tensor, text: Tokens, question: Tokens | None = None,
                answer: Tokens | None = None) -> Embeddings:
        """All four embeddings of the MCQ pre-training step (text and video only when no question is given).

        Caption, answer and question go through the text tower as one batch padded to a common length: padding is
        masked (and comes after every real token), so every real token's states are those of separate passes, with
        one encoder call instead of three.
        """
        if question is None or answer is None:
            if question is not None or answer is not None:
                raise ValueError("question and answer go together")
            return Embeddings(self.encode_text(text), self.encode_video(video), None, None)
        if not hasattr(self, "bridge_model"):
            raise ValueError("this model was built without its BridgeFormer (bridge=false); it cannot answer questions")
        b, q_len = text.ids.shape[0], question.ids.shape[1]
        ids, mask = _pad_cat([question, text, answer])
        pooled, hidden = self._text_pass(ids, mask, True)
        text_emb, answer_emb = pooled[b:].split(b)
        # The question's rows come first and are made contiguous: the bridge then gets states at storage offset 0
        # with the same strides whatever the batch's longest text, and `torch.compile` no new graph for each.
        question_states = self._question_states(tuple(h[:b, :q_len].contiguous() for h in hidden), question.mask)
        video_emb, block_inputs = self._video_pass(video, True)
        bridge = self.bridge_model(block_inputs, question_states, question.mask, frames=video.shape[1])
        return Embeddings(text_emb, video_emb, answer_emb, self.bridge_proj(bridge))


class MCQ(ThreeFormer):
    def __init__(self, cfg: MCQConfig):
        super().__init__()
        self.cfg = cfg
        self.text_model = TextFormer(build_text_encoder(cfg.text))
        self.video_model = VideoFormer(cfg.video)
        self.video_model.init_weights()
        if cfg.video.pretrained:
            load_timm_vit(self.video_model, cfg.video.pretrained)
        if cfg.bridge:
            self.bridge_model = BridgeFormer(cfg.video, question_dim=self.text_model.width)
            self.bridge_model.apply(init_linear_and_norm)
        self.text_proj = nn.Sequential(nn.ReLU(), nn.Linear(self.text_model.width, cfg.embed_dim))
        self.video_proj = nn.Linear(cfg.video.width, cfg.embed_dim)
        if cfg.bridge:
            self.bridge_proj = nn.Linear(cfg.video.width, cfg.embed_dim)
        self.set_grad_checkpointing(cfg.grad_checkpointing)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Per-block activation checkpointing in all three formers (non-reentrant torch checkpointing)."""
        self.cfg.grad_checkpointing = enabled
        self.video_model.grad_checkpointing = enabled
        if hasattr(self, "bridge_model"):
            self.bridge_model.grad_checkpointing = enabled
        encoder = self.text_model.encoder
        if hasattr(encoder, "activation_checkpointing_enable"):  # transformers >= 5
            if enabled:
                encoder.activation_checkpointing_enable({"use_reentrant": False})
            elif encoder.is_activation_checkpointing:
                encoder.activation_checkpointing_disable()
        elif enabled:
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif encoder.is_gradient_checkpointing:
            encoder.gradient_checkpointing_disable()

    def _text_pass(self, ids, mask, hidden_states):
        last, hidden = self.text_model(ids, mask, hidden_states=hidden_states)
        if self.cfg.text.pooling == "mean":
            weights = mask.unsqueeze(-1).to(last.dtype)
            pooled = (last * weights).sum(1) / weights.sum(1).clamp_min(1)
        else:
            pooled = last[:, 0]
        return self.text_proj(pooled), hidden

    def _video_pass(self, video, keep_block_inputs):
        cls, block_inputs = self.video_model(video, keep_block_inputs=keep_block_inputs)
        return self.video_proj(cls), block_inputs


def _pad_cat(batches: list[Tokens]) -> Tokens:
    length = max(t.ids.shape[1] for t in batches)
    ids = torch.cat([F.pad(t.ids, (0, length - t.ids.shape[1])) for t in batches])
    mask = torch.cat([F.pad(t.mask, (0, length - t.mask.shape[1])) for t in batches])
    return Tokens(ids, mask)
