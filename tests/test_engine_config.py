"""The parts of the engine that need no process group: stage presets, schedules, DeepSpeed JSON, checkpoint picking."""
import argparse
import json

import pytest

from mcq_ds.engine import checkpoints, optim
from mcq_ds.engine.config import DS_CONFIGS, add_arguments, resolve
from mcq_ds.engine.schedule import step_decay, warmup_cosine
from mcq_ds.engine.stages import STAGES
from mcq_ds.engine.train import deepspeed_config, param_groups, steps_plan


def parse(*argv: str):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return resolve(parser.parse_args(list(argv)))


def test_stage_presets_reproduce_the_original_recipe():
    one, noun, verb = STAGES["1f-noun"], STAGES["4f-noun"], STAGES["4f-verb"]
    assert (one.frames, one.sources, one.global_batch, one.lr, one.epochs, one.milestones) == \
        (1, ("cc3m", "webvid"), 2048, 1e-4, 20, (12, 16))
    assert (noun.frames, noun.question_type, noun.global_batch, noun.lr, noun.milestones) == (4, "noun", 800, 3e-5, (6, 8))
    assert (verb.frames, verb.question_type, verb.global_batch, verb.lr, verb.milestones) == (4, "verb", 800, 1e-5, (6, 8))


def test_stage_recipe_fills_schedule_and_text_lr_unless_given():
    paper = parse("--stage", "4f-noun", "--data", "webvid=/s")
    assert (paper.schedule, paper.warmup_steps, paper.text_lr, paper.frozen_text_layers) == ("step", 0, None, 0)
    demo = STAGES["demo-4f-verb"]
    cfg = parse("--stage", "demo-4f-verb", "--data", "webvid=/s")
    assert (cfg.schedule, cfg.warmup_steps, cfg.text_lr) == (demo.schedule, demo.warmup_steps, demo.text_lr)
    cfg = parse("--stage", "demo-4f-verb", "--data", "webvid=/s", "--schedule", "step", "--text-lr", "0.5")
    assert (cfg.schedule, cfg.text_lr) == ("step", 0.5)


def test_text_lr_puts_the_text_tower_in_its_own_optimizer_group():
    from mcq_ds.model import create_model, preset

    model = create_model(preset("tiny"))
    one = param_groups(model, parse("--stage", "4f-noun", "--data", "webvid=/s"))
    assert len(one) == 1 and len(one[0]["params"]) == len(list(model.parameters()))
    rest, text = param_groups(model, parse("--stage", "4f-noun", "--data", "webvid=/s", "--text-lr", "2e-6"))
    assert text["lr"] == 2e-6 and "lr" not in rest  # the rest takes the optimizer's --lr
    assert {id(p) for p in text["params"]} == {id(p) for p in model.text_model.parameters()}
    assert len(rest["params"]) + len(text["params"]) == len(list(model.parameters()))
    assert any(p is model.text_proj[1].weight for p in rest["params"])  # the text head learns at --lr


@pytest.mark.parametrize("family", ["tiny", "clip-tiny"])
def test_frozen_text_layers_leave_the_optimizer(family):
    from mcq_ds.model import create_model, preset

    model = create_model(preset(family))
    model.text_model.freeze_lower(1)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("text_model.") for n in frozen)
    assert any("embedding" in n for n in frozen) and not any(".1." in n for n in frozen)  # embeddings + layer 0
    rest, text = param_groups(model, parse("--stage", "4f-noun", "--data", "webvid=/s", "--text-lr", "1e-6"))
    assert all(p.requires_grad for p in rest["params"] + text["params"])
    assert len(rest["params"]) + len(text["params"]) + len(frozen) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="cannot freeze 9 text layers"):
        model.text_model.freeze_lower(9)


@pytest.mark.parametrize("family", ["tiny", "clip-tiny"])
def test_frozen_video_blocks_leave_the_optimizer(family):
    from mcq_ds.model import create_model, preset

    model = create_model(preset(family))
    model.video_model.freeze_lower(2)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("video_model.") for n in frozen)
    assert any(".blocks.1." in n for n in frozen) and not any(".blocks.2." in n for n in frozen)
    assert len([n for n in frozen if ".blocks." not in n]) >= 3  # the patch projection and both tables
    rest, _ = param_groups(model, parse("--stage", "4f-noun", "--data", "webvid=/s", "--text-lr", "1e-6"))
    assert all(p.requires_grad for p in rest["params"])
    assert parse("--stage", "4f-noun", "--data", "webvid=/s", "--frozen-video-blocks", "2").frozen_video_blocks == 2
    with pytest.raises(ValueError, match="cannot freeze 9 video blocks: the video tower has 4"):
        model.video_model.freeze_lower(9)


