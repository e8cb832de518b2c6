"""Model FLOPs, activation memory and MFU arithmetic, checked against a model counted by hand; the checkpointing
default's arithmetic; the forward's freedom from host syncs (it runs on the meta device)."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mcq_ds.bench.model import card_peak, matmul_math, mfu
from mcq_ds.model.presets import preset
from mcq_ds.engine.memory import training_state_bytes
from mcq_ds.model import create_model
from mcq_ds.model.checkpointing import maybe_checkpoint
from mcq_ds.model.probe import activation_bytes, example_inputs, train_flops


class TwoLinear(nn.Module):
    """x (N, 8) → [Linear(8, 16) → ReLU] (checkpointed) → Linear(16, 4): small enough to count by hand."""

    def __init__(self):
        super().__init__()
        self.cfg = SimpleNamespace(grad_checkpointing=True)
        self.a, self.b = nn.Sequential(nn.Linear(8, 16), nn.ReLU()), nn.Linear(16, 4)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.cfg.grad_checkpointing = enabled

    def forward(self, x):
        return self.b(maybe_checkpoint(self.cfg.grad_checkpointing and self.training, self.a, x))


def test_model_flops_count_forward_and_backward_once_even_under_checkpointing():
    model, x = TwoLinear(), torch.randn(5, 8)
    # forward 2·N·in·out per layer; backward: both weight gradients, and the input gradient of b only (x needs none)
    by_hand = 2 * 5 * 8 * 16 + 2 * 5 * 16 * 4 + (2 * 5 * 16 * 4) * 2 + 2 * 5 * 8 * 16
    assert train_flops(model, (x,)) == by_hand == 4480
    assert model.cfg.grad_checkpointing  # the model's setting is restored
    with FlopCounterMode(display=False) as counter:  # what the hardware does: a's forward twice
        model(x).sum().backward()
    assert counter.get_total_flops() == by_hand + 2 * 5 * 8 * 16


def test_mcq_model_flops_are_the_real_steps_without_recompute():
    model = create_model(preset("tiny")).train()
    inputs = example_inputs(model.cfg, 2, 4, "cpu", torch.float32)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:  # attention as counted matmuls
        sum(e.sum() for e in model(*inputs)).backward()
    assert train_flops(model, inputs) == counter.get_total_flops()
    model.set_grad_checkpointing(True)
    assert train_flops(model, inputs) == counter.get_total_flops()
    # linear in the batch, so one count at any batch size scales
    assert train_flops(model, example_inputs(model.cfg, 6, 4, "meta", torch.float32)) == 3 * counter.get_total_flops()


def test_mfu_arithmetic_and_card_peaks():
    # the paper's 4-frame step: 558.8 GFLOP per sample (research: ≈559), 20 samples in 0.1 s on an A100 in bf16
    assert mfu(20 * 558.8e9, 0.1, card_peak("NVIDIA A100-SXM4-80GB").bf16) == pytest.approx(0.3582, abs=1e-4)
    assert card_peak("NVIDIA A100-PCIE-40GB") == card_peak("NVIDIA A100 80GB PCIe") == card_peak("NVIDIA A100-SXM4-40GB")
    assert card_peak("NVIDIA H100 80GB HBM3", 132).bf16 == 989.4
    assert card_peak("NVIDIA H100 PCIe", 114).card == card_peak("NVIDIA H100", 114).card == "H100 PCIe"
    assert card_peak("NVIDIA H100 NVL", 132).bf16 == 835.5
    assert card_peak("NVIDIA H200").card == "H200 SXM" and card_peak("NVIDIA H200 NVL").card == "H200 NVL"
    assert card_peak("NVIDIA GH200 480GB").card == "GH200"
    assert card_peak("NVIDIA L40S").card == "L40S" and card_peak("NVIDIA L4").card == "L4"
    assert card_peak("NVIDIA A10").card == "A10" and card_peak("NVIDIA A40").card == "A40"
    assert card_peak("Tesla V100-SXM2-32GB") is None  # no bf16 tensor cores: no MFU without --peak-tflops
    a100 = card_peak("NVIDIA A100-SXM4-80GB")
    assert [getattr(a100, matmul_math(d, tf32)) for d, tf32 in
            ((torch.bfloat16, False), (torch.float32, True), (torch.float32, False))] == [312.0, 156.0, 19.5]


def test_activation_bytes_follow_batch_and_dtype_and_forward_never_syncs():
    model = create_model(preset("tiny"))
    two, four, six = (activation_bytes(model, example_inputs(model.cfg, b, 4, "meta", torch.float32))
                      for b in (2, 4, 6))
    assert six - four == four - two > 0.9 * two / 2  # a fixed part plus the same bytes for every sample
    half = activation_bytes(model, example_inputs(model.cfg, 4, 4, "meta", torch.bfloat16), torch.bfloat16)
    assert 0.5 * four < half < 0.8 * four  # most saved tensors halve; masks, ids and LayerNorm statistics do not
    # the three towers ran on meta tensors: nothing in the forward reads a value on the host (`.item()`, `mask.all()`)
    clip = create_model(preset("clip-tiny"))
    assert activation_bytes(clip, example_inputs(clip.cfg, 2, 4, "meta", torch.float32)) > 0


def test_training_state_bytes_follow_precision_and_zero_partitioning():
    bf16 = {"bf16": {"enabled": True}, "data_types": {"grad_accum_dtype": "fp32"}, "zero_optimization": {"stage": 2}}
    # bf16 weights + gradients on every rank; fp32 master, Adam moments and fp32 gradients split over 8 ranks
    assert training_state_bytes(1000, bf16, 8) == 1000 * 4 + 1000 * 16 // 8
    assert training_state_bytes(1000, {"zero_optimization": {"stage": 0}}, 8) == 1000 * 16
    offload = {**bf16, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    assert training_state_bytes(1000, offload, 8) == 1000 * 4
