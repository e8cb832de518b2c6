"""The resolved configuration of one training stage: stage preset ← config file ← command line.

The resolved config is written to `<out>/config.json` and into every checkpoint, so a run can always be explained
and repeated from its own folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stages import STAGES

DS_CONFIGS = Path(__file__).resolve().parents[2] / "ds_configs"


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help})
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    stage: str = _opt("demo-1f-noun", f"curriculum stage preset: {', '.join(STAGES)}")
    data: dict[str, str] = _opt({}, "SOURCE=SHARDS for every source of the stage (cc3m, webvid), e.g. "
                                "--data webvid=shards/webvid; SHARDS is a converted folder or a brace-expanded tar list")
    out: str = _opt("runs/train", "output folder: checkpoints/, model/, config.json, the local tracking record")
    init: str | None = _opt(None, "model folder to start from: the previous stage's OUT/model, or `mcq-ds init`")
    model: str | None = _opt(None, "model preset for a fresh start without --init (default: the stage's)")
    frames: int | None = _opt(None, "frames per clip (default: the stage's)")
    question_type: str | None = _opt(None, "noun | verb (verb falls back to noun; default: the stage's)")
    question_mode: str = _opt("span", "span (mask the chosen phrase) | parity (the original's masking, SPEC §2.3)")
    global_batch: int | None = _opt(None, "samples per optimizer step over all ranks (default: the stage's)")
    micro_batch: int | None = _opt(None, "samples per rank per forward (default: global batch / ranks)")
    lr: float | None = _opt(None, "base learning rate (default: the stage's)")
    epochs: int | None = _opt(None, "epochs, each one pass over the smallest source (default: the stage's)")
    milestones: list[int] | None = _opt(None, "epochs after which lr ×= 0.1 (default: the stage's)")
    schedule: str = _opt("step", "step (the original's ×0.1 milestones) | cosine (warm-up + cosine)")
    warmup_steps: int = _opt(0, "linear warm-up steps for --schedule cosine")
    max_steps: int | None = _opt(None, "stop after this many optimizer steps (default: epochs × steps per epoch)")
    temperature: float | None = _opt(None, "contrastive temperature τ (default: the stage's, 0.05; CLIP stages 0.01)")
    ds_config: str | None = _opt(None, "DeepSpeed JSON (a path or a name in ds_configs/; default: "
                                 "cpu_fp32.json on CPU, zero1_bf16.json on GPU)")
    optimizer: str = _opt("torch", "AdamW implementation when the DeepSpeed JSON has no optimizer section: torch "
                          "(PyTorch's fused AdamW, nothing to compile) | deepspeed (DeepSpeed's FusedAdam, or CPU Adam "
                          "with offload: compiled at start-up unless prebuilt, see README)",
                          choices=("torch", "deepspeed"))
    grad_checkpointing: bool | None = _opt(None, "per-block activation checkpointing (default: on only when the "
                                           "step's estimated memory does not fit the GPU's free memory; off on CPU)")
    compile: bool = _opt(False, "torch.compile every transformer block (under ZeRO-3: DeepSpeed's engine.compile())")
    hflip: bool = _opt(True, "random horizontal flip in training (off for captions that say left/right)")
    loader: str = _opt("torch", "torch (webdataset workers) | dali (NVIDIA DALI, GPU decoding when a GPU is there)")
    workers: int = _opt(4, "data-loading workers per rank")
    seed: int = _opt(0, "seed of every random draw (data, initialisation, dropout)")
    save_every: int = _opt(1000, "checkpoint every N optimizer steps (and at the end)")
    keep_last: int = _opt(3, "complete checkpoints to keep")
    log_every: int = _opt(10, "log metrics every N optimizer steps")
    resume: str | None = _opt("latest", "latest (the newest complete checkpoint, if any), a checkpoint folder, "
                              "or none for a fresh start")
    mlflow_uri: str | None = _opt(None, "MLflow tracking server (default: a local sqlite store in OUT; none: off)")
    experiment: str = _opt("mcq-ds", "MLflow experiment name")
    run_name: str | None = _opt(None, "MLflow run name (default: the stage)")

    def stage_defaults(self) -> None:
        """Fills every unset recipe value from the stage preset."""
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage '{self.stage}'; choose one of {sorted(STAGES)}")
        stage = STAGES[self.stage]
        for name, value in (("frames", stage.frames), ("question_type", stage.question_type),
                            ("global_batch", stage.global_batch), ("lr", stage.lr), ("epochs", stage.epochs),
                            ("milestones", list(stage.milestones)), ("model", stage.model),
                            ("temperature", stage.temperature)):
            if getattr(self, name) is None:
                setattr(self, name, value)
        missing = [s for s in stage.sources if s not in self.data]
        if missing:
            raise ValueError(f"stage {self.stage} trains on {list(stage.sources)}; give "
                             + " ".join(f"--data {s}=SHARD_DIR" for s in missing))

    @property
    def sources(self) -> tuple[str, ...]:
        return STAGES[self.stage].sources

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (underscores become dashes); unset flags leave the lower layers alone."""
    parser.add_argument("--config", help="JSON file with any of the options below (command-line flags win)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "data":
            parser.add_argument(flag, action="append", metavar="SOURCE=SHARDS", help=f.metadata["help"])
        elif f.type in ("bool | None", "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f.metadata["help"])
        elif f.name == "milestones":
            parser.add_argument(flag, type=int, nargs="*", default=None, help=f.metadata["help"])
        else:
            kind = {"int | None": int, "int": int, "float | None": float, "float": float}.get(f.type, str)
            parser.add_argument(flag, type=kind, default=None, choices=f.metadata.get("choices"),
                                help=f.metadata["help"])


def resolve(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = {}
    if args.config:
        values.update(json.loads(Path(args.config).read_text()))
    for f in dataclasses.fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is None:
            continue
        if f.name == "data":
            given = dict(_source_pair(item) for item in given)
        values[f.name] = given
    unknown = set(values) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"{args.config}: unknown training options {sorted(unknown)}")
    if values.get("resume") in ("none", "None", ""):
        values["resume"] = None
    for f in dataclasses.fields(TrainConfig):  # a config file's values meet the same choices as the flags
        choices = f.metadata.get("choices")
        if choices and f.name in values and values[f.name] not in choices:
            raise ValueError(f"{args.config}: {f.name} must be one of {', '.join(choices)}, got {values[f.name]!r}")
    cfg = TrainConfig(**values)
    cfg.stage_defaults()
    return cfg


def _source_pair(item: str) -> tuple[str, str]:
    name, sep, shards = item.partition("=")
    if not sep or not name or not shards:
        raise ValueError(f"--data takes SOURCE=SHARDS (e.g. webvid=shards/webvid), got '{item}'")
    return name, shards
