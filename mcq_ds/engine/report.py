"""What a training run really runs on, rank by rank: the facts the first run on a new machine must confirm.

`describe` collects them on each rank after `deepspeed.initialize`; rank 0 logs them and writes every rank's to
`OUT/runtime.json`:

* the device of every rank (`LOCAL_RANK` → `cuda:N`), the CUDA device that is current, the engine's device and the
  device each loader decodes on;
* the optimizer DeepSpeed ended up with (class, PyTorch's `fused` flag, the wrapper around it) and the DeepSpeed ops
  that `deepspeed.initialize` loaded, and which of those were not prebuilt (JIT-compiled then, or taken from a
  previous JIT build in torch's extension cache);
* the precision of the weights, of gradient accumulation and of gradient communication, and how gradients are
  reduced (overlapped with backward or after it);
* the attention kernel PyTorch's dispatcher picks for each attention site of the model (FlashAttention, the
  memory-efficient kernel, cuDNN or the math fallback), on this rank's device, for a padded batch;
* activation checkpointing (and why), `torch.compile`, the float32 matmul precision.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend
from torch.overrides import TorchFunctionMode

from ..model.probe import example_inputs

log = logging.getLogger("mcq_ds.train")


def loaded_deepspeed_ops() -> set[str]:
    """Names of the DeepSpeed ops (C++/CUDA extensions) loaded in this process so far."""
    from deepspeed.ops.op_builder.builder import OpBuilder

    return set(OpBuilder._loaded_ops)


class _AttentionCalls(TorchFunctionMode):
    """Records, for every `scaled_dot_product_attention` call, the innermost module it ran in and the kernel the
    dispatcher picks for those inputs (`torch._fused_sdp_choice`, the function SDPA itself asks)."""

    def __init__(self, names: Mapping[nn.Module, str]):
        super().__init__()
        self.names, self.stack, self.calls = names, [], []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            masked = (args[3] if len(args) > 3 else kwargs.get("attn_mask")) is not None
            kernel = SDPBackend(torch._fused_sdp_choice(*args, **kwargs)).name
            self.calls.append((self.stack[-1] if self.stack else "?", kernel, masked))
        return func(*args, **kwargs)


def attention_kernels(model: nn.Module, inputs: tuple) -> dict[str, dict]:
    """{attention site: {"kernel", "masked", "calls"}} for one forward of `model` on `inputs` (train mode, as in
    training, but without gradients and without touching the random streams). Sites are module names with block
    numbers replaced by `*`."""
    names = {m: re.sub(r"\.\d+(?=\.|$)", ".*", n) for n, m in model.named_modules()}
    mode = _AttentionCalls(names)

    def enter(module, args):
        if module in names:
            mode.stack.append(names[module])

    def leave(module, args, output):
        if module in names and mode.stack:
            mode.stack.pop()

    hooks = [nn.modules.module.register_module_forward_pre_hook(enter),
             nn.modules.module.register_module_forward_hook(leave)]
    device = inputs[0].device
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), mode:
            model.train()
            model(*inputs)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    sites: dict[str, dict] = {}
    for site, kernel, masked in mode.calls:
        entry = sites.setdefault(site, {"kernel": [], "masked": masked, "calls": 0})
        if kernel not in entry["kernel"]:
            entry["kernel"].append(kernel)
        entry["masked"] = entry["masked"] or masked
        entry["calls"] += 1
    return {site: {**e, "kernel": ", ".join(e["kernel"])} for site, e in sites.items()}


def padded_example(model: nn.Module, frames: int, device: torch.device, dtype: torch.dtype) -> tuple:
    """Two samples at the model's size, the second one's texts one token shorter (padded), as real batches are."""
    video, *texts = example_inputs(model.cfg, 2, frames, device, dtype)
    for tokens in texts:
        tokens.mask[1, -1] = 0
    return (video, *texts)


def _gradient_reduction(engine) -> str:
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    stage = engine.zero_optimization_stage()
    if isinstance(engine.optimizer, BF16_Optimizer):
        return "all-reduce after backward (DeepSpeed's BF16_Optimizer: ZeRO-1 with fp32 accumulation)"
    if stage == 0:
        return "all-reduce after backward"
    when = "overlapped with backward" if engine.zero_overlap_comm() else "after backward"
    return f"ZeRO-{stage} {'reduce-scatter' if stage >= 2 else 'reduce'}, {when}"


def _loader_device(loader) -> str:
    if hasattr(loader, "device_id"):  # the DALI loader
        return "cpu" if loader.device == "cpu" else f"cuda:{loader.device_id} (DALI {loader.device})"
    return "cpu workers" + (", pinned" if loader.cfg.pin_memory or (loader.cfg.pin_memory is None
                                                                    and torch.cuda.is_available()) else "")


def describe(engine, device: torch.device, loaders: Mapping, ops_before: set[str], checkpointing: str,
             compiled: str, frames: int) -> dict:
    """This rank's facts (see the module docstring); every rank must call it (the attention probe runs a forward,
    which under ZeRO-3 gathers weights from every rank)."""
    from deepspeed.git_version_info import installed_ops

    model_dtype, accumulation_dtype = engine.get_data_types()
    basic = engine.basic_optimizer
    new_ops = sorted(loaded_deepspeed_ops() - ops_before)
    return {
        "rank": dist.get_rank(), "local_rank": int(os.environ.get("LOCAL_RANK", 0)), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "current_cuda_device": torch.cuda.current_device() if device.type == "cuda" else None,
        "engine_device": str(engine.device),
        "loaders": {source: _loader_device(loader) for source, loader in loaders.items()},
        "optimizer": f"{type(basic).__module__}.{type(basic).__qualname__}",
        "optimizer_fused": basic.defaults["fused"] if "fused" in getattr(basic, "defaults", {}) else None,
        "optimizer_wrapper": type(engine.optimizer).__qualname__,
        "deepspeed_ops_loaded_by_initialize": new_ops,
        "deepspeed_ops_compiled_by_initialize": [op for op in new_ops if not installed_ops.get(op)],
        "zero_stage": engine.zero_optimization_stage(),
        "weights_dtype": str(model_dtype).removeprefix("torch."),
        "grad_accumulation_dtype": str(accumulation_dtype).removeprefix("torch."),
        "grad_communication_dtype": str(engine.communication_data_type).removeprefix("torch."),
        "gradient_reduction": _gradient_reduction(engine),
        "attention_kernels": attention_kernels(engine.module, padded_example(engine.module, frames, device,
                                                                             model_dtype)),
        "activation_checkpointing": checkpointing,
        "compile": compiled,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def publish(facts: dict, out: Path) -> list[dict] | None:
    """Gathers every rank's facts on rank 0, which logs them and writes `out/runtime.json`; returns them there."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, facts)
    if dist.get_rank() != 0:
        return None
    out.mkdir(parents=True, exist_ok=True)
    (out / "runtime.json").write_text(json.dumps({"ranks": gathered}, indent=2) + "\n")
    first = gathered[0]
    log.info("optimizer %s (fused %s) in %s; DeepSpeed ops compiled at start-up: %s", first["optimizer"],
             first["optimizer_fused"], first["optimizer_wrapper"],
             ", ".join(first["deepspeed_ops_compiled_by_initialize"]) or "none")
    log.info("weights %s, gradients accumulated in %s and communicated in %s; %s", first["weights_dtype"],
             first["grad_accumulation_dtype"], first["grad_communication_dtype"], first["gradient_reduction"])
    log.info("activation checkpointing %s; compile: %s", first["activation_checkpointing"], first["compile"])
    for site, about in first["attention_kernels"].items():
        log.info("attention %s: %s%s", site, about["kernel"], " (with a padding mask)" if about["masked"] else "")
    for rank in gathered:
        log.info("rank %d (LOCAL_RANK %d): %s %s, engine %s, loaders %s", rank["rank"], rank["local_rank"],
                 rank["device"], rank["device_name"], rank["engine_device"], rank["loaders"])
    return gathered
