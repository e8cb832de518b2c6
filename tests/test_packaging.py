"""A regular (non-editable) `pip install .` into a fresh virtual environment: the package finds its own data (the
DeepSpeed configs) and trains with the default one, from a folder that is not the source tree.

The fresh environment borrows the test environment's installed dependencies through a `.pth` line (so nothing is
downloaded and the test stays fast) and gets mcq-ds itself with `pip install --no-deps`, built from a copy of the
source files, the way a user's install is built.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from mcq_ds.engine.config import default_ds_config

ROOT = Path(__file__).resolve().parents[1]


def test_a_plain_install_trains_with_the_default_deepspeed_config(demo_shards, tmp_path):
    source = tmp_path / "src"
    for name in ("mcq_ds", "mcq_shards"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the tests' own tree must not leak in
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(source)],
                   check=True, env=env, cwd=tmp_path)
    where = subprocess.run([python, "-c", "import mcq_ds, mcq_shards; print(mcq_ds.__file__, mcq_shards.__file__)"],
                           capture_output=True, text=True, check=True, env=env, cwd=tmp_path).stdout.split()
    assert all(Path(w).is_relative_to(site) for w in where), where
    assert (site / "mcq_ds/ds_configs/cpu_fp32.json").is_file()
    run = subprocess.run([venv / "bin" / "mcq-ds", "train", "--stage", "demo-1f-noun", "--preset", "tiny",
                          "--data", f"cc3m={demo_shards['cc3m']}", "--data", f"webvid={demo_shards['webvid']}",
                          "-o", str(tmp_path / "run"), "--global-batch", "8", "--workers", "0", "--max-steps", "1",
                          "--mlflow-uri", "none"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert (tmp_path / "run/model/model.safetensors").is_file()
    events = [json.loads(line) for line in (tmp_path / "run/tracking.jsonl").read_text().splitlines()]
    [used] = [e["config"] for e in events if e["event"] == "config" and e["name"] == "deepspeed_config.json"]
    shipped = json.loads((ROOT / "mcq_ds/ds_configs" / default_ds_config()).read_text())
    assert {k: used[k] for k in shipped} == shipped  # this CPU's default config, as shipped, plus the run's sizes
