import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory):
    """A randomly initialised tiny model (seed 0) as a model folder, as a training stage exports one."""
    from mcq_ds.model import create_model, create_tokenizer, preset, save_pretrained

    torch.manual_seed(0)
    cfg = preset("tiny")
    folder = tmp_path_factory.mktemp("tiny-model") / "model"
    save_pretrained(create_model(cfg), create_tokenizer(cfg), folder)
    return folder


def _mcq_shards(*args: str) -> None:
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "mcq_shards.cli", *args], check=True, capture_output=True)


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory):
    """The embedded demo data, small, through the real renderer and converters: {source: shard folder}."""
    from mcq_shards.synth import synthesize

    root = tmp_path_factory.mktemp("demo")
    synthesize(root / "raw", train_videos=96, images=64, test_videos=24, msrvtt_train_videos=4, workers=1)
    out = {"webvid": root / "webvid", "cc3m": root / "cc3m", "msrvtt": root / "msrvtt"}
    _mcq_shards("webvid", str(root / "raw/webvid/results_train.csv"), "--videos", str(root / "raw/webvid/videos"),
                "-o", str(out["webvid"]), "--workers", "1", "--quiet")
    _mcq_shards("cc3m", str(root / "raw/cc3m/Train_GCC-training.tsv"), "--images", str(root / "raw/cc3m/images"),
                "-o", str(out["cc3m"]), "--workers", "1", "--quiet")
    _mcq_shards("msrvtt", str(root / "raw/msrvtt"), "--test-size", "24", "-o", str(out["msrvtt"]), "--workers", "1",
                "--quiet")
    return out


@pytest.fixture(scope="session")
def benchmark_shards(tmp_path_factory):
    """The demo data's four benchmark layouts, small, converted by their real converters: {"msrvtt": test shards,
    "msrvtt-train": 9k-style training shards, "msvd"/"lsmdc"/"didemo": test shards}."""
    from mcq_shards.cli import main
    from mcq_shards.synth import synthesize

    root = tmp_path_factory.mktemp("benchmarks")
    raw = root / "raw"
    synthesize(raw, train_videos=0, images=0, test_videos=8, msrvtt_train_videos=16, benchmark_test_videos=6,
               benchmark_train_videos=2, size=32, fps=4, workers=1)
    fast = ["--workers", "1", "--quiet", "--min-frames", "4"]
    out = {name: root / name for name in ("msrvtt", "msrvtt-train", "msvd", "lsmdc", "didemo")}
    assert main(["msrvtt", str(raw / "msrvtt"), "--test-size", "8", "-o", str(out["msrvtt"]), *fast]) == 0
    assert main(["msrvtt", str(raw / "msrvtt"), "--split", "train", "-o", str(out["msrvtt-train"]), *fast]) == 0
    for name in ("msvd", "lsmdc", "didemo"):
        assert main([name, str(raw / name), "--test-size", "6", "-o", str(out[name]), *fast]) == 0
    return out


@pytest.fixture(scope="session")
def trained_run(demo_shards, tmp_path_factory):
    """A real 3-step run of `mcq-ds train` (tiny model, checkpoints at steps 2 and 3, no MLflow). Tests that change
    it work on a copy (test_engine_safety.linked_copy)."""
    from test_engine import finish, mcq_ds, train_args
    from test_engine_safety import STEPS

    out = tmp_path_factory.mktemp("trained") / "run"
    finish(mcq_ds(*train_args(demo_shards, out, *STEPS)))
    return out
