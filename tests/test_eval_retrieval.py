"""`mcq-ds eval` end to end on real shards: MSR-VTT-layout demo videos rendered and encoded with PyAV, converted by
mcq-shards, embedded by a tiny model; 1 and 2 real gloo ranks; every checkpoint kind; sliding windows."""
import argparse
import io
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mcq_ds.eval import retrieval
from mcq_ds.eval.checkpoint import load_model
from mcq_ds.eval.data import ClipSpec, clip_tensor, eval_transform, window_frames
from mcq_ds.eval.embed import embed_texts
from mcq_ds.eval.extract import read_ids
from mcq_ds.eval.probe import motion_probe
from mcq_ds.eval.reader import eval_samples, rank_share
from mcq_ds.model import MCQ, create_model, create_tokenizer, load_tokenizer, save_pretrained
from mcq_ds.model.loading import mcq_to_original
from mcq_ds.model.presets import preset
from mcq_shards.convert import Options, convert
from mcq_shards.sources import msrvtt
from mcq_shards.synth import synthesize
from test_eval_extract import one_thread  # noqa: F401 - one intra-op thread for tiny models on a shared CPU

VIDEOS = 9  # odd: two ranks cannot split it evenly
ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg():
    """The tiny preset with 64-wide heads, the head width `from_original` assumes for original checkpoints."""
    cfg = preset("tiny")
    cfg.video.heads = cfg.video.width // 64
    cfg.text.arch["n_heads"] = cfg.text.arch["dim"] // 64
    return cfg


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo MSR-VTT 1k-A layout (9 test videos, 2-3 captions each) converted to shards, and a tiny model."""
    root = tmp_path_factory.mktemp("eval")
    synthesize(root / "raw", train_videos=0, images=0, test_videos=VIDEOS, msrvtt_train_videos=0, size=64, fps=8,
               workers=1)
    test = convert(msrvtt.read(root / "raw" / "msrvtt", "test"), root / "msrvtt_test", "msrvtt",
                   Options(shard_size=4, require_nouns=False), workers=1, progress=False)
    assert test["samples"] == VIDEOS
    torch.manual_seed(0)
    model = MCQ(tiny_cfg())
    save_pretrained(model, load_tokenizer(model.cfg.text), root / "model")
    return root


def parse(*argv):
    parser = argparse.ArgumentParser()
    retrieval.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rank_shares_cover_every_sample_once():
    for count in range(12):
        for world in range(1, 6):
            shares = [rank_share(count, r, world) for r in range(world)]
            assert [i for s in shares for i in s] == list(range(count))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_one_and_two_ranks_give_the_same_numbers(demo, tmp_path):
    """Two real gloo ranks started by launch/eval.sh (torchrun), against one in-process rank."""
    common = [demo / "model", demo / "msrvtt_test", "--workers", 0, "--batch-size", 2, "--mlflow-uri", "none",
              "--quiet"]
    retrieval.run(parse(*common, "--out", tmp_path / "one.json", "--save-embeddings", tmp_path / "one"))
    env = {**os.environ, "GPUS": "2", "MASTER_PORT": str(free_port()), "MCQ_PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(["bash", ROOT / "launch" / "eval.sh", *map(str, common), "--out", tmp_path / "two.json",
                    "--save-embeddings", tmp_path / "two"], env=env, cwd=ROOT, check=True)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert one["protocol"]["videos"] == two["protocol"]["videos"] == VIDEOS
    assert one["metrics"] == two["metrics"]
    assert one["motion_probe"] == two["motion_probe"]
    for kind in ("video", "text"):
        assert read_ids(tmp_path / "one" / f"{kind}_ids.txt") == read_ids(tmp_path / "two" / f"{kind}_ids.txt")
        a, b = (np.load(tmp_path / n / f"{kind}_embeddings.npy") for n in ("one", "two"))
        assert a.shape[0] == VIDEOS and np.allclose(a, b, atol=1e-5)
    ids = read_ids(tmp_path / "one" / "video_ids.txt")
    assert ids == [s.key.removeprefix("msrvtt-") for s in eval_samples(str(demo / "msrvtt_test"))[0]]


def test_results_go_next_to_the_checkpoint_and_into_mlflow(demo):
    results = retrieval.evaluate(parse(demo / "model", demo / "msrvtt_test", "--workers", 0, "--quiet"))
    out = demo / "model" / "eval" / "msrvtt_test-4f.json"
    assert results["out"] == str(out) and json.loads(out.read_text())["metrics"] == results["metrics"]
    t2v = results["metrics"]["t2v"]
    assert set(t2v) == {"R@1", "R@5", "R@10", "R@50", "MedR", "MeanR", "geometric_mean_R1-R5-R10"}
    assert results["protocol"]["queries"] == VIDEOS and results["protocol"]["frames"] == 4

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out.parent.resolve()}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("mcq-ds-eval").experiment_id])[0]
    assert run.data.metrics["t2v/R1"] == pytest.approx(t2v["R@1"])
    assert run.data.metrics["v2t/MedR"] == pytest.approx(results["metrics"]["v2t"]["MedR"])
    assert run.data.params["protocol.frames"] == "4"
    probe = results["motion_probe"]  # every demo caption carries one verb phrase
    assert probe["queries"] == VIDEOS and probe["verbs"] >= 2 and probe["chance"] == pytest.approx(100 / probe["verbs"])
    assert run.data.metrics["motion_probe/accuracy"] == pytest.approx(probe["accuracy"])
    assert run.data.metrics["motion_probe/chance"] == pytest.approx(probe["chance"])


def verb_span(caption: str, verb: str) -> list[dict]:
    start = caption.index(verb)
    return [{"text": verb, "start": start, "end": start + len(verb)}]


def test_motion_probe_ranks_each_caption_against_its_verb_swaps(demo):
    """With the caption's own text embedding standing in for its video, the caption must win every time; with a
    verb-swapped caption's embedding, never. Captions without a verb phrase are counted, not probed."""
    loaded = load_model(demo / "model", bridge=False)
    model, tokenizer, cpu = loaded.model, loaded.tokenizer, torch.device("cpu")
    verbs = ["is spinning", "is sliding", "is pulsing", "is resting"]
    captions = ["a red square is spinning on dots", "a blue star is sliding against stripes",
                "on dots, a white cross is pulsing", "a green circle is resting"]
    phrases = [(c, verb_span(c, v)) for c, v in zip(captions, verbs)] + [("a yellow star on dots", [])]
    own = embed_texts(model, tokenizer, [c for c, _ in phrases], cpu)
    probe = motion_probe(model, tokenizer, own, phrases, cpu)
    assert probe["accuracy"] == 100 and probe["chance"] == 25 and probe["verbs"] == 4
    assert probe["queries"] == 4 and probe["videos_without_verb"] == 1 and probe["phrases_not_candidates"] == 0
    swapped = [c.replace(v, verbs[(i + 1) % 4]) for i, (c, v) in enumerate(zip(captions, verbs))]
    shown = embed_texts(model, tokenizer, swapped + ["a yellow star on dots"], cpu)
    assert motion_probe(model, tokenizer, shown, phrases, cpu)["accuracy"] == 0
    # K = 2: the two most frequent verb phrases (here: the first two seen); the others are left out and counted
    two = motion_probe(model, tokenizer, own, phrases, cpu, max_verbs=2)
    assert two["candidates"] == verbs[:2] and two["queries"] == 2 and two["phrases_not_candidates"] == 2
    assert two["chance"] == 50
    assert "not_run" in motion_probe(model, tokenizer, own[:1], phrases[:1], cpu)


