"""launch/gpu_check.sh in CPU mode, as CI runs it: every step passes and the report names the card and the date."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_mode_writes_its_report(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "launch/gpu_check.sh"), "--cpu", str(tmp_path / "report")],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "MCQ_PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    report = json.loads((tmp_path / "report/gpu_check.json").read_text())
    assert report["mode"] == "CPU" and report["environment"]["date"]
    assert [s["name"] for s in report["steps"]] == ["render demo data", "convert demo data", "model step bf16",
                                                     "train (CPU)"]
    model = report["steps"][2]["results"][0]
    assert model["samples_per_s"] > 0 and model["peak_source"].startswith("measured")
    facts = report["training"]
    assert 0 <= facts["data_wait_share"] <= 1 and facts["samples_per_second"] > 0
    assert facts["ranks"][0]["device"] == "cpu"
    text = (tmp_path / "report/gpu_check.md").read_text()
    assert text.startswith("# mcq-ds GPU check: none (CPU mode), ") and "| train (CPU) | ok |" in text
