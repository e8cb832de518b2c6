"""`mcq-ds train` end to end on the real DeepSpeed engine and launcher (gloo on CPU), with the demo shards."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mcq_ds.model import load_pretrained

VENV_BIN = Path(sys.executable).parent


def train_args(shards, out, *extra) -> list[str]:
    return ["train", "--stage", "demo-1f-noun", "--preset", "tiny", "--data", f"cc3m={shards['cc3m']}",
            "--data", f"webvid={shards['webvid']}", "--out", str(out), "--global-batch", "8", "--workers", "1",
            "--log-every", "1", "--mlflow-uri", "none", "--no-hflip", *extra]


def mcq_ds(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "mcq_ds.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def losses(out: Path) -> dict[int, float]:
    """Per-step loss from the run's local tracking record (every segment of a resumed run)."""
    found = {}
    for line in (out / "tracking.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "metrics":
            found[event["step"]] = event["metrics"]["loss"]
    return found


def metrics(out: Path) -> dict[int, dict[str, float]]:
    """Every metric per step from the run's local tracking record."""
    return {e["step"]: e["metrics"] for e in map(json.loads, (out / "tracking.jsonl").read_text().splitlines())
            if e["event"] == "metrics"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_killed_run_resumes_with_the_same_batches_and_losses(demo_shards, tmp_path):
    steps = ["--max-steps", "8", "--save-every", "3"]
    finish(mcq_ds(*train_args(demo_shards, tmp_path / "straight", *steps)))

    victim = mcq_ds(*train_args(demo_shards, tmp_path / "killed", *steps))
    marker = tmp_path / "killed/checkpoints/step00000003/complete.json"
    deadline = time.time() + 600
    while not marker.exists():
        assert victim.poll() is None, victim.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)  # kill -9, mid-run
    victim.wait()
    assert not (tmp_path / "killed/checkpoints/step00000006/complete.json").exists()
    assert not (tmp_path / "killed/model").exists()

    resumed = finish(mcq_ds(*train_args(demo_shards, tmp_path / "killed", *steps)))
    assert "resumed from" in resumed and "step00000003" in resumed
    straight, killed = losses(tmp_path / "straight"), losses(tmp_path / "killed")
    logged = metrics(tmp_path / "straight")[8]  # noun questions only in this stage: their accuracy and its chance
    assert 0 <= logged["mcq_accuracy_noun"] <= 100 and 100 / 8 <= logged["mcq_chance_noun"] <= 100
    assert "mcq_accuracy_verb" not in logged
    assert sorted(straight) == list(range(1, 9)) and set(killed) >= set(range(4, 9))
    for step in range(4, 9):
        assert killed[step] == pytest.approx(straight[step], rel=1e-6, abs=1e-6), step
    a = load_file(tmp_path / "straight/model/model.safetensors")
    b = load_file(tmp_path / "killed/model/model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # the last 3 complete checkpoints (--keep-last's default) are kept; the export loads as the trained model
    assert sorted(p.name for p in (tmp_path / "killed/checkpoints").glob("step*")) == \
        ["step00000003", "step00000006", "step00000008"]
    model, _ = load_pretrained(tmp_path / "killed/model")
    assert all(torch.equal(v, b[k]) for k, v in model.state_dict().items()) and model.state_dict().keys() == b.keys()


def test_two_ranks_train_and_resume_on_one_rank(demo_shards, tmp_path):
    """2 CPU ranks through the real `deepspeed` launcher, then the same run continued on 1 rank (ZeRO partitions
    re-sharded through DeepSpeed's universal checkpoint); micro-batches of 2, so both accumulate gradients with
    negatives from the whole global batch."""
    out = tmp_path / "run"
    launcher = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), "--module",
                "mcq_ds.cli"]
    proc = subprocess.run([*launcher, *train_args(demo_shards, out, "--max-steps", "2", "--save-every", "2",
                                                  "--micro-batch", "2")],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    marker = json.loads((out / "checkpoints/step00000002/complete.json").read_text())
    assert marker["world_size"] == 2
    params = [json.loads(l) for l in (out / "tracking.jsonl").read_text().splitlines()
              if json.loads(l)["event"] == "params"]
    assert params[0]["params"]["world_size"] == "2"

    # a longer run than the one saved: on purpose, so --resume is given
    resumed = finish(mcq_ds(*train_args(demo_shards, out, "--max-steps", "4", "--save-every", "2",
                                        "--resume", "latest", "--micro-batch", "2")))
    assert "resuming on 1 ranks from a checkpoint written by 2" in resumed
    assert (out / "checkpoints/universal/step00000002").is_dir()
    assert set(losses(out)) >= {1, 2, 3, 4}
    assert json.loads((out / "checkpoints/step00000004/complete.json").read_text())["world_size"] == 1


def test_two_nodes_without_ssh(demo_shards, tmp_path):
    """Two 'nodes' on this machine, one rank each, each started by its own launcher with --no_ssh --node_rank."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1 slots=1\nlocalhost slots=1\n")
    port = str(free_port())
    out = tmp_path / "run"
    procs = []
    for node in (0, 1):
        cmd = [str(VENV_BIN / "deepspeed"), "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(node),
               "--master_addr", "127.0.0.1", "--master_port", port, "--module", "mcq_ds.cli",
               *train_args(demo_shards, out, "--max-steps", "2", "--save-every", "2")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env={**os.environ, "HF_HUB_OFFLINE": "1"}))
    for proc in procs:
        finish(proc)
    assert json.loads((out / "checkpoints/step00000002/complete.json").read_text())["world_size"] == 2
    assert (out / "model/model.safetensors").is_file()


def test_short_training_run_through_the_dali_loader(demo_shards, tmp_path):
    out = tmp_path / "dali"
    finish(mcq_ds(*train_args(demo_shards, out, "--loader", "dali", "--max-steps", "3", "--save-every", "2")))
    assert sorted(losses(out)) == [1, 2, 3]
    assert all(0 < loss < 50 for loss in losses(out).values())
    own = torch.load(out / "checkpoints/step00000002/rank0.pt", weights_only=True)
    assert set(own["loaders"]) == {"cc3m", "webvid"}  # the DALI readers' positions travel with the checkpoint


def test_mcq_weight_zero_trains_the_dual_encoder_alone(demo_shards, tmp_path):
    """--mcq-weight 0, the paper's baseline: the BridgeFormer is never run, so its weights leave as they came. With
    --frozen-text-layers the fixed layers, which the ZeRO checkpoint does not hold, are exported as they came too."""
    finish(mcq_ds("init", "-o", str(tmp_path / "init"), "--preset", "tiny"))
    out = tmp_path / "run"
    finish(mcq_ds(*train_args(demo_shards, out, "--init", str(tmp_path / "init"), "--mcq-weight", "0",
                              "--max-steps", "2", "--frozen-text-layers", "1",
                              "--ds-config", "cpu_fp32.json")))  # fp32 weights: untouched ones stay bit-equal
    before, after = load_file(tmp_path / "init/model.safetensors"), load_file(out / "model/model.safetensors")
    assert set(before) == set(after)
    bridge = [k for k in before if k.startswith(("bridge_model.", "bridge_proj."))]
    assert bridge and all(torch.equal(before[k], after[k]) for k in bridge)
    fixed = [k for k in before if k.startswith("text_model.") and ("embeddings." in k or ".layer.0." in k)]
    assert fixed and all(torch.equal(before[k], after[k]) for k in fixed)
    assert not torch.equal(before["text_model.encoder.transformer.layer.1.ffn.lin1.weight"],
                           after["text_model.encoder.transformer.layer.1.ffn.lin1.weight"])
    assert not torch.equal(before["video_proj.weight"], after["video_proj.weight"])
    logged = metrics(out)
    assert sorted(logged) == [1, 2] and all("loss_mcq" not in m and "mcq_accuracy_noun" not in m
                                            for m in logged.values())
    assert all(m["loss"] == m["loss_vt"] for m in logged.values())
    assert json.loads((out / "config.json").read_text())["mcq_weight"] == 0
    params = next(json.loads(l) for l in (out / "tracking.jsonl").read_text().splitlines()
                  if json.loads(l)["event"] == "params")["params"]
    assert float(params["train.mcq_weight"]) == 0  # in MLflow beside the other options


def test_negative_mcq_weight_is_refused(demo_shards, tmp_path):
    proc = mcq_ds(*train_args(demo_shards, tmp_path / "run", "--mcq-weight", "-1"))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "--mcq-weight must be 0 (no MCQ) or positive" in out
