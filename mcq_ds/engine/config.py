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


@dataclass
class TrainConfig:
    stage: str = "demo-1f-noun"
    data: dict[str, str] = field(default_factory=dict)  # source name → shard directory or brace-expanded tar list
    out: str = "runs/train"
    init: str | None = None  # model folder to start from: the previous stage's export, or `mcq-ds init`'s output
    model: str | None = None  # model preset for a fresh start without --init (default: the stage's)
    frames: int | None = None
    question_type: str | None = None
    question_mode: str = "span"  # "parity" reproduces the original's masking (SPEC §2.3)
    global_batch: int | None = None
    micro_batch: int | None = None  # per rank; default global_batch / world size (no accumulation)
    lr: float | None = None
    epochs: int | None = None
    milestones: list[int] | None = None  # in epochs
    schedule: str = "step"  # "step" (the original ×0.1 milestones) | "cosine" (linear warm-up + cosine)
    warmup_steps: int = 0
    max_steps: int | None = None  # stop after this many optimizer steps (default: epochs × steps per epoch)
    temperature: float = 0.05
    ds_config: str | None = None  # default: cpu_fp32.json on CPU, zero1_bf16.json on GPU
    grad_checkpointing: bool | None = None  # default: on with a GPU, off on CPU
    compile: bool = False  # torch.compile every transformer block
    loader: str = "torch"  # "torch" (webdataset + PyAV/PIL workers) | "dali"
    workers: int = 4
    seed: int = 0
    save_every: int = 1000
    keep_last: int = 3
    log_every: int = 10
    resume: str | None = "latest"  # "latest", a checkpoint folder, or None for a fresh start
    mlflow_uri: str | None = None  # None: a local sqlite store under <out>; "none": no tracking
    experiment: str = "mcq-ds"
    run_name: str | None = None

    def stage_defaults(self) -> None:
        """Fills every unset recipe value from the stage preset."""
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage '{self.stage}'; choose one of {sorted(STAGES)}")
        stage = STAGES[self.stage]
        for name, value in (("frames", stage.frames), ("question_type", stage.question_type),
                            ("global_batch", stage.global_batch), ("lr", stage.lr), ("epochs", stage.epochs),
                            ("milestones", list(stage.milestones)), ("model", stage.model)):
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
            parser.add_argument(flag, action="append", metavar="SOURCE=SHARDS",
                                help="a data source of the stage, e.g. --data webvid=shards/webvid (repeat per source)")
        elif f.type in ("bool | None", "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif f.name == "milestones":
            parser.add_argument(flag, type=int, nargs="*", default=None)
        else:
            kind = {"int | None": int, "int": int, "float | None": float, "float": float}.get(f.type, str)
            parser.add_argument(flag, type=kind, default=None)


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
    cfg = TrainConfig(**values)
    cfg.stage_defaults()
    return cfg


def _source_pair(item: str) -> tuple[str, str]:
    name, sep, shards = item.partition("=")
    if not sep or not name or not shards:
        raise ValueError(f"--data takes SOURCE=SHARDS (e.g. webvid=shards/webvid), got '{item}'")
    return name, shards
