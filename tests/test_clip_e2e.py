"""The CLIP-initialised model through the commands users run: `mcq-ds extract` gives the same features as the
evaluation path, and `mcq-ds train` runs a CLIP curriculum stage on the real engine."""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch

from mcq_ds.eval import extract
from mcq_ds.eval.data import ClipSpec
from mcq_ds.eval.embed import embed_batch
from mcq_ds.eval.reader import CollateEval, ShardClips, eval_samples
from mcq_ds.loss import l2_normalise
from mcq_ds.model import create_model, create_tokenizer, load_pretrained, save_pretrained
from mcq_ds.model.presets import preset


def test_extract_features_equal_the_eval_features_of_the_same_videos(demo_shards, tmp_path):
    torch.manual_seed(0)
    model = create_model(preset("clip-tiny")).eval()
    save_pretrained(model, create_tokenizer(model.cfg), tmp_path / "clip")
    loaded, tokenizer = load_pretrained(tmp_path / "clip")

    # the evaluation path: the converted MSR-VTT test shards, 8 midpoint frames, CLIP statistics
    samples = eval_samples(str(demo_shards["msrvtt"]))[0][:3]
    spec = ClipSpec.of(loaded)
    batch, skipped = CollateEval(tokenizer, loaded.cfg.text.max_length)([ShardClips(samples, range(3), spec)[i]
                                                                          for i in range(3)])
    assert skipped == []
    eval_video = l2_normalise(embed_batch(loaded.eval(), batch, torch.device("cpu"))[0])

    # the extraction path: the raw mp4 files those shards were made from
    raw = demo_shards["webvid"].parent / "raw/msrvtt/videos/all"
    files = [raw / (key.removeprefix("msrvtt-") + ".mp4") for key in batch.keys]
    parser = argparse.ArgumentParser()
    extract.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "clip"), *map(str, files), "-o", str(tmp_path / "feats"),
                              "--workers", "0", "--quiet"])
    assert extract.run(args) == 0
    features = np.load(tmp_path / "feats/video_embeddings.npy")
    assert features.shape == (3, model.cfg.embed_dim)
    assert extract.read_ids(tmp_path / "feats/video_ids.txt") == [str(f) for f in files]
    assert np.allclose(features, eval_video.numpy(), atol=1e-4)
    assert np.allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)


def test_clip_demo_stage_trains_with_the_engine(demo_shards, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "mcq_ds.cli", "train", "--stage", "demo-clip-1f-noun",
               "--data", f"cc3m={demo_shards['cc3m']}", "--data", f"webvid={demo_shards['webvid']}",
               "--out", str(out), "--global-batch", "8", "--workers", "1", "--log-every", "1", "--max-steps", "3",
               "--save-every", "3", "--no-hflip", "--mlflow-uri", "none"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = [json.loads(line) for line in (out / "tracking.jsonl").read_text().splitlines()
               if json.loads(line)["event"] == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    model, _ = load_pretrained(out / "model")
    assert model.cfg.family == "clip" and hasattr(model, "bridge_model")
