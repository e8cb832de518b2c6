"""What a resume reads and where a run writes, on the real DeepSpeed engine: no pickled code runs from a checkpoint,
a run's folder stays bound to its run, `--resume PATH` reads only PATH.

One real run (conftest's `trained_run`: 3 steps, checkpoints at steps 2 and 3) serves the module; each test works
on a hard-linked copy of it, so replacing a file in the copy leaves the original alone.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from mcq_ds.engine import checkpoints
from mcq_ds.engine.config import DS_CONFIGS, default_ds_config
from test_engine import finish, losses, mcq_ds, train_args

# the trained run's own; a constant lr (no milestone within 3 steps), so the tests below read the lr they set
STEPS = ["--max-steps", "3", "--save-every", "2", "--schedule", "step", "--lr", "1e-4"]


def linked_copy(run: Path, to: Path) -> Path:
    """A copy of the run folder whose weight files are hard links (cheap; a file replaced in the copy is the copy's
    own) and whose small files are copies (code that rewrites one in place must not change the original)."""
    def link_weights(src: str, dst: str) -> None:
        os.link(src, dst) if src.endswith((".pt", ".safetensors")) else shutil.copy2(src, dst)

    shutil.copytree(run, to, copy_function=link_weights)
    return to


class RunsCode:
    """A pickle that, when loaded by the stock unpickler, runs `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path: Path, marker: Path) -> None:
    """Replaces `path` (a real checkpoint file) by one that keeps its content and adds a call to os.system."""
    content = torch.load(path, weights_only=False)
    path.unlink()  # the hard link to the original goes; the original stays intact
    torch.save({**content, "payload": RunsCode(marker)}, path)


def run_train(demo_shards, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mcq_ds.cli", *train_args(demo_shards, out, *STEPS, *extra)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)


def optimizer_file(tag: Path) -> Path:
    """The ZeRO optimizer file of rank 0 (`bf16_` in front when the run trained in bf16, the default on a CPU with
    bf16 units)."""
    (found,) = tag.glob("*zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return found


@pytest.mark.parametrize("victim", ["mp_rank_00_model_states.pt", "optimizer", "rank0.pt"])
def test_resume_refuses_a_checkpoint_file_that_pickles_code(trained_run, demo_shards, tmp_path, victim):
    out = linked_copy(trained_run, tmp_path / "run")
    marker = tmp_path / "pwned"
    if victim == "optimizer":
        victim = optimizer_file(out / "checkpoints/step00000003").name
    plant(out / "checkpoints/step00000003" / victim, marker)
    done = run_train(demo_shards, out)  # the same command again: --resume latest takes step 3
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"step00000003/{victim}: refused" in done.stderr and "posix.system" in done.stderr
    assert not marker.exists()


def test_universal_conversion_refuses_planted_files(trained_run, demo_shards, tmp_path):
    """A checkpoint written by another number of ranks is re-sharded through DeepSpeed's universal format: both its
    files and an already converted folder are checked before DeepSpeed reads them."""
    out = linked_copy(trained_run, tmp_path / "run")
    tag = out / "checkpoints/step00000003"
    complete = tag / checkpoints.COMPLETE
    marker = {**json.loads(complete.read_text()), "world_size": 2}  # as if 2 ranks wrote it: this run has 1
    complete.unlink()
    complete.write_text(json.dumps(marker))
    subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag),
                    "--output_folder", str(out / "checkpoints/universal/step00000003")], check=True,
                   capture_output=True)  # DeepSpeed's own converter, on the genuine checkpoint
    converted = out / "checkpoints/universal/step00000003"
    (converted / "source.json").write_text(json.dumps({"source": str(tag.resolve())}))  # as mcq-ds marks its own
    param = converted / "zero/video_model.cls_token/fp32.pt"
    assert param.is_file()
    pwned = tmp_path / "pwned"
    plant(param, pwned)
    done = run_train(demo_shards, out)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "video_model.cls_token/fp32.pt: refused" in done.stderr and not pwned.exists()

    shutil.rmtree(out / "checkpoints/universal")  # now the conversion itself meets the planted file
    plant(optimizer_file(tag), pwned)
    convert = subprocess.run([sys.executable, "-m", "mcq_ds.engine.checkpoints", "--input_folder", str(tag),
                              "--output_folder", str(tmp_path / "universal")], capture_output=True, text=True)
    assert convert.returncode != 0 and "refused" in convert.stderr and not pwned.exists()


def test_deepspeed_reads_are_weights_only(trained_run, tmp_path):
    """Inside `weights_only_loads`, DeepSpeed's own `torch.load(weights_only=False)` reads a real ZeRO optimizer file
    (its classes are allowed) and refuses a file swapped in after the check."""
    tag = trained_run / "checkpoints/step00000003"
    evil = tmp_path / "evil.pt"
    torch.save({"x": RunsCode(tmp_path / "pwned")}, evil)
    with checkpoints.weights_only_loads():
        state = torch.load(optimizer_file(tag), weights_only=False)
        with pytest.raises(Exception, match="posix.system"):
            torch.load(evil, weights_only=False)
    ds_config = json.loads((DS_CONFIGS / default_ds_config()).read_text())
    assert state["optimizer_state_dict"]["zero_stage"] == ds_config["zero_optimization"]["stage"]
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
    assert not (tmp_path / "pwned").exists()
    checkpoints.check_pickles(tag)  # the real checkpoint passes the static check


def test_a_run_folder_refuses_another_runs_settings(trained_run, demo_shards, tmp_path):
    """Another --lr or --init on a folder that holds a run: refused with what differs, the folder untouched."""
    out = linked_copy(trained_run, tmp_path / "run")
    before = (out / "config.json").read_bytes()
    done = run_train(demo_shards, out, "--lr", "5e-5")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "lr: 0.0001 -> 5e-05" in done.stderr and "--resume latest" in done.stderr
    done = run_train(demo_shards, out, "--resume", "latest", "--init", str(trained_run / "model"))
    assert done.returncode == 2 and "init: None -> " in done.stderr and "init cannot change" in done.stderr
    done = run_train(demo_shards, out, "--resume", "none")
    assert done.returncode == 2 and "--resume none would start another run" in done.stderr
    assert (out / "config.json").read_bytes() == before
    assert sorted(p.name for p in (out / "checkpoints").glob("step*")) == ["step00000002", "step00000003"]


def test_resume_on_purpose_continues_with_the_new_values(trained_run, demo_shards, tmp_path):
    """`--resume latest` given on purpose: the new lr and length take effect, and config.json says so."""
    out = linked_copy(trained_run, tmp_path / "run")
    done = run_train(demo_shards, out, "--resume", "latest", "--lr", "5e-5", "--max-steps", "4")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "changed settings: lr: 0.0001 -> 5e-05; max_steps: 3 -> 4" in done.stderr
    config = json.loads((out / "config.json").read_text())
    assert (config["lr"], config["max_steps"]) == (5e-5, 4)
    lrs = [json.loads(line)["metrics"]["lr"] for line in (out / "tracking.jsonl").read_text().splitlines()
           if json.loads(line)["event"] == "metrics"]
    assert lrs[-1] == pytest.approx(5e-5) and lrs[0] == pytest.approx(1e-4)  # the demo stage has no lr milestones
    assert json.loads((out / "checkpoints/step00000004/complete.json").read_text())["config"]["lr"] == 5e-5


def test_resume_from_another_folders_checkpoint(trained_run, demo_shards, tmp_path):
    """`--resume PATH` outside OUT/checkpoints reads PATH, also when OUT holds a tag of the same name: the resumed
    step 3 sees exactly the weights and data position of the trained run's step 2."""
    other = tmp_path / "other"  # a second real run, other lr: its own step00000002 holds other weights
    finish(mcq_ds(*train_args(demo_shards, other, "--max-steps", "2", "--save-every", "2", "--lr", "3e-4")))
    done = run_train(demo_shards, other, "--resume", str(trained_run / "checkpoints/step00000002"), "--lr", "3e-4")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert losses(other)[3] == pytest.approx(losses(trained_run)[3], rel=1e-6, abs=1e-6)
    assert losses(other)[2] != pytest.approx(losses(trained_run)[2], rel=1e-6, abs=1e-6)
    assert (other / "checkpoints/step00000003/complete.json").is_file()
    assert (other / "model/model.safetensors").is_file()
    tags = [json.loads(line)["tags"] for line in (other / "tracking.jsonl").read_text().splitlines()
            if json.loads(line)["event"] == "tags"]
    assert {"resumed_from": str((trained_run / "checkpoints/step00000002").resolve())} in tags


@pytest.mark.parametrize("inherited", [{}, {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                                             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}],
                         ids=["plain", "launcher-variables-of-one"])
def test_a_single_process_run_listens_on_loopback_only(demo_shards, tmp_path, inherited):
    """A plain `mcq-ds train` is a group of one: no socket of it may listen beyond this machine (read from the OS's
    socket table while it runs), also when it inherits a launcher's variables for a world of one (a parent process
    that made its own group of one, `torchrun --nproc-per-node 1`)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **inherited}
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mcq_ds.cli", *train_args(
            demo_shards, tmp_path / "run", "--max-steps", "2", "--save-every", "2")], env=env, stdout=log,
            stderr=subprocess.STDOUT)
    listening = set()
    while proc.poll() is None:
        try:
            sockets = psutil.Process(proc.pid).net_connections(kind="inet")
        except psutil.NoSuchProcess:
            break
        listening |= {(s.laddr.ip, s.laddr.port) for s in sockets if s.status == psutil.CONN_LISTEN}
        time.sleep(0.2)
    assert proc.wait() == 0, (tmp_path / "log").read_text()[-3000:]
    assert listening, "the run never listened at all: the probe did not see it"
    assert all(ip.startswith("127.") or ip == "::1" for ip, _ in listening), listening
