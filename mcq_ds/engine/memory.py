"""Whether a stage needs activation checkpointing on this GPU, from what its step needs and what the GPU has free.

Checkpointing recomputes every block's forward in backward: about a third more FLOPs for the same step. It pays only
when the activations would not fit otherwise, so the default is decided per run: the activations the step saves
(measured on the meta device at this rank's micro-batch, `model.probe.activation_bytes`), plus the training state
DeepSpeed will hold (weights, gradients, fp32 master weights and Adam moments, the latter partitioned by ZeRO), plus a
fixed allowance, against the GPU's free memory before training starts.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..model.probe import activation_bytes, example_inputs

GIB = 2 ** 30
# Backward holds, besides the saved activations, the gradients of the activations in flight and temporaries; on the
# base model (4 frames, batch 8, fp32, CPU) the step's measured peak over the weights and their gradients was 1.00×
# the saved activations, so 1.25 leaves room.
BACKWARD_FACTOR = 1.25
# CUDA/NCCL workspaces, DALI's decoding buffers, reduce buckets and allocator fragmentation.
ALLOWANCE = 3 * GIB
# Text lengths (padding included) the estimate assumes: a batch pads to its longest caption.
CAPTION_TOKENS, ANSWER_TOKENS = 48, 16


class Choice(NamedTuple):
    enabled: bool
    reason: str


def training_state_bytes(params: int, ds: dict, world: int) -> int:
    """GPU bytes of the training state DeepSpeed keeps for `params` parameters under the DeepSpeed config `ds`.

    bf16: bf16 weights and gradients on every rank; fp32 master weights, Adam's two moments and (with `grad_accum_dtype`
    fp32) fp32 gradients, partitioned over the ranks from ZeRO stage 1 on, on the CPU with optimizer offload. fp32:
    weights and gradients, and the partitioned moments. Stage 3's partitioning of the weights is left out (an
    overestimate).
    """
    bf16 = ds.get("bf16", {}).get("enabled", False)
    zero = ds.get("zero_optimization", {})
    shards = world if zero.get("stage", 0) >= 1 else 1
    offloaded = zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)
    replicated = 2 + 2 if bf16 else 4 + 4
    fp32_grads = 4 if bf16 and ds.get("data_types", {}).get("grad_accum_dtype") == "fp32" else 0
    partitioned = 0 if offloaded else (4 if bf16 else 0) + 8 + fp32_grads
    return params * replicated + params * partitioned // shards


def checkpointing_default(model: nn.Module, ds: dict, world: int, frames: int, device: torch.device) -> Choice:
    """On when this rank's step is estimated not to fit in the GPU's free memory; off on a CPU."""
    if device.type != "cuda":
        return Choice(False, "no GPU: off (set --grad-checkpointing to trade compute for memory)")
    dtype = torch.bfloat16 if ds.get("bf16", {}).get("enabled", False) else torch.float32
    micro = ds["train_micro_batch_size_per_gpu"]
    inputs = example_inputs(model.cfg, micro, frames, "meta", dtype, CAPTION_TOKENS, ANSWER_TOKENS)
    activations = activation_bytes(model, inputs, dtype)
    state = training_state_bytes(sum(p.numel() for p in model.parameters()), ds, world)
    free, total = torch.cuda.mem_get_info(device)
    need = BACKWARD_FACTOR * activations + state + ALLOWANCE
    enabled = need > free
    return Choice(enabled, f"{'on' if enabled else 'off'}: the step needs about {need / GIB:.1f} GiB ("
                  f"{activations / GIB:.1f} GiB of activations at micro-batch {micro} × {frames} frames, "
                  f"{state / GIB:.1f} GiB of training state) and the GPU has {free / GIB:.1f} of {total / GIB:.1f} "
                  "GiB free")
