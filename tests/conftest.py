import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


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
