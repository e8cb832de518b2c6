"""Fine-tuning stages of `mcq-ds train` end to end on the real DeepSpeed engine (gloo on CPU) and both loaders: a
released-layout checkpoint fine-tuned on the demo data's MSR-VTT-layout training split with the BridgeFormer dropped,
the test set evaluated before training and after every epoch, the best epoch kept and exported, exact resume after
kill -9, early stopping, and `mcq-ds eval` comparing the result with the paper's fine-tuned numbers."""
import argparse
import json
import os
import signal
import time

import pytest
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from safetensors.torch import load_file

from mcq_ds.cli import main
from mcq_ds.data.loader import LoaderConfig, ShardLoader
from mcq_ds.engine.config import add_arguments, resolve
from mcq_ds.model import MCQ, load_pretrained, load_tokenizer, preset
from mcq_ds.model.loading import mcq_to_original
from mcq_shards.manifest import read_manifest
from test_engine import finish, mcq_ds

EPOCHS = 3
STEPS_PER_EPOCH = 4  # 16 training videos, batches of 4, one loader worker


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A tiny model, bridge included, saved in the released MCQ.pth layout (what `--init MCQ.pth` reads)."""
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.video.heads, cfg.text.arch["n_heads"] = cfg.video.width // 64, cfg.text.arch["dim"] // 64
    path = tmp_path_factory.mktemp("released") / "MCQ.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in mcq_to_original(MCQ(cfg).state_dict()).items()}}, path)
    return path


def ft_args(shards, init, out, *extra) -> list[str]:
    return ["train", "--stage", "demo-ft-msrvtt", "--init", str(init), "--data", f"msrvtt={shards['msrvtt-train']}",
            "--eval-data", str(shards["msrvtt"]), "-o", str(out), "--global-batch", "4", "--workers", "1",
            "--epochs", str(EPOCHS), "--lr", "3e-4", "--log-every", "1", "--mlflow-uri", "none", "--no-hflip", *extra]


def tracked(out, key: str) -> dict[int, float]:
    found = {}
    for line in (out / "tracking.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "metrics" and key in event["metrics"]:
            found[event["step"]] = event["metrics"][key]
    return found


def test_fine_tune_keeps_the_best_epoch_and_resumes_exactly(benchmark_shards, released, tmp_path):
    straight = tmp_path / "straight"
    log = finish(mcq_ds(*ft_args(benchmark_shards, released, straight, "--keep-last", "1")))
    summary = json.loads((straight / "model/finetuned.json").read_text())
    history = summary["history"]
    assert [h["epoch"] for h in history] == list(range(EPOCHS + 1))  # the start, then every epoch
    assert [h["step"] for h in history] == [e * STEPS_PER_EPOCH for e in range(EPOCHS + 1)]
    best = max(history[1:], key=lambda h: (h["rsum"], -h["step"]))
    assert summary["benchmark"] == "msrvtt" and (summary["epoch"], summary["step"]) == (best["epoch"], best["step"])
    assert f"epoch {best['epoch']} (step {best['step']}): msrvtt test" in log
    # the test scores are in the run's tracking, every epoch, beside a loss without an MCQ term
    assert sorted(tracked(straight, "test/t2v/R1")) == [h["step"] for h in history]
    assert tracked(straight, "test/rsum")[best["step"]] == pytest.approx(best["rsum"])
    assert tracked(straight, "loss") and not tracked(straight, "loss_mcq")
    # the best epoch's checkpoint outlives --keep-last 1, and it is what OUT/model holds: the retrieval model only
    tags = {p.name for p in (straight / "checkpoints").glob("step*")}
    assert tags == {f"step{best['step']:08d}", f"step{EPOCHS * STEPS_PER_EPOCH:08d}"}
    exported = load_file(straight / "model/model.safetensors")
    best_state = get_fp32_state_dict_from_zero_checkpoint(str(straight / "checkpoints"), tag=f"step{best['step']:08d}")
    assert exported.keys() == best_state.keys() and all(torch.equal(exported[k], best_state[k]) for k in exported)
    assert not any(k.startswith(("bridge_model.", "bridge_proj.")) for k in exported)
    model, _ = load_pretrained(straight / "model")
    assert not model.cfg.bridge

    # kill -9 right after epoch 1's checkpoint; the rerun continues with the same batches, scores and choice
    killed = tmp_path / "killed"
    victim = mcq_ds(*ft_args(benchmark_shards, released, killed, "--keep-last", "1"))
    marker = killed / f"checkpoints/step{STEPS_PER_EPOCH:08d}/complete.json"
    deadline = time.time() + 600
    while not marker.exists():
        assert victim.poll() is None, victim.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert "resumed from" in finish(mcq_ds(*ft_args(benchmark_shards, released, killed, "--keep-last", "1")))
    again = json.loads((killed / "model/finetuned.json").read_text())
    assert [h["rsum"] for h in again["history"]] == pytest.approx([h["rsum"] for h in history], abs=1e-9)
    assert again["step"] == summary["step"]
    resumed = load_file(killed / "model/model.safetensors")
    assert all(torch.allclose(resumed[k], exported[k], atol=1e-6) for k in exported)

    # `mcq-ds eval` of the result: MSR-VTT is compared with the paper's fine-tuned numbers, MSVD with none
    assert main(["eval", str(straight / "model"), f"msrvtt={benchmark_shards['msrvtt']}",
                 f"msvd={benchmark_shards['msvd']}", "--workers", "0", "--quiet", "--mlflow-uri", "none"]) == 0
    table = (straight / "model/eval/benchmarks-4f.md").read_text()
    msrvtt = next(line for line in table.splitlines() if line.startswith("| MSR-VTT"))
    assert "| FT |" in msrvtt and "37.6 / 64.8 / 75.1 / 3" in msrvtt
    assert "fine-tuned on msrvtt" in next(line for line in table.splitlines() if line.startswith("| MSVD"))


def test_early_stop(benchmark_shards, released, tmp_path):
    """With lr 0 no epoch beats the first: --patience 1 stops after the second, and the rerun stops at once."""
    out = tmp_path / "run"
    args = ft_args(benchmark_shards, released, out, "--lr", "0", "--patience", "1", "--epochs", "5")
    log = finish(mcq_ds(*args))
    assert f"stopped early at step {2 * STEPS_PER_EPOCH}" in log
    summary = json.loads((out / "model/finetuned.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [0, 1, 2] and summary["epoch"] == 1
    assert len({h["rsum"] for h in summary["history"]}) == 1  # lr 0: the model never changed
    rerun = finish(mcq_ds(*args))
    assert "resumed from" in rerun and f"epoch 3 (step {3 * STEPS_PER_EPOCH})" not in rerun


def test_without_questions_each_epoch_draws_one_of_a_videos_captions_in_both_loaders(benchmark_shards):
    from mcq_ds.data.dali import DaliLoader

    tokenizer = load_tokenizer(preset("tiny").text)
    stored = {}
    for shard in read_manifest(benchmark_shards["msrvtt-train"]).shards:
        import tarfile

        with tarfile.open(shard.path) as tar:
            for m in tar:
                if m.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(m).read())
                    stored[meta["key"]] = meta

    def texts(questions: bool, dali: bool = False, epochs: int = 4) -> dict[tuple[int, str], str]:
        cfg = LoaderConfig(shards=str(benchmark_shards["msrvtt-train"]), source="msrvtt", tokenizer=tokenizer,
                           num_frames=2, img_size=32, batch_size=4, workers=0 if not dali else 1, rank=0,
                           world_size=1, questions=questions)
        loader = DaliLoader(cfg, device="cpu") if dali else ShardLoader(cfg)
        seen = {}
        for n, batch in zip(range(epochs * loader.batches_per_epoch), loader):
            assert (batch.question is None) == (not questions)
            for key, ids, mask in zip(batch.keys, batch.text.ids, batch.text.mask):
                text = tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
                seen[n // loader.batches_per_epoch, key] = "".join(text.split())
        return seen

    squash = lambda text: "".join(text.lower().split())  # noqa: E731 - the uncased tokenizer's view of a caption
    drawn = texts(questions=False)
    assert all(text in {squash(c) for c in stored[key]["captions"]} for (_, key), text in drawn.items())
    per_video = {key: {t for (_, k), t in drawn.items() if k == key} for _, key in drawn}
    assert sum(len(ts) > 1 for ts in per_video.values()) >= len(per_video) // 2  # a new draw every epoch
    dali = texts(questions=False, dali=True)  # the same draw for the same sample in the same epoch
    common = drawn.keys() & dali.keys()
    assert len(common) >= len(drawn) // 2 and all(drawn[k] == dali[k] for k in common)
    kept = texts(questions=True, epochs=2)  # with questions: the caption its noun and verb phrases belong to
    assert all(text == squash(stored[key]["caption"]) for (_, key), text in kept.items())


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_fine_tuning_options_are_checked():
    with pytest.raises(ValueError, match="fine-tunes a pre-trained model: give --init MODEL"):
        resolve(parse("--stage", "ft-msvd", "--data", "msvd=x"))
    with pytest.raises(ValueError, match="--eval-data is a fine-tuning stage's test set"):
        resolve(parse("--stage", "demo-4f-noun", "--data", "webvid=x", "--eval-data", "y"))
    cfg = resolve(parse("--stage", "ft-lsmdc", "--data", "lsmdc=x", "--init", "MCQ.pth"))
    assert (cfg.frames, cfg.global_batch, cfg.lr, cfg.epochs, cfg.epoch_samples, cfg.patience, cfg.bridge) == \
        (4, 16, 3e-5, 100, 9000, 10, False)
    cfg = resolve(parse("--stage", "clip-ft-msrvtt", "--data", "msrvtt=x", "--init", "MCQ_CLIP.pth"))
    assert (cfg.frames, cfg.global_batch, cfg.lr, cfg.schedule, cfg.warmup_steps, cfg.temperature) == \
        (8, 128, 1e-7, "cosine", 35, 0.01)