def test_all_captions_and_sliding_window_with_workers(demo, tmp_path):
    results = retrieval.evaluate(parse(demo / "model", demo / "msrvtt_test", "--workers", 1, "--all-captions",
                                       "--window-stride", 1, "--mlflow-uri", "none", "--quiet",
                                       "--out", tmp_path / "r.json"))
    # the test split stores one caption per video (the 1k-A choice): --all-captions falls back to it
    assert results["protocol"]["queries"] == VIDEOS
    assert results["protocol"]["frame_sampling"].startswith("sliding window, stride 1")


def test_a_clip_family_model_evaluates_with_its_own_frames_and_statistics(demo, tmp_path):
    model = create_model(preset("clip-tiny"))
    save_pretrained(model, create_tokenizer(model.cfg), tmp_path / "clip")
    results = retrieval.evaluate(parse(tmp_path / "clip", demo / "msrvtt_test", "--workers", 0, "--mlflow-uri", "none",
                                       "--quiet"))
    assert results["protocol"]["frames"] == model.cfg.video.num_frames == 8
    assert results["protocol"]["transform"].endswith("clip mean/std")
    assert results["out"].endswith("msrvtt_test-8f.json")


def test_frame_windows_and_transform():
    assert window_frames(32, 4) == [[3, 11, 19, 27]]
    assert window_frames(10, 4) == [[0, 3, 5, 8]]  # bounds 0 2 5 7 10 -> midpoints (lo + hi - 1) // 2
    # bounds 0 2 5 7 10: the shortest segment has 2 frames -> offsets 0, 1 (the original stopped at 10 // 5 = 2)
    assert window_frames(10, 4, stride=1) == [[0, 2, 5, 7], [1, 3, 6, 8]]
    assert window_frames(32, 4, stride=3) == [[0, 8, 16, 24], [3, 11, 19, 27], [6, 14, 22, 30]]
    assert window_frames(3, 4, stride=1) == [[0, 1, 2]]  # fewer frames than segments: one frame each, one window

    frames = []
    for i in range(3):
        buffer = io.BytesIO()
        Image.new("RGB", (80, 60), (i * 100, 0, 0)).save(buffer, "JPEG", quality=95)
        frames.append(buffer.getvalue())
    offsets = np.cumsum([0] + [len(f) for f in frames])
    clips, padded = clip_tensor(b"".join(frames), offsets, ClipSpec(num_frames=4, img_size=32))
    assert clips.shape == (1, 4, 3, 32, 32) and padded == 1
    assert torch.all(clips[0, 3] == 0)  # padding is zero after normalisation, as the original pads
    red = clips[0, :3, 0].mean(dim=(1, 2)) * 0.229 + 0.485  # undo the ImageNet normalisation of the red channel
    assert red.tolist() == pytest.approx([0, 100 / 255, 200 / 255], abs=0.02)


