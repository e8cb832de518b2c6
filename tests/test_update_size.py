"""The size of the optimizer's updates: at any world size, the engine's AdamW step equals the original's, whose
gradient was (1/W)·∇L on its W GPUs and whose optimizer was transformers.AdamW (ε = 1e-6, added before the bias
correction). Checked on the real DeepSpeed engine in a gloo process."""
import math
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mcq_ds.engine.config import TrainConfig
from mcq_ds.engine.schedule import adam_eps

STEPS = 3
LR = 3e-5


def transformers_adamw(param: torch.Tensor, grads: list[torch.Tensor], lr: float, eps: float = 1e-6,
                       betas=(0.9, 0.999)) -> torch.Tensor:
    """transformers 4.10's AdamW (correct_bias=True, weight_decay=0), written out: m, v, then
    p -= lr·√(1−β2ᵗ)/(1−β1ᵗ) · m / (√v + ε)."""
    p, m, v = param.clone(), torch.zeros_like(param), torch.zeros_like(param)
    for t, g in enumerate(grads, start=1):
        m.mul_(betas[0]).add_(g, alpha=1 - betas[0])
        v.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
        p.addcdiv_(m, v.sqrt().add_(eps), value=-lr * math.sqrt(1 - betas[1] ** t) / (1 - betas[0] ** t))
    return p


def gradient() -> torch.Tensor:
    """A fixed ∇L with magnitudes from 1e-3 to 1e-7, where ε matters (the loss is linear: the same every step)."""
    magnitudes = torch.logspace(-3, -7, 64, dtype=torch.float32)
    signs = torch.where(torch.arange(64) % 3 == 0, -1.0, 1.0)
    return magnitudes * signs


def engine_steps(rank: int, port: int, ds_name: str, style: str, out: str) -> None:
    import deepspeed

    from mcq_ds.engine import optim
    from mcq_ds.engine.train import deepspeed_config

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1, timeout=timedelta(seconds=60))
    try:
        cfg = TrainConfig(stage="4f-noun", data={"webvid": "unused"}, lr=LR, global_batch=4, micro_batch=4,
                          ds_config=ds_name, adam_eps_style=style)
        cfg.stage_defaults()
        model = torch.nn.Linear(64, 1, bias=False)
        torch.nn.init.normal_(model.weight, generator=torch.Generator().manual_seed(0))
        start = model.weight.detach().clone()
        ds = deepspeed_config(cfg, 1)
        optimizer = None if "optimizer" in ds else optim.torch_adamw(model.parameters(), cfg.lr, cfg.adam_eps)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)
        for step in range(1, STEPS + 1):
            optim.set_adam_eps(engine.optimizer, cfg.adam_eps, cfg.adam_eps_style, step)
            loss = (engine.module.weight[0] * gradient()).sum()
            engine.backward(loss)
            engine.step()
        torch.save({"start": start, "end": engine.module.weight.detach().clone(), "eps": cfg.adam_eps},
                   os.path.join(out, "result.pt"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_engine(tmp_path, ds_name: str, style: str = "transformers") -> dict:
    mp.spawn(engine_steps, args=(free_port(), ds_name, style, str(tmp_path)), nprocs=1)
    return torch.load(tmp_path / "result.pt")


def test_engine_steps_equal_the_originals_at_its_gpu_count(tmp_path):
    # cpu_fp32.json: ZeRO-1 around torch's AdamW. The JSON configs that name DeepSpeed's own AdamW get the same ε
    # per step through the same param groups; on a CPU they need DeepSpeed's C++ Adam built first (minutes).
    result = run_engine(tmp_path, "cpu_fp32.json")
    assert result["eps"] == pytest.approx(40e-6)  # stage 4f-noun ran on 40 GPUs
    original = transformers_adamw(result["start"][0], [gradient() / 40] * STEPS, LR)
    torch.testing.assert_close(result["end"][0], original, rtol=0, atol=1e-7 * LR)


def test_the_previous_constant_eps_took_different_steps(tmp_path):
    """Before: ε = 1e-6, added after the bias correction, on the exact ∇L. In the first steps the original moved every
    parameter about half as far or less (its ε sat before the bias correction and met a 40× smaller gradient);
    this is what the default now removes."""
    start = torch.zeros(64)
    original = transformers_adamw(start, [gradient() / 40] * STEPS, LR)
    p = start.clone().requires_grad_()
    before = torch.optim.AdamW([p], lr=LR, eps=1e-6, weight_decay=0.0)
    for _ in range(STEPS):
        p.grad = gradient().clone()
        before.step()
    ratio = original.abs() / p.detach().abs()
    assert ratio.max() < 0.55 and ratio[gradient().abs() < 2e-5].max() < 0.05


def test_transformers_eps_schedule_is_exact_and_torch_style_is_constant():
    assert adam_eps(1e-6, 1, 0.999, "torch") == 1e-6
    assert adam_eps(1e-6, 1, 0.999, "transformers") == pytest.approx(1e-6 / math.sqrt(0.001))
    assert adam_eps(1e-6, 10 ** 5, 0.999, "transformers") == pytest.approx(1e-6)
    with pytest.raises(ValueError, match="'transformers' or 'torch'"):
        adam_eps(1e-6, 1, 0.999, "keras")


def test_stage_defaults_and_user_eps():
    def cfg(**kw):
        c = TrainConfig(data={"webvid": "x", "cc3m": "y"}, **kw)
        c.stage_defaults()
        return c
    assert cfg(stage="1f-noun").adam_eps == pytest.approx(32e-6)
    assert cfg(stage="4f-verb").adam_eps == pytest.approx(40e-6)
    assert cfg(stage="demo-4f-noun").adam_eps == pytest.approx(1e-6)
    assert cfg(stage="4f-verb", adam_eps=1e-8).adam_eps == 1e-8  # a user's ε is used as given
    with pytest.raises(ValueError, match="adam_eps_style must be one of transformers, torch"):
        cfg(stage="4f-verb", adam_eps_style="keras")
