"""The released MILES model: its key layout (taken once from the original code) imports strictly into the Frozen-style
video encoder, safely, and the import is usable by `mcq-ds eval` / `extract` like MCQ.pth. Embedding parity with the
original MILES code is in test_original_parity.py (it needs a checkout of TencentARC/MCQ)."""
import json
import pathlib
import pickle

import pytest
import torch

from mcq_ds.cli import main
from mcq_ds.eval.checkpoint import load_model
from mcq_ds.model import MCQ, from_original, preset
from mcq_ds.model.loading import config_from_original, mcq_to_original, original_to_mcq
from test_eval_extract import one_thread  # noqa: F401 - one intra-op thread for tiny models on a shared CPU

ORIGINAL_KEYS = pathlib.Path(__file__).parent / "data" / "miles_original_keys.json"


def test_the_original_miles_layout_imports_key_for_key_and_shape_for_shape():
    """Against the key names and shapes of the original MILES model (tests/data/make_miles_original_keys.py): a
    MILES.pth at the released size is the `base` preset with divided space-time attention, 4 frames, no bridge."""
    original = json.loads(ORIGINAL_KEYS.read_text())
    state = {k: torch.empty(shape, device="meta") for k, shape in original.items()}
    cfg = config_from_original(state, bridge=False)
    base = preset("base")
    base.video.temporal_attention, base.bridge = True, False
    assert cfg.video == base.video and cfg.embed_dim == 256 and not cfg.bridge
    with torch.device("meta"):
        ours = MCQ(base).state_dict()
    mapped = original_to_mcq(state, bridge=False)
    assert mapped.keys() == ours.keys() and all(mapped[k].shape == ours[k].shape for k in ours)
    with pytest.raises(ValueError, match=r"no BridgeFormer weights .* MILES.pth.*--no-bridge"):
        config_from_original(state)
    with pytest.raises(ValueError, match="takes at most 4 frames, not 8"):
        config_from_original(state, num_frames=8, bridge=False)


def tiny_miles() -> MCQ:
    cfg = preset("tiny")
    cfg.video.heads, cfg.text.arch["n_heads"] = cfg.video.width // 64, cfg.text.arch["dim"] // 64  # 64-wide heads
    cfg.video.temporal_attention, cfg.bridge = True, False
    model = MCQ(cfg)
    with torch.no_grad():  # temporal attention off its zero init, so that it matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def save_miles_layout(model: MCQ, path: pathlib.Path) -> None:
    """The model's weights under MILES's names (`video_model.norm` is its final norm; MCQ's is `norm1`), with the
    DistributedDataParallel prefix and a pickled object beside them, as a training checkpoint has."""
    state = {("video_model.norm." + k[len("video_model.norm1."):] if k.startswith("video_model.norm1.") else k): v
             for k, v in mcq_to_original(model.state_dict()).items()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 7,
                "config": pathlib.PurePosixPath("configs/miles.json")}, path)


def test_a_miles_checkpoint_is_evaluated_and_extracted_like_mcq(benchmark_shards, tmp_path):
    torch.manual_seed(0)
    model = tiny_miles()
    save_miles_layout(model, tmp_path / "MILES.pth")
    video = torch.randn(2, 3, 3, 64, 64)  # three frames: fewer than the temporal table's four
    imported = from_original(tmp_path / "MILES.pth", bridge=False)
    with torch.no_grad():
        assert torch.equal(imported.eval().encode_video(video), model.encode_video(video))
    assert load_model(tmp_path / "MILES.pth").describe()["max_frames"] == 4
    assert main(["convert-original", str(tmp_path / "MILES.pth"), "-o", str(tmp_path / "miles"), "--no-bridge"]) == 0
    assert main(["eval", str(tmp_path / "MILES.pth"), f"msrvtt={benchmark_shards['msrvtt']}", "--workers", "0",
                 "--quiet", "--mlflow-uri", "none"]) == 0
    table = (tmp_path / "MILES-eval" / "benchmarks-4f.md").read_text()
    assert "beside MILES in the paper" in table and "26.1 / 47.2 / 56.9 / 7" in table
    assert main(["eval", str(tmp_path / "miles"), str(benchmark_shards["msrvtt"]), "--frames", "8", "--workers", "0",
                 "--quiet", "--mlflow-uri", "none"]) == 2  # more frames than the temporal table has
    videos = sorted((benchmark_shards["msrvtt"].parent / "raw/msrvtt/videos/all").glob("*.mp4"))[:2]
    assert main(["extract", str(tmp_path / "miles"), *map(str, videos), "-o", str(tmp_path / "feats"), "--workers",
                 "0", "--quiet"]) == 0
    assert (tmp_path / "feats" / "video_embeddings.npy").is_file()


class Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned",))


def test_a_miles_file_that_asks_to_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = {f"module.{k}": v for k, v in mcq_to_original(tiny_miles().state_dict()).items()}
    with open(tmp_path / "MILES.pth", "wb") as f:
        torch.save({"state_dict": state, "config": Exploit()}, f, pickle_module=pickle)
    assert main(["convert-original", str(tmp_path / "MILES.pth"), "-o", str(tmp_path / "out"), "--no-bridge"]) == 2
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()
