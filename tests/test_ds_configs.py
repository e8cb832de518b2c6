"""Every DeepSpeed config in ds_configs/ trains on the real engine: 2 gloo ranks through the `deepspeed` launcher, two
optimizer steps each, in bf16 where this CPU computes bf16 natively (AVX512-BF16 or AMX; elsewhere the bf16 configs run
with bf16 off, their ZeRO stage, offload and reduction settings unchanged). Each run's OUT/runtime.json
(mcq_ds/engine/report.py) says what DeepSpeed really built: PyTorch's fused AdamW and no optimizer op loaded (so none
compiled) at `deepspeed.initialize`, fp32 gradient accumulation and communication, reduction overlapped with backward
from ZeRO-2 on, and each rank on the device of its LOCAL_RANK."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mcq_ds.engine.config import DS_CONFIGS
from test_engine import free_port

CONFIGS = sorted(p.name for p in DS_CONFIGS.glob("*.json"))
DALI_RUN = "zero2_bf16.json"  # the GPU default also reads through the DALI loader


def native_bf16() -> bool:
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def shipped(name: str) -> dict:
    return json.loads((DS_CONFIGS / name).read_text())


@pytest.fixture(scope="module")
def trained(demo_shards, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds_configs")
    runs = []
    for name in CONFIGS:
        ds = shipped(name)
        if ds.get("bf16", {}).get("enabled") and not native_bf16():
            ds["bf16"]["enabled"] = False
        (root / name).write_text(json.dumps(ds))
        runs.append(["--stage", "demo-1f-noun", "--preset", "tiny", "--data", f"cc3m={demo_shards['cc3m']}",
                     "--data", f"webvid={demo_shards['webvid']}", "--out", str(root / name.removesuffix(".json")),
                     "--global-batch", "8", "--workers", "1", "--log-every", "1", "--mlflow-uri", "none",
                     "--max-steps", "2", "--save-every", "2", "--ds-config", str(root / name),
                     "--loader", "dali" if name == DALI_RUN else "torch"])
    (root / "runs.json").write_text(json.dumps(runs))
    command = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
               str(Path(__file__).parent / "ds_config_runs.py"), str(root / "runs.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
                              filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))})
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return root


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_trains_with_no_compiled_op_and_fp32_gradients(trained, name):
    ds, out = shipped(name), trained / name.removesuffix(".json")
    bf16 = ds.get("bf16", {}).get("enabled", False) and native_bf16()
    stage = ds["zero_optimization"]["stage"]
    ranks = json.loads((out / "runtime.json").read_text())["ranks"]
    assert [(r["rank"], r["local_rank"]) for r in ranks] == [(0, 0), (1, 1)]
    for rank in ranks:
        assert rank["device"] == rank["engine_device"] == "cpu" and rank["current_cuda_device"] is None
        assert rank["optimizer"] == "torch.optim.adamw.AdamW" and rank["optimizer_fused"]
        # nothing for the optimizer; on a CPU, DeepSpeed's CPU accelerator brings its shared-memory communication op
        # for gloo (a GPU run has no such op: NCCL)
        assert set(rank["deepspeed_ops_loaded_by_initialize"]) <= {"deepspeed_shm_comm"}
        assert rank["zero_stage"] == stage
        assert rank["weights_dtype"] == ("bfloat16" if bf16 else "float32")
        assert rank["grad_communication_dtype"] == "float32"
        # ZeRO-1 accumulates in fp32 only through DeepSpeed's BF16_Optimizer, which cannot overlap the reduction
        # and whose checkpoints zero_to_fp32 cannot read: zero1_bf16.json overlaps and accumulates in bf16
        assert rank["grad_accumulation_dtype"] == ("bfloat16" if bf16 and stage == 1 else "float32")
        if stage >= 1 and name != "cpu_fp32.json":
            assert rank["gradient_reduction"].endswith("overlapped with backward")
        if name == DALI_RUN:
            assert rank["loaders"] == {"cc3m": "cpu", "webvid": "cpu"}
        for about in rank["attention_kernels"].values():
            assert about["kernel"] in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
    metrics = [json.loads(line) for line in (out / "tracking.jsonl").read_text().splitlines()
               if json.loads(line)["event"] == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["metrics"]["loss"]) and 0 < m["metrics"]["loss"] < 50 for m in metrics)
    assert (out / "model/model.safetensors").is_file()
