"""The one GPU check: on a machine with a GPU, every GPU-only test and benchmark of mcq-ds in one command, into one
JSON and one Markdown report with the card and the date.

    bash launch/gpu_check.sh [OUT]        # or: python -m mcq_ds.bench.gpu_check -o OUT
    bash launch/gpu_check.sh --cpu OUT    # the same steps at toy sizes on the CPU (CI runs it: under a minute)

Steps, each a subprocess with its own time limit, so one failure is reported and the rest still run:

1. the GPU-only tests (nvJPEG / DALI mixed decoding against the CPU path; `pytest -m` none: the tests skip
   themselves without a GPU);
2. the model step (`mcq_ds.bench.model`, base, 4 frames × 20, bf16) without and with activation checkpointing, MFU
   from the card's peak;
3. DALI mixed decoding frames/s against the reference loader (`mcq_ds.bench.dali`);
4. a short `mcq-ds train --loader dali` on rendered demo data, `--compile` on: its samples/s and data-wait share from
   the run's tracking record, and the facts of its `runtime.json` (device per rank, optimizer and fusion, ops
   compiled at start-up, weight / gradient-accumulation / communication precision, SDPA kernel per attention site,
   checkpointing decision, compile);
5. evaluation embedding throughput (`mcq_ds.bench.extract`).

Nothing is downloaded: the data are rendered (`mcq-shards synth`), the models have random weights.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

PY = [sys.executable, "-m"]
ROOT = Path(__file__).resolve().parents[2]


def steps(work: Path, gpu: bool) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in s) of every step; at toy sizes without a GPU."""
    demo = work / "demo"
    if gpu:
        model = ["--preset", "base", "--frames", "4", "--batch", "20", "--steps", "5", "--warmup", "2"]
        train = ["--preset", "base", "--frames", "4", "--micro-batch", "16", "--global-batch", "16",
                 "--max-steps", "30", "--workers", "4", "--compile"]
        dali = ["--device", "mixed", "--threads", "4", "--clips", "32", "--batches", "10", "--rounds", "3"]
        extract = ["--model", "base", "--videos", "64", "--seconds", "10", "--workers", "4"]
    else:
        model = ["--preset", "tiny", "--frames", "4", "--batch", "2", "--steps", "1", "--warmup", "0"]
        train = ["--preset", "tiny", "--frames", "1", "--global-batch", "8", "--max-steps", "1", "--workers", "1"]
        dali = extract = None
    train_cmd = [*PY, "mcq_ds.cli", "train", "--stage", "demo-4f-noun", "--data", f"webvid={demo}/shards",
                 "--out", str(work / "train"), "--log-every", "1", "--save-every", "1000000", "--mlflow-uri", "none",
                 "--no-hflip", "--loader", "dali" if gpu else "torch", *train]
    found = [
        ("render demo data", [*PY, "mcq_shards.cli", "synth", str(demo / "raw"), "--train-videos",
                              "160" if gpu else "8", "--images", "8", "--test-videos", "4",
                              "--msrvtt-train-videos", "2", "--workers", "4" if gpu else "1", "--overwrite"], 300),
        ("convert demo data", [*PY, "mcq_shards.cli", "webvid", str(demo / "raw/webvid/results_train.csv"),
                               "--videos", str(demo / "raw/webvid/videos"), "-o", str(demo / "shards"), "--quiet",
                               "--workers", "4" if gpu else "1"], 300),
        ("model step bf16", [*PY, "mcq_ds.bench.model", *model], 300),
    ]
    if gpu:
        found = [("GPU-only tests", [*PY, "pytest", "-q", str(ROOT / "tests/test_dali.py"), "-k", "gpu"], 300),
                 *found,
                 ("model step bf16, checkpointing", [*PY, "mcq_ds.bench.model", *model, "--checkpointing"], 300),
                 ("model step fp32 (TF32)", [*PY, "mcq_ds.bench.model", *model, "--dtype", "fp32"], 300),
                 ("DALI mixed frames/s", [*PY, "mcq_ds.bench.dali", "--work", str(work / "dali"), *dali], 300)]
    found.append(("train --loader dali" if gpu else "train (CPU)", train_cmd, 600))
    if extract:
        found.append(("evaluation embedding throughput", [*PY, "mcq_ds.bench.extract", *extract], 300))
    return found


def run_step(name: str, command: list[str], limit: int, log_dir: Path) -> dict:
    start = time.perf_counter()
    log = log_dir / (name.replace(" ", "_").replace("/", "").replace(",", "") + ".log")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, env=env)
        rc, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as err:
        rc, stdout, stderr = "timeout", err.stdout or "", (err.stderr or "") + f"\nkilled after {limit} s"
        stdout, stderr = (s.decode() if isinstance(s, bytes) else s for s in (stdout, stderr))
    log.write_text(f"$ {' '.join(command)}\n{stdout}\n--- stderr ---\n{stderr}")
    results = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            try:
                results.append(json.loads(line))
            except ValueError:
                pass
    return {"name": name, "command": " ".join(command), "rc": rc, "seconds": round(time.perf_counter() - start, 1),
            "results": results, "log": log.name, "tail": (stdout + stderr)[-1500:] if rc != 0 else ""}


