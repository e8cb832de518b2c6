"""What one training step of a model costs, worked out on the meta device: shapes only, nothing allocated or computed.

The model's forward runs with meta tensors in place of its weights (`torch.func.functional_call`), so a ViT-B-size
model at the paper's batch takes about a second on a CPU and no memory. Two numbers come out of it:

* `activation_bytes`: what autograd keeps for backward (the tensors saved by a forward without activation
  checkpointing), which the engine compares with the GPU's free memory to decide whether to checkpoint;
* `train_flops`: the model FLOPs of forward + backward without checkpointing (what MFU counts: a recomputed forward
  is work the hardware does, not work the model needs).

Running on meta also proves the forward never reads a tensor's value on the host: `.item()`, `bool(t)` or
`t.all()` in Python raise there, and on a GPU each is a wait for the device.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from .mcq import Tokens

# Typical MCQ text lengths in tokens, padding included: caption and question about 24, answer about 8.
CAPTION_TOKENS, ANSWER_TOKENS = 24, 8


def example_inputs(cfg, batch: int, frames: int, device: torch.device | str, dtype: torch.dtype,
                   caption_tokens: int = CAPTION_TOKENS, answer_tokens: int = ANSWER_TOKENS) -> tuple:
    """(video, text, question, answer) of a training step: `batch` clips of `frames` frames at the model's size,
    token ids from the middle of the vocabulary, every token real (all-ones masks). (video, text) for a model without
    its BridgeFormer (`cfg.bridge` false: a fine-tuning step)."""
    size = cfg.video.img_size
    video = torch.zeros(batch, frames, 3, size, size, device=device, dtype=dtype)

    def tokens(length: int) -> Tokens:
        ids = torch.full((batch, length), 1000, device=device, dtype=torch.long)
        return Tokens(ids, torch.ones_like(ids))

    if not cfg.bridge:
        return video, tokens(caption_tokens)
    return video, tokens(caption_tokens), tokens(caption_tokens), tokens(answer_tokens)


@contextlib.contextmanager
def without_checkpointing(model: nn.Module) -> Iterator[None]:
    """The model with activation checkpointing off for the duration (restored after)."""
    enabled = bool(getattr(getattr(model, "cfg", None), "grad_checkpointing", False))
    setter = getattr(model, "set_grad_checkpointing", None)
    if setter is not None and enabled:
        setter(False)
    try:
        yield
    finally:
        if setter is not None and enabled:
            setter(True)


def _meta_state(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Meta stand-ins for every parameter and buffer: floating ones in `dtype` (the engine's weight dtype)."""
    state = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        meta = torch.empty_like(t, device="meta", dtype=dtype if t.is_floating_point() else t.dtype)
        state[name] = meta.requires_grad_(t.requires_grad)
    return state


def _meta(inputs):
    if isinstance(inputs, torch.Tensor):
        return inputs.to("meta")
    if isinstance(inputs, tuple) and hasattr(inputs, "_fields"):
        return type(inputs)(*map(_meta, inputs))
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(map(_meta, inputs))
    return inputs


def _outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if isinstance(t, torch.Tensor)]


def activation_bytes(model: nn.Module, inputs: tuple, dtype: torch.dtype = torch.float32) -> int:
    """Bytes autograd saves for backward in one training forward of `model` on `inputs` (any device; they are
    taken to meta), weights in `dtype`, without activation checkpointing. Weights themselves are not counted (they
    are the training state), and a storage saved by several operations counts once."""
    state = _meta_state(model, dtype)
    weights = {t.untyped_storage()._cdata for t in state.values()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in weights:
            saved[storage._cdata] = storage.nbytes()
        return t

    was_training = model.training
    model.train()
    try:
        with without_checkpointing(model), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            functional_call(model, state, _meta(inputs))
    finally:
        model.train(was_training)
    return sum(saved.values())


def train_flops(model: nn.Module, inputs: tuple, dtype: torch.dtype = torch.float32) -> int:
    """Model FLOPs of one training step (forward + backward of a scalar loss on every output), as PyTorch's
    FlopCounterMode counts them (matrix products, convolutions, attention; 2 FLOPs per multiply-add), without
    activation checkpointing whatever the model's setting, so a recomputed forward is never counted."""
    state = _meta_state(model, dtype)
    was_training = model.training
    model.train()
    try:
        with without_checkpointing(model), FlopCounterMode(display=False) as counter:
            out = functional_call(model, state, _meta(inputs))
            sum(e.float().sum() for e in _outputs(out)).backward()
    finally:
        model.train(was_training)
    return counter.get_total_flops()