def test_config_layers_stage_then_file_then_flags(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"lr": 0.5, "workers": 7}))
    cfg = parse("--stage", "4f-verb", "--data", "webvid=/s", "--config", str(tmp_path / "c.json"), "--workers", "3")
    assert (cfg.frames, cfg.question_type, cfg.global_batch, cfg.lr, cfg.workers) == (4, "verb", 800, 0.5, 3)
    assert cfg.data == {"webvid": "/s"} and cfg.milestones == [6, 8]


def test_config_errors_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="--data cc3m=SHARD_DIR"):
        parse("--stage", "1f-noun", "--data", "webvid=/s")
    (tmp_path / "bad.json").write_text(json.dumps({"learning_rate": 1}))
    with pytest.raises(ValueError, match="learning_rate"):
        parse("--data", "webvid=/s", "--data", "cc3m=/c", "--config", str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="SOURCE=SHARDS"):
        parse("--data", "webvid")


def test_step_decay_is_the_original_schedule_in_steps():
    cfg = parse("--stage", "4f-noun", "--data", "webvid=/s")
    total, milestones = steps_plan(cfg, {"webvid": 10})  # 10 optimizer steps per epoch
    assert (total, milestones) == (100, [60, 80])
    factor = step_decay(milestones)
    assert [factor(s) for s in (0, 59, 60, 79, 80, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    # stage 1: an epoch is one pass over the smaller source, one optimizer step per source in turn
    cfg1 = parse("--stage", "1f-noun", "--data", "webvid=/w", "--data", "cc3m=/c")
    assert steps_plan(cfg1, {"cc3m": 10, "webvid": 5}) == (20 * 10, [12 * 10, 16 * 10])


def test_warmup_cosine():
    factor = warmup_cosine(warmup=10, total=110)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.5) and factor(110) == pytest.approx(0.0, abs=1e-12)


def test_deepspeed_json_gets_the_run_dependent_values():
    cfg = parse("--stage", "4f-noun", "--data", "webvid=/s", "--micro-batch", "20",
                "--ds-config", "zero2_bf16.json")
    ds = deepspeed_config(cfg, world_size=20)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == \
        (20, 2, 800)
    assert ds["bf16"]["enabled"] and ds["zero_optimization"]["stage"] == 2
    assert "optimizer" not in ds  # the engine hands DeepSpeed PyTorch's fused AdamW: nothing to compile
    with pytest.raises(ValueError, match="--micro-batch"):
        deepspeed_config(parse("--stage", "4f-noun", "--data", "webvid=/s", "--micro-batch", "30"), world_size=8)
    for path in DS_CONFIGS.glob("*.json"):
        assert "optimizer" not in json.loads(path.read_text()), path.name  # valid JSON, no DeepSpeed-built optimizer


def test_deepspeed_optimizer_is_an_explicit_choice_with_the_same_settings(tmp_path):
    cfg = parse("--stage", "4f-noun", "--data", "webvid=/s", "--ds-config", "zero2_bf16.json", "--optimizer",
                "deepspeed")
    assert deepspeed_config(cfg, world_size=40)["optimizer"] == {
        "type": "AdamW", "params": {"betas": [0.9, 0.999], "eps": pytest.approx(40e-6), "weight_decay": 0.0,
                                 "lr": 3e-5}}
    with pytest.raises(SystemExit):
        parse("--data", "webvid=/s", "--data", "cc3m=/c", "--optimizer", "fused")
    (tmp_path / "c.json").write_text(json.dumps({"optimizer": "apex"}))
    with pytest.raises(ValueError, match="optimizer must be one of torch, deepspeed"):
        parse("--data", "webvid=/s", "--data", "cc3m=/c", "--config", str(tmp_path / "c.json"))


def test_resume_takes_the_newest_complete_checkpoint(tmp_path):
    for step, complete in ((100, True), (200, True), (300, False)):  # 300: a node died while writing it
        folder = tmp_path / checkpoints.tag_for(step)
        folder.mkdir()
        if complete:
            (folder / checkpoints.COMPLETE).write_text(json.dumps({"step": step, "world_size": 2}))
    assert checkpoints.resolve_resume(tmp_path, "latest").name == "step00000200"
    assert checkpoints.resolve_resume(tmp_path / "nothing", "latest") is None
    assert checkpoints.resolve_resume(tmp_path, None) is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpoints.resolve_resume(tmp_path, str(tmp_path / "step00000300"))
