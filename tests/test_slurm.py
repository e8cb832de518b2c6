"""Launching under SLURM without ssh or another launcher: `srun … mcq-ds train` gives each task SLURM's variables
only, and the processes find their rank, world, local rank and master from them."""
import json
import os
import subprocess
import sys

import pytest

from mcq_ds.runtime import adopt_slurm_environment, expand_nodelist
from test_engine import finish, free_port, train_args


@pytest.mark.parametrize("nodelist, hosts", [
    ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
    ("gpu17", ["gpu17"]),
    ("a1,b[2-3],c", ["a1", "b2", "b3", "c"]),
    ("rack[1-2]-n[08-09]", ["rack1-n08", "rack1-n09", "rack2-n08", "rack2-n09"]),
    ("dgx-[098-101]", ["dgx-098", "dgx-099", "dgx-100", "dgx-101"]),
])
def test_compressed_node_lists_expand(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_srun_task_variables_become_the_launcher_variables():
    env = {"SLURM_PROCID": "13", "SLURM_LOCALID": "5", "SLURM_NTASKS": "32", "SLURM_STEP_NUM_TASKS": "16",
           "SLURM_STEP_NODELIST": "node[03-04]", "SLURM_NODELIST": "node[01-04]", "SLURM_JOB_ID": "123456"}
    assert adopt_slurm_environment(env)
    # the step's tasks and nodes, not the allocation's: a job may run a smaller step
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("13", "16", "5", "node03")
    assert env["MASTER_PORT"] == str(20000 + 123456 % 20000)


def test_a_launcher_started_process_and_a_plain_shell_are_left_alone():
    torchrun = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NODELIST": "n1", "RANK": "3", "WORLD_SIZE": "8"}
    assert not adopt_slurm_environment(torchrun) and torchrun["WORLD_SIZE"] == "8"
    shell = {"SLURM_JOB_ID": "7", "SLURM_NODELIST": "n[1-2]"}  # salloc's shell: a job but no task
    assert not adopt_slurm_environment(shell) and "RANK" not in shell


def test_two_srun_tasks_train_together(demo_shards, tmp_path):
    """Two processes with only the variables `srun --ntasks 2` gives its tasks train one run of 2 ranks."""
    out = tmp_path / "run"
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    slurm = {"SLURM_NTASKS": "2", "SLURM_NODELIST": "127.0.0.1", "SLURM_JOB_ID": "42",
             "MASTER_PORT": str(free_port()), "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "mcq_ds.cli",
                               *train_args(demo_shards, out, "--max-steps", "2", "--save-every", "2")],
                              env={**base, **slurm, "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for task in (0, 1)]
    for proc in procs:
        finish(proc)
    assert json.loads((out / "checkpoints/step00000002/complete.json").read_text())["world_size"] == 2
    ranks = json.loads((out / "runtime.json").read_text())["ranks"]
    assert [(r["rank"], r["local_rank"]) for r in ranks] == [(0, 0), (1, 1)]
    assert (out / "model/model.safetensors").is_file()