def training_facts(out: Path) -> dict:
    """What the short run's runtime.json and tracking record say (empty when the run did not get that far)."""
    facts: dict = {}
    if (out / "runtime.json").is_file():
        facts["ranks"] = json.loads((out / "runtime.json").read_text())["ranks"]
    if (out / "tracking.jsonl").is_file():
        metrics = [e["metrics"] for e in map(json.loads, (out / "tracking.jsonl").read_text().splitlines())
                   if e["event"] == "metrics"]
        steady = metrics[len(metrics) // 2:] or metrics  # the first steps carry compile and warm-up
        for key in ("samples_per_second", "data_wait_share", "memory_gib"):
            values = [m[key] for m in steady if key in m]
            if values:
                facts[key] = round(sum(values) / len(values), 3)
    return facts


def environment() -> dict:
    import torch

    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "gpus": torch.cuda.device_count(),
           "card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU mode)"}
    for package in ("deepspeed", "nvidia.dali"):
        try:
            env[package] = __import__(package, fromlist=["__version__"]).__version__
        except ImportError:
            env[package] = None
    return env


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# mcq-ds GPU check: {env['card']}, {env['date']}", "",
             f"{env['gpus']} GPU(s); torch {env['torch']} (CUDA {env['cuda']}), DeepSpeed {env['deepspeed']}, "
             f"DALI {env['nvidia.dali']}; {report['mode']} mode, {report['seconds']} s in all.", "",
             "| step | status | s | result |", "|---|---|---|---|"]
    for step in report["steps"]:
        summary = "; ".join(_summary(r) for r in step["results"]) or ("" if step["rc"] == 0 else step["log"])
        lines.append(f"| {step['name']} | {_status(step)} "
                     f"| {step['seconds']} | {summary} |")
    facts = report["training"]
    if facts:
        lines += ["", "Short training run: " + ", ".join(f"{k} {v}" for k, v in facts.items() if k != "ranks")]
        for rank in facts.get("ranks", []):
            kernels = sorted({f"{site}: {k['kernel']}" for site, k in rank["attention_kernels"].items()})
            lines += ["", f"- rank {rank['rank']} (LOCAL_RANK {rank['local_rank']}): {rank['device']} "
                      f"{rank['device_name']}, engine {rank['engine_device']}, loaders {rank['loaders']}",
                      f"- optimizer {rank['optimizer']} (fused {rank['optimizer_fused']}), ops compiled at "
                      f"start-up: {rank['deepspeed_ops_compiled_by_initialize'] or 'none'}",
                      f"- weights {rank['weights_dtype']}, gradients accumulated in {rank['grad_accumulation_dtype']}"
                      f", communicated in {rank['grad_communication_dtype']}; {rank['gradient_reduction']}",
                      f"- checkpointing {rank['activation_checkpointing']}; compile {rank['compile']}",
                      "- attention: " + "; ".join(kernels)]
    return "\n".join(lines) + "\n"


def _status(step: dict) -> str:
    return "ok" if step["rc"] == 0 else f"FAILED ({step['rc']}, see {step['log']})"


def _summary(result: dict) -> str:
    keys = ("implementation", "loader", "device", "samples_per_s", "frames_per_s", "videos_per_s", "mfu",
            "achieved_tflops", "peak_memory_gib", "checkpointing", "dtype")
    return ", ".join(f"{k} {result[k]}" for k in keys if result.get(k) is not None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--out", type=Path, default=Path("gpu_check"), help="report folder (default %(default)s)")
    parser.add_argument("--cpu", action="store_true", help="toy sizes on the CPU, even where there is a GPU")
    args = parser.parse_args(argv)
    import torch

    gpu = torch.cuda.is_available() and not args.cpu
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    work.mkdir(exist_ok=True)
    start = time.perf_counter()
    report = {"environment": environment(), "mode": "GPU" if gpu else "CPU", "steps": []}
    for name, command, limit in steps(work, gpu):
        report["steps"].append(run_step(name, command, limit, args.out))
        step = report["steps"][-1]
        print(f"{name}: {'ok' if step['rc'] == 0 else 'FAILED'} in {step['seconds']} s", flush=True)
    report["training"] = training_facts(work / "train")
    report["seconds"] = round(time.perf_counter() - start, 1)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(f"report: {args.out / 'gpu_check.md'} and gpu_check.json")
    return 0 if all(step["rc"] == 0 for step in report["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
