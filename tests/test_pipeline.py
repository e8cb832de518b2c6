"""The product's whole path on the demo data, as a user runs it: `mcq-shards` converts (the session's demo shards),
`mcq-ds train` trains the tiny model a few steps, `mcq-ds eval` evaluates its export on the converted MSR-VTT test
set, each as its own command."""
import json
import os
import subprocess
import sys


def mcq_ds(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mcq_ds.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_convert_train_evaluate(demo_shards, tmp_path):
    run = tmp_path / "run"
    trained = mcq_ds("train", "--stage", "demo-1f-noun", "--preset", "tiny", "--data", f"cc3m={demo_shards['cc3m']}",
                     "--data", f"webvid={demo_shards['webvid']}", "-o", str(run), "--global-batch", "8",
                     "--workers", "1", "--max-steps", "2", "--mlflow-uri", "none")
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-3000:]
    evaluated = mcq_ds("eval", str(run / "model"), str(demo_shards["msrvtt"]), "-o", str(tmp_path / "eval.json"),
                       "--workers", "0", "--mlflow-uri", "none", "--quiet")
    assert evaluated.returncode == 0, (evaluated.stdout + evaluated.stderr)[-3000:]
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["protocol"]["videos"] == 24 and results["skipped"]["count"] == 0
    assert results["checkpoint"]["path"] == str(run / "model")
    for direction in ("t2v", "v2t"):
        metrics = results["metrics"][direction]
        assert 0 <= metrics["R@1"] <= metrics["R@5"] <= metrics["R@10"] <= 100 and metrics["MedR"] >= 1