def test_transform_is_the_original_resize_crop_resize_without_antialiasing():
    """torchvision 0.8.2 resized float tensors with F.interpolate(bilinear, align_corners=False), no antialiasing:
    short side to 256 (long side truncated), centre crop 256 (offsets rounded), then 224."""
    frames = torch.randint(0, 256, (2, 3, 240, 320), dtype=torch.uint8)
    x = torch.nn.functional.interpolate(frames.float() / 255, size=(256, int(256 * 320 / 240)), mode="bilinear",
                                        align_corners=False)
    left = int(round((x.shape[-1] - 256) / 2.0))
    x = torch.nn.functional.interpolate(x[..., :, left:left + 256], size=(224, 224), mode="bilinear",
                                        align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(eval_transform(frames, 224), (x - mean) / std, atol=1e-5)


def test_original_checkpoint_gives_the_model_folder_numbers(demo, tmp_path):
    folder = load_model(demo / "model")
    state = {"state_dict": {"module." + k: v for k, v in mcq_to_original(folder.model.state_dict()).items()}}
    torch.save(state, tmp_path / "MCQ.pth")
    original = load_model(tmp_path / "MCQ.pth")
    assert original.kind == "original" and not hasattr(original.model, "bridge_model")
    video = torch.randn(2, 4, 3, 64, 64)
    assert torch.allclose(original.model.encode_video(video), folder.model.encode_video(video), atol=1e-5)
    results = retrieval.evaluate(parse(tmp_path / "MCQ.pth", demo / "msrvtt_test", "--workers", 0,
                                       "--mlflow-uri", "none", "--quiet"))
    assert results["out"] == str(tmp_path / "MCQ-eval" / "msrvtt_test-4f.json")
    reference = retrieval.evaluate(parse(demo / "model", demo / "msrvtt_test", "--workers", 0, "--mlflow-uri", "none",
                                         "--quiet", "--out", tmp_path / "reference.json"))
    assert results["metrics"] == reference["metrics"]


DEEPSPEED_SAVE = textwrap.dedent("""
    import json, os, sys, torch
    import deepspeed
    from mcq_ds.model import load_pretrained
    model_dir, out = sys.argv[1], sys.argv[2]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[3])
    torch.distributed.init_process_group("gloo")
    for name, zero in (("zero0", 0), ("zero1", 1), ("zero3", 3)):
        model, _ = load_pretrained(model_dir)
        ds = {"train_micro_batch_size_per_gpu": 1, "train_batch_size": 1, "zero_optimization": {"stage": zero},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}}
        engine, *_ = deepspeed.initialize(model=model, config=ds)
        run = os.path.join(out, name)
        config = {"init": model_dir, "preset": "tiny", "frames": 4}
        engine.save_checkpoint(os.path.join(run, "checkpoints"), tag="step00000007",
                               client_state={"step": 7, "config": config, "mlflow_run_id": None})
        open(os.path.join(run, "checkpoints", "step00000007", "complete.json"), "w").write('{"step": 7}')
""")


def test_deepspeed_checkpoints_load_with_the_trained_weights(demo, tmp_path):
    subprocess.run([sys.executable, "-c", DEEPSPEED_SAVE, demo / "model", tmp_path, str(free_port())], check=True,
                   cwd=ROOT)
    reference = load_model(demo / "model").model
    video = torch.randn(2, 4, 3, 64, 64)
    for name in ("zero0", "zero1", "zero3"):
        for path in (tmp_path / name, tmp_path / name / "checkpoints" / "step00000007"):
            loaded = load_model(path)
            assert loaded.kind == "deepspeed" and loaded.step == 7
            assert torch.allclose(loaded.model.encode_video(video), reference.encode_video(video), atol=1e-6)
    assert hasattr(load_model(tmp_path / "zero1", bridge=True).model, "bridge_model")


class Payload:
    """Stands for anything a checkpoint should never name."""


def test_a_checkpoint_naming_foreign_code_is_refused_before_unpickling(tmp_path):
    tag = tmp_path / "checkpoints" / "step00000001"
    tag.mkdir(parents=True)
    torch.save({"module": {}, "extra": Payload()}, tag / "mp_rank_00_model_states.pt")
    with pytest.raises(ValueError, match="refused.*Payload"):
        load_model(tag)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model folder"):
        load_model(tmp_path / "empty")
